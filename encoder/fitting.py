"""Training one encoder on one split, the Keras way.

`PairTrainer` is a `keras.Model` around the encoder whose `train_step` takes a batch of image
indices (class-balanced batches: every pair inside the batch) or of index pairs (the tutorial's
sampler), distorts the images and applies the contrastive loss. What happens between steps is
Keras callbacks: the cosine learning-rate schedule, the time budget, the contrastive loss on
held-out pairs after each epoch, early stopping with the best epoch's weights restored, and the
progress lines. `fit_encoder` wires them for one split and returns a `Fit`.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import keras
import numpy as np
import tensorflow as tf

from .augment import Augmenter, with_rotated_classes
from .config import TrainConfig
from .datasets import Dataset
from .distance import euclidean
from .evaluation import contrastive_loss
from .images import Preprocessing
from .losses import ClassHead, batch_contrastive_loss, contrastive_loss as tf_contrastive_loss
from .losses import euclidean_distance
from .models import build_encoder
from .pairs import class_balanced_batches, tutorial_pairs

NOTE_EVERY = 30.0  # seconds between progress lines inside an epoch


@dataclass
class Fit:
    """One training run on one split: its encoder at the best epoch and what happened."""
    encoder: keras.Model
    best_loss: float  # NaN for a final fit, which has no validation
    best_epoch: int
    epochs_run: int
    stopped_by: str  # "epochs", "early_stopping" or "time_budget"
    history: list
    train_seconds: float
    val_embeddings: np.ndarray  # of the held-out images, at the best epoch (none for a final fit)


class PairTrainer(keras.Model):
    """The encoder, trained on the training images held as one constant: each step gets image
    indices, so a batch costs a gather, not a copy through the input pipeline."""

    def __init__(self, encoder: keras.Model, images: np.ndarray, labels: np.ndarray,
                 config: TrainConfig):
        super().__init__(name="pair_trainer")
        self.encoder = encoder
        self.images = tf.constant(images)
        self.labels = tf.constant(labels, tf.int32)
        self.classes = tf.constant(np.unique(labels, return_inverse=True)[1], tf.int32)
        self.augment = Augmenter(config.augment, config.seed)
        self.config = config
        self.class_head = (ClassHead(len(np.unique(labels)), int(encoder.output_shape[-1]),
                                     config.seed) if config.class_weight > 0 else None)
        self.loss_tracker = keras.metrics.Mean(name="loss")

    @property
    def metrics(self) -> list:
        return [self.loss_tracker]  # reset by Keras each epoch: "loss" is the epoch's mean

    def train_step(self, data):
        with tf.GradientTape() as tape:
            loss = self._pair_loss(*data) if self.config.sampler == "pairs" else self._batch_loss(data)
        variables = self.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def _batch_loss(self, index):
        e = self.encoder(self.augment(tf.gather(self.images, index)), training=True)
        loss = batch_contrastive_loss(e, tf.gather(self.labels, index), self.config.margin,
                                      self.config.hard_fraction)
        if self.class_head is not None:
            loss += self.config.class_weight * self.class_head(e, tf.gather(self.classes, index))
        return loss

    def _pair_loss(self, a, b, same):
        ea = self.encoder(self.augment(tf.gather(self.images, a)), training=True)
        eb = self.encoder(self.augment(tf.gather(self.images, b)), training=True)
        return tf_contrastive_loss(same, euclidean_distance(ea, eb), self.config.margin)


class CosineSchedule(keras.callbacks.Callback):
    """Cosine decay of the learning rate over the run. Progress is the larger of the share of
    steps done and the share of the time budget spent, so a time-limited run anneals fully
    whatever the machine's speed."""

    def __init__(self, base: float, total_steps: int, clock: "Clock"):
        super().__init__()
        self.base, self.total_steps, self.clock, self.step = base, total_steps, clock, 0

    def on_train_batch_begin(self, batch, logs=None):
        progress = max(self.step / self.total_steps, self.clock.spent())
        self.model.optimizer.learning_rate.assign(cosine_rate(self.base, progress))
        self.step += 1


def cosine_rate(base: float, progress: float, floor: float = 0.05) -> float:
    """Cosine decay from `base` to `floor * base` as `progress` goes from 0 to 1."""
    progress = min(max(progress, 0.0), 1.0)
    return base * (floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * progress)))


class Clock:
    """The run's start and its time budget (None: none)."""

    def __init__(self, budget: Optional[float]):
        self.start, self.budget = time.perf_counter(), budget

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def spent(self) -> float:
        """The share of the time budget used (0 without one)."""
        return self.elapsed() / self.budget if self.budget else 0.0

    def left(self) -> float:
        return max(self.budget - self.elapsed(), 0.0) if self.budget else float("inf")


