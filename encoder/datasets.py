"""Labelled image datasets as uint8 arrays: Fashion-MNIST idx files, class-per-subfolder trees, Omniglot.

Every loader returns a `Dataset` of *raw* images (uint8 (N, H, W, C), not inverted) and integer
labels. Model input is made from it by `images.prepare_batch`, the one preprocessing path.
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
import time
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from .errors import BadImageError, ConfigError, DatasetError
from .images import (FITS, IMAGE_SUFFIXES, MAX_IMAGE_BYTES, Preprocessing, decode, image_files,
                     is_image_name, read_bytes, to_array)

log = logging.getLogger(__name__)

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DATASET_KINDS = ("fashion-mnist", "folder", "omniglot")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


@dataclass
class Dataset:
    images: np.ndarray  # uint8 (N, H, W, C), raw
    labels: np.ndarray  # int64 (N,), 0..len(class_names)-1
    class_names: list[str]
    name: str
    kind: str = ""  # how it was loaded: one of DATASET_KINDS
    groups: Optional[np.ndarray] = None  # e.g. the Omniglot alphabet of each image
    group_names: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    fit: str = "stretch"  # how the images were fitted to their size (`Preprocessing.fit`)
    excluded_classes: list[str] = field(default_factory=list)  # left out by `select_classes`

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=self.num_classes)
        return {name: int(c) for name, c in zip(self.class_names, counts)}

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(str(self.images.shape).encode())
        h.update(np.ascontiguousarray(self.images).tobytes())
        h.update(self.labels.astype("<i8").tobytes())
        return h.hexdigest()[:16]

    def subset(self, index: np.ndarray) -> "Dataset":
        """The images at `index`, with the classes that remain numbered 0..k-1 in name order."""
        present, labels = np.unique(self.labels[index], return_inverse=True)
        return replace(self, images=self.images[index], labels=labels.astype(np.int64),
                       class_names=[self.class_names[c] for c in present],
                       groups=None if self.groups is None else self.groups[index])

    def groups_present(self, index: Optional[np.ndarray] = None) -> list[str]:
        """Names of the groups among the images at `index` (default: all), in name order."""
        if self.groups is None:
            return []
        groups = self.groups if index is None else self.groups[index]
        return sorted({self.group_names[g] for g in np.unique(groups)})

    def select_groups(self, names: Sequence[str]) -> "Dataset":
        """Only the images of the named groups (e.g. Omniglot alphabets)."""
        if self.groups is None:
            raise DatasetError(f"{self.name} has no groups (alphabets) to choose from")
        unknown = sorted(set(names) - set(self.group_names))
        if unknown:
            raise DatasetError(f"{self.name}: no group named {', '.join(map(repr, unknown))}; "
                               f"it has {', '.join(self.group_names)}")
        wanted = [self.group_names.index(n) for n in names]
        return self.subset(np.nonzero(np.isin(self.groups, wanted))[0])

    def select_classes(self, keep: Optional[Sequence[str]] = None,
                       exclude: Optional[Sequence[str]] = None) -> "Dataset":
        """Only the classes named in `keep` (default: all), less those named in `exclude`: to hold
        classes out of training and evaluate on exactly them later. Names are class names: the
        sub-folder names of a folder tree, "Alphabet/character" for Omniglot. Unknown names are
        an error naming them; the classes left out are added to `excluded_classes`."""
        named = [*(keep or ()), *(exclude or ())]
        unknown = sorted(set(named) - set(self.class_names))
        if unknown:
            shown = ", ".join(self.class_names[:10]) + (
                f" ... ({self.num_classes} in all)" if self.num_classes > 10 else "")
            raise DatasetError(f"{self.name}: no class named {', '.join(map(repr, unknown))}; "
                               f"it has {shown}")
        wanted = set(self.class_names if keep is None else keep) - set(exclude or ())
        chosen = [c for c, name in enumerate(self.class_names) if name in wanted]
        if not chosen:
            raise DatasetError(f"{self.name}: no classes left once "
                               + ("kept and excluded" if keep is not None and exclude else
                                  "excluded" if exclude else "chosen"))
        left_out = [name for name in self.class_names if name not in wanted]
        return replace(self.subset(np.nonzero(np.isin(self.labels, chosen))[0]),
                       excluded_classes=sorted({*self.excluded_classes, *left_out}))

    def count_report(self, shown: int = 60) -> list[str]:
        """Lines for people: images per class (every class when there are few, else the
        smallest and largest), so a lopsided or thin dataset is noticed before training."""
        counts = np.bincount(self.labels, minlength=self.num_classes)
        if counts.min() == counts.max():
            return [f"{self.num_classes} classes, {len(self)} images; {counts[0]} per class"]
        lines = [f"{self.num_classes} classes, {len(self)} images; per class: min {counts.min()}, "
                 f"median {np.median(counts):g}, max {counts.max()}"]
        order = np.argsort(counts, kind="stable")
        if self.num_classes > shown:
            order = np.r_[order[:shown // 2], order[-(shown // 2):]]
            lines.append(f"the {shown // 2} smallest and {shown // 2} largest classes:")
        cells = [f"{self.class_names[c]} {counts[c]}" for c in order]
        width = max(len(c) for c in cells) + 2
        per_line = max(1, 96 // width)
        lines += ["  " + "".join(c.ljust(width) for c in cells[i:i + per_line]).rstrip()
                  for i in range(0, len(cells), per_line)]
        return lines

    def check_trainable(self) -> None:
        """Refuse datasets that cannot give both positive and negative pairs."""
        if self.num_classes < 2 or len(np.unique(self.labels)) < 2:
            raise DatasetError(f"{self.name}: needs at least two classes, found "
                               f"{len(np.unique(self.labels))}")
        small = [n for n, c in self.class_counts().items() if c < 2]
        if small:
            shown = ", ".join(small[:5]) + (f" and {len(small) - 5} more" if len(small) > 5 else "")
            raise DatasetError(f"{self.name}: every class needs at least two images; "
                               f"{len(small)} class(es) have fewer: {shown} (a class needs a "
                               "same-class pair: add images or remove it)")


# --- Fashion-MNIST ---------------------------------------------------------------------------

def _read_idx(folder: Path, stem: str) -> bytes:
    """An idx file's decompressed bytes, from `stem.gz`, split `stem.gz.partNN` files, or `stem`."""
    parts = sorted(folder.glob(stem + ".gz.part*"))
    try:
        if parts:
            return gzip.decompress(b"".join(p.read_bytes() for p in parts))
        if (folder / (stem + ".gz")).is_file():
            return gzip.decompress((folder / (stem + ".gz")).read_bytes())
        if (folder / stem).is_file():
            return (folder / stem).read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DatasetError(f"{folder / stem}: corrupt or truncated gzip file ({exc})") from None
    raise DatasetError(f"{folder}: no {stem}.gz (or .gz.partNN parts, or {stem}) found")


