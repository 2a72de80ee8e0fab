"""Filling a gallery from a folder tree or a CSV manifest.

Each file is read and hashed; files already in the gallery (same sha256) are skipped before they
are decoded; the rest are decoded once (`encoder.images`), embedded in batches and added, one
committed transaction per batch. Bad files are reported, not fatal (unless `strict`). An
interrupted run resumes by running it again: what was committed is skipped.
"""
from __future__ import annotations

import csv
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from encoder.errors import BadImageError, DatasetError, NotFoundError
from encoder.images import IMAGE_SUFFIXES, Preprocessing, image_files, read_bytes

from .gallery import Gallery
from .records import Original, sha256_of

BATCH_SIZE = 512


@dataclass(frozen=True)
class Source:
    """One image to add: where it is, its label and metadata, and how to name it in a report."""

    path: str
    label: Optional[str] = None
    metadata: dict[str, Any] = field(default_factory=dict)
    where: str = ""  # e.g. "manifest.csv line 12"; the path when empty

    @property
    def name(self) -> str:
        return self.where or self.path


@dataclass
class IngestReport:
    files: int = 0
    added: int = 0
    skipped: int = 0  # already in the gallery
    duplicates: int = 0  # the same image as another file of this run
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    ignored: list[str] = field(default_factory=list)  # files without an image suffix
    # files added that the model finds no features in, or that do not look like its training
    # data (nothing else will be verified against them)
    featureless: list[str] = field(default_factory=list)
    out_of_domain: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def note(self, added, names: list[str]) -> None:
        """Name the files `Gallery.add_originals` just created that nothing will be verified
        against: featureless, or out of the model's domain."""
        for name, new, blank, foreign in zip(names, added.created, added.featureless,
                                             added.out_of_domain):
            if new and blank:
                self.featureless.append(name)
            elif new and foreign:
                self.out_of_domain.append(name)

    @property
    def images_per_s(self) -> float:
        """Files handled (added, skipped or failed) per second."""
        return self.files / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failed"] = [{"file": f, "reason": r} for f, r in self.failed]
        d["seconds"] = round(self.seconds, 3)
        d["images_per_s"] = round(self.images_per_s, 1)
        return d


def folder_sources(root: str | Path) -> tuple[list[Source], list[str]]:
    """The images below `root`, labelled by their first-level sub-folder (none for files in
    `root` itself), and the other files found (ignored)."""
    root = Path(root)
    if not root.exists():
        raise NotFoundError(f"{root}: no such folder")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    others: list[str] = []
    files = image_files(root, others)
    if not files:
        raise DatasetError(f"{root}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in it "
                           "or its sub-folders")
    sources = []
    for path in files:
        parts = Path(path).relative_to(root).parts
        sources.append(Source(path, parts[0] if len(parts) > 1 else None))
    return sources, others


def manifest_sources(manifest: str | Path, base: Optional[str | Path] = None) -> list[Source]:
    """Rows of a CSV file with a header: `path` (relative to `base`, default the CSV's folder),
    optional `label`, and any other columns, kept as metadata (empty cells left out)."""
    manifest = Path(manifest)
    base = Path(base) if base is not None else manifest.parent
    if not manifest.is_file():
        raise NotFoundError(f"{manifest}: no such manifest file")
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in reader.fieldnames or []]
            if "path" not in columns:
                raise DatasetError(f"{manifest}: the first row must name the columns, one of them "
                                   f"'path' (and optionally 'label' and metadata columns); found "
                                   f"{', '.join(columns) or 'nothing'}")
            sources = []
            for row in reader:
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items()
                       if k is not None}
                where = f"{manifest} line {reader.line_num}"
                if not row.get("path"):
                    raise DatasetError(f"{where}: empty path")
                metadata = {k: v for k, v in row.items() if k not in ("path", "label") and v}
                sources.append(Source(str(base / row["path"]), row.get("label") or None, metadata,
                                      where=f"{where} ({row['path']})"))
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{manifest}: not a UTF-8 text file ({exc})") from None
    except csv.Error as exc:
        raise DatasetError(f"{manifest}: not a valid CSV file ({exc})") from None
    if not sources:
        raise DatasetError(f"{manifest}: no rows after the header")
    return sources


