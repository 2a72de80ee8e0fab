"""What every command shares: quiet TensorFlow, logging, and one-line errors with exit codes."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ banner is noise for users


def run(main: Callable[[], int | None]) -> None:
    """Run a command: a `SiameseSearchError` becomes `error: <message>` and exit status 2."""
    from encoder.errors import SiameseSearchError

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        sys.exit(main() or 0)
    except SiameseSearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def add_dataset_argument(parser, required: bool = True) -> None:
    parser.add_argument(
        "--dataset", nargs="+", metavar=("KIND", "PATH"), required=required,
        help="fashion-mnist [FOLDER of the idx files; none: Keras' loader, online], "
             "folder ROOT (class-per-subfolder images), or omniglot ZIP_OR_FOLDER [...]")


def add_domain_arguments(parser) -> None:
    """The domain model's options (`encoder/domain.py`), as siamese-train and siamese-calibrate
    take them."""
    parser.add_argument(
        "--foreign-dataset", nargs="+", action="append", metavar=("KIND", "PATH"), default=[],
        help="another dataset whose images the domain model learns to reject, besides the "
             "generated foreign images (noise, shapes, text, scribbles, photos, faces, "
             "documents); same form as --dataset; may be repeated")
    parser.add_argument("--domain-epochs", type=int, default=4,
                        help="epochs of the domain model (default: %(default)s)")
    parser.add_argument("--domain", action=argparse.BooleanOptionalAction, default=True,
                        help="train the domain model that rejects images unlike the training "
                             "data (default: on; --no-domain leaves inputs unchecked)")


def load_foreign(specs: list[list[str]], pre) -> dict:
    """Each --foreign-dataset's images as model input for `pre`, by dataset name."""
    from encoder.datasets import load_dataset
    from encoder.images import prepare_batch

    out = {}
    for kind, *paths in specs:
        ds = load_dataset(kind, paths, split="train", pre=pre)
        out[ds.name] = prepare_batch(ds.images, pre)
    return out


def add_class_arguments(parser, purpose: str) -> None:
    """--classes and --exclude-classes: the same choice of classes for every command."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--classes", metavar="NAME,NAME", type=class_names,
                       help=f"only these classes ({purpose}): sub-folder names for folder data, "
                            "ALPHABET/CHARACTER for omniglot, the class names for fashion-mnist")
    group.add_argument("--exclude-classes", metavar="NAME,NAME", type=class_names,
                       help="all classes but these (e.g. to hold them out of training and "
                            "evaluate on them later with siamese-evaluate --classes)")


def class_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected one or more class names, separated by commas")
    return names


def choose_classes(ds, args):
    """The dataset with only the classes --classes and --exclude-classes leave in it."""
    if args.classes is None and args.exclude_classes is None:
        return ds
    return ds.select_classes(keep=args.classes, exclude=args.exclude_classes)


FASHION_MNIST_DIR = "../shared/datasets/fashion-mnist"  # the project's offline copy, beside the repo
