"""A gallery in one file, and back: `export` writes every item (id, label, metadata, source,
original image bytes, embedding) and the gallery's settings to a zip; `restore` makes a new
gallery from one, with the same ids. `check` says whether a gallery's files are whole.

The zip holds `export.json` (the settings and one record per item, in id order), the original
images as `images/<sha256>`, and `embeddings.npy` (float32, one row per item, in that order).
"""
from __future__ import annotations

import datetime as dt
import io
import json
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import sqlalchemy.exc

from encoder.calibration import OPERATING_POINTS
from encoder.errors import ConfigError, ModelMismatchError
from encoder.images import Preprocessing
from encoder.verdict import check_fpir, check_threshold

from . import folder
from .errors import GalleryError
from .files import replace_atomically
from .gallery import MAX_ID, Gallery
from .originals import discard
from .originals import normalise as normalise_originals
from .records import MAX_LABEL_LENGTH, Original, check_metadata, check_text
from .store import SCHEMA_VERSION, GalleryRecord
from .vectors import IndexSpec, VectorIndex

EXPORT_FORMAT = 1
MANIFEST = "export.json"
EMBEDDINGS = "embeddings.npy"
BATCH = 500  # items read or written at a time


def export(gallery: Gallery, file: Path, progress=None) -> int:
    """Write `gallery` to the zip `file` (replaced atomically); returns the number of items.
    `progress`: an object with `update(n)` (e.g. tqdm)."""
    record = gallery.record
    items, vectors = [], []

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w") as zf:
            offset = 0
            while batch := gallery.items(offset, BATCH):
                _, rows = gallery.embeddings([i.id for i in batch])
                for item, vector in zip(batch, rows):
                    data, _ = gallery.image(item.id)
                    # One item per image (adds are deduplicated by sha256); stored as it is.
                    zf.writestr(f"images/{item.sha256}", data)
                    items.append(item.to_dict())
                    vectors.append(vector)
                offset += len(batch)
                if progress is not None:
                    progress.update(len(batch))
            buffer = io.BytesIO()
            np.save(buffer, np.asarray(vectors, np.float32).reshape(-1, record.embedding_dim))
            zf.writestr(EMBEDDINGS, buffer.getvalue())
            zf.writestr(MANIFEST, json.dumps({
                "format": EXPORT_FORMAT, "model_id": record.model_id,
                "embedding_dim": record.embedding_dim, "index": record.index,
                "operating_point": record.operating_point, "threshold": record.threshold,
                "fpir": record.fpir, "exported": dt.datetime.now(dt.timezone.utc).isoformat(),
                "items": items}, indent=1), compress_type=zipfile.ZIP_DEFLATED)

    with gallery.writing():  # one consistent state: no other writer while it is read
        replace_atomically(Path(file), write)
    return len(items)


