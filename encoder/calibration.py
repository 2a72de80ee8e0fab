"""Verification thresholds from labelled pairs: ROC AUC, EER, best-accuracy threshold and the
threshold at a target false-accept rate. Pure NumPy; `verified = distance <= threshold`."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from .errors import ConfigError


@dataclass(frozen=True)
class Calibration:
    threshold: float  # the best-accuracy threshold: what the service uses by default
    accuracy: float  # balanced pair accuracy (mean of TAR and 1 - FAR) at `threshold`
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
    # Balanced accuracy: same-class and different-class pairs count alike, however many of each.
    accuracy = (tar + 1 - far) / 2
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
    """Balanced accuracy (the mean of the shares of same-class and of different-class pairs
    judged right) when each fold's pairs are scored at the best-accuracy threshold of the other
    folds' pairs: the threshold's accuracy on pairs it was not chosen on, without the optimism of
    choosing and scoring on the same pairs."""
    if len(distances) < 2 or len(distances) != len(same):
        raise ConfigError("cross-validation needs two or more folds of distances and labels")
    right = {True: 0, False: 0}
    total = {True: 0, False: 0}
    for k in range(len(distances)):
        others = [i for i in range(len(distances)) if i != k]
        threshold = calibrate(np.concatenate([distances[i] for i in others]),
                              np.concatenate([same[i] for i in others])).threshold
        y = np.asarray(same[k]).astype(bool)
        judged = (np.asarray(distances[k]) <= threshold) == y
        for kind in (True, False):
            right[kind] += int(judged[y == kind].sum())
            total[kind] += int((y == kind).sum())
    return (right[True] / total[True] + right[False] / total[False]) / 2


# --- held-out pairs -------------------------------------------------------------------------------

# Pairs of each kind (same class, different classes) taken from the held-out images: all of them
# up to this many, else a uniform sample without replacement. Never a pair twice: re-drawing pairs
# of a dozen images gave 10,000 "pairs" and an interval that meant nothing.
MAX_PAIRS = 200_000


@dataclass(frozen=True)
class HeldOutPairs:
    """Distinct pairs of held-out images, each once, with their distances: what the verdict is
    calibrated on. `labels` are the images' classes, which the intervals resample."""

    first: np.ndarray  # image index of each pair's first image
    second: np.ndarray
    same: np.ndarray  # bool: both of one class
    distances: np.ndarray
    labels: np.ndarray  # class of every held-out image
    # Classes the model never trained on (a class or group split), which the rates are for;
    # False: held-out images of the training classes (an image split), the classes it will meet.
    new_classes: bool = True
    groups: Optional[np.ndarray] = None  # each image's group (an alphabet), if the data has them

    @classmethod
    def of(cls, embeddings: np.ndarray, labels: np.ndarray, seed: int = 0,
           max_pairs: int = MAX_PAIRS, new_classes: bool = True,
           groups: Optional[np.ndarray] = None) -> "HeldOutPairs":
        from .distance import euclidean

        labels = np.asarray(labels)
        first, second, same = distinct_pairs(labels, seed, max_pairs)
        return cls(first, second, same, euclidean(embeddings[first], embeddings[second])
                   .astype(np.float64), labels, new_classes,
                   None if groups is None else np.asarray(groups))

    @property
    def classes(self) -> int:
        return int(len(np.unique(self.labels)))

    @property
    def images(self) -> int:
        return int(len(self.labels))

    @property
    def positives(self) -> int:
        return int(self.same.sum())

    @property
    def negatives(self) -> int:
        return int((~self.same).sum())


