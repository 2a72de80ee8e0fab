"""Adding uploaded files to a gallery from the pages: single images, several at once, or zip
files of them, each file reported (added, already there, or why not).

A zip is read in memory and never unpacked to disk, so no name in it can reach outside the
gallery; names that try to (absolute, `..`) are reported and skipped all the same, and so are
folders, hidden files and zips inside the zip. Its members are bounded one by one (the image size
limit, read with a bound whatever the header claims) and in all (`MAX_MEMBERS`, `MAX_UNPACKED`),
so a zip bomb costs a bounded read and a line in the report.
"""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Iterator, Optional

from encoder.errors import BadImageError
from encoder.images import is_image_name, megabytes
from indexer import Gallery
from indexer.gallery import FEATURELESS_WARNING, OUT_OF_DOMAIN_WARNING
from indexer.records import Original

MAX_MEMBERS = 2_000  # entries looked at in one zip
MAX_UNPACKED = 1_000_000_000  # bytes unpacked from one upload's zips, in all
BATCH = 8  # images added at a time: a batch holds their bytes (each up to the image limit)


@dataclass
class Outcome:
    """What became of one uploaded file (or zip member)."""

    name: str
    status: str  # "added", "present" (already in the gallery), "repeated", "failed", "skipped"
    reason: str = ""
    item_id: Optional[int] = None
    warning: str = ""  # added (or there), but of no use for verifying


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    def plainly_added(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "added" and not o.warning]

    def to_look_at(self) -> list[Outcome]:
        """What the report shows first: files not added, or added with a warning."""
        return [o for o in self.outcomes if o.status != "added" or o.warning]


def add_uploads(gallery: Gallery, files: list[tuple[str, bytes]], label: Optional[str],
                metadata: dict[str, Any], folder_labels: bool, max_image_bytes: int) -> Report:
    """Add each uploaded image, and each image in each uploaded zip, labelled `label` (or, with
    `folder_labels`, by the folder it is in inside its zip, else `label`)."""
    report = Report()
    # Zip members are unpacked as they are added, a batch at a time: never all held at once
    # (50 members of 20 MB each grew a worker by 877 MB when they were).
    pending: list[tuple[Outcome, bytes, Optional[str]]] = []
    seen: dict[str, Outcome] = {}
    budget = [MAX_UNPACKED]

    def add(outcome: Outcome, data: bytes, folder: Optional[str]) -> None:
        pending.append((outcome, data, folder))
        if len(pending) == BATCH:
            _add_batch(gallery, pending, label, metadata, seen)
            pending.clear()

    for name, data in files:
        if zipfile.is_zipfile(io.BytesIO(data)):
            for outcome, member, folder in _members(name, data, max_image_bytes, budget):
                report.outcomes.append(outcome)
                if member is not None:
                    add(outcome, member, folder if folder_labels else None)
        else:
            outcome = Outcome(name, "pending")
            report.outcomes.append(outcome)
            add(outcome, data, None)
    if pending:
        _add_batch(gallery, pending, label, metadata, seen)
    return report


def _add_batch(gallery: Gallery, batch: list[tuple[Outcome, bytes, Optional[str]]],
               label: Optional[str], metadata: dict[str, Any], seen: dict[str, Outcome]) -> None:
    originals, outcomes, labels = [], [], []
    for outcome, data, folder in batch:
        try:
            original = Original.from_bytes(data, outcome.name or "upload",  # its source
                                           pre=gallery.embedder.card.preprocessing)
        except BadImageError as exc:
            outcome.status, outcome.reason = "failed", _plain(str(exc), outcome.name)
            continue
        if original.sha256 in seen:
            outcome.status = "repeated"
            outcome.reason = f"the same image as {seen[original.sha256].name}"
            continue
        seen[original.sha256] = outcome
        originals.append(original)
        outcomes.append(outcome)
        labels.append(folder or label)
    if not originals:
        return
    added = gallery.add_originals(originals, labels, [metadata] * len(originals))
    for outcome, item_id, created, blank, foreign in zip(outcomes, added.ids, added.created,
                                                         added.featureless, added.out_of_domain):
        outcome.item_id = item_id
        outcome.status = "added" if created else "present"
        outcome.warning = (FEATURELESS_WARNING if blank else
                           OUT_OF_DOMAIN_WARNING if foreign else "")


def _members(name: str, data: bytes, limit: int, budget: list[int]
             ) -> Iterator[tuple[Outcome, Optional[bytes], Optional[str]]]:
    """(outcome, bytes or None when skipped, the folder it is in) for each entry of a zip."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        yield Outcome(name, "failed", f"not a zip file that can be read ({exc})"), None, None
        return
    for n, info in enumerate(entries):
        where = f"{name}: {info.filename}"
        path = PurePosixPath(info.filename.replace("\\", "/"))
        if n >= MAX_MEMBERS:
            yield (Outcome(f"{name}: {len(entries) - n} more entries", "skipped",
                           f"a zip may hold at most {MAX_MEMBERS:,} entries"), None, None)
            return
        if info.is_dir():
            continue  # folders are not files: their images are reported one by one
        if path.is_absolute() or ".." in path.parts:
            yield Outcome(where, "skipped", "a name that points outside the zip"), None, None
            continue
        if any(part.startswith(".") or part == "__MACOSX" for part in path.parts):
            yield Outcome(where, "skipped", "a hidden file"), None, None
            continue
        if path.suffix.lower() == ".zip":
            yield Outcome(where, "skipped", "a zip inside the zip (unpack it first)"), None, None
            continue
        if not is_image_name(path.name):
            yield Outcome(where, "skipped", "not an image file name (PNG, JPEG, GIF, WebP, "
                                            "BMP or TIFF)"), None, None
            continue
        if info.file_size > limit:
            yield Outcome(where, "failed", f"over the {megabytes(limit)} limit once unpacked"), \
                None, None
            continue
        content, failure = _unpack(archive, info, limit)
        if failure is not None:
            yield Outcome(where, "failed", failure), None, None
            continue
        if len(content) > limit:
            yield Outcome(where, "failed", f"over the {megabytes(limit)} limit once unpacked"), \
                None, None
            continue
        budget[0] -= len(content)
        if budget[0] < 0:
            yield (Outcome(where, "skipped", f"the upload unpacks to over "
                                            f"{megabytes(MAX_UNPACKED)} in all"), None, None)
            return
        folder = path.parent.name or None
        yield Outcome(where, "pending"), content, folder


def _unpack(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int
            ) -> tuple[Optional[bytes], Optional[str]]:
    """(at most `limit` + 1 bytes of the member, whatever its header says), or (None, why not)."""
    try:
        with archive.open(info) as member:
            return member.read(limit + 1), None
    except zipfile.BadZipFile:  # a CRC or a size that does not match: damaged, or a bomb
        return None, ("cannot be unpacked: the zip is damaged (what it holds does not match its "
                      "header)")
    except NotImplementedError:  # (a RuntimeError too) a method zipfile lacks, as PPMd
        return None, ("cannot be unpacked: it is compressed with a method this server does not "
                      "read (use deflate, the usual one)")
    except RuntimeError:  # zipfile's word for a member that needs a password
        return None, "cannot be unpacked: it is encrypted"
    except (OSError, ValueError, EOFError) as exc:
        return None, f"cannot be unpacked ({exc})"


def _plain(message: str, name: str) -> str:
    """A decoding error without the file's name (the report shows it beside)."""
    for prefix in (f"{name}: ", f"{PurePosixPath(name).name}: "):
        message = message.removeprefix(prefix)
    return message