def _parse_idx(raw: bytes, ndim: int, where: str) -> np.ndarray:
    magic = 0x0800 + ndim
    if len(raw) < 4 + 4 * ndim or int.from_bytes(raw[:4], "big") != magic:
        raise DatasetError(f"{where}: not an idx file of {ndim} dimension(s) (bad magic number)")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise DatasetError(f"{where}: header says {dims} but holds {len(raw) - offset:,} bytes")
    return np.frombuffer(raw, np.uint8, offset=offset).reshape(dims)


def load_fashion_mnist(folder: str | os.PathLike, split: str = "train") -> Dataset:
    """Fashion-MNIST from a folder of the official idx files (whole `.gz`, split parts, or plain)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder")
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise DatasetError(f"split must be 'train' or 'test', not {split!r}")
    x = _parse_idx(_read_idx(folder, f"{prefix}-images-idx3-ubyte"), 3, f"{folder}/{prefix}-images")
    y = _parse_idx(_read_idx(folder, f"{prefix}-labels-idx1-ubyte"), 1, f"{folder}/{prefix}-labels")
    if len(x) != len(y):
        raise DatasetError(f"{folder}: {len(x)} images but {len(y)} labels in the {split} split")
    if y.max() >= len(FASHION_MNIST_CLASSES):
        raise DatasetError(f"{folder}: label {y.max()} is not a Fashion-MNIST class")
    return Dataset(x[..., None], y.astype(np.int64), list(FASHION_MNIST_CLASSES),
                   name=f"fashion-mnist:{split}", kind="fashion-mnist")


def load_fashion_mnist_keras(split: str = "train") -> Dataset:
    """Fashion-MNIST through Keras' own loader (downloads once, when online, into ~/.keras)."""
    import keras

    try:
        (xtr, ytr), (xte, yte) = keras.datasets.fashion_mnist.load_data()
    except Exception as exc:  # network errors come in many types
        raise DatasetError(f"Keras could not load Fashion-MNIST ({exc}); give the folder of the "
                           "idx files instead: --dataset fashion-mnist PATH") from None
    x, y = (xtr, ytr) if split == "train" else (xte, yte)
    return Dataset(x[..., None], y.astype(np.int64), list(FASHION_MNIST_CLASSES),
                   name=f"fashion-mnist:{split}", kind="fashion-mnist")


# --- image trees -----------------------------------------------------------------------------

