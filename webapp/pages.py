"""The HTML pages: search (upload or drag and drop), verify two images, the gallery (browse, add
images or zips of them, an item's page to edit or delete it), sign-in; for the default gallery
and for each by name under /galleries/NAME/.

Plain forms, rendered on the server, each with a CSRF token (`csrf.py`); `static/app.js` adds
drag and drop, previews, the size check before upload, the upload progress bar and a busy state.
The pages use the same gallery calls as the API, and their images come from the API's image
endpoint. A page form that fails comes back with its fields as they were and the message next to
the field at fault; an uploaded query comes back too (as base64 in a hidden field), so changing
k, the threshold or the operating point does not mean uploading it again.
"""
from __future__ import annotations

import base64
import binascii
import math
from typing import Optional
from urllib.parse import urlsplit

from flask import Blueprint, redirect, render_template, request, url_for
from markupsafe import Markup, escape
from PIL import Image
from werkzeug.exceptions import HTTPException

from encoder.errors import ConfigError, SiameseSearchError
from encoder.images import megabytes
from indexer.gallery import parse_id

from . import access, csrf, uploads
from .enrol import add_uploads
from .errors import status_of
from .service import current, gallery_routes, get_embedder, get_gallery, get_service

bp = Blueprint("pages", __name__)
route = gallery_routes(bp)

K_CHOICES = (4, 8, 12, 24, 48)
FPIR_CHOICES = ("0.001", "0.01", "0.05", "0.1")
CANDIDATES = 5  # the nearest items the identify page shows
PREVIEW_LIMIT = 4_000_000  # uploaded queries up to this size are shown back, and kept (base64)
PREVIEW_SIDE = 512  # larger ones, and other formats, are shown as a PNG this big at most
BROWSER_FORMATS = {"PNG", "JPEG", "GIF", "WEBP", "BMP"}  # what every browser can show
KEPT = {"image": "kept_image", "image_a": "kept_image_a", "image_b": "kept_image_b"}
FIELD_WORDS = {"image": "the image", "image_a": "the first image", "image_b": "the second image",
               "fpir": "the false-identification rate",
               "images": "the images", "metadata": "the metadata", "label": "the label"}
OPEN_PAGES = {"pages.sign_in", "pages.sign_out", "pages.api_docs"}


@bp.before_request
def check_read_access():
    """A gallery with a read key shows its pages to those signed in with it."""
    if request.endpoint in OPEN_PAGES:
        return None
    if access.READ not in access.granted(current().entry):
        return redirect(url_for("pages.sign_in", next=request.full_path.rstrip("?")))
    return None


def need_write():
    """For the pages that change the gallery: the sign-in page, unless signed in to write."""
    if access.WRITE not in access.granted(current().entry):
        return redirect(url_for("pages.sign_in", next=request.full_path.rstrip("?"), write=1))
    return None


# --- search and verify ----------------------------------------------------------------------------

@route.get("/")
def search_form():
    item_id = request.args.get("item", type=parse_id)
    options = _search_options()
    if item_id is None:
        return render_template("search.html", **options)
    gallery = get_gallery()
    item = gallery.get(item_id)
    data, _ = gallery.image(item_id)
    result = gallery.search_results([data], k=options["k"], **options["params"])[0]
    query = {"src": url_for("api.item_image", item_id=item_id), "item": item_id,
             "caption": f"Gallery item {item_id}" + (f" · {item.label}" if item.label else ""),
             "sha256": item.sha256}
    return render_template("search.html", query=query, result=result, **options)


@route.post("/")
def search():
    csrf.check()
    item_id = request.form.get("item", type=parse_id)
    if item_id is not None and not request.files.get("image"):  # new options, same gallery item
        return redirect(url_for("pages.search_form", item=item_id, k=request.form.get("k"),
                                **uploads.rule_params()), 303)
    try:
        options = _search_options()
        (image, data), name = _page_image("image"), _file_name("image", "your image")
        result = get_gallery().search_results([image], k=options["k"], **options["params"])[0]
    except (SiameseSearchError, HTTPException) as exc:
        return _form_error("search.html", exc, _search_options_or_defaults())
    query = {"src": _data_url(data, image), "caption": name, "kept": _kept(data),
             "sha256": _sha256(data)}
    return render_template("search.html", query=query, result=result, **options)


