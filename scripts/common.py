"""What every command shares: quiet TensorFlow, logging, and one-line errors with exit codes."""
from __future__ import annotations

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
