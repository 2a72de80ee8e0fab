"""What a training run is asked to do: `TrainConfig`, each setting with its check and its help
(siamese-train's flags are built from these fields), and `resolve`, which decides the "auto"
settings for a dataset (what the card records)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from .augment import AUGMENTATIONS
from .datasets import Dataset
from .errors import ConfigError
from .params import OneOf, Range, check_fields, param

ARCHITECTURES = ("default", "tutorial")
SAMPLERS = ("batch", "pairs")
VAL_SPLITS = ("auto", "image", "class", "group")
SMALL_CLASS = 100  # images per class (median) below which `augment="auto"` distorts images
MIN_VAL_CLASSES = 12  # held out by a class split, unless that would leave fewer to train on
AUTO_FOLDS, MIN_FOLD_CLASSES = 3, 6  # calibration folds chosen by "auto", and the classes they need


@dataclass
class TrainConfig:
    arch: str = param("default", "network: our default, or the tutorial's exact network",
                      OneOf(ARCHITECTURES))
    embedding_dim: Optional[int] = param(None, "embedding size (default: 64; tutorial 48)",
                                         Range(2, 1024, integer=True))
    width: int = param(32, "default arch: filters of the first block, doubling per block",
                       Range(8, 256, integer=True))
    depth: Optional[int] = param(
        None, "default arch: conv blocks, each but the last halving the image (default: down to "
              "8 pixels, 3 blocks at 28x28; 4 lets features see a whole character)",
        Range(1, 8, integer=True))
    epochs: int = param(20, "maximum epochs", Range(1, integer=True))
    time_budget: Optional[float] = param(
        None, "stop training after this many seconds (mid-epoch if need be)",
        Range(0, exclusive_low=True), metavar="SECONDS")
    seed: int = param(0, "seed for splits, pairs and weights", Range(0, integer=True))
    sampler: Optional[str] = param(
        None, "batch: every pair inside class-balanced batches (default for our arch); pairs: "
              "the tutorial's one positive + one negative pair per image", OneOf(SAMPLERS))
    pair_batch_size: int = param(64, "pairs per step for the pairs sampler (the tutorial's 64)",
                                 Range(2, integer=True))
    classes_per_batch: int = param(10, "batch sampler: classes in each batch",
                                   Range(2, integer=True))
    images_per_class: int = param(16, "batch sampler: images of each class in a batch",
                                  Range(2, integer=True))
    # An epoch is one pass over the training images, but at least this many steps: a small
    # dataset (400 images is 2-3 batches) would otherwise validate, and early-stop, every few steps.
    min_steps_per_epoch: int = param(50, "steps in an epoch at the least (small datasets)",
                                     Range(1, integer=True))
    learning_rate: float = param(1e-3, "Adam's initial learning rate (cosine decay to 5%)",
                                 Range(0, exclusive_low=True))
    margin: float = param(1.0, "contrastive loss: distance beyond which other pairs cost nothing",
                          Range(0, exclusive_low=True))
    hard_fraction: float = param(
        0.5, "hard-pair mining: train on this hardest share of the positive and of the negative "
             "pairs in each batch (1 = all pairs)", Range(0, 1, exclusive_low=True))
    class_weight: float = param(
        0.0, "weight of an auxiliary normalised-softmax class loss (0: contrastive loss only)",
        Range(0))
    val_fraction: float = param(
        0.1, "share of images, classes or groups held out (a class split holds out at least 12 "
             "classes, or half when fewer than 24)", Range(0, 0.9, exclusive_low=True))
    val_split: str = param(
        "auto", "hold out a share of every class's images (image), whole classes (class) or "
                "whole groups such as Omniglot alphabets (group); auto: group when the data has "
                "groups, image for fashion-mnist, else class", OneOf(VAL_SPLITS))
    patience: int = param(5, "early-stopping patience in epochs", Range(1, integer=True))
    fix_defect: bool = param(
        False, "tutorial only: chain its second conv block to the first (the tutorial applies "
               "it to the input, leaving the first block dead)")
    augment: str = param(
        "auto", "distortions of training images: affine (rotation, shear, scale, shift), flip "
                "(left-right), flip-shift (flip, and shifts of whole pixels up to 8% of the "
                f"side) or none; auto: affine when the median class has fewer than {SMALL_CLASS} "
                "images, else none", OneOf(AUGMENTATIONS))
    rotate_classes: bool = param(
        False, "also train on every class turned 90, 180 and 270 degrees, each as a new class "
               "(characters, symbols; not for photos of upright things)")
    group_batches: bool = param(
        False, "data with groups (Omniglot alphabets): each batch takes its classes from one "
               "group, so the network learns to tell apart classes that look alike")
    invert: bool = param(False, "invert images (dark ink on white)")
    far_target: float = param(1e-3, "false-accept rate for the strict threshold",
                              Range(0, 0.5, exclusive_low=True))
    calibration_folds: Optional[int] = param(
        None, "deal the classes (or groups) into K folds and train K encoders, each holding one "
              "out: the first fold's encoder is saved, its verdict calibrated on the classes it "
              "never trained on, and the others measure the recipe on every class (cross-"
              "validated accuracy, one-shot, how much thresholds vary between encoders); "
              "--time-budget is shared (default: 3 for a class split of small classes, else 1; "
              "with K > 1, --val-fraction is 1/K)",
        Range(1, 10, integer=True), metavar="K")
    refit: bool = param(
        False, "after validating, train the saved encoder on every class (held-out ones too) for "
               "the median best epoch count of the folds: more accurate on new classes, but no "
               "class is left that it never saw, so its verdict is not calibrated (the card's "
               "operating points are the first fold's encoder's, marked so)")
    deterministic: bool = param(True, "TensorFlow's deterministic ops (same seed, same model)")
    same: str = param(
        "class", "what one class of the data is, as the pages say it: \"same person\", \"same "
                 "product\", \"same kind of garment\" (default: class)")
    domain: bool = param(
        True, "train the domain model that rejects images unlike the training data "
              "(--no-domain leaves inputs unchecked)")
    domain_epochs: int = param(4, "epochs of the domain model", Range(1, integer=True))
    domain_leave_out: bool = param(
        True, "measure each foreign kind with a domain check trained without it (one more "
              "small check per kind: a minute or more), which says whether kinds of image the "
              "check never saw may pass; --no-domain-leave-out skips it")

    def __post_init__(self) -> None:
        if self.sampler is None:
            self.sampler = "pairs" if self.arch == "tutorial" else "batch"
        check_fields(self)

    @classmethod
    def from_card(cls, card) -> "TrainConfig":
        """The settings a model card records (`ModelCard.training["settings"]`); settings this
        version no longer has are left out, new ones take their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in card.training.get("settings", {}).items() if k in names})

    def resolve(self, ds: Dataset) -> "TrainConfig":
        """The settings with "auto" decided for this dataset (what the card records).

        Validation split: whole groups when the data has them (Omniglot: alphabets never seen),
        whole classes for folders (the threshold is then calibrated on classes never trained on,
        as a gallery of new people or products is used), images for Fashion-MNIST (the same ten
        classes at test time). Augmentation: affine distortions when classes are small. The
        network's embedding size and depth: the values `models.build_encoder` would choose for
        the dataset's image size (depth applies to our default network only)."""
        from .models import EMBEDDING_DIMS, default_depth

        val_split, augment = self.val_split, self.augment
        classes = np.unique(ds.labels)
        small = small_classes(ds)
        embedding_dim = self.embedding_dim or EMBEDDING_DIMS.get(self.arch)
        depth = self.depth
        if depth is None and self.arch == "default":
            depth = default_depth(min(ds.images.shape[1:3]))
        if val_split == "auto":
            val_split = ("group" if ds.groups is not None
                         else "image" if ds.kind == "fashion-mnist" else "class")
        if augment == "auto":
            augment = "affine" if small else "none"
        if val_split == "group" and ds.groups is None:
            raise ConfigError(f"val_split 'group': {ds.name} has no groups (alphabets); "
                              "use 'class' or 'image'")
        if self.group_batches and ds.groups is None:
            raise ConfigError(f"group batches: {ds.name} has no groups (alphabets)")
        folds = self.calibration_folds
        if folds is None:
            many = len(classes) >= MIN_FOLD_CLASSES
            folds = AUTO_FOLDS if val_split == "class" and small and many else 1
        if folds > 1 and val_split not in ("class", "group"):
            raise ConfigError(f"{folds} calibration folds hold out whole classes or groups: "
                              "use --val-split class or group")
        return replace(self, val_split=val_split, augment=augment, calibration_folds=folds, embedding_dim=embedding_dim, depth=depth)


def small_classes(ds: Dataset) -> bool:
    """Whether the median class has fewer than SMALL_CLASS images (what "auto" adapts to)."""
    return bool(np.median(np.bincount(ds.labels)[np.unique(ds.labels)]) < SMALL_CLASS)
