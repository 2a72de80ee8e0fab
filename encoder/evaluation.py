"""Evaluation of embeddings: pair metrics under the tutorial's protocol, retrieval metrics, and
N-way K-shot classification of classes the model never saw."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from .calibration import accuracy_at, calibrate
from .distance import euclidean, pairwise
from .errors import ConfigError, DatasetError
from .pairs import repeated_tutorial_pairs

EPISODE_CLASSES = ("group", "any")


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
                 margin: float = 1.0, rounds: int = 1) -> PairResult:
    """The tutorial's protocol (one positive and one negative pair per image, seeded): contrastive
    loss, accuracy at `threshold`, ROC AUC and EER. `rounds` > 1 repeats the draw with the next
    seeds: a small test set's 2 pairs per image leave the accuracy a point or so to chance."""
    if rounds < 1:
        raise ConfigError(f"pair rounds must be at least 1, not {rounds}")
    first, second, same = repeated_tutorial_pairs(labels, seed, rounds)
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


@dataclass(frozen=True)
class OneShotResult:
    way: int
    shots: int
    episodes: int
    episode_classes: str  # "group": each episode's classes from one group (alphabet); "any"
    accuracy: float  # mean over episodes of the share of queries classified right
    ci95: float  # half-width of the 95% confidence interval of `accuracy`
    seed: int

    def to_dict(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def __str__(self) -> str:
        within = "classes within one group" if self.episode_classes == "group" else "any classes"
        return (f"{self.way}-way {self.shots}-shot: {self.accuracy:.4f} ± {self.ci95:.4f} "
                f"(95% CI; {self.episodes} episodes, {within})")


def oneshot_episodes(labels: np.ndarray, way: int, shots: int, episodes: int, seed: int,
                     groups: Optional[np.ndarray] = None) -> np.ndarray:
    """Image indices (episodes, way, shots + 1), seeded: per episode `way` distinct classes (all
    from one group when `groups` is given, as in Lake et al.'s within-alphabet runs), and per
    class `shots` reference images followed by one query, all distinct."""
    labels = np.asarray(labels)
    if way < 2:
        raise ConfigError(f"an episode needs at least 2 classes (way), not {way}")
    if shots < 1:
        raise ConfigError(f"an episode needs at least 1 reference image per class (shots), "
                          f"not {shots}")
    if episodes < 2:
        raise ConfigError(f"a confidence interval needs at least 2 episodes, not {episodes}")
    classes, counts = np.unique(labels, return_counts=True)
    usable = classes[counts >= shots + 1]
    members = {c: np.nonzero(labels == c)[0] for c in usable}
    need = f"{way}-way {shots}-shot episodes need {way} classes with at least {shots + 1} images"
    if groups is None:
        pools = [usable] if len(usable) >= way else []
        if not pools:
            raise DatasetError(f"{need}; the data has {len(usable)}")
    else:
        group_of = {c: groups[members[c][0]] for c in usable}
        by_group = [np.array([c for c in usable if group_of[c] == g]) for g in np.unique(groups)]
        pools = [p for p in by_group if len(p) >= way]
        if not pools:
            largest = max((len(p) for p in by_group), default=0)
            raise DatasetError(f"{need} within one group; the largest group has {largest} "
                               "(draw classes from any group instead)")
    rng = np.random.default_rng(seed)
    out = np.empty((episodes, way, shots + 1), np.int64)
    for e in range(episodes):
        pool = pools[rng.integers(len(pools))]
        for slot, c in enumerate(rng.choice(pool, way, replace=False)):
            out[e, slot] = rng.choice(members[c], shots + 1, replace=False)
    return out


def oneshot_accuracy(embeddings: np.ndarray, labels: np.ndarray, way: int, shots: int = 1,
                     episodes: int = 1000, seed: int = 0,
                     groups: Optional[np.ndarray] = None) -> OneShotResult:
    """N-way K-shot accuracy: each episode's queries are classified by the nearest class mean of
    the references (the nearest reference when K = 1); mean and 95% CI over episodes."""
    index = oneshot_episodes(labels, way, shots, episodes, seed, groups)
    right = np.empty(episodes)
    for e, episode in enumerate(index):
        prototypes = embeddings[episode[:, :shots]].mean(axis=1)
        queries = embeddings[episode[:, shots]]
        right[e] = np.mean(np.argmin(pairwise(queries, prototypes), axis=1) == np.arange(way))
    ci95 = 1.96 * right.std(ddof=1) / np.sqrt(episodes)
    return OneShotResult(way, shots, episodes, "any" if groups is None else "group",
                         float(right.mean()), float(ci95), seed)


HELDOUT_WAYS = (20, 5)
HELDOUT_EPISODES = 1000


def heldout_oneshot(embeddings: np.ndarray, labels: np.ndarray, groups: Optional[np.ndarray],
                    group_names, seed: int) -> dict:
    """One-shot accuracy on a training run's held-out classes, for its card: per group
    (within-group episodes, keyed by the group's name) when the data has groups, else over all
    of them (key "all"); the same episodes `siamese-evaluate --oneshot 20 5 --groups NAME` draws
    with the seed. A way needs that many classes; parts too small for any are left out."""
    parts = ({"all": np.ones(len(labels), bool)} if groups is None else
             {group_names[g]: groups == g for g in np.unique(groups)})
    out = {}
    for name, members in parts.items():
        classes = len(np.unique(labels[members]))
        result = {f"{way}-way": round(oneshot_accuracy(
            embeddings[members], labels[members], way, 1, HELDOUT_EPISODES, seed,
            None if groups is None else groups[members]).accuracy, 4)
            for way in HELDOUT_WAYS if way <= classes}
        if result:
            out[name] = result
    return out