def restore(file: Path, path: Path, embedder, reembed: bool = False, progress=None,
            url: Optional[str] = None, originals: Optional[str] = None) -> Gallery:
    """A new gallery at `path` holding the export in `file`, with the same ids, labels,
    metadata, sources and images. The embeddings are the export's when it was made with
    `embedder`'s model; another model is refused unless `reembed`, which embeds the images anew.
    `url` and `originals` as for `Gallery.create`: the database (else SQLite in the folder) and
    where the original images go (else the database). Built beside `path` and renamed into
    place: a failure leaves nothing at `path`, no tables at `url` and no images in `originals`."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise GalleryError(f"{path}: already exists; restore into a new folder")
    try:
        zf = zipfile.ZipFile(file)
    except (OSError, zipfile.BadZipFile) as exc:
        raise GalleryError(f"{file}: not a gallery export ({exc})") from None
    with zf:
        manifest = _manifest(zf, file)
        if manifest["model_id"] != embedder.model_id and not reembed:
            raise ModelMismatchError(
                f"{file} was embedded with model {manifest['model_id']}, not {embedder.model_id}; "
                "restore it with that model, or re-embed its images with this one (--reembed)")
        building = path.with_name(f".{path.name}.restoring")
        shutil.rmtree(building, ignore_errors=True)
        try:
            _fill(zf, manifest, building, embedder, reembed, progress, url,
                  normalise_originals(originals))
            building.rename(path)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
    return Gallery.open(path, embedder, url=url)


def _manifest(zf: zipfile.ZipFile, file: Path) -> dict[str, Any]:
    """The export's manifest, every field checked as the API checks what it stores (an archive
    is input like any other: a forged one is refused whole, before anything is made)."""
    try:
        info = zf.getinfo(MANIFEST)
        if info.file_size > MAX_MANIFEST_BYTES:
            raise ValueError(f"{MANIFEST} is {info.file_size:,} bytes, over the "
                             f"{MAX_MANIFEST_BYTES:,} limit")
        manifest = json.loads(zf.read(MANIFEST), parse_constant=_no_constant)
        if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT or \
                not isinstance(manifest.get("items"), list):
            raise ValueError(f"no format {EXPORT_FORMAT} manifest with a list of items")
    except (KeyError, ValueError, RecursionError, zipfile.BadZipFile, OSError) as exc:
        raise GalleryError(f"{file}: not a gallery export of format {EXPORT_FORMAT} "
                           f"({type(exc).__name__}: {exc})") from None
    try:
        _check_manifest(manifest)
    except (ConfigError, ValueError, TypeError) as exc:
        raise GalleryError(f"{file}: the export is not valid: {exc}") from None
    return manifest


MAX_MANIFEST_BYTES = 2_000_000_000  # export.json, unpacked: ~100,000 items of the largest metadata


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _check_manifest(manifest: dict) -> None:
    """Each setting and each item's fields, with the messages the API gives (ConfigError)."""
    if not isinstance(manifest.get("model_id"), str):
        raise ConfigError("model_id must be text")
    dim = manifest.get("embedding_dim")
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= 65_536:
        raise ConfigError(f"embedding_dim must be an integer from 1 to 65536, not {dim!r}")
    IndexSpec.parse(_text(manifest.get("index") or "flat", "index"))
    if manifest.get("threshold") is not None:
        check_threshold(manifest["threshold"])
    if manifest.get("fpir") is not None:
        check_fpir(manifest["fpir"])
    point = manifest.get("operating_point")
    if point is not None and point not in OPERATING_POINTS:
        raise ConfigError(f"operating_point must be one of {', '.join(OPERATING_POINTS)}, "
                          f"not {point!r}")
    seen_ids: set[int] = set()
    for n, item in enumerate(manifest["items"]):
        where = f"item {n + 1} of the manifest"
        if not isinstance(item, dict):
            raise ConfigError(f"{where} must be an object, not {type(item).__name__}")
        item_id = item.get("id")
        if isinstance(item_id, bool) or not isinstance(item_id, int) or \
                not 1 <= item_id <= MAX_ID:
            raise ConfigError(f"{where}: id must be an integer from 1 to {MAX_ID}, not "
                              f"{str(item_id)[:40]!r}")
        if item_id in seen_ids:
            raise ConfigError(f"{where}: id {item_id} is there twice")
        seen_ids.add(item_id)
        where = f"item {item_id}"
        sha = item.get("sha256")
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise ConfigError(f"{where}: sha256 must be 64 lower-case hex digits")
        label = item.get("label")
        if label is not None:
            check_text(f"{where}: label", _text(label, f"{where}: label"), MAX_LABEL_LENGTH)
        if item.get("source") is not None:
            check_text(f"{where}: source", _text(item["source"], f"{where}: source"), 1000)
        try:
            check_metadata(item.get("metadata") or {})
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        try:
            added = dt.datetime.fromisoformat(_text(item.get("added"), f"{where}: added"))
        except ValueError:
            raise ConfigError(f"{where}: added must be an ISO date and time, not "
                              f"{str(item.get('added'))[:40]!r}") from None
        if added.tzinfo is None:
            raise ConfigError(f"{where}: added must say its time zone")


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be text, not {type(value).__name__}")
    return value


def _embeddings(zf: zipfile.ZipFile, rows: int, dim: int) -> np.ndarray:
    """The export's embeddings, their header read first: a float32 (rows, dim) array whose data
    is all there, or GalleryError (a forged header once claimed 256e9 floats, 954 GiB)."""
    try:
        info = zf.getinfo(EMBEDDINGS)
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
            if shape != (rows, dim) or dtype != np.dtype("<f4") or fortran:
                raise ValueError(f"{EMBEDDINGS} holds {dtype} {shape}, not float32 "
                                 f"({rows}, {dim}) for the manifest's items")
            data = f.read(rows * dim * 4 + 1)
        if len(data) != rows * dim * 4:
            raise ValueError(f"{EMBEDDINGS} is cut short or too long")
        return np.frombuffer(data, "<f4").reshape(rows, dim)
    except KeyError:
        raise GalleryError(f"the export has no {EMBEDDINGS}") from None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise GalleryError(f"the export's embeddings cannot be read: {exc}") from None


# An export's embedding may differ from its image's, embedded again here, by float noise only
# (other CPUs, other batch sizes); more, and it was not made from that image.
EMBEDDING_TOLERANCE = 1e-3


