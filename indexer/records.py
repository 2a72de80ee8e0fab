"""The records that cross the gallery's borders: `Item`, `Match`, and `Original` (an image on its way in)."""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np
from PIL import Image

from encoder.errors import BadImageError
from encoder.images import ImageSource, decode, read_bytes, source_name
from encoder.verdict import DomainCheck, Rule, Verdict


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
    gallery) and the decoded image (embedded). Decoding is `encoder.images.decode`."""

    data: bytes
    sha256: str
    name: str
    image: Image.Image
    media_type: str

    @classmethod
    def from_bytes(cls, data: bytes, name: str, sha256: Optional[str] = None) -> "Original":
        image = decode(data, name)
        return cls(data, sha256 or sha256_of(data), name, image,
                   Image.MIME.get(image.format or "", "application/octet-stream"))

    @classmethod
    def from_source(cls, source: ImageSource) -> "Original":
        """From a path, bytes, a PIL image or a uint8 array (H, W[, C]); images that come without
        bytes are stored as PNG."""
        if isinstance(source, (str, os.PathLike)):
            return cls.from_bytes(read_bytes(source), str(source))
        if isinstance(source, (bytes, bytearray, memoryview)):
            return cls.from_bytes(bytes(source), source_name(source))
        name = source_name(source)
        if isinstance(source, np.ndarray):
            name = f"<array {'x'.join(map(str, source.shape))}>"
            source = _array_image(source)
        if isinstance(source, Image.Image):
            buffer = io.BytesIO()
            source.save(buffer, format="PNG")
            return cls.from_bytes(buffer.getvalue(), name)
        raise BadImageError(f"cannot read an image from {source_name(source)}: "
                            "expected a path, bytes, a PIL image or a uint8 array")


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _array_image(a: np.ndarray) -> Image.Image:
    if a.dtype != np.uint8:
        raise BadImageError(f"image array must be uint8, not {a.dtype}")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        return Image.fromarray(a, "L")
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        return Image.fromarray(a, "RGB" if a.shape[-1] == 3 else "RGBA")
    raise BadImageError(f"one image array must have shape (H, W) or (H, W, C) with C in 1, 3, 4; "
                        f"got {a.shape}")
