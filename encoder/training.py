"""Training a Siamese encoder, then calibrating and saving it as a model artifact."""
from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .artifact import ModelCard, compute_model_id, now, save_model
from .augment import AUGMENTATIONS, Augmenter
from .calibration import calibrate, cross_validated_accuracy, verdict_calibration
from .datasets import Dataset
from .distance import euclidean
from .domain import REJECTION, fit_domain_model
from .errors import ConfigError, DatasetError
from .evaluation import (HELDOUT_EPISODES, HELDOUT_WAYS, contrastive_loss, heldout_oneshot,
                         retrieval_metrics)
from .images import Preprocessing, prepare_batch
from .pairs import class_balanced_batches, repeated_tutorial_pairs, tutorial_pairs

log = logging.getLogger(__name__)

SAMPLERS = ("batch", "pairs")
VAL_SPLITS = ("auto", "image", "class", "group")
SMALL_CLASS = 100  # images per class (median) below which `augment="auto"` distorts images
MIN_VAL_CLASSES = 12  # held out by a class split, unless that would leave fewer to train on
AUTO_FOLDS, MIN_FOLD_CLASSES = 3, 6  # calibration folds chosen by "auto", and the classes they need
# Below these, a threshold calibrated on held-out classes is measured on too few of them (or on
# too few pairs of different classes) for its accuracy to mean much: a warning says so.
THIN_CLASSES, THIN_CLASS_PAIRS = 8, 28  # 28: the pairs of 8 classes held out together


@dataclass
class TrainConfig:
    arch: str = "default"
    embedding_dim: Optional[int] = None  # None: 64 for ours, 48 for the tutorial's (resolve)
    width: int = 32  # filters of our default network's first block (doubling per block)
    depth: Optional[int] = None  # conv blocks of our default network (None: to 8 pixels, resolve)
    epochs: int = 20
    time_budget: Optional[float] = None  # seconds of training; stops mid-epoch when spent
    seed: int = 0
    sampler: Optional[str] = None  # "batch" (all pairs in class-balanced batches) or "pairs"
    pair_batch_size: int = 64  # pairs per step for the "pairs" sampler (the tutorial's 64)
    classes_per_batch: int = 10
    images_per_class: int = 16
    # An epoch is one pass over the training images, but at least this many steps: a small
    # dataset (400 images is 2-3 batches) would otherwise validate, and early-stop, every few steps.
    min_steps_per_epoch: int = 50
    learning_rate: float = 1e-3
    margin: float = 1.0
    hard_fraction: float = 0.5
    class_weight: float = 0.0  # weight of the auxiliary normalised-softmax class loss (0: off)
    val_fraction: float = 0.1
    val_split: str = "auto"  # "image" (stratified), "class" or "group" (held out whole): resolve()
    patience: int = 5
    fix_defect: bool = False
    augment: str = "auto"  # "affine" for small datasets, else "none"; see resolve
    rotate_classes: bool = False  # also train on every class turned 90, 180, 270 degrees
    group_batches: bool = False  # each batch's classes from one group (alphabet): hard negatives
    invert: bool = False
    far_target: float = 1e-3
    calibration_rounds: int = 5
    # Encoders trained to calibrate the threshold on every class (see `train`); None: 3 for a
    # class split of small classes (the folder default), else 1.
    calibration_folds: Optional[int] = None
    # After the folds, train the saved encoder on every class for the folds' median best epoch
    # count; None: on with calibration folds (K > 1), off otherwise.
    refit: Optional[bool] = None
    deterministic: bool = True
    domain: bool = True  # also train the domain model (`domain.py`) that rejects foreign images
    domain_epochs: int = 4

    def __post_init__(self) -> None:
        if self.sampler is None:
            self.sampler = "pairs" if self.arch == "tutorial" else "batch"
        checks = [
            (self.sampler in SAMPLERS, f"sampler must be one of {SAMPLERS}, not {self.sampler!r}"),
            (self.augment in AUGMENTATIONS, f"augment must be one of {AUGMENTATIONS}, not {self.augment!r}"),
            (self.val_split in VAL_SPLITS,
             f"val_split must be one of {VAL_SPLITS}, not {self.val_split!r}"),
            (self.epochs >= 1, f"epochs must be at least 1, not {self.epochs}"),
            (self.time_budget is None or self.time_budget > 0, f"time budget must be positive, not {self.time_budget}"),
            (0.0 < self.val_fraction < 0.9, f"val_fraction must be in (0, 0.9), not {self.val_fraction}"),
            (0.0 < self.hard_fraction <= 1.0, f"hard_fraction must be in (0, 1], not {self.hard_fraction}"),
            (self.class_weight >= 0.0, f"class_weight must be >= 0, not {self.class_weight}"),
            (self.classes_per_batch >= 2, "classes_per_batch must be at least 2"),
            (self.images_per_class >= 2, "images_per_class must be at least 2"),
            (self.min_steps_per_epoch >= 1, "min_steps_per_epoch must be at least 1"),
            (8 <= self.width <= 256, f"width must be in 8..256, not {self.width}"),
            (self.learning_rate > 0, f"learning rate must be positive, not {self.learning_rate}"),
            (self.calibration_folds is None or 1 <= self.calibration_folds <= 10,
             f"calibration folds must be in 1..10, not {self.calibration_folds}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

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
        small = _small_classes(ds)
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
        refit = folds > 1 if self.refit is None else self.refit
        return replace(self, val_split=val_split, augment=augment, calibration_folds=folds,
                       refit=refit, embedding_dim=embedding_dim, depth=depth)


def _small_classes(ds: Dataset) -> bool:
    """Whether the median class has fewer than SMALL_CLASS images (what "auto" adapts to)."""
    return bool(np.median(np.bincount(ds.labels)[np.unique(ds.labels)]) < SMALL_CLASS)


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
            and config.val_split == "class" and _small_classes(ds) and classes < MIN_FOLD_CLASSES):
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


def cosine_rate(base: float, progress: float, floor: float = 0.05) -> float:
    """Cosine decay from `base` to `floor * base` as `progress` goes from 0 to 1.

    Progress is the larger of the share of steps done and the share of the time budget spent, so
    a time-limited run anneals fully whatever the machine's speed."""
    progress = min(max(progress, 0.0), 1.0)
    return base * (floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * progress)))


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 60}:{seconds % 60:02d}"


