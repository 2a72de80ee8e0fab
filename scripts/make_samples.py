"""Write the bundled sample gallery: Fashion-MNIST test images as PNG files in labelled folders.

The files are named by their index in the official test split (`t10k-01234.png`), so every
sample can be traced back to the dataset. Only test images are used: the bundled model never
saw them in training.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from scripts.common import FASHION_MNIST_DIR, run


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m scripts.make_samples", description=__doc__)
    p.add_argument("--dataset", default=FASHION_MNIST_DIR,
                   help="folder of the Fashion-MNIST idx files")
    p.add_argument("--out", default="samples/fashion-mnist", help="output folder")
    p.add_argument("--per-class", type=int, default=300, help="images per class (default 300)")
    return p


def folder_name(class_name: str) -> str:
    return class_name.replace("/", "-").replace(" ", "-")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
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
    return 0


def entry() -> None:
    run(main)


if __name__ == "__main__":
    entry()
