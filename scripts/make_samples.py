"""Write the bundled sample gallery: Fashion-MNIST test images as PNG files in labelled folders;
and the query images the docs' examples use (samples/queries), none of them in the gallery.

The files are named by their index in the official test split (`t10k-01234.png`), so every
sample can be traced back to the dataset. Only test images are used: the bundled model never
saw them in training. The queries are the next test images of a few classes, and one portrait
that is nothing like the training data (scikit-image's astronaut, a NASA photograph in the
public domain) to show the domain check.

With --foreign, instead: the real images the package ships for domain checks to learn from
(`encoder/foreign_data/`): 2,000 Fashion-MNIST training images and 2,000 Omniglot characters,
drawn with a fixed seed.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from scripts.common import FASHION_MNIST_DIR, OMNIGLOT_BACKGROUND, run

FOREIGN_IMAGES = 2000


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m scripts.make_samples", description=__doc__)
    p.add_argument("--dataset", default=FASHION_MNIST_DIR,
                   help="folder of the Fashion-MNIST idx files")
    p.add_argument("--out", default="samples/fashion-mnist", help="output folder")
    p.add_argument("--per-class", type=int, default=300, help="images per class (default 300)")
    p.add_argument("--queries",
                   help="output folder of the docs' query images (default: queries/ beside "
                        "--out, so samples/queries)")
    p.add_argument("--foreign", metavar="FOLDER",
                   help="write the foreign sets the package ships into FOLDER (encoder/"
                        "foreign_data) instead of the sample gallery")
    p.add_argument("--omniglot", nargs="+", default=OMNIGLOT_BACKGROUND, metavar="ZIP",
                   help="--foreign: the Omniglot sources (default: the two small background sets)")
    return p


def write_foreign(args) -> None:
    """The shipped foreign sets: Fashion-MNIST thumbnails as they are, Omniglot's 105x105 1-bit
    characters packed to bits (a fifth of the size)."""
    from encoder.datasets import load_fashion_mnist, load_omniglot
    from encoder.images import Preprocessing

    out = Path(args.foreign)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261207)
    train = load_fashion_mnist(args.dataset, "train")
    pick = np.sort(rng.choice(len(train), FOREIGN_IMAGES, replace=False))
    np.savez_compressed(out / "fashion-mnist.npz", images=train.images[pick, :, :, 0],
                        indices=pick)
    omniglot = load_omniglot(args.omniglot, Preprocessing(105, 105, 1))
    pick = np.sort(rng.choice(len(omniglot), FOREIGN_IMAGES, replace=False))
    ink = omniglot.images[pick, :, :, 0] >= 128
    np.savez_compressed(out / "omniglot.npz", bits=np.packbits(ink), count=len(pick), side=105,
                        indices=pick)
    print(f"wrote {FOREIGN_IMAGES} Fashion-MNIST and {FOREIGN_IMAGES} Omniglot images under {out}")


# The docs' queries: (file name, class, which test image of that class after the gallery's).
QUERIES = [("sneaker.png", "Sneaker", 0), ("bag.png", "Bag", 0), ("coat.png", "Coat", 0),
           ("coat-2.png", "Coat", 1), ("trouser.png", "Trouser", 0)]


def folder_name(class_name: str) -> str:
    return class_name.replace("/", "-").replace(" ", "-")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.foreign:
        write_foreign(args)
        return 0
    from PIL import Image

    from encoder.datasets import load_fashion_mnist

    test = load_fashion_mnist(args.dataset, "test")
    out = Path(args.out)
    written = 0
    for label, name in enumerate(test.class_names):
        folder = out / folder_name(name)
        folder.mkdir(parents=True, exist_ok=True)
        for index in np.nonzero(test.labels == label)[0][:args.per_class]:
            Image.fromarray(test.images[index].squeeze(-1)).save(
                folder / f"t10k-{index:05d}.png", optimize=True)
            written += 1
    print(f"wrote {written} PNG files in {len(test.class_names)} folders under {out}")
    queries = Path(args.queries) if args.queries else out.parent / "queries"
    queries.mkdir(parents=True, exist_ok=True)
    for file_name, class_name, n in QUERIES:
        label = [folder_name(c) for c in test.class_names].index(class_name)
        index = np.nonzero(test.labels == label)[0][args.per_class + n]
        Image.fromarray(test.images[index].squeeze(-1)).save(queries / file_name, optimize=True)
    from skimage import data

    Image.fromarray(data.astronaut()).resize((128, 128), Image.LANCZOS).save(
        queries / "portrait.png", optimize=True)
    print(f"wrote {len(QUERIES) + 1} query images under {queries}")
    return 0


def entry() -> None:
    run(main)


if __name__ == "__main__":
    entry()