def colour_mode(img: Image.Image) -> str:
    """The image's mode, but "L" (or "LA") for a palette image whose colours in use are all
    grey (r == g == b): a grey GIF, or a PNG or TIFF that an editor saved with a palette."""
    if img.mode not in ("P", "PA"):
        return img.mode
    palette = img.getpalette("RGB")
    if not palette:
        return img.mode
    colours = np.asarray(palette, np.uint8).reshape(-1, 3)
    used = np.unique(np.asarray(img.getchannel(0)))
    colours = colours[used[used < len(colours)]]
    grey = bool((colours == colours[:, :1]).all())
    return ("L" if img.mode == "P" else "LA") if grey else img.mode


def infer_preprocessing(sizes: Sequence[tuple[int, int]], modes: Sequence[str],
                        side: Optional[int] = None, fit: str = "stretch") -> Preprocessing:
    """A sensible model input for a folder of images: grey unless any image has colour (`modes`
    as `colour_mode` gives them, so grey palettes count as grey); a square side near the median
    image size, between 28 and 64 pixels (small data does not need more), and at most 32 for
    fewer than 1,000 images (a few hundred images cannot teach finer detail, and 32 pixels train
    four times faster than 64), unless `side` is given. `fit`: see `Preprocessing.fit`."""
    grey = all(m in GREY_MODES for m in modes)
    if side is None:
        side = int(np.median([min(w, h) for w, h in sizes]))
        side = int(np.clip(round(side / 4) * 4, 28, 64 if len(sizes) >= 1000 else 32))
    return Preprocessing(height=side, width=side, channels=1 if grey else 3, fit=fit)


def _report_progress(done: int, total: int, start: float, what: str) -> None:
    if done % 2000 == 0 or done == total:
        rate = done / max(time.perf_counter() - start, 1e-9)
        log.info("%s: %d/%d images (%.0f/s, ETA %.0fs)", what, done, total, rate,
                 (total - done) / max(rate, 1e-9))


def _load_files(entries: list[tuple[str, int, Optional[int]]], read, pre: Optional[Preprocessing],
                what: str, side: Optional[int] = None, fit: str = "stretch"
                ) -> tuple[np.ndarray, list[int], list[Optional[int]], list[tuple[str, str]],
                           Preprocessing]:
    """Decode (name, label, group) entries with `read(name) -> bytes`; skip and report bad files."""
    skipped: list[tuple[str, str]] = []
    decoded: list[tuple[Image.Image, int, Optional[int]]] = []
    start = time.perf_counter()
    for n, (name, label, group) in enumerate(entries, 1):
        try:
            decoded.append((decode(read(name), name=name), label, group))
        except BadImageError as exc:
            skipped.append((name, str(exc).removeprefix(name + ": ")))
        _report_progress(n, len(entries), start, what)
    if skipped:
        log.warning("%s: skipped %d unreadable file(s), first: %s (%s)", what, len(skipped),
                    *skipped[0])
    if not decoded:
        raise DatasetError(f"{what}: no readable images")
    if pre is None:
        pre = infer_preprocessing([im.size for im, _, _ in decoded],
                                  [colour_mode(im) for im, _, _ in decoded], side, fit)
    raw = replace(pre, invert=False)
    images = np.stack([to_array(im, raw) for im, _, _ in decoded])
    return images, [l for _, l, _ in decoded], [g for _, _, g in decoded], skipped, pre


