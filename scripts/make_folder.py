"""Write a small class-per-subfolder image tree from Omniglot characters, in mixed sizes, colours
and file formats, as users' own data comes: for trying `siamese-train --dataset folder` and
measuring how its threshold holds on classes it never saw.

Characters are drawn by a seeded shuffle of all the characters in the sources; `--skip` leaves out
the first ones, so two runs with the same seed give disjoint trees (e.g. 40 classes to train on,
then `--skip 40` for classes never seen).
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

from scripts.common import OMNIGLOT_BACKGROUND, run

SIDES = (40, 64, 80, 105, 150)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m scripts.make_folder", description=__doc__)
    p.add_argument("--omniglot", nargs="+", metavar="ZIP_OR_FOLDER",
                   default=OMNIGLOT_BACKGROUND,
                   help="Omniglot sources (default: the two small background sets)")
    p.add_argument("--out", required=True, help="folder to write (<class>/<image>)")
    p.add_argument("--classes", type=int, default=40, help="characters (default: %(default)s)")
    p.add_argument("--per-class", type=int, default=10, help="images each (default: %(default)s)")
    p.add_argument("--skip", type=int, default=0,
                   help="leave out the first SKIP characters of the shuffle (default: 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle and the looks")
    return p


def styled(stroke: np.ndarray, rng: np.random.Generator):
    """One 105x105 grey Omniglot image as a user might have it: resized, and as grey, colour
    (coloured ink on tinted paper), palette, transparent, 1-bit or 16-bit; with its file suffix."""
    from PIL import Image

    side = int(rng.choice(SIDES))
    grey = Image.fromarray(stroke).resize((side, side), Image.Resampling.BILINEAR)
    look = rng.integers(6)
    if look == 0:
        return grey, ".png"
    if look in (1, 2):
        ink, paper = rng.integers(0, 120, 3), rng.integers(200, 256, 3)
        t = np.asarray(grey, np.float32)[..., None] / 255
        rgb = Image.fromarray((t * paper + (1 - t) * ink).astype(np.uint8), "RGB")
        return rgb, ".jpg" if look == 1 else ".png"
    if look == 3:
        return grey.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16), ".gif"
    if look == 4:
        rgba = Image.new("RGBA", grey.size, (0, 0, 0, 0))
        rgba.putalpha(Image.fromarray(255 - np.asarray(grey)))  # ink opaque, paper transparent
        return rgba, ".png"
    return Image.fromarray(np.asarray(grey).astype(np.uint16) * 257), ".png"  # 16-bit grey


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from encoder.datasets import load_omniglot
    from encoder.errors import ConfigError
    from encoder.images import Preprocessing

    ds = load_omniglot(args.omniglot, Preprocessing(105, 105, 1))
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(ds.num_classes)
    if args.skip + args.classes > ds.num_classes or args.classes < 1 or args.per_class < 1:
        raise ConfigError(f"the sources hold {ds.num_classes} characters; cannot skip {args.skip} "
                          f"and write {args.classes}")
    out = Path(args.out)
    for c in order[args.skip:args.skip + args.classes]:
        folder = out / ds.class_names[c].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        members = np.nonzero(ds.labels == c)[0]
        for i in rng.choice(members, min(args.per_class, len(members)), replace=False):
            image, suffix = styled(ds.images[i, :, :, 0], rng)
            buf = io.BytesIO()
            image.save(buf, format={".jpg": "JPEG", ".gif": "GIF"}.get(suffix, "PNG"))
            (folder / f"{i:05d}{suffix}").write_bytes(buf.getvalue())
    print(f"wrote {args.classes} classes x {args.per_class} images under {out}")
    return 0


def entry() -> None:
    run(main)


if __name__ == "__main__":
    entry()
