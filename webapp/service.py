"""What an app serves: the model and the gallery, loaded once per process, and the per-request
accessor to them (flaskr's `get_db`, for a gallery).

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
from typing import TYPE_CHECKING, Optional

from flask import current_app, g

from .settings import Settings

if TYPE_CHECKING:
    from encoder import Embedder
    from indexer import Gallery

log = logging.getLogger(__name__)
EXTENSION = "siamese_search"


@dataclass
class Service:
    settings: Settings
    embedder: "Embedder"
    gallery: "Gallery"

    @classmethod
    def load(cls, settings: Settings, embedder: Optional["Embedder"] = None) -> "Service":
        """Load the model (unless one is given, already loaded) and open the gallery, checked."""
        from encoder import Embedder
        from indexer import Gallery

        path = settings.require_gallery()
        if embedder is None:
            limit_tensorflow_threads(settings.tf_threads)
            embedder = Embedder.load(settings.model_dir())
        gallery = Gallery.open(path, embedder, url=settings.db_url)
        log.debug("gallery %s: %d items, model %s, threshold %.4f", path, len(gallery),
                 embedder.model_id, gallery.threshold)
        return cls(settings, embedder, gallery)

    def close(self) -> None:
        self.gallery.close()


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


def get_gallery() -> "Gallery":
    """The app's gallery, caught up with changes made elsewhere (once per request)."""
    if "gallery" not in g:
        gallery = get_service().gallery
        gallery.refresh()
        g.gallery = gallery
    return g.gallery
