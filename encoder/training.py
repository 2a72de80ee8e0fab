"""Training a Siamese encoder on a dataset, then calibrating and saving it as a model artifact:
the validation folds, the optional final fit on every class, the calibration of the verdict, the
domain model and the card. One encoder's training is `fitting.fit_encoder`."""
from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .artifact import ModelCard, save_model
from .calibration import (HeldOutPairs, calibrate, cross_validated_accuracy, operating_points,
                          verdict_calibration)
from .config import TrainConfig
from .datasets import Dataset
from .domain import REJECTION, fit_domain_model, thin_check_warning
from .evaluation import HELDOUT_EPISODES, HELDOUT_WAYS, heldout_oneshot, retrieval_metrics
from .images import Preprocessing, prepare_batch
from .fitting import Fit, duration_text, fit_encoder
from .splits import new_class_labels, split_train_val, validation_warnings
from .verdict import WEAK_AUC

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


@dataclass
class Folds:
    """What the validation folds measured, pooled: each fold's encoder judged on the classes (or
    images) it never trained on."""
    fits: list = field(default_factory=list)
    pairs: list = field(default_factory=list)  # `HeldOutPairs` of each fold's held-out images
    heldout: list = field(default_factory=list)  # (embeddings, labels) of the held-out images
    retrievals: list = field(default_factory=list)
    oneshot: list = field(default_factory=list)


def train(ds: Dataset, config: TrainConfig, out_dir: str | os.PathLike,
          report: Callable[[str], None] = lambda line: print(line, flush=True),
          extra_foreign: Optional[dict[str, np.ndarray]] = None) -> ModelCard:
    """Train on `ds`, validate on a held-out part of it, calibrate, and save to `out_dir`.

    The verdict (threshold, operating points, the distance -> probability map, the open-set
    model) is calibrated on the saved encoder's own held-out images, which it never trained on:
    with a class or group split, classes it never saw, as a gallery of new people or products
    will be. Pairs are every distinct pair of those images (or a sample of each kind), each once,
    and the intervals resample the classes. Unless `config.domain` is off, a domain model is
    trained on the same training images against foreign ones (`extra_foreign`: other datasets'
    images at the model's input, by name) and its threshold set on the same held-out images.

    With calibration folds (K > 1) the classes are dealt into K folds and K encoders train,
    each holding out one fold; the first is saved. The others measure the recipe on every class,
    each judged by an encoder that never trained on it: the cross-validated accuracy, one-shot,
    and how far each encoder's own operating points lie from the saved one's. Calibrating the
    saved encoder on the other folds' pooled pairs would describe other encoders: on 60 unseen
    Omniglot characters, the first fold's encoder accepted 84% of same-class pairs where the
    pooled folds said 94%.

    With `refit` the saved encoder then trains on every class for the folds' median best epoch
    count: more accurate on new classes, but no class is left that it never saw. Its card keeps
    the first fold's encoder's figures, every operating point marked not calibrated: on faces of
    new people, such a final fit measured FAR 0.013-0.035 where the folds said 0.060-0.101, and
    probability errors 10 times the card's."""
    import tensorflow as tf

    started = time.perf_counter()
    for line in ds.count_report():
        report(line)
    ds.check_trainable()
    requested, config = config, config.resolve(ds)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    pre = Preprocessing(*ds.images.shape[1:], invert=config.invert, fit=ds.fit)
    x_all = prepare_batch(ds.images, pre)
    folds = config.calibration_folds
    time_budget = config.time_budget / (folds + int(config.refit)) if config.time_budget else None
    splits = [split_train_val(ds, config, fold=k) for k in range(folds)]  # errors before training
    warnings = validation_warnings(ds, requested, splits)
    if config.domain:
        train_classes = len(np.unique(ds.labels[splits[0][0]]))
        thin = thin_check_warning(new_class_labels(ds, config, splits[0][1]), train_classes)
        warnings += [thin] if thin else []
    for warning in warnings:
        report(f"warning: {warning}")
    measured = _validate(x_all, pre, ds, config, splits, time_budget, report)
    saved, train_idx = _saved_encoder(x_all, pre, ds, config, splits, measured, time_budget, report)
    e_val, y_val = measured.heldout[0]
    note = (REFIT_NOTE.format(classes=len(np.unique(y_val)), images=len(y_val))
            if config.refit else "")
    report(f"calibrating on {len(y_val):,} held-out images of {len(np.unique(y_val))} classes "
           + ("that the saved encoder never trained on" if not config.refit else
              "(the first fold's encoder's: the saved one trained on every class)"))
    pairs, verdicts = verdict_calibration(
        e_val, y_val, config.seed, note, new_classes=config.val_split in ("class", "group"),
        groups=ds.groups[splits[0][1]] if config.val_split == "group" else None)
    cal = calibrate(pairs.distances, pairs.same, config.far_target)
    report("operating points: " + ", ".join(
        f"{name} {p.threshold:.4f} (TAR {p.tar:.3f}, FAR {p.far:.4f} "
        f"[{p.far_ci95[0]:.4f}, {p.far_ci95[1]:.4f}]{'' if p.calibrated else ', not calibrated'})"
        for name, p in verdicts["operating_points"].items())
        + f"; probability map ECE {verdicts['probability'].ece:.4f} (on held-out "
        f"{verdicts['probability'].ece_by})")
    for name, p in verdicts["operating_points"].items():
        if not p.calibrated and not note:
            report(f"warning: operating point {name} is not calibrated: {p.reason}")
    if note:
        report(f"warning: {note}")
    if cal.roc_auc < WEAK_AUC:
        report(f"warning: the encoder barely tells the held-out classes apart (ROC AUC "
               f"{cal.roc_auc:.2f}, under {WEAK_AUC}): the model will verify nothing; train it on "
               "more classes, or more images of each")
    domain_model = domain_card = None
    if config.domain:
        domain_model, domain_card = fit_domain_model(
            x_all[splits[0][0]], x_all[splits[0][1]], pre, ds.name, seed=config.seed,
            extra_foreign=extra_foreign, epochs=config.domain_epochs, augment=config.augment,
            rejection=REJECTION[config.val_split], report=report,
            heldout_labels=new_class_labels(ds, config, splits[0][1]),
            leave_out=config.domain_leave_out)
    validation = _validation_summary(ds, config, splits, measured, pairs, cal)
    training = _training_record(ds, config, splits, measured, saved, train_idx, warnings, started)
    card = ModelCard.for_encoder(saved.encoder, pre, cal, validation, training,
                                 domain=domain_card, calibration_note=note, same=config.same,
                                 **verdicts)
    save_model(out_dir, saved.encoder, card, domain_model)
    report(f"saved {Path(out_dir)} (model {card.model_id}): threshold {cal.threshold:.4f}, "
           f"val accuracy {cal.accuracy:.4f}"
           + (f" (cross-validated {validation['cross_validated_accuracy']:.4f})" if folds > 1 else "")
           + f", ROC AUC {cal.roc_auc:.4f}, EER {cal.eer:.4f}, "
           f"recall@1 {validation['recall@1']:.4f}; training took {duration_text(time.perf_counter() - started)}")
    if warnings:
        report(f"warning: read these numbers with the {len(warnings)} warning(s) above in mind "
               "(also in the card's training.warnings)")
    return card


