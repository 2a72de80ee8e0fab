"""The records that cross the gallery's borders: `Item`, `Match`, and `Original` (an image on its way in)."""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np
from PIL import Image

from encoder.errors import ConfigError
from encoder.images import (ImageSource, Preprocessing, decode, decode_shrunk, encoded, open_image,
                            source_name)
from encoder.verdict import DomainCheck, Rule, Verdict

MAX_LABEL_LENGTH = 200  # characters (the database column's length)
MAX_METADATA_DEPTH = 32  # levels of nested objects and lists in an item's metadata
MAX_METADATA_BYTES = 64_000  # an item's metadata as UTF-8 JSON: a record, not a document store


@dataclass(frozen=True)
class Item:
    """A gallery item as stored (without its embedding and image bytes)."""

    id: int
    label: Optional[str]
    source: str
    sha256: str
    width: int
    height: int
    media_type: str
    added: dt.datetime
    metadata: dict[str, Any] = field(default_factory=dict)
    domain_score: Optional[float] = None  # of its image when added; None: not checked

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "added": self.added.isoformat()}


@dataclass(frozen=True)
class Match:
    """One search result: a gallery item and the verdict on it (`encoder.verdict`). `distance` is
    Euclidean; `verified` means within the rule's threshold *and* a query in the model's domain."""

    id: int
    label: Optional[str]
    metadata: dict[str, Any]
    source: str
    verdict: Verdict
    sha256: str = ""  # of the item's original bytes: a query with the same hash is the same file
    # The model finds no features in the item's image (`Embedder.is_featureless`): it sits where
    # every such image does, so it is never verified (its verdict's domain check says why).
    featureless: bool = False
    # The item's own image in the model's domain, as checked when it was added (None: not
    # checked); an item out of domain is never verified either.
    item_in_domain: Optional[bool] = None

    @property
    def distance(self) -> float:
        return self.verdict.distance

    @property
    def verified(self) -> bool:
        return self.verdict.verified

    @property
    def probability(self) -> Optional[float]:
        return self.verdict.probability

    @property
    def in_domain(self) -> Optional[bool]:
        return self.verdict.domain.in_domain

    @property
    def rule(self) -> Rule:
        return self.verdict.rule

    @property
    def domain(self) -> DomainCheck:
        return self.verdict.domain

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, **self.verdict.to_dict(),
                "metadata": self.metadata, "source": self.source}


@dataclass
class Original:
    """An image read and decoded once: its original bytes (stored), their sha256 (identity in the
    gallery), its size and type, and the decoded image (embedded), shrunk for the model when
    one is given (`encoder.images.decode_shrunk`: the full-size pixels are never kept)."""

    data: bytes
    sha256: str
    name: str
    image: Image.Image
    media_type: str
    size: tuple[int, int] = (0, 0)  # (width, height) as stored, not as shrunk

    def __post_init__(self) -> None:
        if self.size == (0, 0):
            self.size = self.image.size

    @classmethod
    def from_bytes(cls, data: bytes, name: str, sha256: Optional[str] = None,
                   pre: Optional[Preprocessing] = None) -> "Original":
        if pre is None:
            image = decode(data, name)
            size, kind = image.size, image.format
        else:
            image, size, kind = decode_shrunk(data, name, pre)
        return cls(data, sha256 or sha256_of(data), name, image,
                   Image.MIME.get(kind or "", "application/octet-stream"), size)

    @classmethod
    def decoded_elsewhere(cls, data: bytes, name: str, sha256: str) -> "Original":
        """An image that another process has decoded (and embedded), such as a Ray worker: only
        its header is read here, for its size and type."""
        image = Image.open(io.BytesIO(data))
        return cls(data, sha256, name, image,
                   Image.MIME.get(image.format or "", "application/octet-stream"))

    @classmethod
    def from_source(cls, source: ImageSource, pre: Optional[Preprocessing] = None) -> "Original":
        """From a path, bytes, a PIL image or a uint8 array (H, W[, C]); images that come without
        bytes are stored as PNG."""
        raw = encoded(source)
        if raw is not None:
            return cls.from_bytes(*raw, pre=pre)
        image = open_image(source)
        name = (f"<array {'x'.join(map(str, source.shape))}>" if isinstance(source, np.ndarray)
                else source_name(source))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return cls.from_bytes(buffer.getvalue(), name, pre=pre)


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_text(name: str, text: str, max_length: Optional[int] = None) -> None:
    """Text every database stores and every page shows, on every path in (API, pages, imports):
    valid Unicode (no lone surrogates, which UTF-8 cannot encode: pages that showed one failed),
    no NUL characters (PostgreSQL refuses them), and at most `max_length` characters where its
    column has a length (PostgreSQL enforces it)."""
    if max_length is not None and len(text) > max_length:
        raise ConfigError(f"{name} must be at most {max_length} characters, not {len(text)}")
    if "\x00" in text:
        raise ConfigError(f"{name} must not contain NUL characters")
    if not _encodes(text):
        raise ConfigError(f"{name} must be valid Unicode text (it has a lone surrogate)")


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_metadata(metadata: Any) -> None:
    """Metadata must be a JSON object that round-trips and that every database stores: finite
    numbers (JSON has no words for NaN or Infinity), text as `check_text` wants it (keys too),
    not nested deeper than `MAX_METADATA_DEPTH`, and at most `MAX_METADATA_BYTES` as JSON (it
    is read with every item listed: a 50 MB one made every gallery page 100 MB)."""
    if not isinstance(metadata, dict):
        raise ConfigError(f"metadata must be a JSON object, not {type(metadata).__name__}")
    todo = [(metadata, 1)]  # a walk without recursion: any depth is safe to look at
    while todo:
        value, depth = todo.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_METADATA_DEPTH:
                raise ConfigError(f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels")
            if isinstance(value, dict):
                todo.extend((k, depth) for k in value)
            todo.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict)
                                                 else value))
        elif isinstance(value, str):
            check_text("metadata", value)
    try:
        size = len(json.dumps(metadata, allow_nan=False, ensure_ascii=False).encode("utf-8"))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"metadata must be JSON with finite numbers: {exc}") from None
    if size > MAX_METADATA_BYTES:
        raise ConfigError(f"metadata must be at most {MAX_METADATA_BYTES:,} bytes as JSON, "
                          f"not {size:,}")
