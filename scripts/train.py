"""siamese-train: train a Siamese encoder, calibrate its threshold, save the model directory."""
from __future__ import annotations

import argparse

from encoder.config import TrainConfig
from encoder.images import FITS, Preprocessing
from scripts.common import (add_class_arguments, add_dataset_argument, add_field_arguments,
                            add_foreign_argument, choose_classes, fields_from_args, load_foreign,
                            run)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="siamese-train", description=__doc__,
        epilog="example: siamese-train --dataset fashion-mnist datasets/fashion-mnist "
               "--out models/fashion-mnist --epochs 12")
    add_dataset_argument(p)
    add_class_arguments(p, "to train and validate on; the card records the classes left out")
    p.add_argument("--out", required=True, help="model directory to write (model.keras + card.json)")
    add_field_arguments(p, TrainConfig)
    p.add_argument("--input-size", type=int, metavar="PIXELS",
                   help="folder and omniglot data: square input side (default: the median image "
                        "side, kept within 28..64, and at most 32 for fewer than 1,000 images)")
    p.add_argument("--fit", choices=FITS, default="stretch",
                   help="how an image that is not square fills the square input, in training and "
                        "whenever the model is used (the card records it): stretch it, or pad: "
                        "keep its aspect ratio and fill the rest with its background (the median "
                        "of its border pixels), for long images such as signatures "
                        "(default: %(default)s)")
    add_foreign_argument(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from encoder.datasets import load_dataset

    config = fields_from_args(TrainConfig, args)
    ds = load_dataset(args.dataset[0], args.dataset[1:], split="train", side=args.input_size,
                      fit=args.fit)
    for name, reason in ds.skipped:
        print(f"skipped {name}: {reason}")
    ds = choose_classes(ds, args)
    if ds.excluded_classes:
        print(f"left out {len(ds.excluded_classes)} class(es): "
              + ", ".join(ds.excluded_classes[:20])
              + (" ..." if len(ds.excluded_classes) > 20 else ""))
    pre = Preprocessing(*ds.images.shape[1:], invert=args.invert, fit=ds.fit)
    extra_foreign = load_foreign(args.foreign_dataset, pre)
    from encoder.training import train  # TensorFlow, once the data is known to be good

    train(ds, config, args.out, extra_foreign=extra_foreign)
    return 0


def entry() -> None:
    run(main)


if __name__ == "__main__":
    entry()
