"""The JSON API: search, verify, identify (one image or a batch), the gallery (add, list, get,
image, delete), stats; for the default gallery at `/api/...`, for each by name at
`/api/galleries/NAME/...`, and the list of them at `/api/galleries`.

Images come as multipart file fields or base64 in a JSON body (`uploads.py`); every answer is
JSON, errors included (`errors.py`).
Distances are Euclidean; every verdict comes from `encoder.verdict` and names its operating point,
threshold, probability and the query's domain check.
"""
from __future__ import annotations

from functools import wraps
from typing import Any, Optional

from flask import Blueprint, Response, current_app, g, jsonify, request, url_for

from encoder.errors import ConfigError
from encoder.verdict import rounded, rounded_probability
from indexer import Item, Match
from indexer.gallery import FEATURELESS_WARNING, OUT_OF_DOMAIN_WARNING
from indexer.records import Original, sha256_of

from . import access, openapi, uploads
from .service import gallery_routes, get_embedder, get_gallery, get_service

bp = Blueprint("api", __name__, url_prefix="/api")
health = Blueprint("health", __name__)
route = gallery_routes(bp)


OPEN = {"api.list_galleries", "api.openapi_document"}  # about the server, not a gallery's contents


@bp.before_request
def check_read_access() -> None:
    if request.endpoint not in OPEN:
        access.require_read()


@bp.get("/openapi.json")
def openapi_document():
    return jsonify(openapi.document(get_service().settings))


def match_json(m: Match, query_sha256: Optional[str] = None, images: Optional[str] = None
               ) -> dict[str, Any]:
    """A match in an answer whose rule and domain check are said once, at the top. `same_image`:
    the item's original is byte for byte the query (its distance is 0 for that reason);
    `featureless`: the model finds no features in the item's image, `item_in_domain`: the item's
    image looked like the model's training data when it was added (False: it did not; null: not
    checked); neither kind is ever verified. `images`: `image_base()`, when the caller has it."""
    return {"id": m.id, "label": m.label, "distance": rounded(m.distance),
            "probability": rounded_probability(m.probability), "verified": m.verified,
            "same_image": query_sha256 is not None and m.sha256 == query_sha256,
            "featureless": m.featureless, "item_in_domain": m.item_in_domain,
            "image_url": f"{images or image_base()}/{m.id}/image", "metadata": m.metadata}


def verdict_context(rule, domain) -> dict[str, Any]:
    """What every verdict answer says: the rule it used and the query's domain check."""
    return {**rule.to_dict(), **domain.to_dict()}


def item_json(item: Item) -> dict[str, Any]:
    """An item, with the domain check of its image as recorded when it was added."""
    check = get_gallery().item_check(item)
    return {**item.to_dict(), "in_domain": check.in_domain, "domain_reason": check.reason,
            "image_url": image_url(item.id)}


def image_url(item_id: int) -> str:
    """`url_for("api.item_image", item_id=...)`."""
    return f"{image_base()}/{item_id}/image"


def image_base() -> str:
    """What item images' URLs start with: built by url_for once for each gallery and mount
    point (url_for costs 15-25 us a call, and a search answers with up to 100 of these)."""
    known = current_app.extensions.setdefault(IMAGE_BASES, {})
    key = (request.script_root, g.get("gallery_name"))
    base = known.get(key)
    if base is None:
        if len(known) >= 256:  # mount points come from the server, names from the settings
            known.clear()
        base = known[key] = url_for("api.item_image", item_id=0).removesuffix("/0/image")
    return base


IMAGE_BASES = "siamese.image_bases"  # app.extensions: image_base's answers


def requires_key(view):
    """Gallery changes come from this site and carry the write key, when there is one
    (`access.require_write`)."""

    @wraps(view)
    def checked(*args, **kwargs):
        access.require_write()
        return view(*args, **kwargs)

    return checked


@bp.get("/galleries")
def list_galleries():
    """The galleries this server serves, the default first; their counts where the caller may
    read them."""
    service = get_service()
    out = []
    for name, served in service.galleries.items():
        readable = access.READ in access.granted(served.entry)
        if readable:
            served.gallery.refresh()
        out.append({"name": name, "default": served is service.default,
                    "model": served.embedder.model_id,
                    "items": len(served.gallery) if readable else None,
                    "read_key_required": served.entry.read_key is not None,
                    "write_key_required": served.entry.api_key is not None,
                    "url": url_for("api.stats", gallery=name).removesuffix("/stats")})
    return jsonify(galleries=out)


