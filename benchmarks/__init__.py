"""Benchmarks that print a table and compare against a baseline in the same run:
`python -m benchmarks {encoder,training,gallery,web} ...`, from the repository root.

This package is not installed with siamese-search. It imports the installed packages (`encoder`,
`indexer`, `webapp`, `scripts`); nothing in them imports it.
"""
from __future__ import annotations


def add_benchmark_arguments(parser) -> None:
    """--model and --dataset, as every benchmark takes them."""
    from scripts.common import FASHION_MNIST_DIR
    from webapp.settings import BUNDLED_MODEL

    parser.add_argument("--model", default=str(BUNDLED_MODEL), metavar="DIR",
                        help="model directory (default: %(default)s)")
    parser.add_argument("--dataset", default=FASHION_MNIST_DIR, metavar="FOLDER",
                        help="folder of the Fashion-MNIST idx files (default: %(default)s)")