@route.route("/verify", methods=["GET", "POST"])
def verify():
    if request.method == "GET":
        return render_template("verify.html", **_verdict_options())
    csrf.check()
    try:
        options = _verdict_options()
        (a, data_a), (b, data_b) = _page_image("image_a"), _page_image("image_b")
        verdict = get_embedder().verify(a, b, rule=get_gallery().rule(**options["params"]))
    except (SiameseSearchError, HTTPException) as exc:
        return _form_error("verify.html", exc, _verdict_options_or_defaults())
    result = {"verdict": verdict, "a": _data_url(data_a, a), "b": _data_url(data_b, b),
              "kept_a": _kept(data_a), "kept_b": _kept(data_b), "same_image": data_a == data_b,
              "name_a": _file_name("image_a", "first image"),
              "name_b": _file_name("image_b", "second image")}
    return render_template("verify.html", result=result, **options)


@route.route("/identify", methods=["GET", "POST"])
def identify():
    """1:N in the browser: who, of those enrolled, an image shows, or nobody, with the rule
    (the threshold for the target FPIR at the gallery's size) and the nearest candidates."""
    if request.method == "GET":
        return render_template("identify.html", **_identify_options())
    csrf.check()
    try:
        options = _identify_options()
        (image, data), name = _page_image("image"), _file_name("image", "your image")
        gallery = get_gallery()
        found = gallery.identification(image, fpir=options["fpir"])
        candidates = gallery.search_results([image], k=CANDIDATES,
                                            threshold=found.rule.threshold)[0].matches
    except (SiameseSearchError, HTTPException) as exc:
        return _form_error("identify.html", exc, _identify_options_or_defaults(),
                           fields=("image", "fpir"))
    query = {"src": _data_url(data, image), "caption": name, "kept": _kept(data),
             "sha256": _sha256(data)}
    return render_template("identify.html", query=query, found=found, candidates=candidates,
                           **options)


def _identify_options(fpir: Optional[str] = "") -> dict:
    """The form's target FPIR (`fpir`: "" for the one sent, None for the gallery's), checked, and
    the rule it gives at the gallery's size now."""
    fpir = (request.values.get("fpir") or None) if fpir == "" else fpir
    gallery = get_gallery()
    training_data = _verdict_context({}, gallery.rule())["training_data"]
    # The rule checks the value before any image is read; an empty gallery has none to give.
    rule = gallery.identification_rule(fpir=fpir) if len(gallery) else None
    return {"fpir": fpir, "fpir_choices": FPIR_CHOICES, "rule": rule,
            "training_data": training_data}


def _identify_options_or_defaults() -> dict:
    try:
        return _identify_options()
    except (SiameseSearchError, HTTPException):
        return _identify_options(None)


# --- the gallery ------------------------------------------------------------------------------------

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
                           page=page, pages=pages, deleted=request.args.get("deleted", type=parse_id))


@route.route("/gallery/add", methods=["GET", "POST"])
def add():
    refused = need_write()
    if refused is not None:
        return refused
    settings = get_service().settings
    if request.method == "GET":
        return render_template("add.html", form={})
    csrf.check()
    form = {"label": request.form.get("label", ""), "metadata": request.form.get("metadata", ""),
            "folder_labels": bool(request.form.get("folder_labels"))}
    try:
        label = uploads.text_param("label")
        metadata = uploads.json_object_param("metadata")
        files = [(name, data) for data, name, _ in
                 uploads.image_list("images", most=settings.max_batch)]
        report = add_uploads(get_gallery(), files, label, metadata, form["folder_labels"],
                             settings.max_image_bytes)
    except (SiameseSearchError, HTTPException) as exc:
        return _form_error("add.html", exc, {"form": form},
                           fields=("images", "label", "metadata"))
    # The next upload is another product or person: only the zip setting stays.
    return render_template("add.html", form={"folder_labels": form["folder_labels"]},
                           report=report)


@route.get("/gallery/<id:item_id>")
def item(item_id: int):
    return _item_page(item_id)


@route.post("/gallery/<id:item_id>")
def edit(item_id: int):
    refused = need_write()
    if refused is not None:
        return refused
    csrf.check()
    form = {"label": request.form.get("label", ""), "metadata": request.form.get("metadata", "")}
    try:
        label = uploads.text_param("label")
        metadata = uploads.json_object_param("metadata")
        get_gallery().edit(item_id, label=label, metadata=metadata)
    except SiameseSearchError as exc:
        status, _, message = status_of(exc)
        field = _field_of(message, ("label", "metadata"))
        return _item_page(item_id, form=form, errors={field: plain(message, field)}), status
    return redirect(url_for("pages.item", item_id=item_id, saved=1), 303)


