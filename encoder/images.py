"""Image decoding and preprocessing: the one place where an image becomes model input.

Training, evaluation, indexing and querying all go through `prepare_batch`, driven by the
`Preprocessing` recorded in the model card, so an image is never prepared two different ways.

Model input is uint8 (N, H, W, C). Scaling to [0, 1] is the model's first layer, so no caller can
scale twice (the tutorial's plotting code divided by 255 twice).
"""
from __future__ import annotations

import contextlib
import io
import os
import threading
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageOps

from .errors import BadImageError, UnsupportedImageError

MB = 1_000_000  # sizes are shown in MB, decimal, everywhere (pages, errors, flags, docs)
MAX_IMAGE_BYTES = 20 * MB
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}
MAX_IMAGE_PIXELS = 40_000_000  # a 6000x6000 photo; beyond that it is almost surely a decompression bomb

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]
FITS = ("stretch", "pad")


@dataclass(frozen=True)
class Preprocessing:
    """How a decoded image becomes model input. Stored in the model card."""

    height: int
    width: int
    channels: int  # 1 (grey) or 3 (RGB)
    invert: bool = False  # True for dark-ink-on-white data (strokes, signatures): ink becomes bright
    # How an image of another shape fills the input: "stretch" to it, or "pad": keep the aspect
    # ratio, fit the longer side and fill the rest with the image's background (long images such
    # as signatures keep their proportions).
    fit: str = "stretch"

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise BadImageError(f"channels must be 1 or 3, not {self.channels}")
        if self.fit not in FITS:
            raise BadImageError(f"fit must be one of {', '.join(FITS)}, not {self.fit!r}")
        if not (4 <= self.height <= 1024 and 4 <= self.width <= 1024):
            raise BadImageError(f"input size {self.height}x{self.width} is outside 4..1024")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    def to_dict(self) -> dict[str, Any]:
        # `fit` only when it is not the default: model ids hash this dict, and every model
        # written before `fit` existed stretched its images (their ids must not change).
        d = asdict(self)
        if self.fit == "stretch":
            del d["fit"]
        return {**d, "dtype": "uint8", "scale": "1/255 (first model layer)",
                "resize": "bilinear", "colour": "L" if self.channels == 1 else "RGB"}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        return cls(height=int(d["height"]), width=int(d["width"]),
                   channels=int(d["channels"]), invert=bool(d.get("invert", False)),
                   fit=str(d.get("fit", "stretch")))


def source_name(source: Any) -> str:
    """A short human name for an image source, used in error messages."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return f"<PIL image {source.width}x{source.height} {source.mode}>"
    return f"<{type(source).__name__}>"


def megabytes(n: int) -> str:
    """A size as people read it: "20 MB", "0.05 MB", "1.5 MB"."""
    return f"{n / MB:.3g} MB"


def read_bytes(path: Union[str, os.PathLike], max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """Read an image file, refusing missing, empty and over-size files before reading them."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if not p.is_file():
            raise BadImageError(f"{p}: not a file")
        if size == 0:
            raise BadImageError(f"{p}: the file is empty")
        if size > max_bytes:
            raise BadImageError(f"{p}: {megabytes(size)} is over the {megabytes(max_bytes)} limit")
        return p.read_bytes()
    except FileNotFoundError:
        raise BadImageError(f"{p}: no such file") from None
    except PermissionError:
        raise BadImageError(f"{p}: permission denied") from None
    except IsADirectoryError:
        raise BadImageError(f"{p}: not a file") from None
    except OSError as exc:  # a symbolic link loop, an I/O error, a name too long
        raise BadImageError(f"{p}: cannot read ({exc.strerror or exc})") from None


NOT_AN_IMAGE = "not an image file that can be read (PNG, JPEG, GIF, WebP, BMP or TIFF)"
# The formats read; Pillow knows more, some of them containers whose header does not give the
# size that decoding will make (an ICO holding a 9000x9000 PNG said 256x256, then took 312 MB).
FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF", "PPM")  # JPEG includes MPO (cameras')

# The decode budget of a process: large images decoded at full size at once. A 40 MP image takes
# up to 160 MB decoded, until it is shrunk; eight at once grew a worker by 2.3 GB. Every path that
# decodes bytes from outside (search, verify, identify, batches, adds, zips, imports, indexing)
# holds a slot from opening to shrinking (`decode_shrunk`) an image of over `SLOT_FREE_PIXELS`.
DECODE_SLOT_COUNT = 2
DECODE_SLOTS = threading.BoundedSemaphore(DECODE_SLOT_COUNT)
# An image this small decodes to at most 4 MB and in about a millisecond: it takes no slot, so
# the usual query never waits behind two huge decodes (8 clients sending worst-case images held
# both slots of each worker, and a normal search waited its turn: p99 642 ms).
SLOT_FREE_PIXELS = 1_000_000


