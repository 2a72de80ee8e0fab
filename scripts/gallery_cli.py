"""What the gallery commands (siamese-index, siamese-search) share: model and gallery options."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from webapp.settings import DEFAULT_MODEL


def add_gallery_arguments(p: argparse.ArgumentParser, served: bool = False) -> None:
    """--gallery, --model and --db-url; `served`: for the server, where the SIAMESE_* variables
    may give them instead (so none is required, and no default is laid over the variables)."""
    env = (lambda name: f" ({name})") if served else (lambda name: "")
    p.add_argument("--gallery", required=not served, metavar="PATH",
                   help="gallery folder (gallery.json, gallery.db, index.faiss, ...)"
                        + env("SIAMESE_GALLERY"))
    p.add_argument("--model", default=None if served else DEFAULT_MODEL, metavar="DIR",
                   help="model directory; must be the one the gallery was built with"
                        + env("SIAMESE_MODEL") + f" (default: {DEFAULT_MODEL})")
    p.add_argument("--db-url", metavar="URL",
                   help="SQLAlchemy URL of the gallery's metadata, if not PATH/gallery.db "
                        "(e.g. postgresql://user@host/db)" + env("SIAMESE_DB_URL"))


def quiet_faiss() -> None:
    """FAISS logs which CPU build it loads at INFO: noise for users. Call before importing it."""
    logging.getLogger("faiss").setLevel(logging.WARNING)


def load_embedder(model: str):
    """The model, loaded once, with a hint when the default model is missing."""
    from encoder import Embedder
    from encoder.errors import ModelError

    try:
        return Embedder.load(model)
    except ModelError as exc:
        if model == DEFAULT_MODEL and not Path(model).exists():
            raise ModelError(f"{exc}; pass --model DIR (a model directory written by "
                             "siamese-train)") from None
        raise
