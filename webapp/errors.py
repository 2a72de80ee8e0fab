"""The one place where errors become HTTP responses.

Our exceptions (`encoder.errors`) and werkzeug's HTTP exceptions (413 too large, 415, 401, 403,
unknown routes) map to a status and a short code here, and nowhere else. API requests get
`{"error": {"code": ..., "message": ...}}`; pages get an HTML page with the same message. Anything
unexpected is logged with its traceback and answered with a plain 500 that shows none.
"""
from __future__ import annotations

import logging
import re

from flask import Flask, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from encoder.errors import (BadImageError, ConfigError, DatasetError, ModelError,
                            ModelMismatchError, NotFoundError, SiameseSearchError,
                            UnsupportedImageError)
from indexer.errors import GalleryError, storage_failure

log = logging.getLogger(__name__)


class MissingFieldError(ConfigError):
    """A request lacks a form field it needs."""


# Our exception family -> (HTTP status, error code). Most specific first: the first match wins.
STATUS: list[tuple[type[SiameseSearchError], int, str]] = [
    (UnsupportedImageError, 415, "unsupported_media_type"),
    (BadImageError, 400, "bad_image"),
    (MissingFieldError, 400, "missing_field"),
    (ConfigError, 400, "bad_parameter"),
    (DatasetError, 400, "bad_request"),
    (NotFoundError, 404, "not_found"),
    (ModelMismatchError, 503, "model_mismatch"),  # the gallery was re-embedded: restart with its model
    (ModelError, 503, "model_unavailable"),
    (GalleryError, 503, "gallery_busy"),  # e.g. another writer held the lock too long
    (SiameseSearchError, 400, "bad_request"),
]

# werkzeug's HTTP exceptions whose code is not just their name in snake case
HTTP_CODES = {413: "too_large", 415: "unsupported_media_type"}


def status_of(exc: Exception) -> tuple[int, str, str]:
    """(status, code, message) of any exception. Storage failures say what happened, never where
    (no paths)."""
    storage = storage_failure(exc)
    if storage is not None:
        return STORAGE_STATUS[storage.kind]
    if isinstance(exc, SiameseSearchError):
        status, code = next((s, c) for kind, s, c in STATUS if isinstance(exc, kind))
        return status, code, str(exc)
    if isinstance(exc, HTTPException):
        status = exc.code or 500
        code = HTTP_CODES.get(status) or re.sub(r"\W+", "_", (exc.name or "error").lower())
        return status, code, exc.description or exc.name
    return 500, "internal_error", "internal error; the server log has the details"


# A storage failure's kind -> (HTTP status, error code, message: what happened, never where).
STORAGE_STATUS = {
    "disk_full": (507, "insufficient_storage", "the server's disk is full; the change was not stored"),
    "database": (503, "database_unavailable", "the gallery's database cannot be reached or read now"),
    "files": (503, "storage_unavailable", "the gallery's files cannot be written or read now"),
}


def handle(exc: Exception):
    status, code, message = status_of(exc)
    storage = storage_failure(exc)
    if storage is not None:  # the operator's to fix: one line, not a traceback
        log.error("%s %s: %s", request.method, request.path, storage.detail)
    elif status >= 500:
        log.error("%s %s failed", request.method, request.path, exc_info=exc)
    if wants_json():
        response = jsonify(error={"code": code, "message": message})
    else:
        response = render_template("error.html", status=status, code=code, message=message)
    headers = {"Retry-After": "5"} if status in (503, 507) else {}
    return response, status, headers


def wants_json() -> bool:
    return request.path.startswith("/api/") or request.path == "/healthz"


def register(app: Flask) -> None:
    app.register_error_handler(Exception, handle)
