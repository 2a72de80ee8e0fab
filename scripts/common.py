"""What every command shares: quiet TensorFlow, logging, and one-line errors with exit codes."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing
from pathlib import Path
from typing import Callable, Optional, Sequence

from encoder.quiet import install

install()  # TensorFlow's start-up lines are noise for users (`encoder` does it too, on import)


def run(main: Callable[[], int | None]) -> None:
    """Run a command: a `SiameseSearchError`, a file system that refuses (disk full, read-only)
    or a database that fails becomes `error: <message>` and exit status 2."""
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
    except Exception as exc:
        line = failure_line(exc)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        sys.exit(2)


def failure_line(exc: Exception) -> Optional[str]:
    """One line for a failure of the disk, the database or a file, else None (a bug: its
    traceback)."""
    from indexer.errors import storage_failure

    storage = storage_failure(exc)
    if storage is not None:
        return {"disk_full": "disk full: nothing more could be written ({})",
                "database": "database: {}", "files": "{}"}[storage.kind].format(storage.detail)
    if isinstance(exc, OSError):  # any other file a command could not read or write
        return (f"{exc.filename}: " if exc.filename else "") + str(exc.strerror or exc)
    return None


def add_progress_argument(parser) -> None:
    parser.add_argument("--progress", choices=["auto", "always", "never"], default="auto",
                        help="progress bar on stderr (default: auto, when stderr is a terminal)")


def progress_bar(mode: str, **options):
    """A tqdm bar on stderr as --progress says (auto: only on a terminal)."""
    from tqdm import tqdm

    disable = {"auto": None, "always": False, "never": True}[mode]
    return tqdm(file=sys.stderr, disable=disable, dynamic_ncols=True, **options)


def add_dataset_argument(parser, required: bool = True) -> None:
    parser.add_argument(
        "--dataset", nargs="+", metavar=("KIND", "PATH"), required=required,
        help="fashion-mnist [FOLDER of the idx files; none: Keras' loader, online], "
             "folder ROOT (class-per-subfolder images), or omniglot ZIP_OR_FOLDER [...]")


def add_foreign_argument(parser) -> None:
    """--foreign-dataset: images the domain model (`encoder/domain.py`) learns to reject."""
    parser.add_argument(
        "--foreign-dataset", nargs="+", action="append", metavar=("KIND", "PATH"), default=[],
        help="another dataset whose images the domain model learns to reject, besides the "
             "generated foreign images (noise, shapes, text, scribbles, photos, faces, "
             "documents); same form as --dataset; may be repeated")


def add_field_arguments(parser, config: type, only: Optional[Sequence[str]] = None) -> None:
    """A flag for each field of dataclass `config` (or the fields named in `only`), from the
    field's type, default, check and help (`encoder.params.param`): `--name-with-dashes`; a
    bool that is off by default is a switch, any other bool takes `--no-...` too."""
    hints = typing.get_type_hints(config)
    for f in dataclasses.fields(config):
        if only is not None and f.name not in only:
            continue
        flag, meta = "--" + f.name.replace("_", "-"), f.metadata
        kind = next((t for t in typing.get_args(hints[f.name]) if t is not type(None)),
                    hints[f.name])
        shown = ("" if f.default is None or f.default is False
                 else " (default: on)" if f.default is True else f" (default: {f.default})")
        help_text = (meta.get("help", "") + shown).replace("%", "%%")
        if kind is bool:
            action = "store_true" if f.default is False else argparse.BooleanOptionalAction
            parser.add_argument(flag, action=action, default=f.default, help=help_text)
            continue
        check = meta.get("check")
        metavar = meta.get("metavar", "N" if kind is int else "X" if kind is float else None)
        parser.add_argument(flag, type=kind, default=f.default, metavar=metavar,
                            choices=getattr(check, "choices", None), help=help_text)


def fields_from_args(config: type, args: argparse.Namespace):
    """`config` built from the flags `add_field_arguments` made."""
    return config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config)
                     if hasattr(args, f.name)})


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


REPOSITORY = Path(__file__).resolve().parents[1]


def repository_dataset(*parts: str) -> str:
    """A path into the repository's `datasets/` folder (the data the tests, the benchmarks and the
    bundled models' reproduction use): relative when run from the repository root, as the docs
    do, else absolute."""
    path = REPOSITORY.joinpath("datasets", *parts)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


FASHION_MNIST_DIR = repository_dataset("fashion-mnist")
OMNIGLOT_BACKGROUND = [repository_dataset("omniglot", f"images_background_small{k}.zip")
                       for k in (1, 2)]
