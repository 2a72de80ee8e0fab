"""The gallery folder: what is in it, how one is made, and how an existing one is opened and
checked. `Gallery` (gallery.py) works on what `make` and `connect` return.

A gallery is a folder:

    gallery.json    what this folder is: format, gallery id, where the database is, and the
                    model directory it was embedded with (used when no model is named)
    gallery.db      the metadata store (SQLite; or any SQLAlchemy URL, see `store`)
    index.faiss     the vector index, replaced atomically ...
    index.json      ... beside its manifest: gallery id, model id, database generation, checksum
    gallery.lock    held (flock) by the one process writing at a time
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Union

from encoder.errors import ConfigError, ModelMismatchError, NotFoundError

from .errors import GalleryError
from .files import fsync_folder, write_json
from .store import SCHEMA_VERSION, GalleryRecord, Store

log = logging.getLogger(__name__)

GALLERY_FILE = "gallery.json"
DATABASE_FILE = "gallery.db"
LOCK_FILE = "gallery.lock"
GALLERY_FORMAT = 1
EXTERNAL = "external"  # gallery.json "database" value when the metadata lives at another URL


def new_gallery_id() -> str:
    """A gallery's id (in gallery.json, the database and the index manifest, which must agree)."""
    return str(uuid.uuid4())


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of the folder's own database; read-only (`immutable`: nothing can change
    it) when the folder cannot be written, e.g. a read-only mount, where SQLite could not even
    open it for reading otherwise (its write-ahead log needs a file beside it)."""
    database = (path / DATABASE_FILE).resolve()
    if path.is_dir() and not os.access(path, os.W_OK):
        return f"sqlite:///file:{database}?mode=ro&immutable=1&uri=true"
    return f"sqlite:///{database}"


def make(path: Path, url: Optional[str], record: GalleryRecord,
         model_dir: Optional[Path] = None) -> Store:
    """A new gallery folder at `path` (which must not exist or be empty) with its database (at
    `url`, else the folder's own) holding `record`; `model_dir`: the model's directory, if known.

    The folder is made whole beside `path` and renamed into place, so a process killed meanwhile
    leaves no half gallery at `path`, only a hidden `.NAME.creating.PID` folder that the next
    `make` removes. Its gallery.json is written before the database's tables, so that with a
    database at `url` the next `make` also knows the tables a killed one left there (still empty)
    as its own, and drops them."""
    if (path / GALLERY_FILE).exists():
        raise GalleryError(f"{path}: already a gallery; open it instead")
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise GalleryError(f"{path}: not a gallery, and not an empty folder to make one in")
    path.parent.mkdir(parents=True, exist_ok=True)
    abandoned = _remove_abandoned(path)
    with _built_beside(path) as building:
        _write_marker(building, record.gallery_id, external=url is not None, model_dir=model_dir)
        store = Store(url or sqlite_url(building))
        try:
            if url is not None:
                _drop_abandoned(store, abandoned)
            store.initialise(record)
        finally:
            store.close()
    store = Store(url or sqlite_url(path))
    store.use_originals(record)
    return store


@contextmanager
def _built_beside(path: Path) -> Iterator[Path]:
    """A hidden `.NAME.creating.PID` folder beside `path` to fill, renamed to `path` (atomic;
    it takes the place of an empty folder too) when the block ends, removed if it fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    building = path.with_name(f".{path.name}.creating.{os.getpid()}")
    building.mkdir()
    try:
        yield building
        os.rename(building, path)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    fsync_folder(path.parent)


def _write_marker(folder: Path, gallery_id: str, external: bool,
                  model_dir: Optional[Path] = None) -> None:
    write_json(folder / GALLERY_FILE, {
        "format": GALLERY_FORMAT, "gallery_id": gallery_id,
        "database": EXTERNAL if external else DATABASE_FILE,
        **({"model": str(model_dir)} if model_dir else {})})


def _remove_abandoned(path: Path) -> set[str]:
    """Remove what `make`s killed before they finished left beside `path`; the ids of the
    galleries they were making."""
    ids = set()
    for leftover in path.parent.glob(f".{path.name}.creating.*"):
        pid = leftover.name.rsplit(".", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            try:
                ids.add(json.loads((leftover / GALLERY_FILE).read_text())["gallery_id"])
            except (OSError, ValueError, KeyError, TypeError):
                pass
            shutil.rmtree(leftover, ignore_errors=True)
    return ids


def _drop_abandoned(store: Store, abandoned: set[str]) -> None:
    """Drop the tables of a gallery that a killed `make` began in this database: only when they
    are that gallery's and it never got a change (generation 0)."""
    if not abandoned or not store.has_gallery():
        return
    with store.read() as conn:
        record = store.record(conn)
    if record.gallery_id in abandoned and record.generation == 0:
        store.drop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def remember_model(path: Path, model_dir: Optional[Path]) -> None:
    """Record in gallery.json the model directory the gallery is now embedded with."""
    if model_dir is None:
        return
    info = json.loads((path / GALLERY_FILE).read_text())
    write_json(path / GALLERY_FILE, {**info, "model": str(model_dir)})


def model_dir(path: Path, given: Optional[Path], default: Path) -> Path:
    """The model to use with the gallery at `path`: the one `given`, else the directory the
    gallery was embedded with (if gallery.json names one that still exists), else `default`."""
    if given is not None:
        return Path(given)
    try:
        remembered = json.loads((path / GALLERY_FILE).read_text()).get("model")
    except (OSError, ValueError, AttributeError):
        remembered = None
    if remembered and Path(remembered).is_dir():
        return Path(remembered)
    return default


def attach(path: Path, url: str) -> None:
    """Make `path` (absent or an empty folder) a local folder of the gallery held by the database
    at `url`: how a second server on another host serves a gallery it shares through PostgreSQL.
    Its index is built from the database when the gallery is opened."""
    store = Store(url)
    try:
        where = store.engine.url.render_as_string(hide_password=True)
        if not store.has_gallery():
            raise NotFoundError(f"{path}: no such gallery, and the database {where} holds none")
        with store.read() as conn:
            gallery_id = store.record(conn).gallery_id
    finally:
        store.close()
    with _built_beside(path) as building:
        _write_marker(building, gallery_id, external=True)
    log.info("%s: made a local folder for the gallery in %s", path, where)


def connect(path: Path, url: Optional[str]) -> tuple[Store, GalleryRecord]:
    """The store of the gallery at `path` and its record, checked to be a gallery and to belong to
    this folder; an older database schema is upgraded. With a database `url` and no folder yet
    (absent or empty), the folder is made (`attach`)."""
    if url is not None and (not path.exists() or (path.is_dir() and not any(path.iterdir()))):
        attach(path, url)
    if not path.exists():
        raise NotFoundError(f"{path}: no such gallery")
    marker = path / GALLERY_FILE
    if not path.is_dir() or not marker.is_file():
        raise GalleryError(f"{path}: not a gallery (a gallery is a folder with {GALLERY_FILE}, "
                           "made by siamese-index or Gallery.create)")
    try:
        info = json.loads(marker.read_text())
        gallery_id, database = info["gallery_id"], info["database"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GalleryError(f"{marker}: unreadable or incomplete ({exc})") from None
    if database == EXTERNAL and url is None:
        raise ConfigError(f"{path}: this gallery keeps its metadata in an external database; "
                          "give its SQLAlchemy URL (--db-url)")
    store = Store(url or sqlite_url(path))
    where = store.engine.url.render_as_string(hide_password=True)
    if not store.has_gallery():
        store.close()
        raise GalleryError(f"{path}: its database {where} holds no gallery")
    store.upgrade()
    with store.read() as conn:
        record = store.record(conn)
    store.use_originals(record)
    if record.gallery_id != gallery_id or record.schema != SCHEMA_VERSION:
        store.close()
        raise GalleryError(f"{path}: {GALLERY_FILE} and the database {where} belong to different "
                           "galleries (or database schema versions)")
    return store, record


def gallery_model_id(path: Union[str, Path], url: Optional[str] = None) -> str:
    """The id of the model the gallery at `path` was embedded with, read without a model (and
    without TensorFlow): for a program deciding whether a gallery needs `reembed`."""
    store, record = connect(Path(path), url)
    store.close()
    return record.model_id


def check_model(path: Path, built_with: str, given: str) -> None:
    """Refuse a model other than the one the gallery at `path` was embedded with."""
    if built_with != given:
        raise ModelMismatchError(
            f"{path}: this gallery was built with model {built_with}, but the model given is "
            f"{given}; use the gallery's model, or re-embed the gallery with the new one: "
            f"siamese-index --gallery {path} --model NEW_MODEL --reembed")
