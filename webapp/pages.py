"""The HTML pages: search (upload or drag and drop), verify two images, browse the gallery.

Plain forms, rendered on the server; `static/app.js` only adds drag and drop, previews and a busy
state. The pages use the same gallery calls as the API, and their images come from the API's
image endpoint.
"""
from __future__ import annotations

import base64
import math
from typing import Optional

from flask import Blueprint, render_template, request, url_for
from PIL import Image

from . import uploads
from .service import get_gallery, get_service

bp = Blueprint("pages", __name__)

K_CHOICES = (4, 8, 12, 24, 48)
PREVIEW_LIMIT = 4_000_000  # uploaded queries up to this size are shown back inline (data: URL)
BROWSER_FORMATS = {"PNG", "JPEG", "GIF", "WEBP", "BMP"}  # what every browser can show


@bp.get("/")
def search_form():
    item_id = request.args.get("item", type=int)
    if item_id is None:
        return render_template("search.html", **_search_options())
    gallery = get_gallery()
    item = gallery.get(item_id)
    data, _ = gallery.image(item_id)
    options = _search_options()
    matches = gallery.search(data, k=options["k"], threshold=options["threshold"])
    query = {"src": url_for("api.item_image", item_id=item_id),
             "caption": f"Gallery item {item_id}" + (f" · {item.label}" if item.label else "")}
    return render_template("search.html", query=query, matches=matches, **options)


@bp.post("/")
def search():
    image, data = uploads.image_and_bytes("image")
    options = _search_options()
    matches = get_gallery().search(image, k=options["k"], threshold=options["threshold"])
    name = request.files["image"].filename or "your image"
    query = {"src": _data_url(data, image), "caption": name}
    return render_template("search.html", query=query, matches=matches, **options)


@bp.route("/verify", methods=["GET", "POST"])
def verify():
    threshold = get_gallery().threshold
    if request.method == "GET":
        return render_template("verify.html", threshold=threshold)
    (a, data_a), (b, data_b) = uploads.image_and_bytes("image_a"), uploads.image_and_bytes("image_b")
    requested = uploads.threshold_param()
    threshold = threshold if requested is None else requested
    distance = get_service().distance(a, b)
    result = {"distance": distance, "verified": distance <= threshold,
              "a": _data_url(data_a, a), "b": _data_url(data_b, b),
              "name_a": request.files["image_a"].filename or "first image",
              "name_b": request.files["image_b"].filename or "second image"}
    return render_template("verify.html", threshold=threshold, result=result)


@bp.get("/gallery")
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


def _search_options() -> dict:
    settings = get_service().settings
    k = uploads.int_param("k", settings.default_k, 1, settings.max_k)
    threshold = uploads.threshold_param()
    return {"k": k, "k_choices": sorted({*K_CHOICES, k}), "threshold": threshold,
            "gallery_threshold": get_gallery().threshold}


def _data_url(data: bytes, image: Image.Image) -> Optional[str]:
    """The uploaded image, shown back without storing it anywhere."""
    if len(data) > PREVIEW_LIMIT or image.format not in BROWSER_FORMATS:
        return None
    media_type = Image.MIME.get(image.format or "", "application/octet-stream")
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"