@route.post("/search")
def search():
    settings = get_service().settings
    image, data = uploads.image_and_bytes("image")
    k = uploads.int_param("k", settings.default_k, 1, settings.max_k)
    gallery = get_gallery()
    result = gallery.search_results([image], k=k, **uploads.rule_params())[0]
    query, images = sha256_of(data), image_base()
    return jsonify(model=gallery.model_id, **verdict_context(result.rule, result.domain),
                   matches=[match_json(m, query, images) for m in result.matches])


@route.post("/search/batch")
def search_batch():
    """Several queries in one request: one embedding pass, one index search."""
    settings = get_service().settings
    found = uploads.image_list("image", most=settings.max_batch)
    images = [uploads.decoded(data, where) for data, _, where in found]
    k = uploads.int_param("k", settings.default_k, 1, settings.max_k)
    gallery = get_gallery()
    results = gallery.search_results(images, k=k, **uploads.rule_params())
    base = image_base()
    return jsonify(model=gallery.model_id, **(results[0].rule.to_dict()), results=[
        {**r.domain.to_dict(), "matches": [match_json(m, query, base) for m in r.matches]}
        for r, query in zip(results, (sha256_of(data) for data, _, _ in found))])


@route.post("/verify")
def verify():
    (a, data_a), (b, data_b) = uploads.image_and_bytes("image_a"), uploads.image_and_bytes("image_b")
    embedder = get_embedder()
    verdict = embedder.verify(a, b, rule=get_gallery().rule(**uploads.rule_params()))
    return jsonify(model=embedder.model_id, **verdict.to_dict(), same_image=data_a == data_b)


@route.post("/verify/batch")
def verify_batch():
    """Pairs in one request: pair i is image_a's i-th image with image_b's i-th."""
    most = get_service().settings.max_batch
    found_a, found_b = uploads.image_list("image_a", most=most), uploads.image_list("image_b", most=most)
    if len(found_a) != len(found_b):
        raise ConfigError(f"image_a and image_b pair up by position: send as many of each "
                          f"(here {len(found_a)} and {len(found_b)})")
    rule = get_gallery().rule(**uploads.rule_params())
    pairs = [(uploads.decoded(a[0], a[2]), uploads.decoded(b[0], b[2]))
             for a, b in zip(found_a, found_b)]
    embedder = get_embedder()
    verdicts = embedder.verify_pairs(pairs, rule)
    return jsonify(model=embedder.model_id, **rule.to_dict(), results=[
        {**{k: v for k, v in verdict.to_dict().items() if k not in rule.to_dict()},
         "same_image": a[0] == b[0]} for verdict, a, b in zip(verdicts, found_a, found_b)])


@route.post("/identify")
def identify():
    image, data = uploads.image_and_bytes("image")
    threshold = uploads.rule_params()["threshold"]
    result = get_gallery().identification(image, fpir=uploads.fpir_param(), threshold=threshold)
    query = sha256_of(data)
    return jsonify(model=get_gallery().model_id, **verdict_context(result.rule, result.domain),
                   match=match_json(result.match, query) if result.match else None,
                   nearest=match_json(result.nearest, query) if result.nearest else None)


@route.post("/gallery")
@requires_key
def add_item():
    data, name = uploads.image_bytes("image")
    label = uploads.text_param("label", required=True)
    metadata = uploads.json_object_param("metadata")
    original = Original.from_bytes(data, name, pre=get_embedder().card.preprocessing)
    gallery = get_gallery()
    added = gallery.add_originals([original], [label], [metadata])
    item_id, created = added.ids[0], added.created[0]
    item = gallery.get(item_id)
    check = added.checks[0]
    body = {"item": item_json(item), "created": created, "featureless": added.featureless[0],
            "in_domain": check.in_domain, "domain_reason": check.reason}
    if added.featureless[0]:
        body["warning"] = FEATURELESS_WARNING
    elif added.out_of_domain[0]:
        body["warning"] = OUT_OF_DOMAIN_WARNING
    if not created and item.label != label:
        body.update(label_changed=False, message=(
            f"this image is already in the gallery as item {item_id}, labelled {item.label!r}; "
            f"it was not added again, and its label stays {item.label!r}"))
    location = url_for("api.get_item", item_id=item_id)
    return jsonify(body), (201 if created else 200), {"Location": location}