def decode(data: bytes, name: str = "image", max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode image bytes fully, with a precise error for every way they can be bad, in one of
    the process's decode slots when it is large. The image comes back full size: where only the
    model will look at it, `decode_shrunk` keeps less."""
    img = _opened(data, name, max_pixels)
    with _slot(img):
        return _loaded(img, name)


def decode_shrunk(data: bytes, name: str, pre: Preprocessing, max_pixels: int = MAX_IMAGE_PIXELS
                  ) -> tuple[Image.Image, tuple[int, int], Optional[str]]:
    """`decode`, then `shrink` for `pre` before the decode slot is let go (what the model makes of
    it is the same: `to_array` shrinks first); with the size and format it had."""
    img = _opened(data, name, max_pixels)
    with _slot(img):
        img = _loaded(img, name)
        return shrink(img, pre), img.size, img.format


def _slot(img: Image.Image):
    large = img.width * img.height > SLOT_FREE_PIXELS
    return _large_decode() if large else contextlib.nullcontext()


_stepping = threading.local()


@contextlib.contextmanager
def stepping_aside(hook) -> Iterator[None]:
    """While this thread waits for a decode slot and decodes a large image, it runs `hook()` (a
    context manager): the server's request threads give up their turn to run meanwhile
    (`webapp.front.Front`), so that a few clients sending huge images cannot hold every turn."""
    before = getattr(_stepping, "hook", None)
    _stepping.hook = hook
    try:
        yield
    finally:
        _stepping.hook = before


@contextlib.contextmanager
def _large_decode() -> Iterator[None]:
    hook = getattr(_stepping, "hook", None)
    with (hook() if hook is not None else contextlib.nullcontext()), DECODE_SLOTS:
        yield


def _opened(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """The image's header read (no pixel decoded yet), its size checked."""
    if len(data) == 0:
        raise BadImageError(f"{name}: the file is empty")
    if len(data) > MAX_IMAGE_BYTES:
        raise BadImageError(f"{name}: {megabytes(len(data))} is over the "
                            f"{megabytes(MAX_IMAGE_BYTES)} limit")
    with _image_errors(name):
        img = Image.open(io.BytesIO(data), formats=FORMATS)
        # The header gives the size before any pixel is decoded: refuse bombs here.
        if img.width * img.height > max_pixels:
            raise BadImageError(f"{name}: {img.width}x{img.height} pixels is over the "
                                f"{max_pixels:,}-pixel limit (decompression bomb?)")
    return img


def _loaded(img: Image.Image, name: str) -> Image.Image:
    with _image_errors(name):
        img.load()
    if img.width == 0 or img.height == 0:
        raise BadImageError(f"{name}: image has no pixels")
    return img


@contextlib.contextmanager
def _image_errors(name: str):
    """Pillow's ways of failing on bad bytes, as our errors, each with its message."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImageError(f"{name}: the image says it is too large to open (a decompression bomb?)") from None
    except Image.UnidentifiedImageError:
        raise UnsupportedImageError(f"{name}: {NOT_AN_IMAGE}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImageError(f"{name}: the image is cut short or damaged ({exc})") from None


def encoded(source: ImageSource) -> Optional[tuple[bytes, str]]:
    """The bytes and name of a source that comes encoded (a path or bytes); None for an image
    that is already decoded (a PIL image or an array)."""
    if isinstance(source, (str, os.PathLike)):
        return read_bytes(source), str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), source_name(source)
    return None


def open_image(source: ImageSource) -> Image.Image:
    """A decoded PIL image from a path, bytes, a PIL image or a uint8 array (H, W[, C])."""
    raw = encoded(source)
    if raw is not None:
        return decode(*raw)
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        return array_image(source)
    raise BadImageError(f"cannot read an image from {source_name(source)}: "
                        "expected a path, bytes, a PIL image or a uint8 array")


def array_image(a: np.ndarray) -> Image.Image:
    """One uint8 image array, (H, W) or (H, W, C) with C in 1, 3, 4, as a PIL image."""
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


def to_array(img: Image.Image, pre: Preprocessing) -> np.ndarray:
    """Colour mode, size and polarity as the model card says; uint8 (H, W, C)."""
    img = shrink(img, pre)
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent areas become white, as a viewer shows them.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode == "I" or img.mode.startswith("I;16"):
        # 16-bit grey (scanners, microscopes): Pillow's conversion to 8 bits clips at 255, which
        # turns nearly every pixel white; map the 16-bit range onto the 8-bit one instead.
        img = Image.fromarray((np.asarray(img).astype(np.uint32) // 257).clip(0, 255)
                              .astype(np.uint8), "L")
    img = img.convert("L" if pre.channels == 1 else "RGB")
    if img.size != (pre.width, pre.height):
        img = _padded(img, pre) if pre.fit == "pad" else img.resize(
            (pre.width, pre.height), Image.Resampling.BILINEAR)
    a = np.asarray(img, dtype=np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    return 255 - a if pre.invert else a


def shrink(img: Image.Image, pre: Preprocessing) -> Image.Image:
    """A large image averaged down (box filter) to twice the model input on its shorter side
    first, whatever its mode, so that every later step (rotation, transparency, 16-bit mapping)
    costs what a small image costs: a 6300x6300 16-bit PNG took 680 MB and 1.9 s without this."""
    factor = min(img.width, img.height) / (2 * max(pre.width, pre.height))
    if factor <= 2:
        return img
    size = (max(1, round(img.width / factor)), max(1, round(img.height / factor)))
    return img.resize(size, Image.Resampling.BOX)


def _padded(img: Image.Image, pre: Preprocessing) -> Image.Image:
    """`img` (L or RGB) scaled to fit the input with its aspect ratio kept, centred on the
    image's background: the median of its border pixels (white paper stays white, a dark
    background dark)."""
    scale = min(pre.width / img.width, pre.height / img.height)
    size = (min(pre.width, max(1, round(img.width * scale))),
            min(pre.height, max(1, round(img.height * scale))))
    a = np.asarray(img)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])  # (pixels,) or (pixels, 3)
    background = np.median(border, axis=0).round().astype(np.uint8)
    resized = img.resize(size, Image.Resampling.BILINEAR)
    if size == (pre.width, pre.height):
        return resized
    canvas = Image.new(img.mode, (pre.width, pre.height),
                       int(background) if img.mode == "L" else tuple(int(v) for v in background))
    canvas.paste(resized, ((pre.width - size[0]) // 2, (pre.height - size[1]) // 2))
    return canvas


def _array_batch(images: np.ndarray, pre: Preprocessing) -> np.ndarray:
    if images.dtype != np.uint8:
        raise BadImageError(f"image array must be uint8, not {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise BadImageError(f"image array must have shape (N, H, W) or (N, H, W, C) with C in 1, 3, 4; "
                            f"got {images.shape}")
    if images.shape[1:] == pre.shape:
        return 255 - images if pre.invert else images
    out = np.empty((len(images), *pre.shape), np.uint8)
    for i, a in enumerate(images):
        out[i] = to_array(array_image(a), pre)
    return out


def prepare_batch(images: Union[np.ndarray, Sequence[ImageSource], Iterable[ImageSource]],
                  pre: Preprocessing) -> np.ndarray:
    """Model input, uint8 (N, H, W, C), from raw images: paths, bytes, PIL images, or a uint8 array.

    Arrays are raw images like any other source: they are resized, converted and inverted as the
    card says (a fast path skips the per-image work when the shape already matches).
    """
    if isinstance(images, np.ndarray):
        return _array_batch(images, pre)
    if isinstance(images, (str, os.PathLike, bytes, bytearray, Image.Image)):
        raise BadImageError("expected a list of images; wrap a single image in a list")
    items = list(images)
    out = np.empty((len(items), *pre.shape), np.uint8)
    for i, source in enumerate(items):
        if isinstance(source, np.ndarray):
            out[i] = _array_batch(source[None], pre)[0]
        else:
            out[i] = to_array(open_image(source), pre)
    return out


def is_image_name(name: str) -> bool:
    """A file name with an image suffix that is not hidden."""
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES


def image_files(folder: str | os.PathLike, others: Optional[list[str]] = None) -> list[str]:
    """Image files below `folder`, in name order. Hidden files and folders are skipped and symbolic
    links to folders are not followed (no loops). Files without an image suffix go to `others`."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if is_image_name(f):
                found.append(os.path.join(dirpath, f))
            elif others is not None and not f.startswith("."):
                others.append(os.path.join(dirpath, f))
    return found
