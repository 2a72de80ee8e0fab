"""Foreign images: a large, varied supply of images that are *not* what a model was trained on.

An out-of-domain classifier trained with outlier exposure is only as general as its outliers, so
this module draws from everything available offline: procedural noise, gradients and gratings,
shapes and patterns, rendered text, synthetic signatures, crops of scikit-image's bundled sample
photos, faces (the LFW subset bundled with scikit-image) and documents (scanned pages and
synthetic ones). Nothing is downloaded.

Every image, whatever its family, goes through the same finishing step: a size drawn from one
distribution (24..256 px a side, aspect ratio 1:2 to 2:1), a random contrast, brightness and
gamma, an occasional blur, inversion half the time and L or RGB half the time, so that a
classifier cannot tell a family by its size, polarity or colour mode and must look at content.

Handwriting and thumbnails nearer a model's own data come from real images the package ships:
2,000 Fashion-MNIST training images and 2,000 Omniglot characters (`foreign_data/`, MIT licensed,
with their provenance there), and synthetic handwritten digits (fonts bent by an elastic field,
framed as MNIST and scikit-learn's digits are).

Speed (2-core machine, Python 3.11): `foreign_batch(20000, Preprocessing(28, 28, 1), seed=0)`
is single-threaded and costs about 15 s of CPU time in a fresh process (loading the sample images
and fonts, cached for the process, is about 0.5 s of it): 11-17 s wall with the machine to
itself, 38 s while two other test suites shared it. Peak memory is about 210 MB, because raw
images are prepared 512 at a time.
"""
from __future__ import annotations

import functools
import math
import os
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

from .errors import ConfigError
from .images import Preprocessing, prepare_batch

FAMILIES: tuple[str, ...] = ("noise", "gradients", "shapes", "text", "scribbles", "photos", "faces",
                             "documents", "digits", "fashion-mnist", "omniglot")
# Families drawn from real images the package ships (`foreign_data/`, written by
# `python -m scripts.make_samples --foreign`): a model of one of these kinds does not use its own
# as foreign (`domain.fit_domain_model` finds it out).
SHIPPED = {"fashion-mnist": "fashion-mnist.npz", "omniglot": "omniglot.npz"}
SHIPPED_DIR = os.path.join(os.path.dirname(__file__), "foreign_data")

MIN_SIDE, MAX_SIDE = 24, 256
_CHUNK = 512  # images prepared at a time by foreign_batch, so 20,000 raw images never coexist

Rng = np.random.Generator
Colour = tuple[int, int, int]


# ---------------------------------------------------------------------------------------------
# Shared helpers


def _size(rng: Rng) -> tuple[int, int]:
    """(width, height) from the one distribution every family uses."""
    side = math.exp(rng.uniform(math.log(MIN_SIDE), math.log(200)))
    aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    w = int(np.clip(round(side * math.sqrt(aspect)), MIN_SIDE, MAX_SIDE))
    h = int(np.clip(round(side / math.sqrt(aspect)), MIN_SIDE, MAX_SIDE))
    return w, h


def _colour(rng: Rng, level: float | None = None, grey: bool | None = None) -> Colour:
    """A colour around a grey `level` (random if None); grey half the time."""
    v = rng.uniform(0, 255) if level is None else level
    if grey if grey is not None else rng.random() < 0.5:
        c = np.full(3, v)
    else:
        c = v + rng.normal(0, rng.uniform(15, 90), 3)
    r, g, b = np.clip(np.round(c), 0, 255).astype(int)
    return int(r), int(g), int(b)


def _colour_pair(rng: Rng, min_gap: float = 70) -> tuple[Colour, Colour]:
    """Background and foreground colours far enough apart in brightness to be legible."""
    bg = rng.uniform(0, 255)
    lo, hi = bg - min_gap, bg + min_gap
    choices = [v for v in (rng.uniform(0, lo) if lo > 0 else None,
                           rng.uniform(hi, 255) if hi < 255 else None) if v is not None]
    fg = choices[int(rng.integers(len(choices)))]
    grey = bool(rng.random() < 0.5)
    return _colour(rng, bg, grey), _colour(rng, fg, grey)


def _from_float(a: np.ndarray) -> Image.Image:
    """An (H, W) or (H, W, 3) array of 0..255 floats as an L or RGB image."""
    a = np.clip(a, 0, 255).astype(np.uint8)
    return Image.fromarray(a, "L" if a.ndim == 2 else "RGB")


def _blend(t: np.ndarray, c1: Colour, c2: Colour) -> Image.Image:
    """Colour c1 where t == 0, c2 where t == 1, linearly in between."""
    a, b = np.asarray(c1, np.float32), np.asarray(c2, np.float32)
    return _from_float(a + t[..., None].astype(np.float32) * (b - a))


