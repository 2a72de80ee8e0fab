"""siamese-calibrate: give a model trained before the verdict's calibration its operating points,
probability map, open-set model and domain model, without retraining it (same weights, same
model id: galleries built with it stay valid)."""
from __future__ import annotations

import argparse

from encoder.config import TrainConfig
from scripts.common import (add_dataset_argument, add_field_arguments, add_foreign_argument,
                            load_foreign, run)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="siamese-calibrate", description=__doc__ + " The dataset must be the one the model "
        "was trained on (its fingerprint is checked), so the held-out split can be reproduced.",
        epilog="example: siamese-calibrate --model models/fashion-mnist --dataset fashion-mnist "
               "datasets/fashion-mnist --foreign-dataset omniglot "
               "datasets/omniglot/images_background_small1.zip")
    p.add_argument("--model", required=True, help="model directory to recalibrate (rewritten)")
    add_dataset_argument(p)
    add_foreign_argument(p)
    add_field_arguments(p, TrainConfig, only=("domain", "domain_epochs"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from encoder.artifact import load_card
    from encoder.datasets import load_dataset
    from encoder.recalibration import recalibrate

    pre = load_card(args.model).preprocessing
    ds = load_dataset(args.dataset[0], args.dataset[1:], split="train", pre=pre)
    recalibrate(args.model, ds, load_foreign(args.foreign_dataset, pre), domain=args.domain,
                domain_epochs=args.domain_epochs)
    return 0


def entry() -> None:
    run(main)


if __name__ == "__main__":
    entry()