class TimeBudget(keras.callbacks.Callback):
    """Stops training mid-epoch when the budget is spent (Keras then ends the epoch)."""

    def __init__(self, clock: Clock):
        super().__init__()
        self.clock, self.spent = clock, False

    def on_train_batch_end(self, batch, logs=None):
        if self.clock.budget and self.clock.spent() >= 1.0:
            self.spent = self.model.stop_training = True


class PairValidation(keras.callbacks.Callback):
    """The contrastive loss of the held-out pairs after each epoch, as `val_loss` in the logs
    (what early stopping watches)."""

    def __init__(self, encoder: keras.Model, images: np.ndarray, labels: np.ndarray,
                 config: TrainConfig):
        super().__init__()
        self.encoder, self.images, self.margin = encoder, images, config.margin
        self.pairs = tutorial_pairs(labels, config.seed + 1)
        self.forward = tf.function(lambda x: encoder(x, training=False), reduce_retracing=True)

    def embed(self) -> np.ndarray:
        x = self.images
        return np.concatenate([self.forward(x[i:i + 1024]).numpy() for i in range(0, len(x), 1024)])

    def on_epoch_end(self, epoch, logs=None):
        e = self.embed()
        a, b, same = self.pairs
        logs["val_loss"] = contrastive_loss(euclidean(e[a], e[b]), same, self.margin)


class Progress(keras.callbacks.Callback):
    """A line per epoch (loss, val_loss with * when it improved, rate, elapsed, ETA), a note every
    NOTE_EVERY seconds inside long epochs, and the run's history for the card."""

    def __init__(self, report: Callable[[str], None], prefix: str, epochs: int,
                 steps_per_epoch: int, images_per_step: int, clock: Clock):
        super().__init__()
        self.report, self.prefix, self.epochs, self.clock = report, prefix, epochs, clock
        self.steps, self.images_per_step = steps_per_epoch, images_per_step
        self.history, self.best, self.images_seen = [], np.inf, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = self.last_note = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.images_seen += self.images_per_step
        now = time.perf_counter()
        if now - self.last_note > NOTE_EVERY:
            step = batch + 1
            rate = step * self.images_per_step / (now - self.epoch_start)
            self.report(f"  {self.prefix}epoch {len(self.history) + 1} step {step}/{self.steps}  "
                        f"loss {logs['loss']:.4f}  {rate:,.0f} img/s  epoch ETA "
                        f"{clock_text((self.steps - step) * self.images_per_step / rate)}")
            self.last_note = now

    def on_epoch_end(self, epoch, logs=None):
        elapsed, done = self.clock.elapsed(), epoch + 1
        v = logs.get("val_loss")
        self.history.append({"epoch": done, "loss": round(float(logs["loss"]), 5),
                             **({"val_loss": round(v, 5)} if v is not None else {}),
                             "seconds": round(elapsed, 1)})
        improved = v is not None and v < self.best
        self.best = min(self.best, v) if v is not None else self.best
        eta = min((self.epochs - done) * elapsed / done, self.clock.left())
        self.report(f"{self.prefix}epoch {done}/{self.epochs}  loss {logs['loss']:.4f}  "
                    + (f"val_loss {v:.4f}{' *' if improved else '  '}  " if v is not None else "")
                    + f"{self.images_seen / elapsed:,.0f} img/s  elapsed {clock_text(elapsed)}  "
                    f"ETA {clock_text(eta)}")


def clock_text(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 60}:{seconds % 60:02d}"


