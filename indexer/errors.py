"""The gallery's errors, in the one family of `encoder.errors`, and what a failure of the storage
under a gallery (its disk, its database) is, for the API and the commands to report alike."""
from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Optional

import sqlalchemy.exc

from encoder.errors import SiameseSearchError


class GalleryError(SiameseSearchError):
    """A gallery is missing, locked by another writer, or its files do not belong together."""


class OriginalsUnavailable(GalleryError):
    """The store of original images (`indexer.originals`) could not be written or read."""


@dataclass(frozen=True)
class StorageFailure:
    """A failure of what a gallery is stored on, not of the request or of the code."""
    kind: str  # "disk_full", "database" (unreachable or unreadable) or "files" (read-only, I/O)
    detail: str  # what the system said, first line (it may name server paths: not for clients)


# The database's refusals of what it was given: a bug of ours, not a failure of the storage.
_REFUSALS = (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.DataError,
             sqlalchemy.exc.ProgrammingError)
_DISK_FULL_SQLSTATE = "53100"  # PostgreSQL's disk_full


def storage_failure(exc: BaseException) -> Optional[StorageFailure]:
    """What `exc` says about the storage, or None when it is something else (a bug)."""
    if isinstance(exc, OriginalsUnavailable):
        detail = str(exc)
        return StorageFailure("disk_full" if "No space left" in detail else "files", detail)
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and not isinstance(exc, _REFUSALS):
        detail = str(exc.orig if exc.orig is not None else exc).splitlines()[0]
        # SQLite says "database or disk is full"; PostgreSQL "could not extend file ...: No
        # space left on device", with its SQLSTATE
        full = ("full" in detail.lower() or "no space left" in detail.lower()
                or getattr(exc.orig, "sqlstate", None) == _DISK_FULL_SQLSTATE)
        return StorageFailure("disk_full" if full else "database", detail)
    if isinstance(exc, OSError):
        detail = (f"{exc.filename}: " if exc.filename else "") + str(exc.strerror or exc)
        if exc.errno == errno.ENOSPC:
            return StorageFailure("disk_full", detail)
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO):
            return StorageFailure("files", detail)
    return None
