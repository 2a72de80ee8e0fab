"""The JSON API: search, verify, identify, the gallery (add, list, get, image, delete), stats.

Images come as multipart file fields; every answer is JSON, errors included (`errors.py`).
Distances are Euclidean and `verified` is `distance <= threshold`, as everywhere else.
"""
from __future__ import annotations

import hmac
from functools import wraps
from typing import Any, Optional

from flask import Blueprint, Response, g, jsonify, request, url_for
from werkzeug.exceptions import Forbidden, Unauthorized

from indexer import Item, Match
from indexer.records import Original

from . import uploads
from .service import get_gallery, get_service

bp = Blueprint("api", __name__, url_prefix="/api")
health = Blueprint("health", __name__)


def match_json(m: Match) -> dict[str, Any]:
    return {"id": m.id, "label": m.label, "distance": m.distance, "verified": m.verified,
            "image_url": image_url(m.id), "metadata": m.metadata}


def item_json(item: Item) -> dict[str, Any]:
    return {**item.to_dict(), "image_url": image_url(item.id)}


def image_url(item_id: int) -> str:
    """`url_for("api.item_image", item_id=...)`, built once per request (url_for costs ~15 us
    a call, and a search answers with up to 100 of these)."""
    if "image_url" not in g:
        g.image_url = url_for("api.item_image", item_id=0).removesuffix("/0/image")
    return f"{g.image_url}/{item_id}/image"


def requires_key(view):
    """Gallery changes need the configured API key in `X-API-Key` (none configured: open)."""

    @wraps(view)
    def checked(*args, **kwargs):
        key = get_service().settings.api_key
        if key is not None:
            given = request.headers.get("X-API-Key")
            if not given:
                raise Unauthorized("this change needs the API key in the X-API-Key header")
            if not hmac.compare_digest(given.encode(), key.encode()):
                raise Forbidden("wrong API key")
        return view(*args, **kwargs)

    return checked


@bp.post("/search")
def search():
    settings = get_service().settings
    image = uploads.image("image")
    k = uploads.int_param("k", settings.default_k, 1, settings.max_k)
    threshold = uploads.threshold_param()
    gallery = get_gallery()
    matches = gallery.search(image, k=k, threshold=threshold)
    return jsonify(model=gallery.model_id, threshold=_threshold(threshold),
                   matches=[match_json(m) for m in matches])


@bp.post("/verify")
def verify():
    a, b = uploads.image("image_a"), uploads.image("image_b")
    threshold = _threshold(uploads.threshold_param())
    service = get_service()
    distance = service.distance(a, b)
    return jsonify(model=service.embedder.model_id, distance=distance, threshold=threshold,
                   verified=distance <= threshold)


@bp.post("/identify")
def identify():
    image = uploads.image("image")
    threshold = uploads.threshold_param()
    match = get_gallery().identify(image, threshold=threshold)
    return jsonify(model=get_gallery().model_id, threshold=_threshold(threshold),
                   match=match_json(match) if match else None)


@bp.post("/gallery")
@requires_key
def add_item():
    data, name = uploads.image_bytes("image")
    label = uploads.text_param("label", required=True)
    metadata = uploads.json_object_param("metadata")
    original = Original.from_bytes(data, name)
    gallery = get_gallery()
    existed = gallery.known([original.sha256])
    item_id = gallery.add_originals([original], [label], [metadata])[0]
    body = jsonify(item=item_json(gallery.get(item_id)), created=not existed)
    location = url_for("api.get_item", item_id=item_id)
    return body, (200 if existed else 201), {"Location": location}


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
    data, media_type = gallery.image(item_id)
    response = Response(data, mimetype=media_type)
    # Ids are never reused, so an item's image never changes: cache it for good.
    response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
    response.headers["Content-Disposition"] = f'inline; filename="item-{item_id}"'
    return response


@bp.delete("/gallery/<int:item_id>")
@requires_key
def delete_item(item_id: int):
    get_gallery().remove([item_id])
    return "", 204


@bp.get("/stats")
def stats():
    embedder = get_service().embedder
    s = get_gallery().stats()
    card = embedder.card
    return jsonify(
        model={"id": embedder.model_id, "architecture": card.architecture,
               "input_shape": list(card.preprocessing.shape), "embedding_dim": card.embedding_dim,
               "threshold": card.threshold, "far_threshold": card.calibration.far_threshold,
               "training_data": card.training.get("dataset")},
        threshold=s.threshold,
        gallery={"items": s.items, "labels": s.labels, "index": s.index, "vectors": s.vectors,
                 "recall_at_10": s.recall_at_10, "recall_measured_on": s.recall_measured_on,
                 "generation": s.generation, "created": s.created})


@health.get("/healthz")
def healthz():
    gallery = get_gallery()
    return jsonify(status="ok", model=gallery.model_id, items=len(gallery))


def _threshold(requested: Optional[float]) -> float:
    return get_gallery().threshold if requested is None else requested