def duration_text(seconds: float) -> str:
    """A duration in words a reader cannot take for a time of day: "1 min 50 s", "42 s"."""
    seconds = int(round(max(seconds, 0)))
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def fit_encoder(x_all: np.ndarray, pre: Preprocessing, ds: Dataset, config: TrainConfig,
                train_idx: np.ndarray, val_idx: np.ndarray, time_budget: Optional[float],
                prefix: str, report: Callable[[str], None]) -> Fit:
    """Train one encoder on `train_idx`, early-stopping on the contrastive loss of `val_idx`.

    With no validation images (a final fit) it runs every epoch and keeps the last weights."""
    x_train, y_train = x_all[train_idx], ds.labels[train_idx]
    g_train = np.zeros_like(y_train) if ds.groups is None else ds.groups[train_idx]
    validating = len(val_idx) > 0
    _report_data(ds, config, pre, train_idx, val_idx, prefix, report)
    if config.rotate_classes:
        x_train, y_train, g_train = with_rotated_classes(x_train, y_train, g_train)
        report(f"{prefix}rotated classes: training on {len(y_train):,} images of "
               f"{len(np.unique(y_train))} classes")
    batches, steps, images_per_step = _sampler(config, y_train, g_train)
    encoder = build_encoder(config.arch, pre, config.embedding_dim, config.fix_defect, config.width,
                            config.depth)
    trainer = PairTrainer(encoder, x_train, y_train, config)
    trainer.compile(optimizer=keras.optimizers.Adam(config.learning_rate), jit_compile=False)
    clock = Clock(time_budget)
    budget = TimeBudget(clock)
    progress = Progress(report, prefix, config.epochs, steps, images_per_step, clock)
    callbacks = [CosineSchedule(config.learning_rate, steps * config.epochs, clock), budget]
    if validating:
        validation = PairValidation(encoder, x_all[val_idx], ds.labels[val_idx], config)
        stopper = keras.callbacks.EarlyStopping("val_loss", patience=config.patience,
                                                restore_best_weights=True)
        callbacks += [validation, stopper]
    trainer.fit(batches, epochs=config.epochs, steps_per_epoch=steps,
                callbacks=callbacks + [progress], shuffle=False, verbose=0)
    epochs_run = len(progress.history)
    stopped_by = ("time_budget" if budget.spent
                  else "early_stopping" if validating and stopper.stopped_epoch > 0 else "epochs")
    if not validating:
        return Fit(encoder, float("nan"), epochs_run, epochs_run, stopped_by, progress.history,
                   clock.elapsed(), np.zeros((0, int(encoder.output_shape[-1])), np.float32))
    best_epoch = stopper.best_epoch + 1
    report(f"{prefix}restored the best epoch ({best_epoch}, val_loss {stopper.best:.4f})")
    return Fit(encoder, float(stopper.best), best_epoch, epochs_run, stopped_by, progress.history,
               clock.elapsed(), validation.embed())


def _report_data(ds: Dataset, config: TrainConfig, pre: Preprocessing, train_idx: np.ndarray,
                 val_idx: np.ndarray, prefix: str, report: Callable[[str], None]) -> None:
    validating = len(val_idx) > 0
    report(f"{prefix}data: {ds.name}, {len(train_idx):,} training / {len(val_idx):,} validation "
           f"images, {len(np.unique(ds.labels[train_idx]))} / {len(np.unique(ds.labels[val_idx]))} "
           "classes" + (f" (validation split by {config.val_split})" if validating else "")
           + f", input {pre.shape}, augmentation {config.augment}")
    if config.val_split == "group" and validating:
        report(f"{prefix}validation groups (never trained on): "
               f"{', '.join(ds.groups_present(val_idx))}")


def _sampler(config: TrainConfig, labels: np.ndarray, groups: np.ndarray
             ) -> tuple[tf.data.Dataset, int, int]:
    """The training batches as an endless dataset of index batches, the steps in an epoch and
    the images a step sees."""
    if config.sampler == "pairs":
        first, second, same = tutorial_pairs(labels, config.seed)
        size = config.pair_batch_size
        steps = int(np.ceil(len(first) / size))

        def pairs() -> Iterator[tuple]:
            rng = np.random.default_rng(config.seed)
            while True:
                order = rng.permutation(len(first))
                for i in range(0, len(order), size):
                    index = order[i:i + size]
                    yield first[index], second[index], same[index]

        index = tf.TensorSpec([None], tf.int64)
        signature = (index, index, tf.TensorSpec([None], tf.float32))
        return (tf.data.Dataset.from_generator(pairs, output_signature=signature),
                steps, 2 * size)
    # Small classes (ten images) would fill 16 places a batch with repeats: take each image once.
    per_class = int(min(config.images_per_class,
                        max(2, np.median(np.bincount(labels)[np.unique(labels)]))))
    group_of = groups if config.group_batches else None

    def epoch_batches(epoch: int) -> np.ndarray:
        return class_balanced_batches(labels, config.classes_per_batch, per_class,
                                      config.seed * 1000 + epoch, config.min_steps_per_epoch,
                                      group_of)

    steps = len(epoch_batches(0))
    batches = tf.data.Dataset.from_generator(
        lambda: (b for epoch in itertools.count(1) for b in epoch_batches(epoch)),
        output_signature=tf.TensorSpec([None], tf.int64))
    return batches, steps, min(config.classes_per_batch, len(np.unique(labels))) * per_class