def _class_folders(root: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """The class sub-folders of `root`, and the ones refused: a symbolic link to `root` itself or
    to a folder above it would make the tree contain itself."""
    classes, refused = [], []
    top = root.resolve()
    for d in sorted(root.iterdir()):
        if d.name.startswith(".") or not d.is_dir():
            continue
        if d.is_symlink() and (top == d.resolve() or d.resolve() in top.parents):
            refused.append((str(d), "symbolic link loop: it leads back to the dataset folder"))
        else:
            classes.append(d.name)
    return classes, refused


def load_image_folder(root: str | os.PathLike, pre: Optional[Preprocessing] = None,
                      side: Optional[int] = None, fit: str = "stretch") -> Dataset:
    """A class-per-subfolder tree: `root/<class>/**/<image>`. Symbolic links to folders inside a
    class are not followed, and a class folder that links back to the tree is refused (no loops);
    files that do not decode are reported in `skipped`."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    classes, refused = _class_folders(root)
    for name, reason in refused:
        log.warning("%s: skipped (%s)", name, reason)
    if not classes:
        raise DatasetError(f"{root}: no class sub-folders (expected {root}/<class>/<image files>)")
    entries = [(path, label, None) for label, cls in enumerate(classes)
               for path in image_files(root / cls)]
    if not entries:
        raise DatasetError(f"{root}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                           "in its class sub-folders")
    images, labels, _, skipped, pre = _load_files(
        entries, lambda p: read_bytes(p, MAX_IMAGE_BYTES), pre, str(root), side, fit)
    labels = np.asarray(labels, np.int64)
    empty = sorted(set(range(len(classes))) - set(labels.tolist()))
    if empty:
        # A class whose every file was unreadable: drop it rather than keep a name without images.
        log.warning("%s: %d class folder(s) without a readable image, left out: %s", root,
                    len(empty), ", ".join(classes[c] for c in empty[:5]))
    ds = Dataset(images, labels, classes, name=f"folder:{root}", kind="folder",
                 skipped=refused + skipped, fit=pre.fit)
    return ds.subset(np.arange(len(ds))) if empty else ds


def load_omniglot(paths: Sequence[str | os.PathLike], pre: Optional[Preprocessing] = None,
                  side: Optional[int] = None, fit: str = "stretch") -> Dataset:
    """Omniglot `<alphabet>/<character>/<image>.png` trees or zips of them (e.g. the background sets).

    The class is (alphabet, character); an image present in several sources (Greek and Latin are in
    both small background sets) is taken once. `groups` holds each image's alphabet."""
    found: dict[tuple[str, str, str], tuple[object, str]] = {}
    for path in map(Path, paths):
        if zipfile.is_zipfile(path):
            zf = zipfile.ZipFile(path)
            names = [n for n in zf.namelist() if is_image_name(n.rsplit("/", 1)[-1])]
            for n in names:
                parts = n.split("/")
                if len(parts) >= 3:
                    found.setdefault((parts[-3], parts[-2], parts[-1]), (zf, n))
        elif path.is_dir():
            for p in map(Path, image_files(path)):
                rel = p.relative_to(path).parts
                if len(rel) >= 2:
                    key = (rel[-3] if len(rel) >= 3 else path.name, rel[-2], rel[-1])
                    found.setdefault(key, (None, str(p)))
        else:
            raise DatasetError(f"{path}: neither a folder nor a zip file")
    if not found:
        raise DatasetError(f"{', '.join(map(str, paths))}: no <alphabet>/<character>/<image> files")
    keys = sorted(found)
    alphabets = sorted({a for a, _, _ in keys})
    classes = sorted({f"{a}/{c}" for a, c, _ in keys})
    class_index = {c: i for i, c in enumerate(classes)}
    alphabet_index = {a: i for i, a in enumerate(alphabets)}
    entries = [(f"{a}/{c}/{f}", class_index[f"{a}/{c}"], alphabet_index[a]) for a, c, f in keys]
    sources = {f"{a}/{c}/{f}": found[(a, c, f)] for a, c, f in keys}

    def read(name: str) -> bytes:
        zf, member = sources[name]
        return zf.read(member) if zf is not None else read_bytes(member)

    images, labels, groups, skipped, pre = _load_files(entries, read, pre, "omniglot", side, fit)
    return Dataset(images, np.asarray(labels, np.int64), classes, name="omniglot", kind="omniglot",
                   groups=np.asarray(groups, np.int64), group_names=alphabets, skipped=skipped,
                   fit=pre.fit)


def load_dataset(kind: str, paths: Sequence[str] = (), split: str = "train",
                 pre: Optional[Preprocessing] = None, side: Optional[int] = None,
                 fit: str = "stretch") -> Dataset:
    """Dispatch on the dataset kind named on the command line (`--dataset KIND [PATH ...]`).

    Images come as `pre` says (a model's card), or else at a size and colour inferred from the
    files, with `side` as the square side when given (folder and Omniglot data), fitted to it as
    `fit` says (`Preprocessing.fit`)."""
    if fit not in FITS:
        raise ConfigError(f"fit must be one of {', '.join(FITS)}, not {fit!r}")
    if kind == "fashion-mnist":
        if len(paths) > 1:
            raise DatasetError("fashion-mnist takes one folder (of the four idx files)")
        if side not in (None, 28):
            raise DatasetError("fashion-mnist images are 28x28; an input size applies to folder "
                               "and omniglot data")
        ds = load_fashion_mnist(paths[0], split) if paths else load_fashion_mnist_keras(split)
        # Already 28x28: nothing to fit, but a model trained with "pad" pads what it is given.
        return replace(ds, fit=pre.fit if pre is not None else fit)
    if kind == "folder":
        if len(paths) != 1:
            raise DatasetError("folder takes exactly one path: the root of a class-per-subfolder tree")
        return load_image_folder(paths[0], pre, side, fit)
    if kind == "omniglot":
        if not paths:
            raise DatasetError("omniglot needs one or more folders or zip files")
        return load_omniglot(paths, pre, side, fit)
    raise DatasetError(f"unknown dataset kind {kind!r}; expected one of {', '.join(DATASET_KINDS)}")