@route.get("/gallery")
def list_items():
    settings = get_service().settings
    offset = uploads.int_param("offset", 0, 0, 10**12)
    limit = uploads.int_param("limit", settings.page_size, 1, 1000)
    label = uploads.text_param("label")
    gallery = get_gallery()
    items = gallery.items(offset=offset, limit=limit, label=label)
    counts = gallery.stats().labels
    total = counts.get(label, 0) if label is not None else sum(counts.values())
    more = offset + len(items) < total
    return jsonify(items=[item_json(i) for i in items], total=total, offset=offset, limit=limit,
                   next=url_for("api.list_items", offset=offset + limit, limit=limit, label=label)
                   if more else None)


@route.get("/gallery/<id:item_id>")
def get_item(item_id: int):
    return jsonify(item=item_json(get_gallery().get(item_id)))


@route.route("/gallery/<id:item_id>", methods=["PATCH"])
@requires_key
def edit_item(item_id: int):
    """Change an item's label and/or metadata (JSON, or form fields); what is not sent stays."""
    uploads.body_kind()
    changes = {}
    if uploads.value("label") is not None:
        changes["label"] = uploads.text_param("label", required=True)
    if uploads.value("metadata") is not None:
        changes["metadata"] = uploads.json_object_param("metadata")
    if not changes:
        raise ConfigError("send label and/or metadata to change")
    return jsonify(item=item_json(get_gallery().edit(item_id, **changes)))


@route.get("/gallery/<id:item_id>/neighbours")
def item_neighbours(item_id: int):
    settings = get_service().settings
    k = uploads.int_param("k", settings.default_k, 1, settings.max_k)
    gallery = get_gallery()
    result = gallery.neighbours(item_id, k, **uploads.rule_params())
    return jsonify(model=gallery.model_id, **verdict_context(result.rule, result.domain),
                   matches=[match_json(m) for m in result.matches])


@route.get("/gallery/<id:item_id>/image")
def item_image(item_id: int):
    gallery = get_gallery()
    sha256 = gallery.get(item_id).sha256  # the item's image never changes: its hash names it
    if request.if_none_match.contains(sha256):
        response = Response(status=304)  # the browser's copy is current: no bytes read or sent
    else:
        data, media_type = gallery.image(item_id)
        response = Response(data, mimetype=media_type)
        response.headers["Content-Disposition"] = f'inline; filename="item-{item_id}"'
    # Private and revalidated: a deleted image must not live on in a shared cache.
    response.headers["Cache-Control"] = "private, no-cache"
    response.set_etag(sha256)
    return response


@route.delete("/gallery/<id:item_id>")
@requires_key
def delete_item(item_id: int):
    get_gallery().remove([item_id])
    return "", 204


@route.get("/stats")
def stats():
    embedder = get_embedder()
    gallery = get_gallery()
    s = gallery.stats()
    card = embedder.card
    return jsonify(
        model={"id": embedder.model_id, "architecture": card.architecture,
               "input_shape": list(card.preprocessing.shape), "embedding_dim": card.embedding_dim,
               "training_data": card.training.get("dataset"),
               "operating_points": embedder.verdicts.operating_points,
               "probability_calibrated": card.probability is not None,
               "open_set_calibrated": card.open_set is not None,
               "domain_model": card.domain is not None},
        operating_point=s.operating_point, threshold=s.threshold, fpir=s.fpir,
        identification=gallery.identification_rule().to_dict() if s.items else None,
        gallery={"items": s.items, "labels": s.labels, "index": s.index, "vectors": s.vectors,
                 "recall_at_10": s.recall_at_10, "recall_measured_on": s.recall_measured_on,
                 "generation": s.generation, "created": s.created})


@health.get("/healthz")
def healthz():
    """Alive, and every gallery's database answers. Says no more than a count: it is open."""
    service = get_service()
    for served in service.galleries.values():
        served.gallery.refresh()
    default = service.default
    return jsonify(status="ok", model=default.embedder.model_id, items=len(default.gallery),
                   galleries=len(service.galleries))
