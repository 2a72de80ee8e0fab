"""The web service: a Flask app with a JSON API and HTML pages over one gallery.

    app = create_app(Settings(gallery=Path("galleries/demo"), model=Path("models/fashion-mnist")))

`create_app` loads the model and opens the gallery once (per process: under gunicorn each worker
builds its own app after the fork, see `server.py`). Blueprints: `api` (JSON, `/api/...` and
`/healthz`) and `pages` (HTML). `errors` maps every exception to a status in one place.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from flask import Flask, Response, request, session, url_for

from werkzeug.exceptions import BadRequest
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import BaseConverter

from encoder.errors import NotFoundError
from encoder.images import megabytes
from indexer.gallery import ID_DIGITS

from . import access, api, csrf, errors, pages
from .answers import JSONProvider
from .service import (EXTENSION, Service, current, get_gallery, get_service, keep_gallery_name,
                      take_gallery_name)
from .settings import Settings
from .uploads import UploadRequest

if TYPE_CHECKING:
    from encoder import Embedder

__all__ = ["create_app", "Settings", "get_gallery", "get_service"]

# Pages load their own script, style and images, and show uploads back as data: URLs; nothing else.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                           "script-src 'self'; object-src 'none'; base-uri 'none'; "
                           "form-action 'self'; frame-ancestors 'none'")


def create_app(settings: Optional[Settings] = None, embedder: Optional["Embedder"] = None) -> Flask:
    """The app for `settings` (default: from the `SIAMESE_*` environment variables).
    `embedder`: a model already loaded (tests, or several apps in one process sharing one)."""
    settings = Settings.from_env() if settings is None else settings
    app = Flask(__name__)
    app.url_map.converters["id"] = ItemIdConverter
    app.request_class = UploadRequest
    app.config.update(MAX_CONTENT_LENGTH=settings.max_request_bytes,
                      SIAMESE_MAX_IMAGE_BYTES=settings.max_image_bytes,
                      SIAMESE_BODY_TIMEOUT=settings.body_timeout,
                      MAX_FORM_MEMORY_SIZE=1_000_000, MAX_FORM_PARTS=2 * settings.max_batch + 20,
                      JSON_SORT_KEYS=False)
    app.json = JSONProvider(app)
    if settings.trusted_proxies:
        # Behind that many proxies, the client's address and scheme are theirs to say.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies,
                                x_proto=settings.trusted_proxies)
    app.before_request(_check_host)
    app.extensions[EXTENSION] = Service.load(settings, embedder)
    access.configure(app, settings)
    csrf.configure(app)
    app.url_value_preprocessor(take_gallery_name)
    app.url_defaults(keep_gallery_name)
    errors.register(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(api.health)
    app.register_blueprint(pages.bp)
    app.after_request(_security_headers)
    app.context_processor(_page_context)
    return app


class ItemIdConverter(BaseConverter):
    """`<id:item_id>`: an item id in ASCII digits. (Werkzeug's `int` matches any script's digits:
    `DELETE /api/gallery/٣` deleted item 3.)"""
    regex = ID_DIGITS

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value) -> str:
        return str(int(value))


def _check_host() -> None:
    """Answer only to this server's names (`Settings.host_allowed`), before any view runs: a page
    of another site whose name was rebound to this address would otherwise read and write as if
    it were this site."""
    host = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
    if not get_service().settings.host_allowed(host):
        raise BadRequest(f"this server does not answer to the host name {host[:100]!r}; its "
                         "operator can add it with --allowed-host")


def _switch_url(name: str) -> str:
    """This page in gallery `name` (an item's page: that gallery's browser); the default
    gallery's at its short URL."""
    gallery = None if name == next(iter(get_service().galleries)) else name
    endpoint = request.endpoint or ""
    if endpoint in ("pages.search_form", "pages.search", "pages.verify", "pages.browse",
                    "pages.add"):
        return url_for(endpoint if endpoint != "pages.search" else "pages.search_form",
                       gallery=gallery)
    return url_for("pages.browse", gallery=gallery)


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if response.mimetype == "text/html":
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


def _page_context() -> dict:
    service = get_service()
    try:
        served = current()
    except NotFoundError:  # the error page of a request for a gallery there is not
        served = service.default
    return {"model_id": served.embedder.model_id, "gallery_size": len(served.gallery),
            "gallery_name": served.name, "gallery_names": list(service.galleries),
            "switch_url": _switch_url, "signed_in": bool(session.get(access.SESSION_KEY)),
            "can_write": access.WRITE in access.granted(served.entry),
            "max_image_size": megabytes(service.settings.max_image_bytes),
            "max_image_bytes": service.settings.max_image_bytes, "endpoint": request.endpoint,
            "csrf_field": csrf.FIELD, "csrf_token": csrf.token,
            # What "same" means for this model (its card says): the pages' badges and "% same".
            "same_words": served.embedder.card.same}
