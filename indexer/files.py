"""Files that are either wholly old or wholly new: temp file, fsync, rename, fsync of the folder.

A reader never sees half a file, and a process killed at any moment leaves at worst a hidden
`.<name>.<pid>.tmp` file behind, which the next writer removes.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` to fill a temp file beside `path`, make it durable, then rename it over
    `path` (atomic on POSIX file systems)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data: Any) -> None:
    replace_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def remove_leftovers(folder: Path) -> None:
    """Delete temp files of writers that were killed (call only while holding the writer lock)."""
    for tmp in folder.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
