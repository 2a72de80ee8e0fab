"""Which images train and which are held out to validate and calibrate: a stratified share of
every class, or whole classes or groups (the threshold is then calibrated on classes never trained
on), dealt into calibration folds; and the warnings when the held-out part is too thin to trust."""
from __future__ import annotations

from typing import Optional

import numpy as np

from .config import AUTO_FOLDS, MIN_FOLD_CLASSES, MIN_VAL_CLASSES, TrainConfig, small_classes
from .datasets import Dataset
from .errors import DatasetError

# Below these, a threshold calibrated on held-out classes is measured on too few of them (or on
# too few pairs of different classes) for its accuracy to mean much: a warning says so.
THIN_CLASSES, THIN_CLASS_PAIRS = 8, 28  # 28: the pairs of 8 classes held out together


def validation_warnings(ds: Dataset, requested: TrainConfig,
                        splits: list[tuple[np.ndarray, np.ndarray]]) -> list[str]:
    """What makes the validation numbers (threshold accuracy, ROC AUC, EER) less than they seem,
    for people to read before trusting them: calibration folds that "auto" would have used but
    the data is too small for, and a threshold calibrated on too few held-out classes (or pairs
    of different classes) for its measured accuracy to be more than the luck of the draw."""
    config = requested.resolve(ds)
    warnings = []
    classes = len(np.unique(ds.labels))
    if (requested.calibration_folds is None and config.calibration_folds == 1
            and config.val_split == "class" and small_classes(ds) and classes < MIN_FOLD_CLASSES):
        warnings.append(f"calibration folds: {AUTO_FOLDS} folds (the default for small classes) "
                        f"need {MIN_FOLD_CLASSES} classes or more, this data has {classes}; "
                        "validating on one split instead")
    if config.val_split in ("class", "group"):
        held_out = [len(np.unique(ds.labels[v])) for _, v in splits]
        pairs = sum(k * (k - 1) // 2 for k in held_out)
        if sum(held_out) < THIN_CLASSES or pairs < THIN_CLASS_PAIRS:
            folds = f" over {len(splits)} folds" if len(splits) > 1 else ""
            warnings.append(
                f"thin validation: the threshold is calibrated on {sum(held_out)} held-out "
                f"class(es){folds}, {pairs} pair(s) of different classes; below {THIN_CLASSES} "
                f"classes or {THIN_CLASS_PAIRS} pairs its accuracy, ROC AUC and EER depend on "
                "which classes happen to be held out. Add classes, or use --val-split image "
                "(held-out images of every class, which training then sees)")
    return warnings


def split_train_val(ds: Dataset, config: TrainConfig, fold: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Held-out validation indices, seeded: a stratified share of every class ("image"), or a
    share of whole classes or groups ("class", "group": the threshold is calibrated on classes
    never trained on). With K calibration folds the classes or groups are dealt into K parts
    and `fold` says which part is held out."""
    rng = np.random.default_rng(config.seed)
    config = config.resolve(ds)
    if config.val_split in ("class", "group"):
        units = ds.labels if config.val_split == "class" else ds.groups
        what = "classes" if config.val_split == "class" else "groups"
        ids = rng.permutation(np.unique(units))
        n_val = max(2, int(round(len(ids) * config.val_fraction)))
        if config.calibration_folds > 1:
            parts = np.array_split(ids, config.calibration_folds)
            ids = np.concatenate([parts[fold], *parts[:fold], *parts[fold + 1:]])
            n_val = len(parts[fold])
            if n_val < 2:
                raise DatasetError(f"{ds.name}: {len(np.unique(units))} {what} are too few for "
                                   f"{config.calibration_folds} calibration folds of two or more")
        elif config.val_split == "class":
            # The threshold's accuracy on a handful of classes swings by several points with the
            # draw of classes (measured: +-3 points with 8 of 40, +-2 with 12).
            n_val = max(n_val, min(MIN_VAL_CLASSES, len(ids) // 2))
        val = np.isin(units, ids[:n_val])
        if len(ids) - n_val < 2 or len(np.unique(ds.labels[~val])) < 2:
            raise DatasetError(f"{ds.name}: {len(ids)} {what} are too few to hold out {n_val} for "
                               "validation and still train on two or more; add classes, or use "
                               "--val-split image")
    else:
        val = np.zeros(len(ds), bool)
        for c in np.unique(ds.labels):
            members = rng.permutation(np.nonzero(ds.labels == c)[0])
            n_val = int(round(len(members) * config.val_fraction))
            if len(members) - n_val < 2 or n_val < 2:
                raise DatasetError(f"{ds.name}: class {ds.class_names[c]!r} has {len(members)} "
                                   "images, too few to split into training and validation "
                                   "(each side needs two); use --val-split class")
            val[members[:n_val]] = True
    return np.nonzero(~val)[0], np.nonzero(val)[0]


def new_class_labels(ds: Dataset, config: TrainConfig, val_idx: np.ndarray) -> Optional[np.ndarray]:
    """The classes of held-out images when they are classes the model never trained on (a class
    or group split), for measurements that resample them; None for held-out images of the
    training classes (an image split)."""
    return ds.labels[val_idx] if config.resolve(ds).val_split in ("class", "group") else None
