"""The input-domain check: does an image look like what the model was trained on?

A Siamese encoder maps *any* image somewhere, and a photograph of a face can land within the
threshold of a bag (measured on the Fashion-MNIST model: distance 0.024, threshold 0.677). No
distance threshold can catch that, because the encoder never saw such images. So each model has a
second, small network, trained at training time with *outlier exposure* (Hendrycks et al., 2019):
the model's own training images against many kinds of foreign image (`foreign.py`: noise,
gradients, shapes, text, scribbles, photos, faces, documents, and any other dataset given). It
sees exactly the model input (the card's preprocessing), so it judges what the encoder would see.

Its score is a logit, higher for images more like the training data. The threshold is set on
held-out in-domain images (classes or alphabets never trained on where the split has them) so that
a chosen small share of them (`REJECTION`) is rejected; what it does to foreign images is
measured on foreign images it never trained on and written into the card.

Why not a density score on the encoder's embedding (Mahalanobis)? Measured on both bundled models
(docs/trust.md): the encoder is trained to ignore what does not tell classes apart, and a foreign
image's embedding often lands among the training embeddings, so the embedding alone separates
foreign images much worse than a classifier that sees the pixels.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .augment import Augmenter
from .errors import ModelError
from .foreign import FAMILIES, foreign_batch
from .images import Preprocessing

DOMAIN_FILE = "domain.keras"
# Share of held-out in-domain images the threshold rejects, by how they were held out
# (docs/trust.md). Held-out images of the training classes stand for future queries well, so the
# threshold can sit higher (Fashion-MNIST at 0.5%: 0.54% of its test set rejected, blurred 8x8
# digits accepted 3.7%, against 13.9% at 0.2%). Held-out classes or alphabets stand for other new
# ones less well (Omniglot at 0.5%: up to 4.2% of other unseen alphabets rejected; at 0.2%, 1.8%).
REJECTION = {"image": 0.005, "class": 0.002, "group": 0.002}
DEFAULT_REJECTION = REJECTION["class"]
METHOD = "outlier-exposure CNN on the model input"


@dataclass(frozen=True)
class DomainCard:
    """The domain model's part of the model card."""

    threshold: float  # in_domain = score >= threshold (a logit)
    weights_sha256: str  # of domain.keras's weights: loading checks it
    training_data: str  # what in-domain means, in words (the dataset's name)
    heldout_images: int
    heldout_rejected: float  # share of held-out in-domain images below the threshold
    foreign_accepted: dict[str, float]  # per family, on foreign images it never trained on
    foreign_families: list[str]
    foreign_images: int  # foreign training images
    epochs: int
    method: str = METHOD
    file: str = DOMAIN_FILE
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["threshold"] = round(self.threshold, 5)
        d["heldout_rejected"] = round(self.heldout_rejected, 5)
        d["foreign_accepted"] = {k: round(v, 5) for k, v in self.foreign_accepted.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DomainCard":
        return cls(threshold=float(d["threshold"]), weights_sha256=str(d["weights_sha256"]),
                   training_data=str(d["training_data"]), heldout_images=int(d["heldout_images"]),
                   heldout_rejected=float(d["heldout_rejected"]),
                   foreign_accepted={str(k): float(v) for k, v in d["foreign_accepted"].items()},
                   foreign_families=list(d["foreign_families"]),
                   foreign_images=int(d["foreign_images"]), epochs=int(d["epochs"]),
                   method=str(d.get("method", METHOD)), file=str(d.get("file", DOMAIN_FILE)),
                   seconds=float(d.get("seconds", 0.0)), extra=dict(d.get("extra", {})))


def build_domain_model(pre: Preprocessing):
    """Three 3x3 conv blocks halving the image, then a small dense head to one logit. The head
    sees the whole layout (not a global pool): where things are (a centred object on black,
    strokes on a plain ground) is much of what a domain is."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=pre.shape, dtype="uint8", name="image")
    x = layers.Rescaling(1.0 / 255, name="scale")(inputs)
    for i, filters in enumerate((16, 32, 64)):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i + 1}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    x = layers.Dense(64, activation="relu", name="dense")(x)
    outputs = layers.Dense(1, name="logit")(x)
    return keras.Model(inputs, outputs, name="domain")


def weights_sha256(model) -> str:
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(str(w.shape).encode())
        h.update(np.ascontiguousarray(w, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def fit_domain_model(in_train: np.ndarray, in_heldout: np.ndarray, pre: Preprocessing,
                     training_data: str, seed: int = 0,
                     extra_foreign: Optional[dict[str, np.ndarray]] = None,
                     families: tuple[str, ...] = FAMILIES, epochs: int = 4,
                     augment: str = "flip", max_images: int = 30_000,
                     rejection: float = DEFAULT_REJECTION,
                     report: Callable[[str], None] = print):
    """Train the domain model on model-ready uint8 images (`in_train`, the model's training
    images) against foreign ones, set its threshold on `in_heldout`, measure it on foreign images
    it never saw. `extra_foreign`: other datasets' images (already prepared), by name; a fifth of
    each is kept back for the measurement. `augment`: the encoder's training distortions
    (`augment.AUGMENTATIONS`). Returns (keras model, DomainCard)."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    if len(in_train) > max_images:
        in_train = in_train[rng.choice(len(in_train), max_images, replace=False)]
    extra_train, extra_test = {}, {}
    for name, images in (extra_foreign or {}).items():
        order = rng.permutation(len(images))
        cut = len(images) // 5
        extra_train[name], extra_test[name] = images[order[cut:]], images[order[:cut]]
    x, y = _training_set(in_train, extra_train, pre, families, seed, rng, report)
    model = _train(x, y, pre, seed, epochs, augment, report)
    scorer = DomainModel(model)
    held = scorer.score(in_heldout)
    threshold = float(np.quantile(held, rejection)) if len(held) else float("-inf")
    test_seed = seed * 7919 + 2
    measured = {family: float(np.mean(scorer.score(foreign_batch(
        1000, pre, seed=test_seed, families=(family,))) >= threshold)) for family in families}
    for name, images in extra_test.items():
        measured[name] = float(np.mean(scorer.score(images) >= threshold))
    card = DomainCard(threshold=threshold, weights_sha256=weights_sha256(model),
                      training_data=training_data, heldout_images=int(len(held)),
                      heldout_rejected=float(np.mean(held < threshold)) if len(held) else 0.0,
                      foreign_accepted=measured, foreign_families=list(families) + list(extra_train),
                      foreign_images=int(len(x) - len(in_train)), epochs=epochs,
                      extra={"augment": augment, "rejection_target": rejection},
                      seconds=round(time.perf_counter() - start, 1))
    report(f"domain model: threshold {threshold:.3f} rejects {card.heldout_rejected:.2%} of "
           f"{len(held):,} held-out in-domain images; accepts "
           + ", ".join(f"{k} {v:.1%}" for k, v in measured.items()) + " of unseen foreign images")
    return model, card


def _training_set(in_train: np.ndarray, extra_train: dict[str, np.ndarray], pre: Preprocessing,
                  families: tuple[str, ...], seed: int, rng: np.random.Generator,
                  report: Callable[[str], None]) -> tuple[np.ndarray, np.ndarray]:
    """The in-domain images (label 1) against as many foreign ones (label 0), shuffled: generated
    ones, and up to a quarter as many from each other dataset."""
    n_extra = sum(min(len(v), len(in_train) // 4) for v in extra_train.values())
    n_generated = max(len(in_train) - n_extra, len(in_train) // 2)
    report(f"domain model: {len(in_train):,} in-domain images against {n_generated:,} generated "
           f"foreign images ({', '.join(families)})"
           + (f" and {n_extra:,} from {', '.join(extra_train)}" if extra_train else ""))
    foreign = [foreign_batch(n_generated, pre, seed=seed * 7919 + 1, families=families)]
    for images in extra_train.values():
        take = min(len(images), len(in_train) // 4)
        picked = images[rng.choice(len(images), take, replace=False)]
        # Both polarities, as the generated images have: a dataset's own polarity is no tell.
        flip = rng.random(take) < 0.5
        picked[flip] = 255 - picked[flip]
        foreign.append(picked)
    foreign = np.concatenate(foreign)
    x = np.concatenate([in_train, foreign])
    y = np.r_[np.ones(len(in_train), np.float32), np.zeros(len(foreign), np.float32)]
    order = rng.permutation(len(x))
    return x[order], y[order]


def _train(x: np.ndarray, y: np.ndarray, pre: Preprocessing, seed: int, epochs: int,
           augment: str, report: Callable[[str], None]):
    """The domain network trained on (x, y), with a progress line per epoch."""
    import keras
    import tensorflow as tf

    start = time.perf_counter()
    keras.utils.set_random_seed(seed)
    model = build_domain_model(pre)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True))
    # The encoder's own distortions, drawn afresh each epoch for both classes alike: in-domain
    # images seen distorted are still in domain (a new alphabet's strokes, a shifted garment),
    # and neither class gets a tell.
    distort = Augmenter(augment, seed)

    def distorted() -> np.ndarray:
        return np.concatenate([distort(tf.constant(x[i:i + 2048])).numpy()
                               for i in range(0, len(x), 2048)])

    for epoch in range(epochs):
        model.fit(distorted(), y, batch_size=128, epochs=epoch + 1, initial_epoch=epoch,
                  shuffle=True, verbose=0)
        elapsed = time.perf_counter() - start
        report(f"domain model: epoch {epoch + 1}/{epochs}  loss "
               f"{model.history.history['loss'][-1]:.4f}  elapsed {elapsed:.0f}s  "
               f"ETA {elapsed / (epoch + 1) * (epochs - epoch - 1):.0f}s")
    return model


class DomainModel:
    """A loaded domain model: `score(batch)` on model-ready uint8 input, one compiled call."""

    def __init__(self, model, batch_size: int = 512):
        import tensorflow as tf

        self.model = model
        self.batch_size = batch_size
        self._forward = tf.function(
            lambda x: model(x, training=False),
            input_signature=[tf.TensorSpec((None, *model.input_shape[1:]), tf.uint8)]
        ).get_concrete_function()

    def score(self, batch: np.ndarray) -> np.ndarray:
        out = np.empty(len(batch), np.float32)
        for start in range(0, len(batch), self.batch_size):
            out[start:start + self.batch_size] = \
                self._forward(batch[start:start + self.batch_size]).numpy()[:, 0]
        return out


def save_domain_model(directory: str | os.PathLike, model) -> None:
    model.save(Path(directory) / DOMAIN_FILE)


def load_domain_model(directory: str | os.PathLike, card: DomainCard, pre: Preprocessing
                      ) -> DomainModel:
    import keras

    path = Path(directory) / card.file
    if not path.is_file():
        raise ModelError(f"{directory}: the card names a domain model, but {card.file} is missing")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for a damaged file
        raise ModelError(f"{path}: cannot load the domain model ({type(exc).__name__}: "
                         f"{exc})") from None
    if tuple(model.input_shape) != (None, *pre.shape):
        raise ModelError(f"{path}: domain model input {model.input_shape} does not match the "
                         f"card's {(None, *pre.shape)}")
    if weights_sha256(model) != card.weights_sha256:
        raise ModelError(f"{path}: its weights hash to {weights_sha256(model)}, the card expects "
                         f"{card.weights_sha256}; the card and domain model do not belong together")
    return DomainModel(model)