def ingest(gallery: Gallery, sources: Sequence[Source], batch_size: int = BATCH_SIZE,
           strict: bool = False, progress=None) -> IngestReport:
    """Add `sources` to `gallery` in batches. `progress`: an object with `update(n)` (tqdm).

    A worker thread reads, hashes and decodes the next batch while this one embeds and stores the
    current one (TensorFlow and Pillow both work outside the GIL)."""
    report = IngestReport(files=len(sources))
    start = time.perf_counter()
    seen: set[str] = set()  # hashes added in this run
    chunks = [sources[i:i + batch_size] for i in range(0, len(sources), batch_size)]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-read") as worker:
        def read(chunk: Sequence[Source]) -> ReadBatch:
            return read_batch(chunk, gallery.known, gallery.embedder.prepare,
                              gallery.embedder.card.preprocessing)

        pending = worker.submit(read, chunks[0]) if chunks else None
        for n, chunk in enumerate(chunks):
            batch = pending.result()
            if n + 1 < len(chunks):
                pending = worker.submit(read, chunks[n + 1])
            for source, exc in batch.failed:
                _fail(report, source, exc, strict)
            report.skipped += len(batch.skipped)
            keep = [i for i, o in enumerate(batch.originals) if o.sha256 not in seen]
            report.duplicates += len(batch.duplicates) + len(batch.originals) - len(keep)
            if keep:
                originals = [batch.originals[i] for i in keep]
                added = gallery.add_originals(
                    originals, [batch.sources[i].label for i in keep],
                    [batch.sources[i].metadata for i in keep], batch.pixels[keep])
                seen.update(o.sha256 for o in originals)
                # Another process may have added some of them since the batch was read.
                report.added += sum(added.created)
                report.skipped += len(originals) - sum(added.created)
                report.note(added, [batch.sources[i].name for i in keep])
            if progress is not None:
                progress.update(len(chunk))
    report.seconds = time.perf_counter() - start
    return report


@dataclass
class ReadBatch:
    """One batch, read and decoded: the new images (and their model input), failures, skips."""

    sources: list[Source] = field(default_factory=list)
    originals: list[Original] = field(default_factory=list)
    pixels: Optional[np.ndarray] = None
    failed: list[tuple[Source, BadImageError]] = field(default_factory=list)
    skipped: list[Source] = field(default_factory=list)  # already in the gallery
    duplicates: list[Source] = field(default_factory=list)  # same image as an earlier file


def read_batch(chunk: Sequence[Source], known: Callable[[list[str]], dict[str, int]],
               prepare: Callable[[list], np.ndarray], pre: Preprocessing) -> ReadBatch:
    """Read, hash, decode and prepare a batch of files (here, or in a Ray actor): files whose
    hash `known` returns are skipped before they are decoded; each is decoded in the process's
    decode budget and shrunk for the model (`pre`); `prepare` makes the model input."""
    batch = ReadBatch()
    read: list[tuple[Source, bytes, str]] = []
    for source in chunk:
        try:
            data = read_bytes(source.path)
            read.append((source, data, sha256_of(data)))
        except BadImageError as exc:
            batch.failed.append((source, exc))
    stored = known([sha for _, _, sha in read])
    hashes: set[str] = set()
    for source, data, sha in read:
        if sha in stored:
            batch.skipped.append(source)
            continue
        if sha in hashes:
            batch.duplicates.append(source)
            continue
        try:
            batch.originals.append(Original.from_bytes(data, source.path, sha, pre=pre))
        except BadImageError as exc:
            batch.failed.append((source, exc))
            continue
        batch.sources.append(source)
        hashes.add(sha)
    batch.pixels = prepare([o.image for o in batch.originals])
    return batch


def _fail(report: IngestReport, source: Source, exc: BadImageError, strict: bool) -> None:
    reason = str(exc).removeprefix(f"{source.path}: ")
    if strict:
        raise BadImageError(f"{source.name}: {reason} (stopped by --strict; {report.added} "
                            "image(s) added before it)")
    report.failed.append((source.name, reason))
