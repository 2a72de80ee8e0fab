"""Evaluation of embeddings: pair metrics under the tutorial's protocol and retrieval metrics."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .calibration import accuracy_at, calibrate
from .distance import euclidean, pairwise
from .pairs import tutorial_pairs


@dataclass
class PairResult:
    distances: np.ndarray
    same: np.ndarray
    first: np.ndarray
    second: np.ndarray
    metrics: dict


def contrastive_loss(distances: np.ndarray, same: np.ndarray, margin: float = 1.0) -> float:
    """NumPy twin of `losses.contrastive_loss`, for evaluating stored embeddings."""
    d = np.asarray(distances, np.float64)
    y = np.asarray(same, np.float64)
    return float(np.mean(y * d ** 2 + (1 - y) * np.maximum(margin - d, 0) ** 2))


def pair_metrics(embeddings: np.ndarray, labels: np.ndarray, threshold: float, seed: int,
                 margin: float = 1.0) -> PairResult:
    """The tutorial's protocol (one positive and one negative pair per image, seeded): contrastive
    loss, accuracy at `threshold`, ROC AUC and EER."""
    first, second, same = tutorial_pairs(labels, seed)
    d = euclidean(embeddings[first], embeddings[second])
    cal = calibrate(d, same)
    metrics = {"pairs": int(len(d)), "contrastive_loss": contrastive_loss(d, same, margin),
               "accuracy": accuracy_at(d, same, threshold), "threshold": float(threshold),
               "roc_auc": cal.roc_auc, "eer": cal.eer,
               "best_possible_accuracy": cal.accuracy}
    return PairResult(d, same, first, second, metrics)


def retrieval_metrics(embeddings: np.ndarray, labels: np.ndarray, ks=(1, 5),
                      chunk: int = 512) -> dict:
    """Each image queried against all the others: recall@k (a same-class image among the k
    nearest) and mAP@R (R = number of other images of the query's class)."""
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    r_all = counts[labels] - 1
    r_max = int(r_all.max())
    depth = max(r_max, max(ks))
    hits = {k: 0 for k in ks}
    ap_sum = 0.0
    n = len(labels)
    for start in range(0, n, chunk):
        rows = np.arange(start, min(start + chunk, n))
        d = pairwise(embeddings[rows], embeddings)
        d[np.arange(len(rows)), rows] = np.inf  # never retrieve the query itself
        top = np.argpartition(d, depth - 1, axis=1)[:, :depth]
        top = np.take_along_axis(top, np.argsort(np.take_along_axis(d, top, 1), 1), 1)
        relevant = labels[top] == labels[rows, None]
        for k in ks:
            hits[k] += int(relevant[:, :k].any(1).sum())
        r = r_all[rows]
        ranks = np.arange(1, depth + 1)
        within_r = ranks[None, :] <= r[:, None]
        precision = np.cumsum(relevant, 1) / ranks
        ap_sum += float(np.sum(np.sum(precision * relevant * within_r, 1) / np.maximum(r, 1)))
    out = {f"recall@{k}": hits[k] / n for k in ks}
    out["map@r"] = ap_sum / n
    return out