def distinct_pairs(labels: np.ndarray, seed: int = 0, max_pairs: int = MAX_PAIRS
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first, second, same) over distinct unordered pairs of images: every same-class pair and
    every different-class pair, or `max_pairs` of a kind drawn uniformly without replacement."""
    labels = np.asarray(labels)
    n = len(labels)
    codes = np.unique(labels, return_inverse=True)[1]
    sizes = np.bincount(codes)
    if len(sizes) < 2 or sizes.max() < 2:
        raise ConfigError("calibration needs held-out images of two or more classes, one of "
                          "them with two or more images")
    rng = np.random.default_rng(seed)
    enough = 8 * max_pairs  # up to this many, list them all and sample from the list
    if n * (n - 1) // 2 <= enough:
        i, j = np.triu_indices(n, 1)
        kinds = [(i, j, codes[i] == codes[j])]
        kinds = [(i[m], j[m]) for m in (kinds[0][2], ~kinds[0][2])]
    else:
        kinds = [_same_class_pairs(codes, sizes, rng, max_pairs, enough),
                 _drawn_pairs(codes, rng, max_pairs)]
    chosen = []
    for i, j in kinds:
        keep = np.arange(len(i)) if len(i) <= max_pairs else \
            rng.choice(len(i), max_pairs, replace=False)
        chosen.append((i[keep], j[keep]))
    first = np.concatenate([c[0] for c in chosen]).astype(np.int64)
    second = np.concatenate([c[1] for c in chosen]).astype(np.int64)
    return first, second, codes[first] == codes[second]


def _same_class_pairs(codes: np.ndarray, sizes: np.ndarray, rng: np.random.Generator,
                      max_pairs: int, enough: int) -> tuple[np.ndarray, np.ndarray]:
    """Same-class pairs: all of them when there are few enough, else distinct ones drawn."""
    if int(np.sum(sizes * (sizes - 1) // 2)) <= enough:
        firsts, seconds = [], []
        for c in np.flatnonzero(sizes >= 2):
            members = np.flatnonzero(codes == c)
            a, b = np.triu_indices(len(members), 1)
            firsts.append(members[a]), seconds.append(members[b])
        return np.concatenate(firsts), np.concatenate(seconds)
    return _drawn_pairs(codes, rng, max_pairs, same=True)


def _drawn_pairs(codes: np.ndarray, rng: np.random.Generator, count: int, same: bool = False
                 ) -> tuple[np.ndarray, np.ndarray]:
    """`count` distinct pairs of images of one class (`same`) or of two, drawn uniformly; only
    called where there are many more such pairs than `count`."""
    n = len(codes)
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    weights = sizes * (sizes - 1) / 2.0
    found = np.zeros(0, np.int64)
    while len(found) < count:
        k = 2 * count
        if same:
            cls = rng.choice(len(sizes), k, p=weights / weights.sum())
            a = order[starts[cls] + rng.integers(0, sizes[cls])]
            b = order[starts[cls] + rng.integers(0, sizes[cls])]
        else:
            a, b = rng.integers(0, n, k), rng.integers(0, n, k)
        ok = (a != b) & ((codes[a] == codes[b]) == same)
        lo, hi = np.minimum(a, b)[ok], np.maximum(a, b)[ok]
        found = np.unique(np.r_[found, lo.astype(np.int64) * n + hi])
    found = rng.choice(found, count, replace=False)
    return found // n, found % n


def class_bootstrap(pairs: HeldOutPairs, thresholds: np.ndarray, rounds: int = 200,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """TAR and FAR at each threshold over `rounds` resamples of the held-out data (rounds,
    thresholds): the classes are drawn with replacement, then the images of each class. What
    varies from one set of new classes to the next is the classes, so that is what the intervals
    resample; re-drawing pairs of the same images would only measure the pairs. With groups
    (alphabets held out whole), the groups are drawn first. Held-out images of the training
    classes (`pairs.new_classes` False) keep their classes: only the images within them are
    drawn again."""
    rng = np.random.default_rng(seed)
    codes = np.unique(pairs.labels, return_inverse=True)[1]
    classes = codes.max() + 1
    cf, cs = codes[pairs.first], codes[pairs.second]
    accepted = pairs.distances[:, None] <= np.asarray(thresholds)[None, :]
    tar = np.empty((rounds, len(thresholds)))
    far = np.empty((rounds, len(thresholds)))
    # With groups (alphabets) held out whole, the groups are drawn first, then the classes of each
    # drawn group: new alphabets differ more from each other than new characters of one do.
    group_of = None if pairs.groups is None or not pairs.new_classes else \
        np.array([pairs.groups[codes == c][0] for c in range(classes)])
    for r in range(rounds):
        if not pairs.new_classes:
            times = np.ones(classes, np.int64)
        elif group_of is None or len(np.unique(group_of)) < 2:
            times = np.bincount(rng.integers(0, classes, classes), minlength=classes)
        else:
            names = np.unique(group_of)
            times = np.zeros(classes, np.int64)
            for g in rng.choice(names, len(names)):
                members = np.flatnonzero(group_of == g)
                times += np.bincount(rng.choice(members, len(members)), minlength=classes)
        counts = np.zeros(len(codes))
        for c in np.flatnonzero(times):
            members = np.flatnonzero(codes == c)
            counts[members] = np.bincount(rng.integers(0, len(members), len(members)),
                                          minlength=len(members))
        w = counts[pairs.first] * counts[pairs.second]
        w = np.where(pairs.same, times[cf] * w, times[cf] * times[cs] * w)
        for out, kind in ((tar, pairs.same), (far, ~pairs.same)):
            total = w[kind].sum()
            out[r] = (w[kind] @ accepted[kind]) / total if total > 0 else np.nan
    return tar, far


# --- operating points --------------------------------------------------------------------------

# The operating points every card stores: the best balanced accuracy and two false-accept rates.
FAR_POINTS = {"far-1e-2": 1e-2, "far-1e-3": 1e-3}
OPERATING_POINTS = ("balanced", *FAR_POINTS)
# A rate is measured when at least this many errors show it (the "rule of 30": the true rate is
# then within about +-30% of the measured one, 90% of the time), on at least this many held-out
# classes (fewer: which classes they happen to be decides the rate).
MIN_ERRORS, MIN_CLASSES = 30, 8


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion: sound at 0 and 1 and for small counts, where the
    normal approximation gives negative rates."""
    if trials <= 0:
        return (0.0, 1.0)
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return (max(0.0, float(centre - half)), min(1.0, float(centre + half)))


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold and what it does on the held-out pairs it was chosen on: the share of
    same-class pairs accepted (TAR) and of different-class pairs accepted (FAR), each with a 95%
    interval over resampled held-out classes; how many classes and images stand behind them;
    and whether they can support the point at all (`calibrated`, and why not)."""

    threshold: float
    tar: float
    tar_ci95: tuple[float, float]
    far: float
    far_ci95: tuple[float, float]
    positives: int
    negatives: int
    classes: Optional[int] = None  # held-out classes (None: a card from before they were counted)
    images: Optional[int] = None
    calibrated: bool = True
    reason: str = ""  # why it is not calibrated

    def to_dict(self) -> dict:
        d = {"threshold": round(self.threshold, 6), "tar": round(self.tar, 6),
             "tar_ci95": [round(v, 6) for v in self.tar_ci95], "far": round(self.far, 7),
             "far_ci95": [round(v, 7) for v in self.far_ci95],
             "positives": self.positives, "negatives": self.negatives}
        if self.classes is not None:
            d.update(classes=self.classes, images=self.images, interval="class bootstrap")
        d["calibrated"] = self.calibrated
        if self.reason:
            d["reason"] = self.reason
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "OperatingPoint":
        return cls(float(d["threshold"]), float(d["tar"]), tuple(map(float, d["tar_ci95"])),
                   float(d["far"]), tuple(map(float, d["far_ci95"])), int(d["positives"]),
                   int(d["negatives"]), _optional_int(d.get("classes")),
                   _optional_int(d.get("images")), bool(d.get("calibrated", True)),
                   str(d.get("reason", "")))


def _optional_int(v) -> Optional[int]:
    return None if v is None else int(v)


def operating_points(pairs: HeldOutPairs, seed: int = 0, note: str = ""
                     ) -> dict[str, OperatingPoint]:
    """The card's operating points (`OPERATING_POINTS`) on held-out pairs: "balanced" maximises
    the mean of TAR and 1 - FAR (pairs of each kind count alike, however many there are), the
    others take the largest threshold whose FAR is at most theirs. Each is marked not calibrated
    when the pairs cannot show its rate (`MIN_ERRORS`, `MIN_CLASSES`), and always when `note`
    says why (e.g. the saved encoder is not the one measured)."""
    far, tar, thresholds, positives, negatives = roc_points(pairs.distances, pairs.same)
    chosen = {"balanced": int(np.argmax(tar - far))}
    for name, target in FAR_POINTS.items():
        chosen[name] = int(np.nonzero(far <= target)[0][-1])
    picked = np.array([thresholds[i] for i in chosen.values()])
    boot_tar, boot_far = class_bootstrap(pairs, picked, seed=seed)
    out = {}
    for k, (name, i) in enumerate(chosen.items()):
        false_accepts = int(round(far[i] * negatives))
        reason = note
        if not reason and pairs.new_classes and pairs.classes < MIN_CLASSES:
            reason = (f"{pairs.classes} held-out classes: a rate measured on fewer than "
                      f"{MIN_CLASSES} depends on which classes they happen to be")
        elif not reason and false_accepts < MIN_ERRORS:
            want = FAR_POINTS.get(name, max(far[i], 1e-9))
            reason = (f"{false_accepts} of {negatives:,} different-class pairs ({pairs.classes} "
                      f"held-out classes, {pairs.images:,} images) fall within it; a rate of "
                      f"{want:.0e} needs about {MIN_ERRORS} false accepts, about "
                      f"{int(np.ceil(MIN_ERRORS / want)):,} different-class pairs from more "
                      "classes, to be measured")
        out[name] = OperatingPoint(
            float(thresholds[i]), float(tar[i]), _percentiles(boot_tar[:, k]), float(far[i]),
            _percentiles(boot_far[:, k]), positives, negatives, pairs.classes, pairs.images,
            not reason, reason)
    return out


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if not len(values):
        return (0.0, 1.0)
    return (float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5)))


# --- distance -> probability ---------------------------------------------------------------------

def _decreasing_isotonic(y: np.ndarray, weights: Optional[np.ndarray] = None) -> np.ndarray:
    """Pool-adjacent-violators: the non-increasing sequence nearest to `y` (weighted least
    squares)."""
    values, totals, sizes = [], [], []
    w_all = np.ones(len(y)) if weights is None else np.asarray(weights, np.float64)
    for v, w in zip(np.asarray(y, np.float64), w_all):
        values.append(v), totals.append(w), sizes.append(1)
        while len(values) > 1 and values[-2] < values[-1]:
            w = totals[-2] + totals[-1]
            values[-2] = (values[-2] * totals[-2] + values[-1] * totals[-1]) / w if w > 0 else \
                (values[-2] + values[-1]) / 2
            totals[-2], sizes[-2] = w, sizes[-2] + sizes[-1]
            values.pop(), totals.pop(), sizes.pop()
    return np.repeat(values, sizes)


def balanced_weights(same: np.ndarray) -> np.ndarray:
    """Pair weights that give same-class and different-class pairs half the total each: the
    probability is for that prior, however many pairs of each kind there are."""
    same = np.asarray(same).astype(bool)
    return np.where(same, 0.5 / max(same.sum(), 1), 0.5 / max((~same).sum(), 1))


def expected_calibration_error(probabilities: np.ndarray, same: np.ndarray, bins: int = 15,
                               weights: Optional[np.ndarray] = None) -> float:
    """Mean gap between predicted probability and observed share of same-class pairs, over equal-
    width probability bins, weighted by the pairs in each (by default `balanced_weights`: the
    prior the map is for)."""
    p = np.asarray(probabilities, np.float64)
    y = np.asarray(same, np.float64)
    w = balanced_weights(y.astype(bool)) if weights is None else np.asarray(weights, np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in np.unique(which):
        m = which == b
        if w[m].sum() > 0:
            total += w[m].sum() * abs(np.average(p[m], weights=w[m]) - np.average(y[m], weights=w[m]))
    return float(total / w.sum())


@dataclass(frozen=True)
class ProbabilityMap:
    """P(same class | distance), non-increasing in the distance, fitted on held-out pairs weighted
    so that same-class and different-class pairs count half each: the probability assumes that
    prior. Stored as at most `KNOTS` points and interpolated between them, whichever way it was
    fitted (`method`)."""

    distances: tuple[float, ...]
    probabilities: tuple[float, ...]
    ece: float  # expected calibration error measured on pairs the map was not fitted on
    pairs: int
    classes: Optional[int] = None  # held-out classes behind it (None: a card from before)
    ece_by: str = "pairs"  # what the ECE's two halves split: "classes" (new ones) or "pairs"
    method: str = "isotonic"

    KNOTS = 64

    def __call__(self, distance):
        return np.interp(distance, self.distances, self.probabilities)

    def to_dict(self) -> dict:
        d = {"method": self.method, "prior": 0.5, "ece": round(self.ece, 5), "pairs": self.pairs,
             "ece_by": self.ece_by}
        if self.classes is not None:
            d["classes"] = self.classes
        return {**d, "distances": [round(v, 5) for v in self.distances],
                "probabilities": [round(v, 5) for v in self.probabilities]}

    @classmethod
    def from_dict(cls, d: dict) -> "ProbabilityMap":
        return cls(tuple(map(float, d["distances"])), tuple(map(float, d["probabilities"])),
                   float(d["ece"]), int(d["pairs"]), _optional_int(d.get("classes")),
                   str(d.get("ece_by", "pairs")), str(d.get("method", "isotonic")))


def _isotonic_knots(distances: np.ndarray, same: np.ndarray, knots: int):
    order = np.argsort(distances, kind="stable")
    d = np.asarray(distances, np.float64)[order]
    s = np.asarray(same).astype(bool)[order]
    fitted = _decreasing_isotonic(s.astype(np.float64), balanced_weights(s))
    # Knots at the fitted curve's quantiles (the steps are where the pairs are); the ends pin the
    # curve's plateaus.
    picks = np.unique(np.r_[0, np.linspace(0, len(d) - 1, knots - 2).round().astype(int), len(d) - 1])
    return d[picks], fitted[picks]


def _logistic_knots(distances: np.ndarray, same: np.ndarray, knots: int):
    """A logistic curve in the distance (two parameters, by weighted iteratively reweighted
    least squares), as knots over the distances' range: on a dozen held-out classes it carries
    over to new classes better than a step function fitted to them."""
    d = np.asarray(distances, np.float64)
    y = np.asarray(same).astype(np.float64)
    w = balanced_weights(y.astype(bool))
    x = np.c_[np.ones_like(d), d]
    beta = np.zeros(2)
    for _ in range(50):
        p = 1 / (1 + np.exp(-np.clip(x @ beta, -30, 30)))
        h = x.T @ (x * (w * p * (1 - p))[:, None]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(h, x.T @ (w * (y - p)))
        beta += step
        if np.abs(step).max() < 1e-9:
            break
    grid = np.linspace(max(0.0, d.min()), d.max(), knots)
    return grid, 1 / (1 + np.exp(-np.clip(beta[0] + beta[1] * grid, -30, 30)))


_FITS = {"isotonic": _isotonic_knots, "logistic": _logistic_knots}


def fit_probability(pairs: HeldOutPairs, seed: int = 0) -> ProbabilityMap:
    """The distance -> probability map, and its calibration error measured on classes it was not
    fitted on: each held-out class's pairs scored by a map fitted on the pairs of the other
    classes alone (leave one class out; with fewer than four classes, the pairs are split in two
    instead, and the card says so). Both an isotonic (step) map and a logistic one are scored
    this way, and the one with the smaller error is fitted on all pairs and stored. (Measured on
    Omniglot folders, 10 held-out classes: the logistic map's error on new classes was 0.013-0.029
    where the isotonic map's was 0.022-0.039.)"""
    d, same = pairs.distances, np.asarray(pairs.same).astype(bool)
    if same.all() or not same.any():
        raise ConfigError("a probability map needs both same-class and different-class pairs")
    classes = np.unique(pairs.labels)
    if len(classes) >= 4:
        first, second = pairs.labels[pairs.first], pairs.labels[pairs.second]
        folds = [(~((first == c) | (second == c)), (first == c) | (second == c))
                 for c in classes]
        ece_by = "classes"
    else:
        half = np.random.default_rng(seed).permutation(len(d)) % 2 == 0
        folds, ece_by = [(half, ~half), (~half, half)], "pairs"
    errors = {}
    for method, fit in _FITS.items():
        predicted, weight = np.zeros(len(d)), np.zeros(len(d))
        for fit_on, score_on in folds:
            if len(np.unique(same[fit_on])) < 2:
                continue
            x, y = fit(d[fit_on], same[fit_on], ProbabilityMap.KNOTS)
            predicted[score_on] += np.interp(d[score_on], x, y)
            weight[score_on] += 1
        scored = weight > 0
        errors[method] = (expected_calibration_error(predicted[scored] / weight[scored],
                                                     same[scored])
                          if len(np.unique(same[scored])) == 2 else 1.0)
    method = min(errors, key=errors.get)
    x, y = _FITS[method](d, same, ProbabilityMap.KNOTS)
    return ProbabilityMap(tuple(map(float, x)), tuple(map(float, y)), errors[method], int(len(d)),
                          len(classes), ece_by, method)


# --- open-set identification (1:N) ---------------------------------------------------------------

GALLERY_SIZES = (1, 2, 3, 5, 10, 20, 30, 50, 100, 200, 300, 500, 1_000, 2_000, 3_000, 5_000,
                 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000, 10_000_000)
SHOTS = (1, 2, 3, 5, 10)  # images enrolled per identity, for which the model is tabled
_MAX_PROBES, _MAX_MEMBERS = 3000, 300  # per class: enough to table rates, bounded work


@dataclass(frozen=True)
class OpenSetModel:
    """How often somebody not enrolled matches *someone* in a gallery of N identities, each
    enrolled with S images, at a threshold.

    A probe not enrolled is falsely identified when its nearest gallery item is within the
    threshold. Measured on held-out classes: for each held-out image (a probe) and each other
    held-out class, the chance G that S of that class's images, drawn at random, include one
    within the threshold. The gallery's N identities are taken as N draws of such classes, so
    FPIR(t, N, S) = mean over probes of 1 - (1 - G(t, S))^N. Counting identities, not images,
    keeps a gallery of 5 people with 3 photos each from looking like 15 strangers (measured:
    it made the threshold 3 times too strict); averaging per probe keeps what a pooled rate
    loses: some probes lie close to many others, and they make most false identifications."""

    thresholds: tuple[float, ...]
    gallery_sizes: tuple[int, ...]  # identities
    fpir: tuple[tuple[tuple[float, ...], ...], ...]  # [shots][identities][threshold]
    probes: int
    impostor_pairs: int
    shots: tuple[int, ...] = (1,)
    classes: Optional[int] = None  # held-out classes behind it (None: a card from before)

    def fpir_curve(self, gallery_size: int, shots: float = 1) -> np.ndarray:
        """Predicted FPIR at every stored threshold for a gallery of `gallery_size` identities
        with `shots` images each (linear in log N between the stored sizes, and in S)."""
        logs = np.log(np.asarray(self.gallery_sizes, np.float64))
        x = np.log(max(int(gallery_size), 1))

        def at_size(table) -> np.ndarray:
            table = np.asarray(table)
            if x >= logs[-1]:
                return table[-1]
            j = int(np.searchsorted(logs, x, side="right")) - 1
            w = (x - logs[j]) / (logs[j + 1] - logs[j])
            return (1 - w) * table[j] + w * table[j + 1]

        s = float(np.clip(shots, self.shots[0], self.shots[-1]))
        k = int(np.clip(np.searchsorted(self.shots, s, side="right") - 1, 0, len(self.shots) - 1))
        if k == len(self.shots) - 1:
            return at_size(self.fpir[k])
        w = (s - self.shots[k]) / (self.shots[k + 1] - self.shots[k])
        return (1 - w) * at_size(self.fpir[k]) + w * at_size(self.fpir[k + 1])

    def predicted_fpir(self, threshold: float, gallery_size: int, shots: float = 1) -> float:
        return float(np.interp(threshold, self.thresholds, self.fpir_curve(gallery_size, shots)))

    def threshold_for(self, fpir: float, gallery_size: int, shots: float = 1
                      ) -> tuple[float, bool]:
        """The largest threshold whose predicted FPIR is at most `fpir`, and whether it lies
        within what calibration measured (False: stricter than the closest impostor pair seen,
        so it is set just below that pair's distance)."""
        curve = self.fpir_curve(gallery_size, shots)
        t = np.asarray(self.thresholds)
        within = np.nonzero(curve <= fpir)[0]
        if len(within) == 0:
            return float(t[0]) * 0.999, False
        k = int(within[-1])
        if k == len(t) - 1:
            return float(t[-1]), True
        step = curve[k + 1] - curve[k]
        share = 0.0 if step <= 0 else (fpir - curve[k]) / step
        return float(t[k] + share * (t[k + 1] - t[k])), True

    def to_dict(self) -> dict:
        d = {"model": "per-probe impostor classes, N identities drawn independently",
             "probes": self.probes, "impostor_pairs": self.impostor_pairs,
             "thresholds": [round(v, 6) for v in self.thresholds],
             "gallery_sizes": list(self.gallery_sizes), "shots": list(self.shots),
             "fpir": [[[float(f"{v:.4g}") for v in row] for row in table]
                      for table in self.fpir]}
        if self.classes is not None:
            d["classes"] = self.classes
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "OpenSetModel":
        tables = d["fpir"]
        if "shots" not in d:  # a card from before shots were tabled: one image per identity
            tables = [tables]
        return cls(tuple(map(float, d["thresholds"])), tuple(map(int, d["gallery_sizes"])),
                   tuple(tuple(tuple(map(float, row)) for row in table) for table in tables),
                   int(d["probes"]), int(d["impostor_pairs"]),
                   tuple(map(int, d.get("shots", (1,)))), _optional_int(d.get("classes")))


def fit_open_set(embeddings: np.ndarray, labels: np.ndarray, points: int = 120,
                 seed: int = 0) -> OpenSetModel:
    """The open-set model from held-out embeddings and labels (made by one encoder)."""
    from .distance import pairwise

    labels = np.asarray(labels)
    classes = np.unique(labels)
    if len(classes) < 2:
        raise ConfigError("open-set calibration needs held-out images of two or more classes")
    rng = np.random.default_rng(seed)
    probes = np.arange(len(labels))
    if len(probes) > _MAX_PROBES:
        probes = np.sort(rng.choice(probes, _MAX_PROBES, replace=False))
    members = []
    for c in classes:
        m = np.flatnonzero(labels == c)
        members.append(m if len(m) <= _MAX_MEMBERS else rng.choice(m, _MAX_MEMBERS, replace=False))
    distances = [pairwise(embeddings[probes], embeddings[m]).astype(np.float64) for m in members]
    other = [labels[probes] != c for c in classes]  # the probes for which class c is an impostor
    pooled = np.sort(np.concatenate([d[o].ravel() for d, o in zip(distances, other)]))
    # Thresholds at log-spaced ranks of the pooled impostor distances: dense in the low tail, where
    # a large gallery's threshold lies.
    ranks = np.unique(np.geomspace(1, len(pooled) / 2, points).astype(np.int64)) - 1
    thresholds = np.unique(pooled[ranks])
    # g[s][p, t]: the chance that `s` random images of an impostor class include one within
    # threshold t of probe p, averaged over the probe's impostor classes.
    g = np.zeros((len(SHOTS), len(probes), len(thresholds)))
    for d, o in zip(distances, other):
        n = d.shape[1]
        within = np.empty((len(probes), len(thresholds)))
        for start in range(0, len(probes), 256):
            within[start:start + 256] = (d[start:start + 256, :, None]
                                         <= thresholds[None, None, :]).sum(axis=1)
        for k, shots in enumerate(SHOTS):
            miss = np.ones_like(within)  # none of the drawn images within
            for i in range(min(shots, n)):
                miss *= np.clip(n - within - i, 0, None) / (n - i)
            g[k] += (1 - miss) * o[:, None]
    g /= np.sum(other, axis=0)[None, :, None]
    tables = []
    for k in range(len(SHOTS)):
        log_keep = np.log1p(-np.minimum(g[k], 1 - 1e-12))
        tables.append(tuple(tuple(float(v) for v in np.mean(-np.expm1(n * log_keep), axis=0))
                            for n in GALLERY_SIZES))
    return OpenSetModel(tuple(map(float, thresholds)), GALLERY_SIZES, tuple(tables),
                        len(probes), int(len(pooled)), SHOTS, len(classes))


def verdict_calibration(embeddings: np.ndarray, labels: np.ndarray, seed: int = 0,
                        note: str = "", new_classes: bool = True,
                        groups: Optional[np.ndarray] = None) -> tuple[HeldOutPairs, dict]:
    """What a model card stores for the verdict, from the embeddings the saved encoder gives
    held-out images it never trained on, and their labels (`new_classes`: of classes it never
    trained on): the held-out pairs, and the `ModelCard` fields operating_points, probability
    and open_set (`note`: why the points are not calibrated for the saved encoder, if they are
    not)."""
    pairs = HeldOutPairs.of(embeddings, labels, seed, new_classes=new_classes, groups=groups)
    return pairs, {"operating_points": operating_points(pairs, seed, note),
                   "probability": fit_probability(pairs, seed),
                   "open_set": fit_open_set(embeddings, labels, seed=seed)}