def _grid(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates scaled to 0..1 along each axis, broadcastable to (h, w)."""
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :]
    return x, y


def _smooth_field(rng: Rng, w: int, h: int, cells: int, channels: int = 1) -> np.ndarray:
    """Smooth random values in 0..1, (h, w) or (h, w, 3): coarse noise upscaled bicubically."""
    cw, ch = max(2, min(w, cells)), max(2, min(h, max(2, round(cells * h / w))))
    small = (rng.random((ch, cw, channels) if channels == 3 else (ch, cw)) * 255).astype(np.uint8)
    img = Image.fromarray(small, "RGB" if channels == 3 else "L").resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(img, np.float32) / 255.0


def _finish(img: Image.Image, rng: Rng) -> Image.Image:
    """The same random photometric treatment and colour mode for every family."""
    gamma = math.exp(rng.uniform(math.log(0.6), math.log(1.6)))
    contrast = math.exp(rng.uniform(math.log(0.45), math.log(1.3)))
    brightness = rng.uniform(-35, 35)
    x = np.arange(256, dtype=np.float64) / 255.0
    lut = ((x ** gamma - 0.5) * contrast + 0.5) * 255 + brightness
    lut = np.clip(np.round(lut), 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        lut = 255 - lut
    want_rgb = rng.random() < 0.5
    if img.mode != "L" and not want_rgb:
        img = img.convert("L")
    img = img.point(lut.tolist() * len(img.getbands()))
    if rng.random() < 0.3:
        radius = rng.uniform(0.3, 0.3 + 0.012 * min(img.size))
        img = img.filter(ImageFilter.GaussianBlur(radius))
    if rng.random() < 0.15:
        # Low resolution blown up (thumbnails, 8x8 digit scans): soft blobs that a model input
        # of 28 pixels would otherwise never meet among foreign images.
        small = int(rng.integers(6, 17))
        scale = small / min(img.size)
        size = img.size
        img = img.resize((max(2, round(size[0] * scale)), max(2, round(size[1] * scale))),
                         Image.Resampling.BOX).resize(size, Image.Resampling.BILINEAR)
    if want_rgb and img.mode == "L":
        if rng.random() < 0.5:
            dark, light = _colour(rng, rng.uniform(0, 90), False), _colour(rng, rng.uniform(165, 255), False)
            img = ImageOps.colorize(img, dark, light)
        else:
            img = img.convert("RGB")
    return img


# ---------------------------------------------------------------------------------------------
# Procedural families


def _noise(rng: Rng, w: int, h: int) -> Image.Image:
    channels = 3 if rng.random() < 0.5 else 1
    shape = (h, w, 3) if channels == 3 else (h, w)
    kind = int(rng.integers(6))
    if kind == 0:  # uniform
        lo = rng.uniform(0, 160)
        a = lo + rng.random(shape, np.float32) * rng.uniform(40, 255 - lo)
    elif kind == 1:  # gaussian
        a = rng.uniform(40, 215) + rng.standard_normal(shape, np.float32) * rng.uniform(10, 80)
    elif kind == 2:  # salt and pepper on a flat or smooth base
        base = rng.uniform(30, 225) + 60 * (_smooth_field(rng, w, h, int(rng.integers(2, 8)), channels) - 0.5)
        a = np.broadcast_to(base, shape).copy()
        density = rng.uniform(0.02, 0.5)
        mask = rng.random((h, w)) < density
        salt = rng.random((h, w)) < 0.5
        a[mask & salt], a[mask & ~salt] = 255, 0
    elif kind == 3:  # smooth blotches at one scale
        a = 255 * _smooth_field(rng, w, h, int(rng.integers(2, max(3, w // 2))), channels)
    elif kind == 4:  # fractal-like: octaves of smooth noise
        a = np.zeros(shape, np.float32)
        cells, amp = int(rng.integers(2, 6)), 1.0
        for _ in range(int(rng.integers(2, 5))):
            a += amp * _smooth_field(rng, w, h, cells, channels)
            cells, amp = cells * 2, amp * rng.uniform(0.35, 0.7)
        a = 255 * (a - a.min()) / max(float(np.ptp(a)), 1e-6)
    else:  # blobs: thresholded smooth noise, like ink blots or cells
        field = _smooth_field(rng, w, h, int(rng.integers(3, max(4, w // 4))))
        t = (field > np.quantile(field, rng.uniform(0.3, 0.85))).astype(np.float32)
        c1, c2 = _colour_pair(rng)
        return _blend(t, c1, c2)
    return _from_float(a)


def _gradients(rng: Rng, w: int, h: int) -> Image.Image:
    x, y = _grid(w, h)
    kind = int(rng.integers(7))
    if kind == 0:  # linear
        theta = rng.uniform(0, 2 * math.pi)
        t = x * math.cos(theta) + y * math.sin(theta)
    elif kind == 1:  # radial
        cx, cy = rng.uniform(-0.2, 1.2, 2)
        t = np.sqrt((x - cx) ** 2 + (y - cy) ** 2) ** rng.uniform(0.5, 2.0)
    elif kind == 2:  # conic
        cx, cy = rng.uniform(0.2, 0.8, 2)
        t = (np.arctan2(y - cy, x - cx) + math.pi) / (2 * math.pi)
    elif kind == 3:  # solid colour, sometimes with a faint grain
        c = _colour(rng)
        a = np.empty((h, w, 3), np.float32)
        a[...] = c
        if rng.random() < 0.5:
            a += rng.standard_normal((h, w, 1), np.float32) * rng.uniform(1, 6)
        return _from_float(a)
    elif kind in (4, 5):  # sinusoidal grating; plaid is two of them
        t = np.zeros((h, w), np.float32)
        for _ in range(kind - 3):
            theta, freq = rng.uniform(0, math.pi), math.exp(rng.uniform(math.log(1), math.log(16)))
            t = t + np.sin(2 * math.pi * freq * (x * math.cos(theta) + y * math.sin(theta))
                           + rng.uniform(0, 2 * math.pi))
    else:  # three-stop linear
        theta = rng.uniform(0, 2 * math.pi)
        s = x * math.cos(theta) + y * math.sin(theta)
        s = (s - s.min()) / max(float(np.ptp(s)), 1e-6)
        mid = rng.uniform(0.3, 0.7)
        a, b, c = (np.asarray(_colour(rng), np.float32) for _ in range(3))
        lo = a + (b - a) * np.clip(s / mid, 0, 1)[..., None]
        return _from_float(np.where((s < mid)[..., None], lo,
                                    b + (c - b) * np.clip((s - mid) / (1 - mid), 0, 1)[..., None]))
    t = np.broadcast_to(t, (h, w))
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    c1, c2 = _colour_pair(rng, min_gap=40)
    return _blend(t, c1, c2)


def _pattern(rng: Rng, w: int, h: int) -> Image.Image:
    """Checkerboards, stripes, grids, dots and rings, at any angle and period."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = 0.0 if rng.random() < 0.4 else rng.uniform(0, math.pi)
    u = xx * math.cos(theta) + yy * math.sin(theta)
    v = -xx * math.sin(theta) + yy * math.cos(theta)
    period = math.exp(rng.uniform(math.log(3), math.log(max(4, min(w, h) / 2))))
    kind = int(rng.integers(5))
    if kind == 0:
        t = (np.floor(u / period) + np.floor(v / period)) % 2
    elif kind == 1:
        t = (u % period) < period * rng.uniform(0.2, 0.8)
    elif kind == 2:
        line = max(1.0, period * rng.uniform(0.05, 0.3))
        t = ((u % period) < line) | ((v % period) < line)
    elif kind == 3:
        r = period * rng.uniform(0.15, 0.45)
        t = ((u % period - period / 2) ** 2 + (v % period - period / 2) ** 2) < r * r
    else:
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        t = (np.floor(np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / period) % 2)
    c1, c2 = _colour_pair(rng)
    return _blend(t.astype(np.float32), c1, c2)


def _polygon(rng: Rng, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    n = int(rng.integers(3, 9))
    angles = np.sort(rng.uniform(0, 2 * math.pi, n))
    if rng.random() < 0.25:  # a star: alternate radii
        n = int(rng.integers(4, 8)) * 2
        angles = np.linspace(0, 2 * math.pi, n, endpoint=False) + rng.uniform(0, math.pi)
        radii = np.where(np.arange(n) % 2 == 0, r, r * rng.uniform(0.3, 0.6))
    else:
        radii = r * rng.uniform(0.5, 1.0, n)
    return [(cx + float(rr * math.cos(a)), cy + float(rr * math.sin(a))) for a, rr in zip(angles, radii)]


def _background(rng: Rng, w: int, h: int) -> Image.Image:
    roll = rng.random()
    if roll < 0.5:
        return Image.new("RGB", (w, h), _colour(rng))
    if roll < 0.85:
        return _gradients(rng, w, h).convert("RGB")
    return _noise(rng, w, h).convert("RGB")


def _scene(rng: Rng, w: int, h: int) -> Image.Image:
    """A few random shapes, filled or outlined, on a plain, graded or noisy background."""
    img = _background(rng, w, h)
    draw = ImageDraw.Draw(img)
    s = min(w, h)
    for _ in range(int(rng.integers(1, 8))):
        fill = _colour(rng)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = s * math.exp(rng.uniform(math.log(0.08), math.log(0.6)))
        box = (cx - r * rng.uniform(0.4, 1.6), cy - r * rng.uniform(0.4, 1.6), cx + r, cy + r)
        box = (min(box[0], box[2] - 1), min(box[1], box[3] - 1), box[2], box[3])
        outline = rng.random() < 0.4
        width = int(rng.integers(1, max(2, s // 16)))
        kind = int(rng.integers(6))
        if kind == 0:
            draw.ellipse(box, fill=None if outline else fill, outline=fill, width=width)
        elif kind == 1:
            draw.rectangle(box, fill=None if outline else fill, outline=fill, width=width)
        elif kind == 2:
            radius = int(min(box[2] - box[0], box[3] - box[1]) * rng.uniform(0.1, 0.5))
            draw.rounded_rectangle(box, radius=radius, fill=None if outline else fill, outline=fill,
                                   width=width)
        elif kind == 3:
            pts = _polygon(rng, cx, cy, r)
            if outline:
                draw.line(pts + pts[:1], fill=fill, width=width, joint="curve")
            else:
                draw.polygon(pts, fill=fill)
        elif kind == 4:
            pts = [(float(rng.uniform(0, w)), float(rng.uniform(0, h)))
                   for _ in range(int(rng.integers(2, 5)))]
            draw.line(pts, fill=fill, width=width, joint="curve")
        else:
            start = float(rng.uniform(0, 360))
            end = start + float(rng.uniform(30, 330))
            kind_name = ("arc", "chord", "pieslice")[int(rng.integers(3))]
            getattr(draw, kind_name)(box, start, end, fill=fill, width=width)
    return img


def _object(rng: Rng, w: int, h: int) -> Image.Image:
    """One centred, shaded object on a plain background: a pill, a coin, a button, a tile."""
    bg, fg = _colour_pair(rng, min_gap=50)
    img = Image.new("RGB", (w, h), bg)
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    ow, oh = w * rng.uniform(0.35, 0.9), h * rng.uniform(0.35, 0.9)
    cx, cy = w / 2 + rng.uniform(-0.1, 0.1) * w, h / 2 + rng.uniform(-0.1, 0.1) * h
    box = (cx - ow / 2, cy - oh / 2, cx + ow / 2, cy + oh / 2)
    kind = int(rng.integers(4))
    if kind == 0:
        draw.ellipse(box, fill=255)
    elif kind == 1:  # capsule
        draw.rounded_rectangle(box, radius=int(min(ow, oh) / 2), fill=255)
    elif kind == 2:
        draw.rounded_rectangle(box, radius=int(min(ow, oh) * rng.uniform(0.05, 0.3)), fill=255)
    else:
        draw.polygon(_polygon(rng, cx, cy, min(ow, oh) / 2), fill=255)
    x, y = _grid(w, h)
    hx, hy = cx / w - rng.uniform(0, 0.25), cy / h - rng.uniform(0, 0.25)  # highlight up and left
    shade = np.clip(np.sqrt((x - hx) ** 2 + (y - hy) ** 2) / 0.7, 0, 1)
    light = tuple(min(255, c + 70) for c in fg)
    dark = tuple(max(0, c - 70) for c in fg)
    img.paste(_blend(shade, light, dark).convert("RGB"), (0, 0), mask)
    if rng.random() < 0.4:  # a score line or an imprint
        d = ImageDraw.Draw(img)
        ink = _colour(rng, max(0, min(255, sum(fg) / 3 - 90)))
        d.line([(box[0] + ow * 0.2, cy), (box[2] - ow * 0.2, cy)], fill=ink,
               width=max(1, int(min(ow, oh) / 20)))
    return img


def _shapes(rng: Rng, w: int, h: int) -> Image.Image:
    roll = rng.random()
    if roll < 0.45:
        return _scene(rng, w, h)
    if roll < 0.75:
        return _pattern(rng, w, h)
    return _object(rng, w, h)


# ---------------------------------------------------------------------------------------------
# Text, documents and signatures

_FONT_DIR_NAMES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
                   "DejaVuSans-BoldOblique.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
                   "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf", "DejaVuSansMono.ttf",
                   "DejaVuSansMono-Bold.ttf", "STIXGeneral.ttf", "STIXGeneralBol.ttf",
                   "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf", "cmr10.ttf", "cmss10.ttf",
                   "cmtt10.ttf", "cmti10.ttf", "cmb10.ttf")
_UNICODE_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansMono.ttf")  # all glyphs below
_MONO_FONTS = ("DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "cmtt10.ttf")
_FONT_SIZES = tuple(sorted({int(round(7 * 1.18 ** i)) for i in range(22)}))  # 7..228 px

_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LOWER = "abcdefghijklmnopqrstuvwxyz"
_DIGITS = "0123456789"
_PUNCT = "!?&@#$%*+=/()[]<>;:"
_EXOTIC = ("αβγδεζηθλμξπρσφψωΓΔΘΛΞΠΣΦΨΩ"
           "бвгджзийлпфцчшщыэюяБГДЖЗИЛПФЦЧШЩЭЮЯ"
           "∑∫√∞≈≠≤≥←→↑↓♠♣♥♦★☆●■▲◆✓✗€£¥§¶©®")
_WORDS = ("the of and to in is for on with as by at from this that order total date name "
          "page price item invoice account number report section figure table note please sign "
          "here address phone email amount paid due balance description quantity customer "
          "thank you results method data value summary chapter street city state code").split()
_VOWELS, _CONSONANTS = "aeiouy", "bcdfghjklmnprstvwz"


@functools.lru_cache(maxsize=None)
def _font_dir() -> str:
    import matplotlib  # a dependency already; its bundled fonts exist on every machine

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


@functools.lru_cache(maxsize=None)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(os.path.join(_font_dir(), name), size)


def _font_near(name: str, size: float) -> ImageFont.FreeTypeFont:
    """The font at the nearest of a few sizes, so that the cache stays small."""
    i = int(np.clip(np.searchsorted(_FONT_SIZES, size), 0, len(_FONT_SIZES) - 1))
    if i > 0 and size - _FONT_SIZES[i - 1] < _FONT_SIZES[i] - size:
        i -= 1
    return _font(name, _FONT_SIZES[i])


def _pick(rng: Rng, seq: Sequence[str]) -> str:
    return seq[int(rng.integers(len(seq)))]


def _word(rng: Rng) -> str:
    if rng.random() < 0.4:
        word = _pick(rng, _WORDS)
    else:
        word = "".join(_pick(rng, _CONSONANTS) + _pick(rng, _VOWELS) for _ in range(int(rng.integers(1, 5))))
        word = word[: int(rng.integers(1, len(word) + 1))]
    roll = rng.random()
    return word.capitalize() if roll < 0.25 else word.upper() if roll < 0.35 else word


def _number(rng: Rng) -> str:
    kind = int(rng.integers(5))
    if kind == 0:
        return str(int(rng.integers(0, 10 ** int(rng.integers(1, 8)))))
    if kind == 1:
        return f"{rng.uniform(0, 1000):.2f}"
    if kind == 2:
        day, month, year = int(rng.integers(1, 29)), int(rng.integers(1, 13)), int(rng.integers(1950, 2040))
        return f"{day:02d}/{month:02d}/{year}"
    if kind == 3:
        return f"${rng.uniform(0, 500):.2f}"
    return "-".join(str(int(rng.integers(100, 1000))) for _ in range(int(rng.integers(2, 4))))


def _text_content(rng: Rng) -> tuple[str, bool]:
    """A string and whether it needs a font with the exotic glyphs."""
    kind = int(rng.integers(8))
    if kind == 0:
        return _pick(rng, _UPPER + _LOWER), False
    if kind == 1:
        return _pick(rng, _DIGITS), False
    if kind == 2:
        return _pick(rng, _PUNCT + _EXOTIC), True
    if kind == 3:
        return "".join(_pick(rng, _EXOTIC) for _ in range(int(rng.integers(1, 6)))), True
    if kind == 4:
        return _number(rng), False
    if kind == 5:
        return _word(rng), False
    if kind == 6:
        return " ".join(_word(rng) if rng.random() < 0.8 else _number(rng)
                        for _ in range(int(rng.integers(2, 7)))), False
    lines = [" ".join(_word(rng) for _ in range(int(rng.integers(1, 5))))
             for _ in range(int(rng.integers(2, 5)))]
    return "\n".join(lines), False


def _text(rng: Rng, w: int, h: int) -> Image.Image:
    """Characters, words, numbers and short lines, sized to fill much of the image."""
    content, exotic = _text_content(rng)
    name = _pick(rng, _UNICODE_FONTS if exotic else _FONT_DIR_NAMES)
    bg, fg = _colour_pair(rng)
    img = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(img)
    probe = _font(name, 40)
    box = draw.multiline_textbbox((0, 0), content, font=probe)
    tw, th = max(1, box[2] - box[0]), max(1, box[3] - box[1])
    fill = rng.uniform(0.45, 1.0) if rng.random() < 0.85 else rng.uniform(1.0, 1.6)  # some overflow
    font = _font_near(name, 40 * min(w * fill / tw, h * fill / th))
    box = draw.multiline_textbbox((0, 0), content, font=font)
    tw, th = box[2] - box[0], box[3] - box[1]
    x = (w - tw) * (0.5 if rng.random() < 0.5 else rng.uniform(0, 1)) - box[0]
    y = (h - th) * (0.5 if rng.random() < 0.5 else rng.uniform(0, 1)) - box[1]
    draw.multiline_text((x, y), content, font=font, fill=fg, spacing=int(font.size * rng.uniform(0.1, 0.6)))
    if rng.random() < 0.3:
        angle = rng.uniform(-15, 15) if rng.random() < 0.8 else float(rng.choice([90, 180, 270]))
        img = img.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=bg)
    return img


def _synthetic_document(rng: Rng, w: int, h: int) -> Image.Image:
    """A page of body text, a table, a form or a receipt, in a small font."""
    paper = _colour(rng, rng.uniform(215, 255), grey=rng.random() < 0.6)
    ink = _colour(rng, rng.uniform(0, 90), grey=rng.random() < 0.7)
    img = Image.new("RGB", (w, h), paper)
    draw = ImageDraw.Draw(img)
    layout = int(rng.integers(4))
    name = _pick(rng, _MONO_FONTS) if layout == 3 else _pick(rng, _FONT_DIR_NAMES)
    size = math.exp(rng.uniform(math.log(7), math.log(max(8, h / 6))))
    font = _font_near(name, size)
    line_h = font.size * rng.uniform(1.15, 1.8)
    char_w = max(1.0, font.getlength("n"))
    margin = rng.uniform(0, 0.12) * w
    y = rng.uniform(0, 0.1) * h - rng.uniform(0, line_h)
    if layout == 1:
        _draw_table(draw, rng, name, font, char_w, line_h, margin, y, (w, h), ink)
        return img
    while y < h:
        if layout == 2 and rng.random() < 0.7:  # form: a label, then a blank line or boxes
            label = _word(rng).capitalize() + ":"
            draw.text((margin, y), label, font=font, fill=ink)
            x0 = margin + font.getlength(label) + char_w
            if rng.random() < 0.5:
                draw.line([(x0, y + font.size), (w - margin, y + font.size)], fill=ink, width=1)
            else:
                bw = font.size * 1.1
                for i in range(int((w - margin - x0) // bw)):
                    draw.rectangle((x0 + i * bw, y, x0 + (i + 1) * bw - 2, y + font.size), outline=ink)
            y += line_h * 1.4
            continue
        if layout == 3:  # receipt: item ... price
            item = " ".join(_word(rng) for _ in range(int(rng.integers(1, 3))))
            price = f"{rng.uniform(0, 99):.2f}"
            item = item[: max(1, int((w - 2 * margin) / char_w) - len(price) - 1)]
            draw.text((margin, y), item, font=font, fill=ink)
            draw.text((w - margin - font.getlength(price), y), price, font=font, fill=ink)
            y += line_h
            continue
        if rng.random() < 0.1:  # heading
            head = _font_near(name, font.size * 1.6)
            draw.text((margin, y), " ".join(_word(rng) for _ in range(int(rng.integers(1, 4)))).title(),
                      font=head, fill=ink)
            y += head.size * 1.6
            continue
        n_chars = int((w - 2 * margin) / char_w * (rng.uniform(0.3, 0.95) if rng.random() < 0.15 else 1.0))
        line = ""
        while len(line) < n_chars:
            line += _word(rng) + " "
        draw.text((margin, y), line[:n_chars], font=font, fill=ink)
        y += line_h * (1.8 if rng.random() < 0.1 else 1.0)
    return img


def _draw_table(draw: ImageDraw.ImageDraw, rng: Rng, name: str, font, char_w: float,
                line_h: float, margin: float, y: float, size: tuple[int, int], ink) -> None:
    """A table on the page from `y` down: ruled cells of short entries (numbers, words)."""
    w, h = size
    if 24 * char_w > w - 2 * margin:  # two columns of dates and phone numbers must fit side by side
        spacing = line_h / font.size
        font = _font_near(name, font.size * (w - 2 * margin) / (24 * char_w))
        char_w, line_h = max(1.0, font.getlength("n")), font.size * spacing
    cols = int(rng.integers(2, max(3, min(6, (w - 2 * margin) / (12 * char_w)) + 1)))
    xs = np.linspace(margin, w - margin, cols + 1)
    while y < h:
        for c in range(cols):
            cell = _number(rng) if rng.random() < 0.6 else _word(rng)
            draw.text((xs[c] + 2, y + 1), cell, font=font, fill=ink)
        draw.line([(xs[0], y), (xs[-1], y)], fill=ink, width=1)
        y += line_h + 2
    for xv in xs:
        draw.line([(xv, 0), (xv, h)], fill=ink, width=1)


def _scribbles(rng: Rng, w: int, h: int) -> Image.Image:
    """Synthetic signatures and scribbles: smooth strokes of varying width, drawn at twice the
    size and reduced so that thin strokes are anti-aliased."""
    paper, ink = _colour_pair(rng, min_gap=90)
    W, H = 2 * w, 2 * h
    img = Image.new("RGB", (W, H), paper)
    draw = ImageDraw.Draw(img)
    base = max(1.0, min(W, H) * math.exp(rng.uniform(math.log(0.008), math.log(0.06))))
    cursive = rng.random() < 0.6
    for _ in range(int(rng.integers(1, 4))):
        n = int(rng.integers(60, 160))
        if cursive:  # left to right, letters of varying height and width, some looped
            x0 = rng.uniform(0.02, 0.4) * W
            x1 = rng.uniform(x0 + 0.5 * W, 0.98 * W)
            t = np.linspace(0, 1, n)
            letters = rng.uniform(2.5, 9) * (x1 - x0) / H * 0.6
            speed = 0.4 + 1.2 * _smooth_field(rng, n, 2, int(rng.integers(3, 10)))[0]
            phase = 2 * math.pi * letters * np.cumsum(speed) / speed.sum()
            letter_w = (x1 - x0) / letters
            loop = letter_w * rng.uniform(0.05, 0.4)
            xs = x0 + (x1 - x0) * t - loop * np.sin(phase + rng.uniform(-0.5, 0.5))
            height = H * rng.uniform(0.12, 0.3)
            height = height * (0.4 + 1.2 * _smooth_field(rng, n, 2, int(rng.integers(3, 12)))[0])
            baseline = H * rng.uniform(0.35, 0.65) + H * rng.uniform(-0.15, 0.15) * (t - 0.5)
            ys = baseline - height * (0.5 + 0.5 * np.cos(phase))
        else:  # a turtle whose heading wanders smoothly
            start = rng.uniform(0, 2 * math.pi)
            curvature = np.cumsum(rng.normal(0, rng.uniform(0.1, 0.5), n))
            heading = start + np.cumsum(curvature) * 0.1
            step = min(W, H) * rng.uniform(0.01, 0.04)
            xs = rng.uniform(0.2, 0.8) * W + np.cumsum(step * np.cos(heading))
            ys = rng.uniform(0.2, 0.8) * H + np.cumsum(step * np.sin(heading))
            xs = (xs - xs.min()) / max(float(np.ptp(xs)), 1e-6) * W * rng.uniform(0.4, 0.95)
            xs = xs + rng.uniform(0, 0.05) * W
            ys = (ys - ys.min()) / max(float(np.ptp(ys)), 1e-6) * H * rng.uniform(0.3, 0.9)
            ys = ys + rng.uniform(0, 0.1) * H
        pts = list(zip(xs.tolist(), ys.tolist()))
        widths = base * (0.5 + _smooth_field(rng, n, 2, 6)[0] * 1.2)
        for i in range(0, n - 1, 8):  # the pen's pressure changes along the stroke
            draw.line(pts[i:i + 9], fill=ink, width=max(1, int(round(widths[i]))), joint="curve")
    if rng.random() < 0.35:  # a flourish underneath or a baseline to sign on
        y = H * rng.uniform(0.75, 0.95)
        draw.line([(W * rng.uniform(0, 0.3), y), (W * rng.uniform(0.6, 1), y + rng.uniform(-0.1, 0.1) * H)],
                  fill=ink, width=max(1, int(base * rng.uniform(0.5, 1.2))))
    return img.reduce(2)


# ---------------------------------------------------------------------------------------------
# Photo families: crops of scikit-image's bundled samples (shipped inside the package)

_PHOTO_NAMES = ("astronaut", "camera", "coffee", "chelsea", "coins", "moon", "horse", "rocket",
                "hubble_deep_field", "immunohistochemistry", "retina", "checkerboard", "clock",
                "grass", "gravel", "brick", "colorwheel", "cat", "logo", "microaneurysms", "cell")
_DOCUMENT_NAMES = ("page", "text")
# (left, top, right, bottom) around the heads in skimage.data.astronaut() and camera()
_HEAD_BOXES = (("astronaut", (150, 15, 305, 185)), ("camera", (145, 55, 285, 205)))
_MAX_SOURCE_SIDE = 512  # larger sources are reduced once; crops never need more detail


def _as_image(a: np.ndarray) -> Image.Image:
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = np.clip(np.asarray(a, np.float64) * (255 if a.max() <= 1.0 else 1), 0, 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[2] == 4:
        rgba = Image.fromarray(a, "RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    img = Image.fromarray(a, "L" if a.ndim == 2 else "RGB")
    if max(img.size) > _MAX_SOURCE_SIDE:
        scale = _MAX_SOURCE_SIDE / max(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
    return img


def _skimage(name: str) -> np.ndarray:
    from skimage import data  # lazily: only the photo families need it

    return getattr(data, name)()


@functools.lru_cache(maxsize=None)
def _lfw() -> tuple[tuple[Image.Image, ...], tuple[Image.Image, ...]]:
    """The bundled LFW subset: 100 face crops, then 100 background crops, 25x25 grey."""
    a = _skimage("lfw_subset")
    imgs = tuple(_as_image(x) for x in a)
    return imgs[:100], imgs[100:]


@functools.lru_cache(maxsize=None)
def _sources(names: tuple[str, ...]) -> tuple[Image.Image, ...]:
    return tuple(_as_image(_skimage(n)) for n in names)


@functools.lru_cache(maxsize=None)
def _heads() -> tuple[tuple[Image.Image, tuple[int, int, int, int]], ...]:
    return tuple((_as_image(_skimage(name)), box) for name, box in _HEAD_BOXES)


def _crop(rng: Rng, src: Image.Image, w: int, h: int, min_scale: float = 1 / 8) -> Image.Image:
    """A random crop of `src` with the target's aspect ratio, from the whole image down to
    `min_scale` of it, resized to (w, h), flipped at random."""
    scale = math.exp(rng.uniform(math.log(min_scale), 0))
    ch = src.height * scale
    cw = ch * w / h
    if cw > src.width:
        cw, ch = src.width, src.width * h / w
    x0, y0 = rng.uniform(0, src.width - cw), rng.uniform(0, src.height - ch)
    img = src.resize((w, h), Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch), reducing_gap=2.0)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.1:
        img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return img


def _photos(rng: Rng, w: int, h: int) -> Image.Image:
    if rng.random() < 0.08:  # LFW background patches: small, real-world clutter
        return _crop(rng, _pick_image(rng, _lfw()[1]), w, h, min_scale=0.5)
    return _crop(rng, _pick_image(rng, _sources(_PHOTO_NAMES)), w, h)


def _pick_image(rng: Rng, images: Sequence[Image.Image]) -> Image.Image:
    return images[int(rng.integers(len(images)))]


def _drawn_face(rng: Rng, w: int, h: int) -> Image.Image:
    """A cartoon face: enough of a face's layout to count as one, nothing like a photo."""
    img = _background(rng, w, h)
    d = ImageDraw.Draw(img)
    skin = _colour(rng, rng.uniform(90, 230), grey=rng.random() < 0.3)
    fw, fh = w * rng.uniform(0.5, 0.85), h * rng.uniform(0.6, 0.9)
    cx, cy = w / 2, h / 2
    if rng.random() < 0.6:
        hair = _colour(rng, rng.uniform(0, 120))
        d.ellipse((cx - fw / 2 - 2, cy - fh / 2 - 3, cx + fw / 2 + 2, cy + fh * 0.05), fill=hair)
    d.ellipse((cx - fw / 2, cy - fh / 2, cx + fw / 2, cy + fh / 2), fill=skin)
    eye = _colour(rng, rng.uniform(0, 70))
    er = max(1.0, fw * rng.uniform(0.04, 0.09))
    for sx in (-1, 1):
        ex, ey = cx + sx * fw * 0.2, cy - fh * 0.08
        d.ellipse((ex - er * 1.6, ey - er, ex + er * 1.6, ey + er), fill=(245, 245, 245))
        d.ellipse((ex - er, ey - er, ex + er, ey + er), fill=eye)
    mw = fw * rng.uniform(0.2, 0.4)
    my = cy + fh * rng.uniform(0.15, 0.3)
    d.arc((cx - mw, my - fh * 0.1, cx + mw, my + fh * 0.08), 10, 170, fill=eye, width=max(1, int(er / 2)))
    return img


def _faces(rng: Rng, w: int, h: int) -> Image.Image:
    roll = rng.random()
    if roll < 0.72:
        face = _pick_image(rng, _lfw()[0])
        # Keep the aspect ratio near square: a 25x25 face stretched 2:1 is no longer a face.
        side = rng.uniform(19, 25)
        cw = ch = side
        aspect = w / h
        if aspect > 1:
            ch = side / min(aspect, 1.3)
        else:
            cw = side * max(aspect, 1 / 1.3)
        x0, y0 = rng.uniform(0, 25 - cw), rng.uniform(0, 25 - ch)
        img = face.resize((w, h), Image.Resampling.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch))
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < 0.5:  # a skin tone instead of grey
            img = ImageOps.colorize(img, _colour(rng, rng.uniform(10, 60), False),
                                    _colour(rng, rng.uniform(190, 250), False), mid=_colour(rng, 130, False))
        return img
    if roll < 0.9:
        src, (l, t, r, b) = _heads()[int(rng.integers(len(_HEAD_BOXES)))]
        zoom = rng.uniform(0.8, 1.7)
        cx = (l + r) / 2 + rng.uniform(-0.1, 0.1) * (r - l)
        cy = (t + b) / 2 + rng.uniform(-0.1, 0.1) * (b - t)
        ch = (b - t) * zoom
        cw = ch * w / h
        box = (max(0.0, cx - cw / 2), max(0.0, cy - ch / 2),
               min(src.width, cx + cw / 2), min(src.height, cy + ch / 2))
        img = src.resize((w, h), Image.Resampling.BILINEAR, box=box)
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else img
    return _drawn_face(rng, w, h)


def _documents(rng: Rng, w: int, h: int) -> Image.Image:
    if rng.random() < 0.35:
        return _crop(rng, _pick_image(rng, _sources(_DOCUMENT_NAMES)), w, h)
    return _synthetic_document(rng, w, h)


_DIGIT_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
                "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf",
                "STIXGeneralItalic.ttf", "cmss10.ttf", "cmr10.ttf", "cmti10.ttf")


def _digits(rng: Rng, w: int, h: int) -> Image.Image:
    """A handwritten-looking digit (now and then two or three), framed as MNIST frames them: a
    font's glyph with a random pen width, slant and an elastic bend, white on black, its box
    scaled to 20 of 28 pixels and centred, often scanned at 8x8 and blown up again as
    scikit-learn's digits are; then brought to the image's size."""
    from scipy.ndimage import gaussian_filter, map_coordinates  # scikit-image depends on SciPy

    text = "".join(_pick(rng, _DIGITS) for _ in range(1 if rng.random() < 0.85 else
                                                       int(rng.integers(2, 4))))
    font = _font(_pick(rng, _DIGIT_FONTS), 64)
    canvas = Image.new("L", (64 * (len(text) + 1), 112), 0)
    ImageDraw.Draw(canvas).text((24, 12), text, font=font, fill=255)
    pen = int(rng.integers(-1, 4))  # thinner or thicker strokes than the font's
    if pen > 0:
        canvas = canvas.filter(ImageFilter.MaxFilter(2 * pen + 1))
    elif pen < 0:
        canvas = canvas.filter(ImageFilter.MinFilter(3))
    canvas = canvas.transform(canvas.size, Image.Transform.AFFINE,
                              (1, rng.uniform(-0.4, 0.4), 0, 0, 1, 0), Image.Resampling.BILINEAR)
    canvas = canvas.rotate(rng.uniform(-20, 20), Image.Resampling.BILINEAR)
    a = np.asarray(canvas, np.float32)
    alpha, sigma = rng.uniform(4, 12), rng.uniform(4, 7)  # an elastic bend, as hands make
    dy = gaussian_filter(rng.uniform(-1, 1, a.shape), sigma) * alpha * sigma
    dx = gaussian_filter(rng.uniform(-1, 1, a.shape), sigma) * alpha * sigma
    yy, xx = np.meshgrid(np.arange(a.shape[0]), np.arange(a.shape[1]), indexing="ij")
    a = map_coordinates(a, [yy + dy, xx + dx], order=1, mode="constant")
    glyph = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    box = glyph.getbbox() or (0, 0, glyph.width, glyph.height)
    glyph = glyph.crop(box)
    scale = 20 / max(glyph.size)
    glyph = glyph.resize((max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))),
                         Image.Resampling.LANCZOS)
    frame = Image.new("L", (28, 28), 0)
    frame.paste(glyph, ((28 - glyph.width) // 2, (28 - glyph.height) // 2))
    if rng.random() < 0.4:  # scanned small, as scikit-learn's 8x8 digits are, and blown up
        frame = frame.resize((8, 8), Image.Resampling.BOX).resize((28, 28),
                                                                 Image.Resampling.BILINEAR)
    return frame.resize((w, h), Image.Resampling.BILINEAR)


@functools.lru_cache(maxsize=None)
def shipped_images(family: str) -> np.ndarray:
    """The real images a shipped family draws from, uint8 (N, H, W)."""
    with np.load(os.path.join(SHIPPED_DIR, SHIPPED[family])) as data:
        if "bits" in data:  # 1-bit images (Omniglot), packed
            n, side = int(data["count"]), int(data["side"])
            return np.unpackbits(data["bits"], count=n * side * side).reshape(n, side, side) * 255
        return data["images"]


def _shipped(family: str) -> Callable[[Rng, int, int], Image.Image]:
    def draw(rng: Rng, w: int, h: int) -> Image.Image:
        images = shipped_images(family)
        img = Image.fromarray(images[int(rng.integers(len(images)))], "L")
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return img.rotate(rng.uniform(-10, 10), Image.Resampling.BILINEAR).resize(
            (w, h), Image.Resampling.BILINEAR)
    return draw


_GENERATORS: dict[str, Callable[[Rng, int, int], Image.Image]] = {
    "noise": _noise, "gradients": _gradients, "shapes": _shapes, "text": _text,
    "scribbles": _scribbles, "photos": _photos, "faces": _faces, "documents": _documents,
    "digits": _digits, **{family: _shipped(family) for family in SHIPPED},
}


# ---------------------------------------------------------------------------------------------
# Public API


def _check(n: int, families: Sequence[str]) -> tuple[str, ...]:
    if isinstance(families, str):
        families = (families,)
    families = tuple(families)
    if not families:
        raise ConfigError(f"families must name at least one of {', '.join(FAMILIES)}")
    bad = [f for f in families if f not in _GENERATORS]
    if bad:
        raise ConfigError(f"unknown foreign-image famil{'y' if len(bad) == 1 else 'ies'} "
                          f"{', '.join(map(repr, bad))}; valid: {', '.join(FAMILIES)}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ConfigError(f"the number of foreign images must be a whole number >= 0, not {n!r}")
    return families


def _stream(n: int, seed: int, families: tuple[str, ...]) -> Iterator[Image.Image]:
    rng = np.random.default_rng(seed)
    # Equal shares, in a shuffled order, so that any prefix of a batch is mixed too.
    order = rng.permutation(np.arange(n) % len(families))
    for k in order:
        w, h = _size(rng)
        img = _GENERATORS[families[int(k)]](rng, w, h)
        yield _finish(img, rng)


def foreign_images(n: int, seed: int, families: Sequence[str] = FAMILIES) -> list[Image.Image]:
    """`n` raw foreign images, the same for the same arguments, drawn evenly across `families`.

    Sizes are natural (24..256 px a side, aspect ratios 1:2 to 2:1) and modes mixed (L and RGB);
    each image has a random polarity (inverted half the time), contrast and blur, so no family has
    a tell-tale colour, brightness or size. Raises `ConfigError` for an unknown family or n < 0.
    """
    families = _check(n, families)
    return list(_stream(int(n), seed, families))


def shipped_batch(family: str, n: int, pre: Preprocessing, seed: int) -> np.ndarray:
    """`n` of a shipped family's real images as they are (no finishing: their own size, polarity
    and look) as model input for `pre`: what "this kind of image" means when asking whether it
    is a model's own kind."""
    images = shipped_images(family)
    pick = np.random.default_rng(seed).choice(len(images), min(n, len(images)), replace=False)
    return prepare_batch(images[pick], pre)


def foreign_batch(n: int, pre: Preprocessing, seed: int, families: Sequence[str] = FAMILIES) -> np.ndarray:
    """The images of `foreign_images(n, seed, families)` as model input for `pre`:
    `prepare_batch(foreign_images(...), pre)`, uint8 (n, H, W, C), prepared a chunk at a time."""
    families = _check(n, families)
    out = np.empty((int(n), *pre.shape), np.uint8)
    chunk: list[Image.Image] = []
    done = 0
    for img in _stream(int(n), seed, families):
        chunk.append(img)
        if len(chunk) == _CHUNK:
            out[done:done + len(chunk)] = prepare_batch(chunk, pre)
            done += len(chunk)
            chunk = []
    if chunk:
        out[done:done + len(chunk)] = prepare_batch(chunk, pre)
    return out
