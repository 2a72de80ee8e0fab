"""What the gallery commands (siamese-index, siamese-search) share: model and gallery options."""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Optional

from webapp.settings import BUNDLED_MODEL


def add_gallery_arguments(p: argparse.ArgumentParser, served: bool = False) -> None:
    """--gallery, --model and --db-url; `served`: for the server, where the SIAMESE_* variables
    may give them instead (so none is required, and no default is laid over the variables)."""
    env = (lambda name: f" ({name})") if served else (lambda name: "")
    if served:
        p.add_argument("--gallery", action="append", metavar="[NAME=]PATH",
                       help="gallery folder (SIAMESE_GALLERY); repeat it to serve several, each "
                            "at /api/galleries/NAME/... (NAME: the folder's name if not given); "
                            "the first is also served at /api/...")
    else:
        p.add_argument("--gallery", required=True, metavar="PATH",
                       help="gallery folder (gallery.json, gallery.db, index.faiss, ...)")
    first = " (of the first gallery, when several are served)" if served else ""
    p.add_argument("--model", metavar="DIR",
                   help="model directory; must be the one the gallery was embedded with"
                        + env("SIAMESE_MODEL") + " (default: that one, which the gallery "
                        f"remembers; for a new gallery {BUNDLED_MODEL})" + first)
    if served:
        p.add_argument("--db-url", metavar="URL",
                       help="SQLAlchemy URL of the gallery's metadata, if not PATH/gallery.db "
                            "(e.g. postgresql+psycopg://user@host/db)" + env("SIAMESE_DB_URL")
                            + first + "; another gallery's in SIAMESE_DB_URL_<NAME>")
    else:
        add_db_url_argument(p)


def add_db_url_argument(p: argparse.ArgumentParser, more: str = "") -> None:
    """--db-url for the commands, SIAMESE_DB_URL by default, as for siamese-serve (a password
    is better kept out of the command line, which other users of the machine can see)."""
    p.add_argument("--db-url", metavar="URL", default=os.environ.get("SIAMESE_DB_URL") or None,
                   help="SQLAlchemy URL of the gallery's metadata, if not in the gallery's "
                        "folder (e.g. postgresql+psycopg://user@host/db; default: "
                        "SIAMESE_DB_URL)" + more)


def quiet_faiss() -> None:
    """FAISS logs which CPU build it loads at INFO: noise for users. Call before importing it."""
    logging.getLogger("faiss").setLevel(logging.WARNING)


def load_embedder(model: Optional[str], gallery: Optional[str] = None):
    """The model named, else the one the gallery remembers, else the bundled one; loaded once,
    with a hint when no model was named and none is found."""
    from encoder import Embedder

    return _loaded(Embedder.load, model, gallery)


def load_model_card(model: Optional[str], gallery: Optional[str] = None):
    """The card of the model `load_embedder` would load, without loading the model."""
    from encoder.artifact import load_card

    return _loaded(load_card, model, gallery)


def _loaded(load, model: Optional[str], gallery: Optional[str]):
    from encoder.errors import ModelError
    from indexer.folder import model_dir

    given = None if model is None else Path(model)
    if gallery is None:
        path = given or BUNDLED_MODEL
    else:
        path = model_dir(Path(gallery), given, BUNDLED_MODEL)
    try:
        return load(path)
    except ModelError as exc:
        if model is None:
            raise ModelError(f"{exc}; pass --model DIR (a model directory written by "
                             "siamese-train)") from None
        raise
