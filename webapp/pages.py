"""The HTML pages: search (upload or drag and drop), verify two images, browse the gallery.

Plain forms, rendered on the server, each with a CSRF token (`csrf.py`); `static/app.js` only
adds drag and drop, previews and a busy state. The pages use the same gallery calls as the API, and their images come from the API's
image endpoint.
"""
from __future__ import annotations

import base64
import math
from typing import Optional

from flask import Blueprint, render_template, request, url_for
from PIL import Image

from . import csrf, uploads
from .service import gallery_routes, get_embedder, get_gallery, get_service

bp = Blueprint("pages", __name__)
route = gallery_routes(bp)

K_CHOICES = (4, 8, 12, 24, 48)
PREVIEW_LIMIT = 4_000_000  # uploaded queries up to this size are shown back inline (data: URL)
BROWSER_FORMATS = {"PNG", "JPEG", "GIF", "WEBP", "BMP"}  # what every browser can show


@route.get("/")
def search_form():
    item_id = request.args.get("item", type=int)
    options = _search_options()
    if item_id is None:
        return render_template("search.html", **options)
    gallery = get_gallery()
    item = gallery.get(item_id)
    data, _ = gallery.image(item_id)
    result = gallery.search_results([data], k=options["k"], **options["params"])[0]
    query = {"src": url_for("api.item_image", item_id=item_id),
             "caption": f"Gallery item {item_id}" + (f" · {item.label}" if item.label else "")}
    return render_template("search.html", query=query, result=result, **options)


@route.post("/")
def search():
    csrf.check()
    image, data = uploads.image_and_bytes("image")
    options = _search_options()
    result = get_gallery().search_results([image], k=options["k"], **options["params"])[0]
    name = request.files["image"].filename or "your image"
    query = {"src": _data_url(data, image), "caption": name}
    return render_template("search.html", query=query, result=result, **options)


@route.route("/verify", methods=["GET", "POST"])
def verify():
    options = _verdict_options()
    if request.method == "GET":
        return render_template("verify.html", **options)
    csrf.check()
    (a, data_a), (b, data_b) = uploads.image_and_bytes("image_a"), uploads.image_and_bytes("image_b")
    verdict = get_embedder().verify(a, b, rule=get_gallery().rule(**options["params"]))
    result = {"verdict": verdict, "a": _data_url(data_a, a), "b": _data_url(data_b, b),
              "name_a": request.files["image_a"].filename or "first image",
              "name_b": request.files["image_b"].filename or "second image"}
    return render_template("verify.html", result=result, **options)


@route.get("/gallery")
def browse():
    settings = get_service().settings
    gallery = get_gallery()
    label = uploads.text_param("label")
    counts = gallery.stats().labels
    total = counts.get(label, 0) if label is not None else sum(counts.values())
    pages = max(1, math.ceil(total / settings.page_size))
    page = uploads.int_param("page", 1, 1, 10**9)
    page = min(page, pages)
    items = gallery.items(offset=(page - 1) * settings.page_size, limit=settings.page_size,
                          label=label)
    return render_template("gallery.html", items=items, labels=counts, label=label, total=total,
                           page=page, pages=pages)


@bp.get("/api/docs")
def api_docs():
    """The OpenAPI document, readable: every operation, its fields and its answers."""
    from .openapi import document

    spec = document(get_service().settings)
    return render_template("api_docs.html", spec=spec, schemas=spec["components"]["schemas"])


def _search_options() -> dict:
    settings = get_service().settings
    k = uploads.int_param("k", settings.default_k, 1, settings.max_k)
    return {"k": k, "k_choices": sorted({*K_CHOICES, k}), **_verdict_options()}


def _verdict_options() -> dict:
    """The form's operating point and threshold, checked (a bad one is a 400 page), and what the
    pages say about the model's verdicts."""
    params = uploads.rule_params()
    gallery = get_gallery()
    card = get_embedder().card
    return {"params": params, "rule": gallery.rule(**params), "default_rule": gallery.rule(),
            "operating_points": get_embedder().verdicts.operating_points,
            "training_data": card.domain.training_data if card.domain else
            card.training.get("dataset", "its training data")}


def _data_url(data: bytes, image: Image.Image) -> Optional[str]:
    """The uploaded image, shown back without storing it anywhere."""
    if len(data) > PREVIEW_LIMIT or image.format not in BROWSER_FORMATS:
        return None
    media_type = Image.MIME.get(image.format or "", "application/octet-stream")
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"