REFIT_NOTE = ("the saved encoder trained on every class (--refit), so no class is left that it "
              "never saw: these figures are the first fold's encoder's, on {classes} classes "
              "({images:,} images) it never trained on, and a final fit moves distances")


def _validate(x_all: np.ndarray, pre: Preprocessing, ds: Dataset, config: TrainConfig,
              splits: list, time_budget: Optional[float], report: Callable[[str], None]) -> Folds:
    """Train one encoder per split and measure it on the images that split holds out."""
    import keras

    folds, measured = len(splits), Folds()
    for k, (train_idx, val_idx) in enumerate(splits):
        keras.utils.set_random_seed(config.seed + k)
        prefix = f"fold {k + 1}/{folds}: " if folds > 1 else ""
        fit = fit_encoder(x_all, pre, ds, config, train_idx, val_idx, time_budget, prefix, report)
        e_val, y_val = fit.val_embeddings, ds.labels[val_idx]
        measured.pairs.append(HeldOutPairs.of(e_val, y_val, config.seed + 1))
        measured.heldout.append((e_val, y_val))
        measured.retrievals.append(retrieval_metrics(e_val, y_val))
        if config.val_split in ("class", "group"):
            # Classes never trained on: the one-shot accuracy a gallery of new ones would get.
            result = heldout_oneshot(e_val, y_val, None if ds.groups is None else ds.groups[val_idx],
                                     ds.group_names, seed=config.seed)
            if result:
                report(f"{prefix}one-shot on held-out classes: " + "; ".join(
                    f"{name} " + ", ".join(f"{way} {acc:.3f}" for way, acc in r.items())
                    for name, r in result.items()))
                measured.oneshot.append(result)
        measured.fits.append(fit)
    return measured