@route.route("/gallery/<id:item_id>/delete", methods=["GET", "POST"])
def delete(item_id: int):
    refused = need_write()
    if refused is not None:
        return refused
    gallery = get_gallery()
    found = gallery.get(item_id)
    if request.method == "GET":
        return render_template("delete.html", item=found)
    csrf.check()
    gallery.remove([item_id])
    return redirect(url_for("pages.browse", deleted=item_id), 303)


def _item_page(item_id: int, form: Optional[dict] = None, errors: Optional[dict] = None):
    import json

    gallery = get_gallery()
    found = gallery.get(item_id)
    neighbours = gallery.neighbours(item_id, k=8)
    form = form or {"label": found.label or "",
                    "metadata": json.dumps(found.metadata, ensure_ascii=False, indent=1)
                    if found.metadata else ""}
    return render_template("item.html", item=found, neighbours=neighbours, form=form,
                           errors=errors or {}, saved=request.args.get("saved") == "1")


# --- signing in -------------------------------------------------------------------------------------

@route.route("/signin", methods=["GET", "POST"])
def sign_in():
    entry = current().entry
    target = _local(request.values.get("next")) or url_for("pages.search_form")
    wants_write = bool(request.values.get("write"))
    context = {"target": target, "wants_write": wants_write, "needs_key": bool(
        entry.api_key or entry.read_key), "read_key": bool(entry.read_key),
        "write_key": bool(entry.api_key), "errors": {}}
    if request.method == "GET":
        return render_template("signin.html", **context)
    csrf.check()
    key = request.form.get("key", "")
    level = access.sign_in(entry, key) if key else None
    if level is None or (wants_write and level != access.WRITE):
        context["errors"]["key"] = (
            "Enter the key." if not key else
            "That is the read key: changes need the write key." if level else
            f"That key does not open gallery {entry.name}.")
        return render_template("signin.html", **context), 401
    return redirect(target, 303)


@route.post("/signout")
def sign_out():
    csrf.check()
    access.sign_out()
    return redirect(url_for("pages.search_form"), 303)


@bp.get("/api/docs")
def api_docs():
    """The OpenAPI document, readable: a table of contents, every operation with a runnable
    example, its fields and its answers' fields."""
    from .openapi import document

    spec = document(get_service().settings)
    operations = [(method, path, op) for path, methods in spec["paths"].items()
                  if "{gallery}" not in path for method, op in methods.items()]
    return render_template("api_docs.html", spec=spec, schemas=spec["components"]["schemas"],
                           operations=operations)


@bp.app_template_filter("code_spans")
def code_spans(text: str) -> Markup:
    """The OpenAPI descriptions' Markdown `code` spans as <code>, the rest escaped."""
    parts = str(text).split("`")
    return Markup("".join(str(escape(part)) if i % 2 == 0 else f"<code>{escape(part)}</code>"
                          for i, part in enumerate(parts)))


# --- helpers ----------------------------------------------------------------------------------------

