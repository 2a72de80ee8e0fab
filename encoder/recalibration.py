"""Adding what the verdict needs to a model trained before it existed, without retraining it.

A model directory from before operating points and the domain check keeps its encoder (same
weights, same model id, so galleries built with it stay valid); `recalibrate` reproduces the
held-out split its training used, from the card's settings and the same data, and stores:
- the operating points, the distance -> probability map and the open-set model, from the held-out
  embeddings, when the saved encoder never trained on them (no final fit on every class), as
  training now calibrates them (every distinct pair, intervals over resampled classes);
- a domain model, trained on the split's training images.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .artifact import ModelCard, load_model, save_model
from .calibration import calibrate, verdict_calibration
from .datasets import Dataset
from .distance import euclidean
from .domain import REJECTION, fit_domain_model
from .errors import DatasetError
from .images import prepare_batch
from .pairs import repeated_tutorial_pairs
from .config import TrainConfig
from .splits import new_class_labels, split_train_val


def recalibrate(model_dir: str | Path, ds: Dataset,
                extra_foreign: Optional[dict[str, np.ndarray]] = None, domain: bool = True,
                domain_epochs: int = 4,
                report: Callable[[str], None] = lambda line: print(line, flush=True)) -> ModelCard:
    """Calibrate the verdict of the model in `model_dir` on `ds`, the data it was trained on,
    and rewrite the directory (atomically). Returns the new card."""
    encoder, card = load_model(model_dir)
    if ds.fingerprint() != card.training.get("fingerprint"):
        raise DatasetError(f"{ds.name} is not the data model {card.model_id} was trained on "
                           f"(fingerprint {ds.fingerprint()}, the card's "
                           f"{card.training.get('fingerprint')}); its held-out split cannot be "
                           "reproduced from other data")
    config = TrainConfig.from_card(card).resolve(ds)
    train_idx, val_idx = split_train_val(ds, config, fold=0)
    pre = card.preprocessing
    x_all = prepare_batch(ds.images, pre)
    verdicts = {}
    if config.refit:
        report(f"model {card.model_id} was trained on every class in the end (final fit): no "
               "held-out classes are left to calibrate operating points on; retrain it with "
               "siamese-train to get them. Its threshold stays as it is.")
    else:
        forward = encoder  # the held-out images, embedded as the embedder would
        e_val = np.concatenate([forward(x_all[val_idx][i:i + 1024], training=False).numpy()
                                for i in range(0, len(val_idx), 1024)])
        y_val = ds.labels[val_idx]
        pairs, verdicts = verdict_calibration(
            e_val, y_val, config.seed, new_classes=config.val_split in ("class", "group"),
            groups=ds.groups[val_idx] if config.val_split == "group" else None)
        if not _reproduces(card, e_val, y_val, pairs, config):
            raise DatasetError(f"the held-out split of {ds.name} does not reproduce the card's "
                               f"threshold ({card.calibration.threshold:.6f}); not recalibrating")
        report(f"held-out: {len(val_idx):,} images of {pairs.classes} classes, "
               f"{pairs.positives:,} same-class and {pairs.negatives:,} different-class pairs; "
               "the card's threshold reproduced; operating points: " + ", ".join(
                   f"{n} {p.threshold:.4f} (TAR {p.tar:.3f}, FAR {p.far:.4f}"
                   f"{'' if p.calibrated else ', not calibrated'})"
                   for n, p in verdicts["operating_points"].items())
               + f"; probability map ECE {verdicts['probability'].ece:.4f}")
        verdicts["calibration"] = calibrate(pairs.distances, pairs.same, config.far_target)
    domain_model = domain_card = None
    if domain:
        domain_model, domain_card = fit_domain_model(
            x_all[train_idx], x_all[val_idx], pre, ds.name, seed=config.seed,
            extra_foreign=extra_foreign, epochs=domain_epochs, augment=config.augment,
            rejection=REJECTION[config.val_split], report=report,
            heldout_labels=new_class_labels(ds, config, val_idx))
    card = dataclasses.replace(card, domain=domain_card, **verdicts)
    save_model(model_dir, encoder, card, domain_model)
    report(f"saved {model_dir} (model {card.model_id}, unchanged weights)")
    return card


def _reproduces(card: ModelCard, e_val: np.ndarray, y_val: np.ndarray, pairs, config) -> bool:
    """Whether these held-out images are the ones the card was calibrated on: the same pairs
    give the same threshold. Cards from before distinct pairs were calibrated on the tutorial's
    pairs, drawn in rounds (about 20,000 pairs)."""
    if np.isclose(calibrate(pairs.distances, pairs.same).threshold, card.calibration.threshold,
                  atol=1e-4):
        return True
    rounds = max(int(card.training.get("settings", {}).get("calibration_rounds", 5)),
                 int(np.ceil(10_000 / len(y_val))))
    a, b, same = repeated_tutorial_pairs(y_val, config.seed + 1, rounds)
    return bool(np.isclose(calibrate(euclidean(e_val[a], e_val[b]), same).threshold,
                           card.calibration.threshold, atol=1e-4))
