"""Verification thresholds from labelled pairs: ROC AUC, EER, best-accuracy threshold and the
threshold at a target false-accept rate. Pure NumPy; `verified = distance <= threshold`."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .errors import ConfigError


@dataclass(frozen=True)
class Calibration:
    threshold: float  # the best-accuracy threshold: what the service uses by default
    accuracy: float  # pair accuracy at `threshold` on the calibration pairs
    roc_auc: float
    eer: float
    eer_threshold: float
    far_target: float
    far_threshold: float  # largest threshold whose false-accept rate is <= far_target
    tar_at_far: float  # share of same-class pairs verified at `far_threshold`
    positives: int
    negatives: int

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def roc_points(distances: np.ndarray, same: np.ndarray):
    """For every distinct distance t (ascending): the false-accept and true-accept rates of
    `distance <= t`, plus the midpoint to the next distance (a threshold with margin)."""
    d = np.asarray(distances, np.float64)
    y = np.asarray(same).astype(bool)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        raise ConfigError("calibration needs both same-class and different-class pairs")
    order = np.argsort(d, kind="stable")
    d, y = d[order], y[order]
    last = np.r_[np.nonzero(np.diff(d))[0], len(d) - 1]  # last index of each distinct distance
    tar = np.cumsum(y)[last] / positives
    far = np.cumsum(~y)[last] / negatives
    nxt = np.r_[d[last[:-1] + 1], d[-1] + 1e-6]
    thresholds = (d[last] + nxt) / 2
    # Accepting nothing is a valid choice too: prepend threshold just below the smallest distance.
    return (np.r_[0.0, far], np.r_[0.0, tar], np.r_[d[0] - 1e-6, thresholds], positives, negatives)


def roc_auc(distances: np.ndarray, same: np.ndarray) -> float:
    far, tar, *_ = roc_points(distances, same)
    return float(np.trapezoid(np.r_[tar, 1.0], np.r_[far, 1.0]))


def accuracy_at(distances: np.ndarray, same: np.ndarray, threshold: float) -> float:
    return float(np.mean((np.asarray(distances) <= threshold) == np.asarray(same).astype(bool)))


def calibrate(distances: np.ndarray, same: np.ndarray, far_target: float = 1e-3) -> Calibration:
    if not 0.0 < far_target < 1.0:
        raise ConfigError(f"far_target must be between 0 and 1, not {far_target}")
    far, tar, thresholds, positives, negatives = roc_points(distances, same)
    accuracy = (tar * positives + (1 - far) * negatives) / (positives + negatives)
    best = int(np.argmax(accuracy))
    eer_at = int(np.argmin(np.abs(far - (1 - tar))))
    within = np.nonzero(far <= far_target)[0][-1]
    return Calibration(
        threshold=float(thresholds[best]), accuracy=float(accuracy[best]),
        roc_auc=float(np.trapezoid(np.r_[tar, 1.0], np.r_[far, 1.0])),
        eer=float((far[eer_at] + 1 - tar[eer_at]) / 2), eer_threshold=float(thresholds[eer_at]),
        far_target=far_target, far_threshold=float(thresholds[within]),
        tar_at_far=float(tar[within]), positives=positives, negatives=negatives)


def cross_validated_accuracy(distances: list[np.ndarray], same: list[np.ndarray]) -> float:
    """Share of all pairs judged right when each fold's pairs are scored at the best-accuracy
    threshold of the other folds' pairs: the threshold's accuracy on pairs it was not chosen on,
    without the optimism of choosing and scoring on the same pairs."""
    if len(distances) < 2 or len(distances) != len(same):
        raise ConfigError("cross-validation needs two or more folds of distances and labels")
    right = 0
    for k in range(len(distances)):
        others = [i for i in range(len(distances)) if i != k]
        threshold = calibrate(np.concatenate([distances[i] for i in others]),
                              np.concatenate([same[i] for i in others])).threshold
        right += int(np.sum((np.asarray(distances[k]) <= threshold)
                            == np.asarray(same[k]).astype(bool)))
    return right / sum(len(d) for d in distances)
