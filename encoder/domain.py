"""The input-domain check: does an image look like what the model was trained on?

A Siamese encoder maps *any* image somewhere, and a photograph of a face can land within the
threshold of a bag (measured on the Fashion-MNIST model: distance 0.024, threshold 0.677). No
distance threshold can catch that, because the encoder never saw such images. So each model has a
second, small network, trained at training time with *outlier exposure* (Hendrycks et al., 2019):
the model's own training images against many kinds of foreign image (`foreign.py`: noise,
gradients, shapes, text, scribbles, photos, faces, documents, and any other dataset given). It
sees exactly the model input (the card's preprocessing), so it judges what the encoder would see.

Its score is a logit, higher for images more like the training data. It must learn the *kind* of
image, not the classes: a model of 30 people must keep the 31st person's photos and refuse a
garment. So:
- the foreign images are many (at least `MIN_FOREIGN`, however few the training images) and of
  every kind the package ships or generates, plus any `--foreign-dataset`; a kind that turns out
  to be the training images' own (still accepted more than `SAME_KIND` of the time by a check
  trained against it: Omniglot for a model of characters) is not used as foreign;
- the threshold is set on held-out images of classes the model never trained on (where the split
  has them) and on fresh foreign images: in the middle of the gap between the two when there is
  one, so that new classes and unseen foreign kinds both have room;
- both are measured as they will be met: the share of held-out images rejected, each held-out
  class judged at the threshold the others set (leave one class out), and
  each foreign kind's share accepted on fresh images, by the check that trained against it and by
  one that did not (each kind left out of training in turn). The card stores them per kind. Where
  a target is missed (`KEEP`, `FOREIGN_LIMIT`) the card says the check is weak and why, training
  prints a `warning:`, and every verdict of the model says so.

Why not a density score on the encoder's embedding (Mahalanobis)? Measured on both bundled models
(docs/trust.md): the encoder is trained to ignore what does not tell classes apart, and a foreign
image's embedding often lands among the training embeddings, so the embedding alone separates
foreign images much worse than a classifier that sees the pixels.
"""
from __future__ import annotations

import functools
import hashlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .augment import Augmenter
from .errors import ModelError
from .foreign import FAMILIES, SHIPPED, foreign_batch, shipped_batch
from .images import Preprocessing
from .quiet import filtered_stderr

