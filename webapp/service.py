"""What an app serves: its galleries and their models, loaded once per process, and the
per-request accessors to the one a request addresses (flaskr's `get_db`, for a gallery).

Each request that touches the gallery calls `get_gallery()` once; it asks the gallery to
`refresh()`, which reads the gallery's generation (`Store.current_generation`; the whole refresh
measured 15 us on SQLite) and does more only when it moved, so an item added or removed by
another worker or by `siamese-index` shows up at the next request.

A worker closes its service when it exits (gunicorn's `worker_exit`, in `server.py`): the index is
saved if it has unsaved changes and the database connections are closed, so SQLite folds its
write-ahead log back into gallery.db.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from flask import current_app, g

from encoder.errors import NotFoundError

from .settings import GalleryEntry, Settings

if TYPE_CHECKING:
    from encoder import Embedder
    from indexer import Gallery

log = logging.getLogger(__name__)
EXTENSION = "siamese_search"


@dataclass
class Served:
    """One gallery as a process serves it: its entry (name, keys), its model, its gallery."""

    entry: GalleryEntry
    embedder: "Embedder"
    gallery: "Gallery"

    @property
    def name(self) -> str:
        return self.entry.name


@dataclass
class Service:
    settings: Settings
    galleries: dict[str, Served]  # by name, in the order given: the first is the default

    @classmethod
    def load(cls, settings: Settings, embedder: Optional["Embedder"] = None) -> "Service":
        """Load the models (each once, however many galleries use it; `embedder`, already
        loaded, for the galleries of its model directory, or for the first) and open the
        galleries, checked. A gallery that fails to open closes the ones opened before it."""
        from encoder import Embedder
        from indexer import Gallery

        entries = settings.gallery_entries
        models: dict[Path, "Embedder"] = {}
        if embedder is not None:
            models[(embedder.directory or entries[0].model_dir()).resolve()] = embedder
        galleries: dict[str, Served] = {}
        try:
            for entry in entries:
                where = entry.model_dir().resolve()
                if where not in models:
                    limit_tensorflow_threads(settings.tf_threads)
                    models[where] = Embedder.load(where, lite=True)
                gallery = Gallery.open(entry.path, models[where], url=entry.db_url)
                galleries[entry.name] = Served(entry, models[where], gallery)
                log.debug("gallery %s (%s): %d items, model %s", entry.name, entry.path,
                          len(gallery), models[where].model_id)
        except BaseException:
            for served in galleries.values():
                served.gallery.close()
            raise
        return cls(settings, galleries)

    @property
    def default(self) -> Served:
        return next(iter(self.galleries.values()))

    def served(self, name: Optional[str]) -> Served:
        """The gallery called `name` (None: the default), or NotFoundError naming those there are."""
        if name is None:
            return self.default
        if name not in self.galleries:
            raise NotFoundError(f"no gallery named {name!r} here; this server has "
                                + ", ".join(self.galleries))
        return self.galleries[name]

    def close(self) -> None:
        for served in self.galleries.values():
            served.gallery.close()


def limit_tensorflow_threads(threads: int) -> None:
    """One request embeds one image: more TensorFlow threads only fight the other workers for the
    cores. Works only before TensorFlow's first operation in this process; later it is left be."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        log.debug("TensorFlow already initialised; its thread counts stay as they are")


def get_service() -> Service:
    return current_app.extensions[EXTENSION]


def current() -> Served:
    """The gallery this request addresses: named in its URL (`/api/galleries/NAME/...`,
    `/galleries/NAME/...`; put in `g.gallery_name` by `take_gallery_name`), else the default."""
    return get_service().served(g.get("gallery_name"))


def get_gallery() -> "Gallery":
    """The request's gallery (`current`), caught up with changes made elsewhere (once per
    request)."""
    if "gallery" not in g:
        gallery = current().gallery
        gallery.refresh()
        g.gallery = gallery
    return g.gallery


def get_embedder() -> "Embedder":
    """The model of the request's gallery."""
    return current().embedder


class gallery_routes:
    """Route decorators that serve a view for the default gallery at its rule and for each
    gallery by name under `/galleries/<gallery>` (`@route.get("/search")` gives `/search` and
    `/galleries/<gallery>/search`). `url_for` picks the named rule when given `gallery`, and
    `app.url_defaults` (`keep_gallery_name`) gives it the request's own, so links stay in the
    gallery the page is about."""

    def __init__(self, blueprint):
        self.blueprint = blueprint

    def route(self, rule: str, **options):
        def register(view):
            self.blueprint.add_url_rule(rule, view_func=view, **options)
            self.blueprint.add_url_rule("/galleries/<gallery>" + rule, view_func=view, **options)
            return view

        return register

    def get(self, rule: str, **options):
        return self.route(rule, methods=["GET"], **options)

    def post(self, rule: str, **options):
        return self.route(rule, methods=["POST"], **options)

    def delete(self, rule: str, **options):
        return self.route(rule, methods=["DELETE"], **options)


def take_gallery_name(endpoint: Optional[str], values: Optional[dict]) -> None:
    """`app.url_value_preprocessor`: the gallery named in the URL goes to `g`, not to the view."""
    if values and "gallery" in values:
        g.gallery_name = values.pop("gallery")


def keep_gallery_name(endpoint: str, values: dict) -> None:
    """`app.url_defaults`: links built while serving a named gallery name it too (pass
    `gallery=None` for the default gallery's own URL)."""
    name = g.get("gallery_name")
    if (name is not None and "gallery" not in values and name in get_service().galleries
            and current_app.url_map.is_endpoint_expecting(endpoint, "gallery")):
        values["gallery"] = name