def _page_image(field: str) -> tuple[Image.Image, bytes]:
    """The image of a page form: a new upload, else the one kept from the last answer."""
    upload = request.files.get(field)
    if upload is not None and upload.filename:
        return uploads.image_and_bytes(field)
    kept = request.form.get(KEPT[field], "")
    if not kept:
        raise ConfigError(f"{field}: choose an image")
    try:
        data = base64.b64decode(kept, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{field}: choose the image again") from None
    return uploads.decoded(data, field), data


def _file_name(field: str, default: str) -> str:
    upload = request.files.get(field)
    if upload is not None and upload.filename:
        return upload.filename
    return request.form.get(f"{KEPT[field]}_name") or default


def _kept(data: bytes) -> Optional[str]:
    return base64.b64encode(data).decode() if len(data) <= PREVIEW_LIMIT else None


def _sha256(data: bytes) -> str:
    from indexer.records import sha256_of

    return sha256_of(data)


def _form_error(template: str, exc: Exception, context: dict,
                fields: tuple[str, ...] = ("image", "image_a", "image_b", "k", "threshold",
                                          "operating_point")):
    """The form again, as it was sent, with the message next to the field at fault."""
    status, _, message = status_of(exc)
    if status >= 500:
        raise exc
    field = _field_of(message, fields)
    return render_template(template, errors={field: plain(message, field)}, **context), status


def _field_of(message: str, fields: tuple[str, ...]) -> str:
    """The field a message is about (they start with its name), else "form"."""
    for name in sorted(fields, key=len, reverse=True):
        if message.startswith((f"{name}:", f"{name} ", f"missing the image file field '{name}'",
                               f"missing the text field '{name}'")):
            return name
    return "form"


def plain(message: str, field: str) -> str:
    """A message for people: the field in words, not its name."""
    words = FIELD_WORDS.get(field)
    if words is None:
        return message[:1].upper() + message[1:]
    if message.startswith(f"missing the image file field '{field}'"):
        return f"Choose {words}."
    words = words[:1].upper() + words[1:]
    if message.startswith(f"{field}: "):
        return f"{words}: {message[len(field) + 2:]}"
    if message.startswith(f"{field} ("):  # "image (photo.png): ..." -> the file's name
        name, _, rest = message[len(field) + 2:].partition("): ")
        return f"{name}: {rest}"
    if message.startswith(f"{field} "):  # "metadata must be ..." -> "The metadata must be ..."
        return f"{words}{message[len(field):]}"
    return message


def _search_options() -> dict:
    settings = get_service().settings
    k = uploads.int_param("k", settings.default_k, 1, settings.max_k)
    return {"k": k, "k_choices": sorted({*K_CHOICES, k}), **_verdict_options()}


def _search_options_or_defaults() -> dict:
    """The options as sent where they are valid, else the defaults (for a form shown again)."""
    try:
        return _search_options()
    except (SiameseSearchError, HTTPException):
        settings = get_service().settings
        return {"k": settings.default_k, "k_choices": sorted({*K_CHOICES, settings.default_k}),
                **_verdict_options_or_defaults()}


def _verdict_options() -> dict:
    """The form's operating point and threshold, checked, and what the pages say about the
    model's verdicts."""
    params = uploads.rule_params()
    return _verdict_context(params, get_gallery().rule(**params))


def _verdict_options_or_defaults() -> dict:
    params = uploads.rule_params()
    try:
        return _verdict_context(params, get_gallery().rule(**params))
    except SiameseSearchError:
        return _verdict_context(params, get_gallery().rule())


def _verdict_context(params: dict, rule) -> dict:
    gallery = get_gallery()
    card = get_embedder().card
    return {"params": params, "rule": rule, "default_rule": gallery.rule(),
            "operating_points": get_embedder().verdicts.operating_points,
            "training_data": card.domain.training_data if card.domain else
            card.training.get("dataset", "its training data")}


def _data_url(data: bytes, image: Image.Image) -> str:
    """The uploaded image, shown back without storing it anywhere: its own bytes when a browser
    can show them and they are small, else a PNG of the decoded image (which may have been
    shrunk already, and so has no format of its own), at most `PREVIEW_SIDE` pixels a side."""
    import io

    try:
        kind = Image.open(io.BytesIO(data)).format  # reads the header only
    except (OSError, ValueError, Image.DecompressionBombError):
        kind = None
    if len(data) <= PREVIEW_LIMIT and kind in BROWSER_FORMATS:
        media_type = Image.MIME.get(kind, "application/octet-stream")
        return f"data:{media_type};base64,{base64.b64encode(data).decode()}"
    preview = image.copy()
    preview.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    if preview.mode not in ("L", "RGB", "RGBA"):
        preview = preview.convert("RGBA" if "A" in preview.getbands() else "RGB")
    out = io.BytesIO()
    preview.save(out, "PNG")
    return f"data:image/png;base64,{base64.b64encode(out.getvalue()).decode()}"


def _local(target: Optional[str]) -> Optional[str]:
    """A sign-in's `next`, if it is a path on this site (never another site: no open redirect).
    Browsers drop tabs and newlines from a URL and read a backslash as a slash, so
    `/%09/evil.example/` (a tab) would be `//evil.example/`, another site: any control character,
    space or backslash refuses it, as does anything that parses as a scheme or a host."""
    if not target or "\\" in target or any(ord(c) <= 0x20 or ord(c) == 0x7f for c in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/") or \
            parts.path.startswith("//"):
        return None
    return target


def max_image_size() -> str:
    return megabytes(get_service().settings.max_image_bytes)