def _saved_encoder(x_all: np.ndarray, pre: Preprocessing, ds: Dataset, config: TrainConfig,
                   splits: list, measured: Folds, time_budget: Optional[float],
                   report: Callable[[str], None]) -> tuple[Fit, np.ndarray]:
    """The encoder to save and the images it trained on: with `refit`, a final fit on every
    image for the folds' median best epoch count; else the first fold's."""
    import keras

    if not config.refit:
        return measured.fits[0], splits[0][0]
    folds = len(splits)
    epochs = max(1, int(round(np.median([f.best_epoch for f in measured.fits]))))
    report(f"final fit: every class, {epochs} epochs (the median best epoch of "
           f"{'the folds' if folds > 1 else 'the validation run'})")
    keras.utils.set_random_seed(config.seed + folds)
    train_idx = np.arange(len(ds))
    return fit_encoder(x_all, pre, ds, replace(config, epochs=epochs), train_idx,
                       np.zeros(0, int), time_budget, "final: ", report), train_idx


def _validation_summary(ds: Dataset, config: TrainConfig, splits: list, measured: Folds,
                        pairs: HeldOutPairs, cal) -> dict:
    """The held-out metrics for the card: the saved encoder's (accuracy, ROC AUC, EER, on the
    pairs its verdict was calibrated on), and the folds' averaged (loss, retrieval), each fold
    on what its encoder never saw."""
    retrievals = measured.retrievals
    validation = {"contrastive_loss": round(float(np.mean([f.best_loss for f in measured.fits])), 5),
                  "accuracy": round(cal.accuracy, 5),
                  "roc_auc": round(cal.roc_auc, 5), "eer": round(cal.eer, 5),
                  **{k: round(float(np.mean([r[k] for r in retrievals])), 5)
                     for k in retrievals[0]},
                  "images": pairs.images, "classes": pairs.classes,
                  "pairs": int(cal.positives + cal.negatives), "folds": len(splits)}
    if measured.oneshot:
        validation["oneshot"] = oneshot_summary(measured.oneshot, ds.groups is not None)
    if len(splits) > 1:
        validation["cross_validated_accuracy"] = round(cross_validated_accuracy(
            [p.distances for p in measured.pairs], [p.same for p in measured.pairs]), 5)
        # Each fold's encoder calibrated on its own held-out classes: how far thresholds move
        # from one encoder of this recipe to the next.
        validation["fold_thresholds"] = {
            name: [round(operating_points(p, config.seed)[name].threshold, 5)
                   for p in measured.pairs] for name in ("balanced", "far-1e-2")}
        validation["fold_classes"] = [p.classes for p in measured.pairs]
    return validation


def _training_record(ds: Dataset, config: TrainConfig, splits: list, measured: Folds, saved: Fit,
                     train_idx: np.ndarray, warnings: list[str], started: float) -> dict:
    """Where the saved encoder came from, for the card: data, settings, epochs, time, versions."""
    import keras
    import tensorflow as tf

    fits, trained_groups = measured.fits, ds.groups_present(train_idx)
    held_out = np.concatenate([v for _, v in splits])
    return {
        "dataset": ds.name, "fingerprint": ds.fingerprint(), "images": int(len(train_idx)),
        "classes": int(len(np.unique(ds.labels[train_idx]))),
        "class_names": list(ds.class_names)[:1000],
        # Classes left out of the data (--classes, --exclude-classes): never seen.
        "excluded_classes": list(ds.excluded_classes)[:1000],
        # The groups (Omniglot alphabets) trained on and held out: evaluation leaves out by
        # default the ones the model has seen.
        "groups": trained_groups,
        "validation_groups": [g for g in ds.groups_present(held_out) if g not in trained_groups],
        "settings": asdict(config), "epochs_run": saved.epochs_run,
        "best_epoch": saved.best_epoch, "stopped_by": saved.stopped_by,
        "train_seconds": round(sum(f.train_seconds for f in fits)
                               + (saved.train_seconds if config.refit else 0), 1),
        **({"fold_seconds": [round(f.train_seconds, 1) for f in fits],
            "fold_best_epochs": [f.best_epoch for f in fits]}
           if len(splits) > 1 or config.refit else {}),
        **({"final_fit_seconds": round(saved.train_seconds, 1)} if config.refit else {}),
        "total_seconds": round(time.perf_counter() - started, 1),
        "history": saved.history,
        "parameters": int(saved.encoder.count_params()),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "cpus": os.cpu_count(), "warnings": warnings}
