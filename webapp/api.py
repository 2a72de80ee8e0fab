"""The JSON API: search, verify, identify, the gallery (add, list, get, image, delete), stats.

Images come as multipart file fields; every answer is JSON, errors included (`errors.py`).
Distances are Euclidean; every verdict comes from `encoder.verdict` and names its operating point,
threshold, probability and the query's domain check.
"""
from __future__ import annotations

import hmac
from functools import wraps
from urllib.parse import urlsplit
from typing import Any

from flask import Blueprint, Response, g, jsonify, request, url_for
from werkzeug.exceptions import Forbidden, Unauthorized

from indexer import Item, Match
from indexer.records import Original

from . import uploads
from .service import get_gallery, get_service

bp = Blueprint("api", __name__, url_prefix="/api")
health = Blueprint("health", __name__)


def match_json(m: Match) -> dict[str, Any]:
    """A match in an answer whose rule and domain check are said once, at the top."""
    return {"id": m.id, "label": m.label, "distance": round(m.distance, 6),
            "probability": None if m.probability is None else round(m.probability, 4),
            "verified": m.verified, "image_url": image_url(m.id), "metadata": m.metadata}


def verdict_context(rule, domain) -> dict[str, Any]:
    """What every verdict answer says: the rule it used and the query's domain check."""
    return {**rule.to_dict(), **domain.to_dict()}


def item_json(item: Item) -> dict[str, Any]:
    return {**item.to_dict(), "image_url": image_url(item.id)}


def image_url(item_id: int) -> str:
    """`url_for("api.item_image", item_id=...)`, built once per request (url_for costs ~15 us
    a call, and a search answers with up to 100 of these)."""
    if "image_url" not in g:
        g.image_url = url_for("api.item_image", item_id=0).removesuffix("/0/image")
    return f"{g.image_url}/{item_id}/image"


def requires_key(view):
    """Gallery changes come from this site (never from another site's page: `same_origin`) and,
    when one is configured, carry the API key in `X-API-Key`."""

    @wraps(view)
    def checked(*args, **kwargs):
        same_origin()
        key = get_service().settings.api_key
        if key is not None:
            given = request.headers.get("X-API-Key")
            if not given:
                raise Unauthorized("this change needs the API key in the X-API-Key header")
            # WSGI hands header bytes over as Latin-1 text: compare the bytes sent with the key's
            # UTF-8 bytes, so a non-ASCII key matches when sent as UTF-8, as clients send it.
            if not hmac.compare_digest(given.encode("latin-1"), key.encode("utf-8")):
                raise Forbidden("wrong API key")
        return view(*args, **kwargs)

    return checked


def same_origin() -> None:
    """Refuse a write sent by a page of another site. A browser names the page's origin in
    `Origin` (or at least `Referer`) on a cross-site POST or DELETE, and a multipart POST needs
    no CORS preflight, so without this any web page could add to a server with no API key.
    Clients that are not browsers (curl, scripts) send neither header and are not affected."""
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if source is None:
        return
    # The host alone: behind a proxy that ends TLS the page is https and the request http.
    # An opaque origin ("null": a sandboxed frame, a file) has none, and is refused.
    if urlsplit(source).netloc.lower() != request.host.lower():
        raise Forbidden(f"gallery changes are refused from pages of other sites ({source})")


@bp.post("/search")
def search():
    settings = get_service().settings
    image = uploads.image("image")
    k = uploads.int_param("k", settings.default_k, 1, settings.max_k)
    gallery = get_gallery()
    result = gallery.search_results([image], k=k, **uploads.rule_params())[0]
    return jsonify(model=gallery.model_id, **verdict_context(result.rule, result.domain),
                   matches=[match_json(m) for m in result.matches])


@bp.post("/verify")
def verify():
    a, b = uploads.image("image_a"), uploads.image("image_b")
    embedder = get_service().embedder
    verdict = embedder.verify(a, b, rule=get_gallery().rule(**uploads.rule_params()))
    return jsonify(model=embedder.model_id, **verdict.to_dict())


@bp.post("/identify")
def identify():
    image = uploads.image("image")
    threshold = uploads.rule_params()["threshold"]
    result = get_gallery().identification(image, fpir=uploads.fpir_param(), threshold=threshold)
    return jsonify(model=get_gallery().model_id, **verdict_context(result.rule, result.domain),
                   match=match_json(result.match) if result.match else None,
                   nearest=match_json(result.nearest) if result.nearest else None)


@bp.post("/gallery")
@requires_key
def add_item():
    data, name = uploads.image_bytes("image")
    label = uploads.text_param("label", required=True)
    metadata = uploads.json_object_param("metadata")
    original = Original.from_bytes(data, name)
    gallery = get_gallery()
    added = gallery.add_originals([original], [label], [metadata])
    item_id, created = added.ids[0], added.created[0]
    item = gallery.get(item_id)
    body = {"item": item_json(item), "created": created}
    if not created and item.label != label:
        body.update(label_changed=False, message=(
            f"this image is already in the gallery as item {item_id}, labelled {item.label!r}; "
            f"it was not added again, and its label stays {item.label!r}"))
    location = url_for("api.get_item", item_id=item_id)
    return jsonify(body), (201 if created else 200), {"Location": location}


@bp.get("/gallery")
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


@bp.get("/gallery/<int:item_id>")
def get_item(item_id: int):
    return jsonify(item=item_json(get_gallery().get(item_id)))


@bp.get("/gallery/<int:item_id>/image")
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


@bp.delete("/gallery/<int:item_id>")
@requires_key
def delete_item(item_id: int):
    get_gallery().remove([item_id])
    return "", 204


@bp.get("/stats")
def stats():
    embedder = get_service().embedder
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
    gallery = get_gallery()
    return jsonify(status="ok", model=gallery.model_id, items=len(gallery))
