"""Reading a request's form: uploaded images (kept in memory, decoded by `encoder.images`) and
the small parameters beside them, each checked with a message that names the field.

Uploads never touch the disk: werkzeug would spool files over 500 kB to a temporary file, so
`UploadRequest` gives it an in-memory buffer instead (the request size is capped by
`MAX_CONTENT_LENGTH`). An image is written only by the gallery, into its own database.
"""
from __future__ import annotations

import io
import json
import math
from typing import Any, Optional

from flask import Request, current_app, request
from PIL import Image
from werkzeug.exceptions import RequestEntityTooLarge, UnsupportedMediaType
from werkzeug.utils import secure_filename

from encoder.errors import ConfigError
from encoder.images import decode

from .errors import MissingFieldError



class UploadRequest(Request):
    """Flask's request, with uploaded files kept in memory, never spooled to a temporary file."""

    def _get_file_stream(self, total_content_length, content_type, filename=None,
                         content_length=None):
        return io.BytesIO()


def require_multipart() -> None:
    if request.mimetype != "multipart/form-data":
        raise UnsupportedMediaType(
            f"send the image as a multipart/form-data upload (curl -F image=@photo.png), not "
            f"{request.mimetype or 'a body without a Content-Type'}")


def image_bytes(field: str) -> tuple[bytes, str]:
    """The bytes of the file uploaded in `field` and a safe name for it (the client's file name,
    cleaned, used only as a label: nothing is ever read or written at that path)."""
    require_multipart()
    upload = request.files.get(field)
    if upload is None:
        if field in request.form:
            raise ConfigError(f"{field} must be a file upload (curl -F {field}=@photo.png), "
                              "not a text field")
        raise MissingFieldError(f"missing the image file field '{field}'")
    limit = current_app.config["SIAMESE_MAX_IMAGE_BYTES"]
    data = upload.stream.read(limit + 1)
    if len(data) > limit:
        raise RequestEntityTooLarge(f"{field}: the image is over the {limit:,}-byte limit")
    return data, secure_filename(upload.filename or "") or field


def image(field: str) -> Image.Image:
    """The image uploaded in `field`, decoded and checked (empty, corrupt, truncated, too many
    pixels: `BadImageError`; not an image at all: `UnsupportedImageError`)."""
    return image_and_bytes(field)[0]


def image_and_bytes(field: str) -> tuple[Image.Image, bytes]:
    """`image`, and the bytes it was decoded from."""
    data, name = image_bytes(field)
    return decode(data, name if name == field else f"{field} ({name})"), data


def int_param(name: str, default: int, low: int, high: int) -> int:
    text = request.values.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name} must be an integer in {low}..{high}, not {text!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be an integer in {low}..{high}, not {value}")
    return value


def threshold_param() -> Optional[float]:
    """The optional `threshold`: a finite distance >= 0 (Euclidean, like the model card's)."""
    text = request.values.get("threshold", "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"threshold must be a finite distance >= 0, not {text!r}")
    return value


def text_param(name: str, required: bool = False, max_length: int = 200) -> Optional[str]:
    text = request.values.get(name, "").strip()
    if not text:
        if required:
            raise MissingFieldError(f"missing the text field '{name}'")
        return None
    if len(text) > max_length:
        raise ConfigError(f"{name} must be at most {max_length} characters, not {len(text)}")
    return text


def json_object_param(name: str) -> dict[str, Any]:
    text = request.values.get(name, "").strip()
    if not text:
        return {}
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a JSON object ({{...}}), not {type(value).__name__}")
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")
