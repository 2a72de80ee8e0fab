"""Training a Siamese encoder, then calibrating and saving it as a model artifact."""
from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .artifact import ModelCard, compute_model_id, now, save_model
from .calibration import calibrate
from .datasets import Dataset
from .distance import euclidean
from .errors import ConfigError, DatasetError
from .evaluation import contrastive_loss, retrieval_metrics
from .images import Preprocessing, prepare_batch
from .pairs import class_balanced_batches, repeated_tutorial_pairs, tutorial_pairs

log = logging.getLogger(__name__)

SAMPLERS = ("batch", "pairs")
AUGMENTATIONS = ("none", "flip", "affine")


@dataclass
class TrainConfig:
    arch: str = "default"
    embedding_dim: Optional[int] = None  # default: 64 for ours, 48 for the tutorial's
    width: int = 32  # filters of our default network's first block (doubling per block)
    epochs: int = 20
    time_budget: Optional[float] = None  # seconds of training; stops mid-epoch when spent
    seed: int = 0
    sampler: Optional[str] = None  # "batch" (all pairs in class-balanced batches) or "pairs"
    pair_batch_size: int = 64  # pairs per step for the "pairs" sampler (the tutorial's 64)
    classes_per_batch: int = 10
    images_per_class: int = 16
    learning_rate: float = 1e-3
    margin: float = 1.0
    hard_fraction: float = 0.5
    class_weight: float = 0.0  # weight of the auxiliary normalised-softmax class loss (0: off)
    val_fraction: float = 0.1
    val_split: str = "image"  # "image" (stratified) or "class" (held-out classes)
    patience: int = 5
    fix_defect: bool = False
    augment: str = "none"
    invert: bool = False
    far_target: float = 1e-3
    calibration_rounds: int = 5
    deterministic: bool = True

    def __post_init__(self) -> None:
        if self.sampler is None:
            self.sampler = "pairs" if self.arch == "tutorial" else "batch"
        checks = [
            (self.sampler in SAMPLERS, f"sampler must be one of {SAMPLERS}, not {self.sampler!r}"),
            (self.augment in AUGMENTATIONS, f"augment must be one of {AUGMENTATIONS}, not {self.augment!r}"),
            (self.val_split in ("image", "class"), f"val_split must be 'image' or 'class', not {self.val_split!r}"),
            (self.epochs >= 1, f"epochs must be at least 1, not {self.epochs}"),
            (self.time_budget is None or self.time_budget > 0, f"time budget must be positive, not {self.time_budget}"),
            (0.0 < self.val_fraction < 0.9, f"val_fraction must be in (0, 0.9), not {self.val_fraction}"),
            (0.0 < self.hard_fraction <= 1.0, f"hard_fraction must be in (0, 1], not {self.hard_fraction}"),
            (self.class_weight >= 0.0, f"class_weight must be >= 0, not {self.class_weight}"),
            (self.classes_per_batch >= 2, "classes_per_batch must be at least 2"),
            (self.images_per_class >= 2, "images_per_class must be at least 2"),
            (8 <= self.width <= 256, f"width must be in 8..256, not {self.width}"),
            (self.learning_rate > 0, f"learning rate must be positive, not {self.learning_rate}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


def split_train_val(ds: Dataset, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Held-out validation indices, seeded: a stratified share of every class ("image"), or a
    share of whole classes ("class", so the threshold is calibrated on classes never trained on)."""
    rng = np.random.default_rng(config.seed)
    if config.val_split == "class":
        classes = rng.permutation(np.unique(ds.labels))
        n_val = max(2, int(round(len(classes) * config.val_fraction)))
        if len(classes) - n_val < 2:
            raise DatasetError(f"{ds.name}: {len(classes)} classes are too few to hold out "
                               f"{n_val} for validation and still train on two or more")
        val = np.isin(ds.labels, classes[:n_val])
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


class _Augmenter:
    """Label-preserving distortions applied to uint8 batches during training only."""

    def __init__(self, kind: str, seed: int):
        import keras

        self.kind = kind
        self.layers = []
        if kind == "affine":
            self.layers = [keras.layers.RandomRotation(0.04, fill_mode="constant", seed=seed),
                           keras.layers.RandomTranslation(0.1, 0.1, fill_mode="constant", seed=seed + 1),
                           keras.layers.RandomZoom(0.1, fill_mode="constant", seed=seed + 2)]

    def __call__(self, x):
        import tensorflow as tf

        if self.kind == "none":
            return x
        if self.kind == "flip":
            return tf.image.random_flip_left_right(x)
        y = tf.cast(x, tf.float32)
        for layer in self.layers:
            y = layer(y, training=True)
        return tf.cast(tf.clip_by_value(tf.round(y), 0, 255), tf.uint8)


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


def train(ds: Dataset, config: TrainConfig, out_dir: str | os.PathLike,
          report: Callable[[str], None] = lambda line: print(line, flush=True)) -> ModelCard:
    """Train on `ds`, validate on a held-out part of it, calibrate, and save to `out_dir`."""
    import keras
    import tensorflow as tf

    from .losses import batch_contrastive_loss, contrastive_loss as tf_contrastive_loss
    from .models import build_encoder, siamese_model

    started = time.perf_counter()
    ds.check_trainable()
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()

    train_idx, val_idx = split_train_val(ds, config)
    height, width, channels = ds.images.shape[1:]
    pre = Preprocessing(height, width, channels, invert=config.invert)
    x_all = prepare_batch(ds.images, pre)
    y_train, y_val = ds.labels[train_idx], ds.labels[val_idx]
    x_val = x_all[val_idx]
    val_pairs = tutorial_pairs(y_val, config.seed + 1)
    report(f"data: {ds.name}, {len(train_idx):,} training / {len(val_idx):,} validation images, "
           f"{len(np.unique(y_train))} / {len(np.unique(y_val))} classes, input {pre.shape}")

    encoder = build_encoder(config.arch, pre, config.embedding_dim, config.fix_defect, config.width)
    siamese = siamese_model(encoder)
    embedding_dim = int(encoder.output_shape[-1])

    if config.sampler == "pairs":
        first, second, same = tutorial_pairs(y_train, config.seed)
        steps_per_epoch = int(np.ceil(len(first) / config.pair_batch_size))
        images_per_step = 2 * config.pair_batch_size
    else:
        steps_per_epoch = len(class_balanced_batches(y_train, config.classes_per_batch,
                                                     config.images_per_class, 0))
        images_per_step = min(config.classes_per_batch, len(np.unique(y_train))) * config.images_per_class
    total_steps = steps_per_epoch * config.epochs
    optimizer = keras.optimizers.Adam(config.learning_rate)
    x_train = tf.constant(x_all[train_idx])
    labels_train = tf.constant(y_train, tf.int32)
    classes_train = tf.constant(np.unique(y_train, return_inverse=True)[1], tf.int32)
    augment = _Augmenter(config.augment, config.seed)
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
    deadline = train_start + config.time_budget if config.time_budget else np.inf
    images_seen, step_count = 0, 0
    for epoch in range(1, config.epochs + 1):
        epoch_start, last_note, losses = time.perf_counter(), time.perf_counter(), []
        if config.sampler == "pairs":
            order = rng.permutation(len(first))
            batches = [order[i:i + config.pair_batch_size] for i in range(0, len(order), config.pair_batch_size)]
        else:
            batches = class_balanced_batches(y_train, config.classes_per_batch,
                                             config.images_per_class, config.seed * 1000 + epoch)
        for step, index in enumerate(batches, 1):
            progress = step_count / total_steps
            if config.time_budget:
                progress = max(progress, (time.perf_counter() - train_start) / config.time_budget)
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
                report(f"  epoch {epoch} step {step}/{len(batches)}  loss {np.mean(losses):.4f}  "
                       f"{rate:,.0f} img/s  epoch ETA {_clock((len(batches) - step) * images_per_step / rate)}")
                last_note = now_t
            if now_t >= deadline:
                stopped_by = "time_budget"
                break
        v = val_loss()
        elapsed = time.perf_counter() - train_start
        history.append({"epoch": epoch, "loss": round(float(np.mean(losses)), 5), "val_loss": round(v, 5),
                        "seconds": round(elapsed, 1)})
        improved = v < best_loss
        if improved:
            best_loss, best_epoch, best_weights = v, epoch, encoder.get_weights()
        rate = images_seen / elapsed
        eta = min((config.epochs - epoch) * elapsed / epoch, max(deadline - time.perf_counter(), 0))
        report(f"epoch {epoch}/{config.epochs}  loss {np.mean(losses):.4f}  val_loss {v:.4f}"
               f"{' *' if improved else '  '}  {rate:,.0f} img/s  elapsed {_clock(elapsed)}  ETA {_clock(eta)}")
        if stopped_by == "time_budget":
            break
        if epoch - best_epoch >= config.patience:
            stopped_by = "early_stopping"
            break
    train_seconds = time.perf_counter() - train_start
    encoder.set_weights(best_weights)
    report(f"restored the best epoch ({best_epoch}, val_loss {best_loss:.4f}); calibrating")

    e_val = embed(x_val)
    a, b, s = repeated_tutorial_pairs(y_val, config.seed + 1, config.calibration_rounds)
    cal = calibrate(euclidean(e_val[a], e_val[b]), s, config.far_target)
    validation = {"contrastive_loss": round(best_loss, 5), "accuracy": round(cal.accuracy, 5),
                  "roc_auc": round(cal.roc_auc, 5), "eer": round(cal.eer, 5),
                  **{k: round(v, 5) for k, v in retrieval_metrics(e_val, y_val).items()},
                  "images": int(len(val_idx)), "pairs": int(len(s))}
    settings = asdict(config)
    card = ModelCard(
        model_id=compute_model_id(encoder.get_weights(), pre, config.arch),
        architecture=encoder.name, embedding_dim=embedding_dim, preprocessing=pre, calibration=cal,
        validation=validation,
        training={"dataset": ds.name, "fingerprint": ds.fingerprint(), "images": int(len(train_idx)),
                  "classes": int(len(np.unique(y_train))), "class_names": list(ds.class_names)[:1000],
                  "settings": settings, "epochs_run": epoch, "best_epoch": best_epoch,
                  "stopped_by": stopped_by, "train_seconds": round(train_seconds, 1),
                  "total_seconds": round(time.perf_counter() - started, 1), "history": history,
                  "parameters": int(encoder.count_params()),
                  "versions": {"tensorflow": tf.__version__, "keras": keras.__version__,
                               "numpy": np.__version__, "python": platform.python_version()},
                  "cpus": os.cpu_count()},
        created=now())
    save_model(out_dir, encoder, card)
    report(f"saved {Path(out_dir)} (model {card.model_id}): threshold {cal.threshold:.4f}, "
           f"val accuracy {cal.accuracy:.4f}, ROC AUC {cal.roc_auc:.4f}, EER {cal.eer:.4f}, "
           f"recall@1 {validation['recall@1']:.4f}, {_clock(time.perf_counter() - started)} in all")
    return card