class ClassHead:
    """An auxiliary loss for training only: a normalised softmax over the training classes
    (cosine between the unit-length embedding and one learned unit vector per class, times a
    fixed scale). It spreads the classes over the sphere while the contrastive loss shapes the
    pairs; the head is dropped after training, so the model is the same encoder."""

    scale = 16.0

    def __init__(self, classes: int, dim: int, seed: int):
        import tensorflow as tf

        init = tf.random.stateless_normal((dim, classes), seed=(seed, 7))
        self.weights = tf.Variable(init, name="class_head")
        self.variables = [self.weights]

    def loss(self, embeddings, classes):
        import tensorflow as tf

        logits = self.scale * tf.matmul(tf.math.l2_normalize(embeddings, 1),
                                        tf.math.l2_normalize(self.weights, 0))
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(classes, logits))


def with_rotated_classes(images: np.ndarray, labels: np.ndarray, groups: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every class also turned by 90, 180 and 270 degrees, each a new class (in a new group):
    four times the classes, a standard trick for Omniglot (a turned character is another one)."""
    if images.shape[1] != images.shape[2]:
        raise ConfigError("rotated classes need square input")
    turned = [np.rot90(images, k, axes=(1, 2)) for k in range(4)]
    labels, groups = (np.concatenate([a + k * (int(a.max()) + 1) for k in range(4)])
                      for a in (labels, groups))
    return np.concatenate(turned), labels, groups


@dataclass
class _Fit:
    """One training run on one split: its encoder at the best epoch and what happened."""
    encoder: object
    best_loss: float  # NaN for a final fit, which has no validation
    best_epoch: int
    epochs_run: int
    stopped_by: str
    history: list
    train_seconds: float
    val_embeddings: np.ndarray  # of the held-out images, at the best epoch (none for a final fit)


def _fit(x_all: np.ndarray, pre: Preprocessing, ds: Dataset, config: TrainConfig,
         train_idx: np.ndarray, val_idx: np.ndarray, time_budget: Optional[float], fold: str,
         report: Callable[[str], None]) -> _Fit:
    """Train one encoder on `train_idx`, early-stopping on the contrastive loss of `val_idx`.

    With no validation images (a final fit) it runs every epoch and keeps the last weights."""
    import keras
    import tensorflow as tf

    from .losses import batch_contrastive_loss, contrastive_loss as tf_contrastive_loss
    from .models import build_encoder, siamese_model

    x_train, y_train = x_all[train_idx], ds.labels[train_idx]
    g_train = np.zeros_like(y_train) if ds.groups is None else ds.groups[train_idx]
    x_val, y_val = x_all[val_idx], ds.labels[val_idx]
    validating = len(val_idx) > 0
    val_pairs = tutorial_pairs(y_val, config.seed + 1) if validating else None
    report(f"{fold}data: {ds.name}, {len(train_idx):,} training / {len(val_idx):,} validation images, "
           f"{len(np.unique(y_train))} / {len(np.unique(y_val))} classes"
           + (f" (validation split by {config.val_split})" if validating else "")
           + f", input {pre.shape}, augmentation {config.augment}")
    if config.val_split == "group" and validating:
        report(f"{fold}validation groups (never trained on): {', '.join(ds.groups_present(val_idx))}")
    if config.rotate_classes:
        x_train, y_train, g_train = with_rotated_classes(x_train, y_train, g_train)
        report(f"{fold}rotated classes: training on {len(y_train):,} images of "
               f"{len(np.unique(y_train))} classes")

    # Small classes (ten images) would fill 16 places a batch with repeats: take each image once.
    per_class = int(min(config.images_per_class, max(2, np.median(np.bincount(y_train)[
        np.unique(y_train)]))))
    encoder = build_encoder(config.arch, pre, config.embedding_dim, config.fix_defect, config.width,
                            config.depth)
    siamese = siamese_model(encoder)
    embedding_dim = int(encoder.output_shape[-1])

    if config.sampler == "pairs":
        first, second, same = tutorial_pairs(y_train, config.seed)
        steps_per_epoch = int(np.ceil(len(first) / config.pair_batch_size))
        images_per_step = 2 * config.pair_batch_size
    else:
        steps_per_epoch = len(class_balanced_batches(y_train, config.classes_per_batch,
                                                     per_class, 0, config.min_steps_per_epoch))
        images_per_step = min(config.classes_per_batch, len(np.unique(y_train))) * per_class
    total_steps = steps_per_epoch * config.epochs
    optimizer = keras.optimizers.Adam(config.learning_rate)
    x_train = tf.constant(x_train)
    labels_train = tf.constant(y_train, tf.int32)
    classes_train = tf.constant(np.unique(y_train, return_inverse=True)[1], tf.int32)
    augment = Augmenter(config.augment, config.seed)
    class_head = ClassHead(len(np.unique(y_train)), embedding_dim, config.seed) \
        if config.class_weight > 0 else None
    trainable = encoder.trainable_variables + (class_head.variables if class_head else [])

    @tf.function(reduce_retracing=True)
    def batch_step(index):
        x = augment(tf.gather(x_train, index))
        with tf.GradientTape() as tape:
            e = encoder(x, training=True)
            loss = batch_contrastive_loss(e, tf.gather(labels_train, index),
                                          config.margin, config.hard_fraction)
            if class_head is not None:
                loss += config.class_weight * class_head.loss(e, tf.gather(classes_train, index))
        grads = tape.gradient(loss, trainable)
        optimizer.apply_gradients(zip(grads, trainable))
        return loss

    @tf.function(reduce_retracing=True)
    def pair_step(a, b, y):
        xa, xb = augment(tf.gather(x_train, a)), augment(tf.gather(x_train, b))
        with tf.GradientTape() as tape:
            loss = tf_contrastive_loss(y, siamese([xa, xb], training=True), config.margin)
        grads = tape.gradient(loss, encoder.trainable_variables)
        optimizer.apply_gradients(zip(grads, encoder.trainable_variables))
        return loss

    forward = tf.function(lambda x: encoder(x, training=False), reduce_retracing=True)

    def embed(x: np.ndarray) -> np.ndarray:
        return np.concatenate([forward(x[i:i + 1024]).numpy() for i in range(0, len(x), 1024)])

    def val_loss() -> float:
        e = embed(x_val)
        return contrastive_loss(euclidean(e[val_pairs[0]], e[val_pairs[1]]), val_pairs[2], config.margin)

    rng = np.random.default_rng(config.seed)
    best_loss, best_epoch, best_weights = np.inf, 0, encoder.get_weights()
    history, stopped_by, epoch = [], "epochs", 0
    train_start = time.perf_counter()
    deadline = train_start + time_budget if time_budget else np.inf
    images_seen, step_count = 0, 0
    for epoch in range(1, config.epochs + 1):
        epoch_start, last_note, losses = time.perf_counter(), time.perf_counter(), []
        if config.sampler == "pairs":
            order = rng.permutation(len(first))
            batches = [order[i:i + config.pair_batch_size] for i in range(0, len(order), config.pair_batch_size)]
        else:
            batches = class_balanced_batches(y_train, config.classes_per_batch,
                                             per_class, config.seed * 1000 + epoch,
                                             config.min_steps_per_epoch,
                                             g_train if config.group_batches else None)
        for step, index in enumerate(batches, 1):
            progress = step_count / total_steps
            if time_budget:
                progress = max(progress, (time.perf_counter() - train_start) / time_budget)
            optimizer.learning_rate.assign(cosine_rate(config.learning_rate, progress))
            step_count += 1
            if config.sampler == "pairs":
                loss = pair_step(first[index], second[index], same[index])
            else:
                loss = batch_step(index)
            losses.append(float(loss))
            images_seen += images_per_step
            now_t = time.perf_counter()
            if now_t - last_note > 30:
                rate = step * images_per_step / (now_t - epoch_start)
                report(f"  {fold}epoch {epoch} step {step}/{len(batches)}  loss {np.mean(losses):.4f}  "
                       f"{rate:,.0f} img/s  epoch ETA {_clock((len(batches) - step) * images_per_step / rate)}")
                last_note = now_t
            if now_t >= deadline:
                stopped_by = "time_budget"
                break
        v = val_loss() if validating else None
        elapsed = time.perf_counter() - train_start
        history.append({"epoch": epoch, "loss": round(float(np.mean(losses)), 5),
                        **({"val_loss": round(v, 5)} if validating else {}),
                        "seconds": round(elapsed, 1)})
        improved = validating and v < best_loss
        if improved:
            best_loss, best_epoch, best_weights = v, epoch, encoder.get_weights()
        rate = images_seen / elapsed
        eta = min((config.epochs - epoch) * elapsed / epoch, max(deadline - time.perf_counter(), 0))
        report(f"{fold}epoch {epoch}/{config.epochs}  loss {np.mean(losses):.4f}  "
               + (f"val_loss {v:.4f}{' *' if improved else '  '}  " if validating else "")
               + f"{rate:,.0f} img/s  elapsed {_clock(elapsed)}  ETA {_clock(eta)}")
        if stopped_by == "time_budget":
            break
        if validating and epoch - best_epoch >= config.patience:
            stopped_by = "early_stopping"
            break
    train_seconds = time.perf_counter() - train_start
    if not validating:
        return _Fit(encoder, float("nan"), epoch, epoch, stopped_by, history, train_seconds,
                    np.zeros((0, embedding_dim), np.float32))
    encoder.set_weights(best_weights)
    report(f"{fold}restored the best epoch ({best_epoch}, val_loss {best_loss:.4f})")
    return _Fit(encoder, best_loss, best_epoch, epoch, stopped_by, history, train_seconds,
                embed(x_val))


def oneshot_summary(per_fold: list[dict], grouped: bool) -> dict:
    """The folds' held-out one-shot results for the card: each way's mean over the groups (every
    held-out alphabet counts once) or over the folds, and with groups each group's own."""
    parts = [r for fold in per_fold for r in fold.values()]
    ways = [f"{way}-way" for way in HELDOUT_WAYS if any(f"{way}-way" in r for r in parts)]
    summary = {"episode_classes": "group" if grouped else "any", "episodes": HELDOUT_EPISODES,
               **{w: round(float(np.mean([r[w] for r in parts if w in r])), 4) for w in ways}}
    if grouped:
        summary["by_group"] = dict(sorted((g, r) for fold in per_fold for g, r in fold.items()))
    return summary


def train(ds: Dataset, config: TrainConfig, out_dir: str | os.PathLike,
          report: Callable[[str], None] = lambda line: print(line, flush=True),
          extra_foreign: Optional[dict[str, np.ndarray]] = None) -> ModelCard:
    """Train on `ds`, validate on a held-out part of it, calibrate, and save to `out_dir`.

    Besides the threshold, calibration stores the operating points, the distance -> probability
    map and the open-set (1:N) model, all from the held-out embeddings; and, unless
    `config.domain` is off, a domain model trained on the first split's training images against
    foreign ones (`extra_foreign`: other datasets' images at the model's input, by name).

    With calibration folds (K > 1) the classes are dealt into K folds and K encoders train, each
    holding out one fold; the threshold is chosen on the pooled held-out pairs of all K, so on
    every class, each judged by an encoder that never trained on it. A dozen held-out classes alone
    leave the threshold's measured accuracy to the luck of which classes they are.

    With `refit` (the default with folds) the saved encoder then trains on every class for the
    folds' median best epoch count: half as many classes again as any fold's encoder had, which
    on 40 small classes made it about 2 points more accurate on classes never seen, close to what
    the folds measured. Without, the first fold's encoder is saved."""
    import keras
    import tensorflow as tf

    started = time.perf_counter()
    for line in ds.count_report():
        report(line)
    ds.check_trainable()
    requested, config = config, config.resolve(ds)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    height, width, channels = ds.images.shape[1:]
    pre = Preprocessing(height, width, channels, invert=config.invert, fit=ds.fit)
    x_all = prepare_batch(ds.images, pre)
    folds = config.calibration_folds
    fits_to_run = folds + int(config.refit)
    time_budget = config.time_budget / fits_to_run if config.time_budget else None
    splits = [split_train_val(ds, config, fold=k) for k in range(folds)]  # errors before training
    warnings = validation_warnings(ds, requested, splits)
    for warning in warnings:
        report(f"warning: {warning}")
    fits, distances, same, retrievals, oneshot, heldout = [], [], [], [], [], []
    for k, (train_idx, val_idx) in enumerate(splits):
        keras.utils.set_random_seed(config.seed + k)
        prefix = f"fold {k + 1}/{folds}: " if folds > 1 else ""
        fit = _fit(x_all, pre, ds, config, train_idx, val_idx, time_budget, prefix, report)
        e_val, y_val = fit.val_embeddings, ds.labels[val_idx]
        # Small validation sets get more rounds (about 20,000 pairs), so the threshold is chosen
        # on nearly every distinct pair rather than on a few hundred drawn by chance.
        rounds = max(config.calibration_rounds, int(np.ceil(10_000 / len(y_val))))
        a, b, s = repeated_tutorial_pairs(y_val, config.seed + 1, rounds)
        distances.append(euclidean(e_val[a], e_val[b]))
        same.append(s)
        heldout.append((e_val, y_val))
        retrievals.append(retrieval_metrics(e_val, y_val))
        if config.val_split in ("class", "group"):
            # Classes never trained on: the one-shot accuracy a gallery of new ones would get.
            result = heldout_oneshot(e_val, y_val, None if ds.groups is None else ds.groups[val_idx],
                                     ds.group_names, seed=config.seed)
            if result:
                report(f"{prefix}one-shot on held-out classes: " + "; ".join(
                    f"{name} " + ", ".join(f"{way} {acc:.3f}" for way, acc in r.items())
                    for name, r in result.items()))
                oneshot.append(result)
        fits.append(fit)
    if config.refit:
        epochs = max(1, int(round(np.median([f.best_epoch for f in fits]))))
        report(f"final fit: every class, {epochs} epochs (the median best epoch of "
               f"{'the folds' if folds > 1 else 'the validation run'})")
        keras.utils.set_random_seed(config.seed + folds)
        train_idx = np.arange(len(ds))
        saved = _fit(x_all, pre, ds, replace(config, epochs=epochs), train_idx,
                     np.zeros(0, int), time_budget, "final: ", report)
    else:
        saved, train_idx = fits[0], splits[0][0]
    encoder = saved.encoder
    trained_groups = ds.groups_present(train_idx)
    embedding_dim = int(encoder.output_shape[-1])
    report("calibrating" + (f" on the held-out pairs of all {folds} folds" if folds > 1 else ""))
    cal = calibrate(np.concatenate(distances), np.concatenate(same), config.far_target)
    verdicts = verdict_calibration(np.concatenate(distances), np.concatenate(same), heldout,
                                   config.seed)
    report("operating points: " + ", ".join(
        f"{name} {p.threshold:.4f} (TAR {p.tar:.3f}, FAR {p.far:.4f})"
        for name, p in verdicts["operating_points"].items())
        + f"; probability map ECE {verdicts['probability'].ece:.4f}")
    domain_model = domain_card = None
    if config.domain:
        domain_model, domain_card = fit_domain_model(
            x_all[splits[0][0]], x_all[splits[0][1]], pre, ds.name, seed=config.seed,
            extra_foreign=extra_foreign, epochs=config.domain_epochs, augment=config.augment,
            rejection=REJECTION[config.val_split], report=report)
    # The held-out metrics are the folds' (each on classes its encoder never saw), averaged.
    validation = {"contrastive_loss": round(float(np.mean([f.best_loss for f in fits])), 5),
                  "accuracy": round(cal.accuracy, 5),
                  "roc_auc": round(cal.roc_auc, 5), "eer": round(cal.eer, 5),
                  **{k: round(float(np.mean([r[k] for r in retrievals])), 5)
                     for k in retrievals[0]},
                  "images": sum(len(v) for _, v in splits),
                  "classes": sum(len(np.unique(ds.labels[v])) for _, v in splits),
                  "pairs": int(cal.positives + cal.negatives), "folds": folds}
    if oneshot:
        validation["oneshot"] = oneshot_summary(oneshot, ds.groups is not None)
    if folds > 1:
        validation["cross_validated_accuracy"] = round(cross_validated_accuracy(distances, same), 5)
    settings = asdict(config)
    card = ModelCard(
        model_id=compute_model_id(encoder.get_weights(), pre, config.arch),
        architecture=encoder.name, embedding_dim=embedding_dim, preprocessing=pre, calibration=cal,
        validation=validation,
        training={"dataset": ds.name, "fingerprint": ds.fingerprint(), "images": int(len(train_idx)),
                  "classes": int(len(np.unique(ds.labels[train_idx]))),
                  "class_names": list(ds.class_names)[:1000],
                  # Classes left out of the data (--classes, --exclude-classes): never seen.
                  "excluded_classes": list(ds.excluded_classes)[:1000],
                  # The groups (Omniglot alphabets) trained on and held out: evaluation leaves out
                  # by default the ones the model has seen.
                  "groups": trained_groups,
                  "validation_groups": [g for g in ds.groups_present(np.concatenate(
                      [v for _, v in splits])) if g not in trained_groups],
                  "settings": settings, "epochs_run": saved.epochs_run,
                  "best_epoch": saved.best_epoch, "stopped_by": saved.stopped_by,
                  "train_seconds": round(sum(f.train_seconds for f in fits)
                                         + (saved.train_seconds if config.refit else 0), 1),
                  **({"fold_seconds": [round(f.train_seconds, 1) for f in fits],
                      "fold_best_epochs": [f.best_epoch for f in fits]}
                     if folds > 1 or config.refit else {}),
                  **({"final_fit_seconds": round(saved.train_seconds, 1)} if config.refit else {}),
                  "total_seconds": round(time.perf_counter() - started, 1),
                  "history": saved.history,
                  "parameters": int(encoder.count_params()),
                  "versions": {"tensorflow": tf.__version__, "keras": keras.__version__,
                               "numpy": np.__version__, "python": platform.python_version()},
                  "cpus": os.cpu_count(), "warnings": warnings},
        created=now(), domain=domain_card, **verdicts)
    save_model(out_dir, encoder, card, domain_model)
    report(f"saved {Path(out_dir)} (model {card.model_id}): threshold {cal.threshold:.4f}, "
           f"val accuracy {cal.accuracy:.4f}"
           + (f" (cross-validated {validation['cross_validated_accuracy']:.4f})" if folds > 1 else "")
           + f", ROC AUC {cal.roc_auc:.4f}, EER {cal.eer:.4f}, "
           f"recall@1 {validation['recall@1']:.4f}, {_clock(time.perf_counter() - started)} in all")
    if warnings:
        report(f"warning: read these numbers with the {len(warnings)} warning(s) above in mind "
               "(also in the card's training.warnings)")
    return card
