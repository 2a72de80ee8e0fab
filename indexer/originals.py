"""Where a gallery keeps its original image bytes: in its database (the default), or outside it,
content-addressed by sha256, the database keeping only the key:

- a folder (`/srv/originals`, or `file:///srv/originals`): `ab/cdef...` files, each written to a
  temporary file and renamed into place;
- any fsspec URL (`s3://bucket/prefix` with s3fs installed, `gcs://...`, `memory://...`), for
  servers on several hosts that share the bytes.

An object is written before the database transaction that refers to it commits, so an
unreachable store refuses the add and leaves the database unchanged; it is removed after the
transaction that deleted its item commits (a failure then is logged: the object is orphaned, never
a dangling key).
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Optional, Protocol

from encoder.errors import ConfigError

from .errors import OriginalsUnavailable

log = logging.getLogger(__name__)


class Originals(Protocol):
    location: str

    def put(self, sha256: str, data: bytes) -> None: ...

    def get(self, sha256: str) -> bytes: ...

    def delete(self, sha256: str) -> None: ...


def _key(sha256: str) -> str:
    return f"{sha256[:2]}/{sha256}"


class FolderOriginals:
    """Originals in a local (or mounted) folder: `root/GALLERY_ID/ab/abcdef...`."""

    def __init__(self, root: Path, gallery_id: str):
        self.root = Path(root) / gallery_id
        self.location = str(root)

    def put(self, sha256: str, data: bytes) -> None:
        path = self.root / _key(sha256)
        if path.exists():
            return  # content-addressed: the same bytes
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise _unreachable(self.location, exc) from None

    def get(self, sha256: str) -> bytes:
        try:
            return (self.root / _key(sha256)).read_bytes()
        except OSError as exc:
            raise _unreachable(self.location, exc) from None

    def delete(self, sha256: str) -> None:
        (self.root / _key(sha256)).unlink(missing_ok=True)


class FsspecOriginals:
    """Originals behind an fsspec URL (S3 and friends)."""

    def __init__(self, url: str, gallery_id: str = ""):
        try:
            import fsspec
        except ImportError:
            raise ConfigError(f"originals at {url} need fsspec (and the filesystem's own package, "
                              "e.g. s3fs): pip install 'siamese-search[s3]'") from None
        try:
            self.fs, root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:
            raise ConfigError(f"originals at {url}: {exc}") from None
        self.prefix = f"{root.rstrip('/')}/{gallery_id}" if gallery_id else root.rstrip("/")
        self.location = url

    def put(self, sha256: str, data: bytes) -> None:
        try:
            self.fs.pipe_file(f"{self.prefix}/{_key(sha256)}", data)
        except Exception as exc:  # each filesystem raises its own; all mean "not stored"
            raise _unreachable(self.location, exc) from None

    def get(self, sha256: str) -> bytes:
        try:
            return self.fs.cat_file(f"{self.prefix}/{_key(sha256)}")
        except Exception as exc:
            raise _unreachable(self.location, exc) from None

    def delete(self, sha256: str) -> None:
        self.fs.rm_file(f"{self.prefix}/{_key(sha256)}")


def _unreachable(location: str, exc: BaseException) -> OriginalsUnavailable:
    what = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return OriginalsUnavailable(f"the originals store {location} cannot be reached: {what}")


def open_originals(location: Optional[str], gallery_id: str) -> Optional[Originals]:
    """The store a gallery's record names (None: the originals are in its database). Each
    gallery keeps its objects under its own id, so galleries may share a location."""
    if not location:
        return None
    if location.startswith("file://"):
        return FolderOriginals(Path(location[len("file://"):]), gallery_id)
    if "://" in location:
        return FsspecOriginals(location, gallery_id)
    return FolderOriginals(Path(location), gallery_id)


def normalise(location: Optional[str]) -> Optional[str]:
    """`location` as the record keeps it: a local folder made absolute (and created), a URL as
    given."""
    if not location:
        return None
    if "://" in location and not location.startswith("file://"):
        FsspecOriginals(location)  # checks the URL and its package now, not at the first add
        return location
    folder = Path(location[len("file://"):] if location.startswith("file://") else location)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"originals folder {folder}: {exc.strerror}") from None
    return str(folder.resolve())


def discard(store: Optional[Originals], hashes: list[str]) -> None:
    """Remove objects whose items were deleted (after that commit); failures are logged."""
    for sha256 in hashes if store is not None else ():
        try:
            store.delete(sha256)
        except Exception as exc:
            log.warning("originals store %s: %s could not be removed (%s); it is orphaned",
                        store.location, sha256, exc)