def _fill(zf: zipfile.ZipFile, manifest: dict, path: Path, embedder, reembed: bool,
          progress, url: Optional[str], originals: Optional[str]) -> None:
    """Make the gallery folder at `path` and store the export's items in one transaction; on a
    failure, drop what it made in an external database and originals store."""
    items = manifest["items"]
    vectors = None if reembed else _embeddings(zf, len(items), embedder.embedding_dim)
    spec = IndexSpec.parse(manifest.get("index") or "flat")
    ids = [int(item["id"]) for item in items]
    record = GalleryRecord(
        gallery_id=folder.new_gallery_id(), schema=SCHEMA_VERSION, model_id=embedder.model_id,
        embedding_dim=embedder.embedding_dim, index=str(spec), threshold=manifest.get("threshold"),
        generation=1, next_id=max(ids, default=0) + 1, created=dt.datetime.now(dt.timezone.utc),
        operating_point=manifest.get("operating_point"), fpir=manifest.get("fpir"),
        originals=originals)
    store = folder.make(path, url, record, embedder.directory)
    written: list[str] = []  # images put in the originals store
    try:
        with store.write() as conn:
            for start in range(0, len(items), BATCH):
                batch = items[start:start + BATCH]
                images = [_original(zf, item, embedder.card.preprocessing) for item in batch]
                pixels = embedder.prepare([o.image for o in images])
                # Embedded and domain-checked again from the images, as enrolment does, never
                # taken on the export's word: its embeddings are kept (bit for bit) only where
                # they agree.
                rows, scores = embedder.embed_and_score_prepared(pixels)
                if vectors is not None:
                    given = vectors[start:start + len(batch)]
                    off = np.linalg.norm(given - rows, axis=1)
                    if off.max() > EMBEDDING_TOLERANCE:
                        bad = batch[int(off.argmax())]
                        raise GalleryError(
                            f"the export's embedding of item {bad['id']} is not its image's "
                            f"(distance {off.max():.4f}): the export was altered; nothing imported")
                    rows = given
                written += [o.sha256 for o in images]
                store.insert(conn, [int(i["id"]) for i in batch], images,
                             [i.get("label") for i in batch],
                             [i.get("metadata") or {} for i in batch], rows,
                             [dt.datetime.fromisoformat(i["added"]) for i in batch], scores)
                if progress is not None:
                    progress.update(len(batch))
        with store.read() as conn:
            all_ids, all_vectors = store.embeddings(conn, embedder.embedding_dim)
        VectorIndex.build(spec, embedder.embedding_dim, all_ids, all_vectors).save(
            path, {"gallery_id": record.gallery_id, "model_id": record.model_id,
                   "generation": record.generation})
    except BaseException:
        if url is not None:
            store.drop()  # the tables this restore made (a database that held a gallery refused)
        discard(store.originals_store, written)
        raise
    finally:
        store.close()


def _original(zf: zipfile.ZipFile, item: dict, pre: Preprocessing) -> Original:
    try:
        data = zf.read(f"images/{item['sha256']}")
    except KeyError:
        raise GalleryError(f"the export lacks the image of item {item.get('id')}") from None
    original = Original.from_bytes(data, item.get("source") or f"item {item['id']}", pre=pre)
    if original.sha256 != item["sha256"]:
        raise GalleryError(f"the image of item {item['id']} is damaged in the export")
    return original


def check(path: Path, url: Optional[str] = None) -> list[str]:
    """What is wrong with the gallery's database, in words; empty when it is whole: the
    database's own check (SQLite: `integrity_check`, which reads every page) and every item's
    embedding. Needs no model. (The index file is rebuilt or caught up on open: `index_state`.)"""
    try:
        store, record = folder.connect(Path(path), url)
    except sqlalchemy.exc.DBAPIError as exc:
        return [f"database: {str(exc.orig).splitlines()[0]}"]
    problems = []
    try:
        if store.engine.dialect.name == "sqlite":
            with store.engine.connect() as conn:
                rows = [r[0] for r in conn.exec_driver_sql("PRAGMA integrity_check").fetchall()]
            if rows != ["ok"]:
                problems += [f"database: {r}" for r in rows[:20]]
        with store.read() as conn:
            store.embeddings(conn, record.embedding_dim)
    except GalleryError as exc:
        problems.append(str(exc))
    except sqlalchemy.exc.DBAPIError as exc:
        problems.append(f"database: {str(exc.orig).splitlines()[0]}")
    finally:
        store.close()
    return problems


def index_state(path: Path, url: Optional[str] = None) -> Optional[str]:
    """Why the gallery's index file is not current (opening rebuilds or catches it up), or None."""
    store, record = folder.connect(Path(path), url)
    store.close()
    _, manifest, why = VectorIndex.load(Path(path), {
        "gallery_id": record.gallery_id, "model_id": record.model_id,
        "spec": str(IndexSpec.parse(record.index)), "dim": record.embedding_dim})
    if why:
        return why
    if manifest.get("generation") != record.generation:
        return (f"it reflects generation {manifest.get('generation')}, the database "
                f"{record.generation}")
    return None
