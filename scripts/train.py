"""siamese-train: train a Siamese encoder, calibrate its threshold, save the model directory."""
from __future__ import annotations

import argparse

from encoder.images import FITS, Preprocessing
from encoder.training import AUGMENTATIONS, SMALL_CLASS, VAL_SPLITS
from scripts.common import (add_class_arguments, add_dataset_argument, add_domain_arguments,
                            choose_classes, load_foreign, run)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="siamese-train", description=__doc__,
        epilog="example: siamese-train --dataset fashion-mnist ../shared/datasets/fashion-mnist "
               "--out models/fashion-mnist --epochs 12")
    add_dataset_argument(p)
    add_class_arguments(p, "to train and validate on; the card records the classes left out")
    p.add_argument("--out", required=True, help="model directory to write (model.keras + card.json)")
    p.add_argument("--arch", default="default", choices=["default", "tutorial"],
                   help="network: our default, or the tutorial's exact network (default: %(default)s)")
    p.add_argument("--fix-defect", action="store_true",
                   help="tutorial only: chain its second conv block to the first (the tutorial "
                        "applies it to the input, leaving the first block dead)")
    p.add_argument("--embedding-dim", type=int, help="embedding size (default: 64; tutorial 48)")
    p.add_argument("--width", type=int, default=32,
                   help="default arch: filters of the first block, doubling per block (default 32)")
    p.add_argument("--depth", type=int,
                   help="default arch: conv blocks, each but the last halving the image (default: "
                        "down to 8 pixels, 3 blocks at 28x28; 4 lets features see a whole "
                        "character)")
    p.add_argument("--epochs", type=int, default=20, help="maximum epochs (default: %(default)s)")
    p.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="stop training after this many seconds (mid-epoch if need be)")
    p.add_argument("--seed", type=int, default=0, help="seed for splits, pairs and weights")
    p.add_argument("--sampler", choices=["batch", "pairs"],
                   help="batch: every pair inside class-balanced batches (default for our arch); "
                        "pairs: the tutorial's one positive + one negative pair per image, 64 per step")
    p.add_argument("--classes-per-batch", type=int, default=10)
    p.add_argument("--images-per-class", type=int, default=16)
    p.add_argument("--hard-fraction", type=float, default=0.5,
                   help="hard-pair mining: train on this hardest share of the positive and of the "
                        "negative pairs in each batch (default 0.5; 1 = all pairs)")
    p.add_argument("--class-weight", type=float, default=0.0,
                   help="weight of an auxiliary normalised-softmax class loss during training "
                        "(default 0: contrastive loss only)")
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--augment", choices=AUGMENTATIONS, default="auto",
                   help="distortions of training images: affine (rotation, shear, scale, shift), "
                        "flip (left-right), flip-shift (flip, and shifts of whole pixels up to 8%% "
                        "of the side) or none; auto: affine when the median class has fewer "
                        f"than {SMALL_CLASS} images, else none (default: %(default)s)")
    p.add_argument("--rotate-classes", action="store_true",
                   help="also train on every class turned 90, 180 and 270 degrees, each as a new "
                        "class (characters, symbols; not for photos of upright things)")
    p.add_argument("--group-batches", action="store_true",
                   help="data with groups (Omniglot alphabets): each batch takes its classes from "
                        "one group, so the network learns to tell apart classes that look alike")
    p.add_argument("--invert", action="store_true", help="invert images (dark ink on white)")
    p.add_argument("--input-size", type=int, metavar="PIXELS",
                   help="folder and omniglot data: square input side (default: the median image "
                        "side, kept within 28..64, and at most 32 for fewer than 1,000 images)")
    p.add_argument("--fit", choices=FITS, default="stretch",
                   help="how an image that is not square fills the square input, in training and "
                        "whenever the model is used (the card records it): stretch it, or pad: "
                        "keep its aspect ratio and fill the rest with its background (the median "
                        "of its border pixels), for long images such as signatures "
                        "(default: %(default)s)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of images, classes or groups held out (default: %(default)s; a "
                        "class split holds out at least 12 classes, or half when fewer than 24)")
    p.add_argument("--calibration-folds", type=int, metavar="K",
                   help="deal the classes (or groups) into K folds and train K encoders, each "
                        "holding one out, so the threshold is calibrated on every class, each "
                        "judged by an encoder that never trained on it, and the card's one-shot "
                        "accuracy covers every group; --time-budget is shared (default: 3 "
                        "for a class split of small classes, else 1; with K > 1, --val-fraction "
                        "is 1/K)")
    p.add_argument("--refit", action=argparse.BooleanOptionalAction,
                   help="after validating, train the saved encoder on every class (held-out ones "
                        "too) for the median best epoch count of the folds; the threshold stays "
                        "the one the folds calibrated (default: on with calibration folds, else "
                        "off; --no-refit saves the first fold's encoder)")
    p.add_argument("--val-split", choices=VAL_SPLITS, default="auto",
                   help="hold out a share of every class's images (image), whole classes (class) "
                        "or whole groups such as Omniglot alphabets (group); auto: group when the "
                        "data has groups, image for fashion-mnist, else class "
                        "(default: %(default)s)")
    p.add_argument("--patience", type=int, default=5, help="early-stopping patience in epochs")
    p.add_argument("--far-target", type=float, default=1e-3,
                   help="false-accept rate for the strict threshold (default: %(default)s)")
    add_domain_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from encoder.datasets import load_dataset
    from encoder.training import TrainConfig, train

    config = TrainConfig(
        arch=args.arch, fix_defect=args.fix_defect, embedding_dim=args.embedding_dim, width=args.width,
        depth=args.depth,
        epochs=args.epochs, time_budget=args.time_budget, seed=args.seed, sampler=args.sampler,
        classes_per_batch=args.classes_per_batch, images_per_class=args.images_per_class,
        hard_fraction=args.hard_fraction, class_weight=args.class_weight,
        learning_rate=args.learning_rate, augment=args.augment, rotate_classes=args.rotate_classes,
        group_batches=args.group_batches, invert=args.invert, val_fraction=args.val_fraction,
        val_split=args.val_split, calibration_folds=args.calibration_folds, refit=args.refit,
        patience=args.patience, far_target=args.far_target, domain=args.domain,
        domain_epochs=args.domain_epochs)
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
    train(ds, config, args.out, extra_foreign=load_foreign(args.foreign_dataset, pre))
    return 0


def entry() -> None:
    run(main)


if __name__ == "__main__":
    entry()
