"""Evaluation of embeddings: pair metrics under the tutorial's protocol, retrieval metrics,
N-way K-shot classification of classes the model never saw, the verdict's operating points on
test pairs, and open-set (1:N) identification."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from .calibration import (HeldOutPairs, accuracy_at, calibrate, class_bootstrap, roc_points,
                          wilson_interval)
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


# --- the verdict on a test set: operating points, TAR@FAR ---------------------------------------

TAR_AT_FAR = (1e-2, 1e-3)


def operating_point_metrics(pairs: HeldOutPairs, thresholds: dict[str, float],
                            predicted: Optional[dict] = None,
                            in_domain: Optional[np.ndarray] = None, seed: int = 0) -> dict:
    """What each operating point (name -> threshold) does on test pairs (every distinct pair of
    the test images, `HeldOutPairs`): the share of same-class pairs accepted (TAR) and of
    different-class pairs accepted (FAR), each with a 95% interval over resampled classes (and a
    Wilson interval from the pairs alone); next to what the card predicted (`predicted`: name ->
    the card's `OperatingPoint`; None where the card has none), with `far_above_card` where the
    measured FAR lies above the card's interval. With `in_domain` (each test image's domain
    check), also what the service answers: a pair is verified only with both images in domain."""
    d, y = pairs.distances, pairs.same
    positives, negatives = int(y.sum()), int((~y).sum())
    boot_tar, boot_far = class_bootstrap(pairs, np.array(list(thresholds.values())), seed=seed)
    both = None if in_domain is None else \
        np.asarray(in_domain, bool)[pairs.first] & np.asarray(in_domain, bool)[pairs.second]
    out = {}
    for k, (name, threshold) in enumerate(thresholds.items()):
        accepted = d <= threshold
        tar_count, far_count = int(np.sum(accepted & y)), int(np.sum(accepted & ~y))
        card = (predicted or {}).get(name)
        far = far_count / max(negatives, 1)
        out[name] = {
            "threshold": float(threshold),
            "tar": tar_count / max(positives, 1),
            "tar_ci95": _percentile_interval(boot_tar[:, k]),
            "far": far, "far_ci95": _percentile_interval(boot_far[:, k]),
            "far_ci95_pairs": list(wilson_interval(far_count, negatives)),
            "positives": positives, "negatives": negatives, "classes": pairs.classes,
            "resampled": "classes" if pairs.new_classes else "images",
            "card_tar": None if card is None else float(card.tar),
            "card_far": None if card is None else float(card.far),
            "card_calibrated": None if card is None else bool(card.calibrated),
            "far_above_card": None if card is None else bool(far > card.far_ci95[1])}
        if both is not None:
            out[name]["service_tar"] = int(np.sum(accepted & y & both)) / max(positives, 1)
            out[name]["service_far"] = int(np.sum(accepted & ~y & both)) / max(negatives, 1)
    return out


def _percentile_interval(values: np.ndarray) -> list[float]:
    values = values[np.isfinite(values)]
    if not len(values):
        return [0.0, 1.0]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def tar_at_far(distances: np.ndarray, same: np.ndarray, targets=TAR_AT_FAR) -> list[dict]:
    """The oracle TAR at each target FAR: the threshold chosen on these same pairs (the largest
    whose FAR is at most the target), so optimistic next to a threshold fixed in advance. With
    fewer than 1/target different-class pairs, the target can only be met by accepting none."""
    far, tar, thresholds, positives, negatives = roc_points(distances, same)
    out = []
    for target in targets:
        i = int(np.nonzero(far <= target)[0][-1])
        out.append({"far_target": float(target), "tar": float(tar[i]), "far": float(far[i]),
                    "threshold": float(thresholds[i]), "negatives": negatives,
                    "resolved": bool(negatives * target >= 1)})
    return out


# --- open-set identification (1:N) ---------------------------------------------------------------

OPEN_SET_FPIR = (0.01, 0.05, 0.1)


def _threshold_at_fpir(nonmated: np.ndarray, fpir: float, mated: np.ndarray) -> float:
    """The largest threshold (`distance <= t`) at which at most `fpir` of the non-mated probes
    are accepted, given the nearest gallery distances of the non-mated and of the mated probes
    (both sorted): midway between the first refused non-mated distance and the largest distance
    of either kind below it, so no rate hangs on a rounding error."""
    allowed = int(np.floor(fpir * len(nonmated) + 1e-9))
    if allowed >= len(nonmated):
        return float(max(nonmated[-1], mated[-1]))
    refused = nonmated[allowed]  # accepting it (and any tie) would exceed the target
    below = [v[np.searchsorted(v, refused, side="left") - 1] for v in (nonmated, mated)
             if np.searchsorted(v, refused, side="left") > 0]
    if not below:
        return float(refused / 2) if refused > 0 else float(np.nextafter(0.0, -1.0))
    return float((max(below) + refused) / 2)


def _spread(values) -> dict:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0}


def open_set_rounds(labels: np.ndarray, enrolled: Optional[int], shots: int, rounds: int,
                    seed: int):
    """The open-set protocol's draws, seeded: per round the enrolled classes and, per enrolled
    class, its `shots` gallery images (the rest are its mated probes); every image of the other
    classes is a non-mated probe. Classes with fewer than shots + 1 images are never enrolled
    (they still serve as non-mated probes). Returns (rounds: list of (gallery, mated, nonmated)
    index arrays, enrolled count, skipped class count)."""
    labels = np.asarray(labels)
    if shots < 1:
        raise ConfigError(f"open-set identification needs at least 1 enrolled image per class "
                          f"(shots), not {shots}")
    if rounds < 1:
        raise ConfigError(f"open-set identification needs at least 1 round, not {rounds}")
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 3:
        raise DatasetError(f"open-set identification needs at least 3 classes (2 enrolled and 1 "
                           f"not); the data has {len(classes)}")
    eligible = classes[counts >= shots + 1]
    skipped = len(classes) - len(eligible)
    if len(eligible) < 2:
        raise DatasetError(f"open-set identification with {shots} enrolled image(s) per class "
                           f"needs at least 2 classes with {shots + 1} or more images (one left to "
                           f"probe with); the data has {len(eligible)} ({skipped} skipped)")
    most = min(len(eligible), len(classes) - 1)
    if enrolled is None:
        enrolled = max(2, min(len(classes) // 2, most))
    if not 2 <= enrolled <= most:
        raise ConfigError(f"open-set identification: enrolled classes must be between 2 and "
                          f"{most} (the data has "
                          f"{len(classes)} classes, {len(eligible)} with at least {shots + 1} "
                          f"images, and at least one class stays not enrolled), not {enrolled}")
    members = {c: np.nonzero(labels == c)[0] for c in classes}
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(rounds):
        chosen = rng.choice(eligible, enrolled, replace=False)
        gallery, mated = [], []
        for c in chosen:
            picked = rng.permutation(members[c])
            gallery.append(picked[:shots])
            mated.append(picked[shots:])
        nonmated = np.concatenate([members[c] for c in np.setdiff1d(classes, chosen)])
        draws.append((np.stack(gallery), np.concatenate(mated), nonmated))
    return draws, enrolled, skipped


@dataclass
class _OpenSetRound:
    """One round of open-set identification, scored: each mated probe's rank and nearest enrolled
    distance, and the non-mated probes' nearest distances (sorted)."""
    rank: np.ndarray  # of the probe's own class among the enrolled ones (1: nearest)
    correct: np.ndarray  # the nearest gallery image is of the probe's class
    nearest_mated: np.ndarray
    mated_sorted: np.ndarray
    nearest_nonmated: np.ndarray  # sorted

    @classmethod
    def score(cls, embeddings: np.ndarray, labels: np.ndarray, gallery: np.ndarray,
              mated: np.ndarray, nonmated: np.ndarray, chunk: int,
              usable: Optional[np.ndarray] = None) -> "_OpenSetRound":
        """`usable`: each image's domain check, as the service applies it (None: distances
        alone): a probe out of domain is never identified, and a gallery image out of domain
        never matches (identification looks past it)."""
        enrolled, shots = gallery.shape
        g = embeddings[gallery.ravel()]
        slot = {int(labels[gallery[k, 0]]): k for k in range(enrolled)}

        def class_distances(probes):
            """Each probe's distance to each enrolled class (its nearest gallery image)."""
            out = np.empty((len(probes), enrolled), np.float32)
            for start in range(0, len(probes), chunk):
                d = pairwise(embeddings[probes[start:start + chunk]], g)
                if usable is not None:
                    d[:, ~usable[gallery.ravel()]] = np.inf
                    d[~usable[probes[start:start + chunk]]] = np.inf
                out[start:start + chunk] = d.reshape(len(d), enrolled, shots).min(-1)
            return out

        dm = class_distances(mated)
        true = np.array([slot[int(c)] for c in labels[mated]])
        d_true = dm[np.arange(len(mated)), true]
        nearest_mated = dm.min(1)
        return cls(rank=1 + np.sum(dm < d_true[:, None], axis=1),
                   correct=d_true <= nearest_mated, nearest_mated=nearest_mated,
                   mated_sorted=np.sort(nearest_mated),
                   nearest_nonmated=np.sort(class_distances(nonmated).min(1)))

    def identified(self, t: float) -> float:
        """Share of mated probes identified (nearest image of their class, within t)."""
        return float(np.mean(self.correct & (self.nearest_mated <= t)))

    def false_positives(self, t: float) -> float:
        """FPIR at t: share of non-mated probes with a gallery image within t."""
        return float(np.searchsorted(self.nearest_nonmated, t, side="right")
                     / len(self.nearest_nonmated))

    def threshold_at(self, fpir: float) -> float:
        return _threshold_at_fpir(self.nearest_nonmated, fpir, self.mated_sorted)