DOMAIN_FILE = "domain.keras"
# Share of held-out in-domain images the threshold rejects, by how they were held out
# (docs/trust.md). Held-out images of the training classes stand for future queries well, so the
# threshold can sit higher (Fashion-MNIST at 0.5%: 0.54% of its test set rejected, blurred 8x8
# digits accepted 3.7%, against 13.9% at 0.2%). Held-out classes or alphabets stand for other new
# ones less well (Omniglot at 0.5%: up to 4.2% of other unseen alphabets rejected; at 0.2%, 1.8%).
REJECTION = {"image": 0.005, "class": 0.002, "group": 0.002}
DEFAULT_REJECTION = REJECTION["class"]
METHOD = "outlier-exposure CNN on the model input"
KEEP = 0.98  # target: held-out images of the training kind (new classes) kept at least this often
FOREIGN_LIMIT = 0.05  # target: each foreign kind accepted at most this often
SAME_KIND = 0.2  # a kind still accepted this often by a check trained against it is its own
# The held-out images the threshold is set on show whether new classes are kept only from this
# many classes (each judged at the threshold the others set) and images (one image is then 1%,
# under the 2% a miss allows); below either, training says so before it starts.
MIN_HELDOUT_CLASSES, MIN_HELDOUT_IMAGES = 4, 100
MIN_FOREIGN = 8000  # foreign training images at the least: a few hundred taught little
LEAVE_OUT_IMAGES = 5000  # in-domain training images of each leave-one-kind-out check
FOREIGN_MEASURED = 500  # fresh foreign images of each kind the figures are measured on


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
    heldout_classes: Optional[int] = None  # behind `heldout_rejected` (None: not by class)
    # Each kind's share accepted by a check trained without it (None: not measured, a card
    # from before); kinds accepted more than SAME_KIND are the training kind, not used as foreign.
    left_out: Optional[dict[str, float]] = None
    same_kind: dict[str, float] = field(default_factory=dict)
    weak: list[str] = field(default_factory=list)  # the targets it misses, in words

    def to_dict(self) -> dict:
        d = asdict(self)
        d["threshold"] = round(self.threshold, 5)
        d["heldout_rejected"] = round(self.heldout_rejected, 5)
        for key in ("foreign_accepted", "left_out", "same_kind"):
            if d[key] is not None:
                d[key] = {k: round(v, 5) for k, v in d[key].items()}
        d["targets"] = {"kept": KEEP, "foreign_accepted": FOREIGN_LIMIT}
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
                   seconds=float(d.get("seconds", 0.0)), extra=dict(d.get("extra", {})),
                   heldout_classes=(None if d.get("heldout_classes") is None
                                    else int(d["heldout_classes"])),
                   left_out=(None if d.get("left_out") is None else
                             {str(k): float(v) for k, v in d["left_out"].items()}),
                   same_kind={str(k): float(v) for k, v in d.get("same_kind", {}).items()},
                   weak=[str(w) for w in d.get("weak", [])])


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
                     report: Callable[[str], None] = print,
                     heldout_labels: Optional[np.ndarray] = None, leave_out: bool = True):
    """Train the domain model on model-ready uint8 images (`in_train`, the model's training
    images) against foreign ones, set its threshold on `in_heldout` (of classes `heldout_labels`)
    and fresh foreign images, and measure it on images it never saw (module docstring).
    `extra_foreign`: other datasets' images (already prepared), by name; a fifth of each is kept
    back for the measurement. `augment`: the encoder's training distortions
    (`augment.AUGMENTATIONS`). `leave_out`: also measure each kind with a check trained without
    it. Returns (keras model, DomainCard)."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    if len(in_train) > max_images:
        in_train = in_train[rng.choice(len(in_train), max_images, replace=False)]
    pools = _foreign_pools(len(in_train), pre, seed, families, extra_foreign or {}, rng)
    kinds = list(pools.train)
    fit = functools.partial(_train, pre=pre, seed=seed, epochs=epochs, augment=augment)
    left_out: Optional[dict[str, float]] = None
    if leave_out:
        left_out = {}
        sub = in_train if len(in_train) <= LEAVE_OUT_IMAGES else \
            in_train[rng.choice(len(in_train), LEAVE_OUT_IMAGES, replace=False)]
        # As many foreign images as a check of `sub` alone would train on.
        share = max(MIN_FOREIGN, len(sub)) // len(kinds)
        for k, kind in enumerate(kinds):
            others = [o for o in kinds if o != kind]
            scorer = DomainModel(fit(sub, [pools.train[o][:share] for o in others]))
            threshold = _threshold(scorer.score(in_heldout),
                                   scorer.score(np.concatenate([pools.check[o] for o in others])),
                                   rejection)
            left_out[kind] = float(np.mean(scorer.score(pools.test[kind]) >= threshold))
            elapsed = time.perf_counter() - start
            report(f"domain check: trained without {kind}, it accepts {left_out[kind]:.1%} of "
                   f"{kind} ({k + 1}/{len(kinds)}, elapsed {elapsed:.0f}s, ETA "
                   f"{elapsed / (k + 1) * (len(kinds) - k - 1):.0f}s)")
    # Trained against every kind: a kind it still cannot refuse (held to keeping the held-out
    # images) is the training images' own, not foreign; the check is trained again without it.
    model, threshold, measured, held, checked = _fit_and_measure(
        fit, in_train, in_heldout, pools, kinds, rejection, report)
    same_kind = _same_kind(measured)
    for kind, accepted in same_kind.items():
        report(f"domain check: {kind} looks like the training images (a check trained against "
               f"it still accepts {accepted:.0%}): not used as foreign")
    used = [k for k in kinds if k not in same_kind]
    if same_kind:
        model, threshold, measured, held, checked = _fit_and_measure(
            fit, in_train, in_heldout, pools, used, rejection, report)
    rejected, classes = _heldout_rejected(held, heldout_labels, checked, rejection, seed)
    weak = _weaknesses(training_data, rejected, classes, measured, left_out or {}, same_kind)
    card = DomainCard(threshold=threshold, weights_sha256=weights_sha256(model),
                      training_data=training_data, heldout_images=int(len(held)),
                      heldout_rejected=rejected, foreign_accepted=measured,
                      foreign_families=used,
                      foreign_images=int(sum(len(pools.train[k]) for k in used)), epochs=epochs,
                      extra={"augment": augment, "rejection_target": rejection,
                             "foreign_measured": FOREIGN_MEASURED},
                      seconds=round(time.perf_counter() - start, 1), heldout_classes=classes,
                      left_out=left_out, same_kind=same_kind, weak=weak)
    report(f"domain model: threshold {threshold:.3f} rejects {rejected:.2%} of {len(held):,} "
           f"held-out in-domain images{f' of {classes} classes never trained on' if classes else ''}"
           "; accepts " + ", ".join(f"{k} {v:.1%}" for k, v in measured.items())
           + " of fresh foreign images" + (
               "; trained without it, " + ", ".join(f"{k} {v:.1%}" for k, v in left_out.items()
                                                   if k in measured) if left_out else ""))
    for w in weak:
        report(f"warning: the domain check is weak: {w}")
    return model, card


def _fit_and_measure(fit, in_train: np.ndarray, in_heldout: np.ndarray, pools: "_Pools",
                     kinds: list[str], rejection: float, report: Callable[[str], None]):
    """The check trained against `kinds`: (model, threshold, each kind's share accepted, the
    held-out in-domain scores, the fresh foreign scores the threshold was set with)."""
    report(f"domain model: {len(in_train):,} in-domain images against "
           f"{sum(len(pools.train[k]) for k in kinds):,} foreign images ({', '.join(kinds)})")
    model = fit(in_train, [pools.train[k] for k in kinds], report=report)
    scorer = DomainModel(model)
    held = scorer.score(in_heldout)
    checked = scorer.score(np.concatenate([pools.check[k] for k in kinds]))
    threshold = _threshold(held, checked, rejection)
    measured = {k: float(np.mean(scorer.score(pools.test[k]) >= threshold)) for k in kinds}
    return model, threshold, measured, held, checked


def _same_kind(accepted: dict[str, float]) -> dict[str, float]:
    """The kinds that look like the training images: accepted more than `SAME_KIND` of the time
    by a check trained against them, and several times as often as the other kinds are (a check
    that accepts most kinds is weak, not surrounded by its own kind). At least one kind stays
    foreign. (Asked of a check *not* trained against them, near kinds would pass too: a check of
    70 Fashion-MNIST images, never shown a digit, took digits for its own.)"""
    same = {}
    for kind, share in accepted.items():
        others = [v for k, v in accepted.items() if k != kind]
        if share > SAME_KIND and share > 3 * float(np.median(others)) and \
                len(same) < len(accepted) - 1:
            same[kind] = share
    return same


@dataclass
class _Pools:
    """Foreign images by kind: to train on, to set the threshold with, and to measure on."""
    train: dict[str, np.ndarray]
    check: dict[str, np.ndarray]
    test: dict[str, np.ndarray]


def _foreign_pools(n_in: int, pre: Preprocessing, seed: int, families: tuple[str, ...],
                   extra: dict[str, np.ndarray], rng: np.random.Generator) -> _Pools:
    """At least `MIN_FOREIGN` foreign training images (as many as the in-domain ones when
    more), in equal shares of every kind; and fresh ones of each kind for the threshold and
    for the measurement. Another dataset's images (`extra`) go in both polarities, as the
    generated ones do: a dataset's own polarity is no tell; a fifth of them is kept back."""
    kinds = len(families) + len(extra)
    share = max(MIN_FOREIGN, n_in) // kinds
    pools = _Pools({}, {}, {})
    for k, family in enumerate(families):
        base = seed * 7919 + 101 * k
        pools.train[family] = foreign_batch(share, pre, seed=base + 1, families=(family,))
        pools.check[family] = foreign_batch(100, pre, seed=base + 3, families=(family,))
        # Real images the package ships are measured as they are: whether a check accepts them
        # then says whether they are the model's own kind (Fashion-MNIST for its own model).
        pools.test[family] = (shipped_batch(family, FOREIGN_MEASURED, pre, seed=base + 2)
                              if family in SHIPPED else
                              foreign_batch(FOREIGN_MEASURED, pre, seed=base + 2, families=(family,)))
    for name, images in extra.items():
        order = rng.permutation(len(images))
        cut = max(1, len(images) // 5)
        kept, rest = images[order[:cut]], images[order[cut:]]
        picked = rest[rng.choice(len(rest), min(share, len(rest)), replace=False)].copy()
        flip = rng.random(len(picked)) < 0.5
        picked[flip] = 255 - picked[flip]
        pools.train[name] = picked
        pools.check[name] = picked[:100]
        pools.test[name] = kept
    return pools


def _threshold(held: np.ndarray, foreign: np.ndarray, rejection: float) -> float:
    """In the middle of the gap between the held-out in-domain scores (less the `rejection`
    share) and the fresh foreign ones (less 1%), when there is a gap; else where it rejects
    that share of the in-domain ones."""
    if not len(held):
        return float("-inf")
    low = float(np.quantile(held, rejection))
    high = float(np.quantile(foreign, 0.99)) if len(foreign) else float("-inf")
    return (low + high) / 2 if high < low else low


def _heldout_rejected(held: np.ndarray, labels: Optional[np.ndarray], foreign: np.ndarray,
                      rejection: float, seed: int) -> tuple[float, Optional[int]]:
    """The share of held-out in-domain images rejected as new classes will be: with four or more
    held-out classes, each class's images judged at the threshold the other classes set (leave
    one class out); else counted where the threshold was set."""
    if labels is None or len(np.unique(labels)) < MIN_HELDOUT_CLASSES:
        return float(np.mean(held < _threshold(held, foreign, rejection))) if len(held) else 0.0, \
            None
    classes = np.unique(labels)
    rejected = sum(int(np.sum(held[labels == c] < _threshold(held[labels != c], foreign,
                                                             rejection)))
                   for c in classes)
    return rejected / len(held), int(len(classes))


def thin_check_warning(heldout_labels: Optional[np.ndarray], train_classes: int) -> Optional[str]:
    """Before training, the words for a domain check whose held-out classes are too few to
    measure it (`MIN_HELDOUT_CLASSES`, `MIN_HELDOUT_IMAGES`); None when they suffice, or when the
    held-out images are of the training classes (an image split: no new classes to keep)."""
    if heldout_labels is None:
        return None
    images, classes = len(heldout_labels), len(np.unique(heldout_labels))
    if classes >= MIN_HELDOUT_CLASSES and images >= MIN_HELDOUT_IMAGES:
        return None
    return (f"thin domain check: it learns from {train_classes} classes and sets its threshold on "
            f"{images} held-out images of {classes} other classes, under the "
            f"{MIN_HELDOUT_CLASSES} classes and {MIN_HELDOUT_IMAGES} images that show whether "
            f"new classes are kept (one image is {1 / max(images, 1):.0%}). Checks this small "
            "learn the classes more than their kind (docs/trust.md: one trained on 4 of a "
            "clothing folder's 7 classes accepted 77-99% of most foreign kinds) and are likely to "
            "be marked weak. Add classes")


def _weaknesses(training_data: str, rejected: float, classes: Optional[int],
                measured: dict[str, float], left_out: dict[str, float],
                same_kind: dict[str, float]) -> list[str]:
    """The targets the check misses, in words for a warning and every verdict."""
    weak = []
    if rejected > 1 - KEEP:
        whose = f"of {classes} held-out classes" if classes else "held out"
        weak.append(f"it rejects {rejected:.1%} of images {whose} (target: at most "
                    f"{1 - KEEP:.0%}), so new classes of {training_data} may be refused")
    for kind, accepted in measured.items():
        if accepted > FOREIGN_LIMIT:
            weak.append(f"it accepts {accepted:.0%} of {kind} (target: at most "
                        f"{FOREIGN_LIMIT:.0%})")
        elif left_out.get(kind, 0.0) > FOREIGN_LIMIT:
            weak.append(f"trained without {kind}, it accepts {left_out[kind]:.0%} of them "
                        f"(target: at most {FOREIGN_LIMIT:.0%}), so kinds of image it has not "
                        "seen may pass")
    return weak


def _train(in_domain: np.ndarray, foreign: list[np.ndarray], pre: Preprocessing, seed: int,
           epochs: int, augment: str, report: Optional[Callable[[str], None]] = None):
    """The domain network trained on in-domain images (label 1) against foreign ones (label 0),
    each side weighing half however many images it has, with a progress line per epoch when
    `report` is given."""
    import keras
    import tensorflow as tf

    start = time.perf_counter()
    foreign = np.concatenate(foreign)
    x = np.concatenate([in_domain, foreign])
    y = np.r_[np.ones(len(in_domain), np.float32), np.zeros(len(foreign), np.float32)]
    weight = np.r_[np.full(len(in_domain), len(x) / (2 * len(in_domain)), np.float32),
                   np.full(len(foreign), len(x) / (2 * len(foreign)), np.float32)]
    order = np.random.default_rng(seed).permutation(len(x))
    x, y, weight = x[order], y[order], weight[order]
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
        with filtered_stderr():  # the datasets `fit` makes log one harmless "E" line each
            model.fit(distorted(), y, sample_weight=weight, batch_size=128, epochs=epoch + 1,
                      initial_epoch=epoch, shuffle=True, verbose=0)
        if report is not None:
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