def open_set_identification(embeddings: np.ndarray, labels: np.ndarray,
                            enrolled: Optional[int] = None, shots: int = 1, rounds: int = 10,
                            seed: int = 0, predict=None, fpir_targets=OPEN_SET_FPIR,
                            chunk: int = 2048, usable: Optional[np.ndarray] = None) -> dict:
    """Open-set 1:N identification of the classes in `labels`, measured over seeded rounds.

    Per round (`open_set_rounds`): `enrolled` classes (default: half) each enrol `shots` images
    as the gallery; their other images are mated probes, every image of the other classes a
    non-mated probe. A probe's candidates are the enrolled classes ranked by their nearest gallery
    image. Reported, as mean and sd over rounds:
    - rank-1 and rank-5 identification rates of mated probes (the CMC at 1 and 5);
    - FNIR at each target FPIR, the threshold chosen on the round's non-mated nearest distances
      (FPIR: share of non-mated probes whose nearest gallery image is within the threshold;
      FNIR: share of mated probes whose nearest gallery image is not of their class or not
      within it);
    - with `predict(fpir, gallery_size, gallery_embeddings, gallery_labels) -> (threshold,
      calibrated)` (what `identify` would use: `Verdicts.identification_rule`, from the round's
      gallery itself or the card's open-set model): at the threshold it predicts for each
      target and the round's gallery, the FPIR measured and the identification rate there;
    - with `usable` (each image's domain check), all of it as the service answers: probes out of
      domain never identified, gallery images out of domain never matched;
    - `curve`: FNIR against FPIR (0, then log-spaced), averaged over rounds, for a DET plot."""
    embeddings = np.asarray(embeddings, np.float32)
    labels = np.asarray(labels)
    draws, enrolled, skipped = open_set_rounds(labels, enrolled, shots, rounds, seed)
    gallery_size = enrolled * shots
    predictions = [] if predict is None else [(float(f), [], []) for f in fpir_targets]
    rank1, rank5, mated_n, nonmated_n = [], [], [], []
    at_target = {f: ([], [], []) for f in fpir_targets}  # fnir, threshold, measured fpir
    at_predicted = [([], []) for _ in predictions]  # measured fpir, identification rate
    curves = []
    for gallery, mated, nonmated in draws:
        r = _OpenSetRound.score(embeddings, labels, gallery, mated, nonmated, chunk,
                                None if usable is None else np.asarray(usable, bool))
        rank1.append(np.mean(r.rank <= 1))
        rank5.append(np.mean(r.rank <= 5))
        mated_n.append(len(mated))
        nonmated_n.append(len(nonmated))
        for f in fpir_targets:
            t = r.threshold_at(f)
            at_target[f][0].append(1 - r.identified(t))
            at_target[f][1].append(t)
            at_target[f][2].append(r.false_positives(t))
        for (f, thresholds, calibrated), (fpirs, rates) in zip(predictions, at_predicted):
            t, ok = predict(f, gallery_size, embeddings[gallery.ravel()], labels[gallery.ravel()])
            thresholds.append(float(t))
            calibrated.append(bool(ok))
            fpirs.append(r.false_positives(t))
            rates.append(r.identified(t))
        grid = np.r_[0.0, np.geomspace(1 / len(nonmated), 1.0, 40)]
        curves.append([(r.false_positives(t), 1 - r.identified(t))
                       for t in map(r.threshold_at, grid)])
    curve = np.mean(np.asarray(curves), axis=0)
    return {
        "rounds": rounds, "seed": seed, "enrolled_classes": enrolled,
        "not_enrolled_classes": len(np.unique(labels)) - enrolled, "shots": shots,
        "gallery_size": gallery_size, "skipped_classes": skipped,
        "mated_probes": float(np.mean(mated_n)), "nonmated_probes": float(np.mean(nonmated_n)),
        "rank1": _spread(rank1), "rank5": _spread(rank5),
        "fnir_at_fpir": [{"fpir": f, "fnir": _spread(at_target[f][0]),
                          "threshold": _spread(at_target[f][1]),
                          "measured_fpir": _spread(at_target[f][2])} for f in fpir_targets],
        "predicted": None if predict is None else [
            {"fpir": f, "threshold": float(np.mean(t)), "threshold_sd": float(np.std(t)),
             "calibrated": all(calibrated), "measured_fpir": _spread(fpirs),
             "identification_rate": _spread(rates)}
            for (f, t, calibrated), (fpirs, rates) in zip(predictions, at_predicted)],
        "curve": {"fpir": [float(v) for v in curve[:, 0]], "fnir": [float(v) for v in curve[:, 1]]},
    }
