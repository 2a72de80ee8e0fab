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


# --- operating points --------------------------------------------------------------------------

# The operating points every card stores: the best-accuracy threshold and two false-accept rates.
FAR_POINTS = {"far-1e-2": 1e-2, "far-1e-3": 1e-3}
OPERATING_POINTS = ("balanced", *FAR_POINTS)


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
    interval from the number of pairs behind it."""

    threshold: float
    tar: float
    tar_ci95: tuple[float, float]
    far: float
    far_ci95: tuple[float, float]
    positives: int
    negatives: int

    def to_dict(self) -> dict:
        return {"threshold": round(self.threshold, 6), "tar": round(self.tar, 6),
                "tar_ci95": [round(v, 6) for v in self.tar_ci95], "far": round(self.far, 7),
                "far_ci95": [round(v, 7) for v in self.far_ci95],
                "positives": self.positives, "negatives": self.negatives}

    @classmethod
    def from_dict(cls, d: dict) -> "OperatingPoint":
        return cls(float(d["threshold"]), float(d["tar"]), tuple(map(float, d["tar_ci95"])),
                   float(d["far"]), tuple(map(float, d["far_ci95"])), int(d["positives"]),
                   int(d["negatives"]))


def operating_points(distances: np.ndarray, same: np.ndarray) -> dict[str, OperatingPoint]:
    """The card's operating points (`OPERATING_POINTS`) on held-out pairs."""
    far, tar, thresholds, positives, negatives = roc_points(distances, same)
    accuracy = (tar * positives + (1 - far) * negatives) / (positives + negatives)
    chosen = {"balanced": int(np.argmax(accuracy))}
    for name, target in FAR_POINTS.items():
        chosen[name] = int(np.nonzero(far <= target)[0][-1])
    out = {}
    for name, i in chosen.items():
        accepted_same = int(round(tar[i] * positives))
        accepted_other = int(round(far[i] * negatives))
        out[name] = OperatingPoint(float(thresholds[i]), float(tar[i]),
                                   wilson_interval(accepted_same, positives), float(far[i]),
                                   wilson_interval(accepted_other, negatives), positives, negatives)
    return out


# --- distance -> probability ---------------------------------------------------------------------

def _decreasing_isotonic(y: np.ndarray) -> np.ndarray:
    """Pool-adjacent-violators: the non-increasing sequence nearest to `y` (least squares)."""
    values, weights, sizes = [], [], []
    for v in np.asarray(y, np.float64):
        values.append(v), weights.append(1.0), sizes.append(1)
        while len(values) > 1 and values[-2] < values[-1]:
            w = weights[-2] + weights[-1]
            values[-2] = (values[-2] * weights[-2] + values[-1] * weights[-1]) / w
            weights[-2], sizes[-2] = w, sizes[-2] + sizes[-1]
            values.pop(), weights.pop(), sizes.pop()
    return np.repeat(values, sizes)


def expected_calibration_error(probabilities: np.ndarray, same: np.ndarray, bins: int = 15) -> float:
    """Mean gap between predicted probability and observed share of same-class pairs, over equal-
    width probability bins, weighted by the pairs in each."""
    p = np.asarray(probabilities, np.float64)
    y = np.asarray(same, np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in np.unique(which):
        members = which == b
        total += members.sum() * abs(p[members].mean() - y[members].mean())
    return float(total / len(p))


@dataclass(frozen=True)
class ProbabilityMap:
    """P(same class | distance), isotonic in the distance, fitted on held-out pairs drawn half
    same-class and half different-class (the tutorial protocol): the probability assumes that
    prior. Stored as at most `KNOTS` points and interpolated between them."""

    distances: tuple[float, ...]
    probabilities: tuple[float, ...]
    ece: float  # expected calibration error measured on pairs the map was not fitted on
    pairs: int

    KNOTS = 64

    def __call__(self, distance):
        return np.interp(distance, self.distances, self.probabilities)

    def to_dict(self) -> dict:
        return {"method": "isotonic", "prior": 0.5, "ece": round(self.ece, 5), "pairs": self.pairs,
                "distances": [round(v, 5) for v in self.distances],
                "probabilities": [round(v, 5) for v in self.probabilities]}

    @classmethod
    def from_dict(cls, d: dict) -> "ProbabilityMap":
        return cls(tuple(map(float, d["distances"])), tuple(map(float, d["probabilities"])),
                   float(d["ece"]), int(d["pairs"]))


def _isotonic_knots(distances: np.ndarray, same: np.ndarray, knots: int):
    order = np.argsort(distances, kind="stable")
    d, fitted = np.asarray(distances, np.float64)[order], _decreasing_isotonic(
        np.asarray(same, np.float64)[order])
    # Knots at the fitted curve's quantiles (the steps are where the pairs are); the ends pin the
    # curve's plateaus.
    picks = np.unique(np.r_[0, np.linspace(0, len(d) - 1, knots - 2).round().astype(int), len(d) - 1])
    return d[picks], fitted[picks]


def fit_probability(distances: np.ndarray, same: np.ndarray, seed: int = 0) -> ProbabilityMap:
    """The distance -> probability map, and its calibration error measured honestly: the pairs are
    split in two, each half scored by the map fitted on the other; the stored map uses all."""
    distances = np.asarray(distances, np.float64)
    same = np.asarray(same).astype(bool)
    if same.all() or not same.any():
        raise ConfigError("a probability map needs both same-class and different-class pairs")
    half = np.random.default_rng(seed).permutation(len(distances)) % 2 == 0
    predicted = np.empty(len(distances))
    for fit_on in (half, ~half):
        x, y = _isotonic_knots(distances[fit_on], same[fit_on], ProbabilityMap.KNOTS)
        predicted[~fit_on] = np.interp(distances[~fit_on], x, y)
    x, y = _isotonic_knots(distances, same, ProbabilityMap.KNOTS)
    return ProbabilityMap(tuple(map(float, x)), tuple(map(float, y)),
                          expected_calibration_error(predicted, same), int(len(distances)))


# --- open-set identification (1:N) ---------------------------------------------------------------

GALLERY_SIZES = (1, 2, 3, 5, 10, 20, 30, 50, 100, 200, 300, 500, 1_000, 2_000, 3_000, 5_000,
                 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000, 10_000_000)


@dataclass(frozen=True)
class OpenSetModel:
    """How often somebody not enrolled matches *someone* in a gallery of N items at a threshold.

    A probe not enrolled is falsely identified when its nearest of N gallery items is within the
    threshold. Measured on held-out classes: for each held-out image (a probe), the share F of
    its distances to images of other classes within each threshold. Its N impostor comparisons
    are taken as N draws from its own distances, so FPIR(t, N) = mean over probes of
    1 - (1 - F(t))^N. Averaging per probe keeps what a pooled rate loses: some probes lie close
    to many others, and they make most false identifications."""

    thresholds: tuple[float, ...]
    gallery_sizes: tuple[int, ...]
    fpir: tuple[tuple[float, ...], ...]  # [gallery size][threshold]
    probes: int
    impostor_pairs: int

    def fpir_curve(self, gallery_size: int) -> np.ndarray:
        """Predicted FPIR at every stored threshold for a gallery of `gallery_size` items
        (linear in log N between the stored sizes)."""
        table = np.asarray(self.fpir)
        logs = np.log(np.asarray(self.gallery_sizes, np.float64))
        x = np.log(max(int(gallery_size), 1))
        if x >= logs[-1]:
            return table[-1]
        j = int(np.searchsorted(logs, x, side="right")) - 1
        w = (x - logs[j]) / (logs[j + 1] - logs[j])
        return (1 - w) * table[j] + w * table[j + 1]

    def predicted_fpir(self, threshold: float, gallery_size: int) -> float:
        return float(np.interp(threshold, self.thresholds, self.fpir_curve(gallery_size)))

    def threshold_for(self, fpir: float, gallery_size: int) -> tuple[float, bool]:
        """The largest threshold whose predicted FPIR is at most `fpir`, and whether it lies
        within what calibration measured (False: stricter than the closest impostor pair seen,
        so it is set just below that pair's distance)."""
        curve = self.fpir_curve(gallery_size)
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
        return {"model": "per-probe impostor distances, N independent draws",
                "probes": self.probes, "impostor_pairs": self.impostor_pairs,
                "thresholds": [round(v, 6) for v in self.thresholds],
                "gallery_sizes": list(self.gallery_sizes),
                "fpir": [[float(f"{v:.4g}") for v in row] for row in self.fpir]}

    @classmethod
    def from_dict(cls, d: dict) -> "OpenSetModel":
        return cls(tuple(map(float, d["thresholds"])), tuple(map(int, d["gallery_sizes"])),
                   tuple(tuple(map(float, row)) for row in d["fpir"]), int(d["probes"]),
                   int(d["impostor_pairs"]))


def fit_open_set(folds: list[tuple[np.ndarray, np.ndarray]], points: int = 120,
                 chunk: int = 1024) -> OpenSetModel:
    """The open-set model from held-out embeddings and labels (one pair per fold; distances are
    only taken within a fold, where one encoder made them)."""
    from .distance import pairwise

    rows = []  # each probe's impostor distances, sorted
    for embeddings, labels in folds:
        labels = np.asarray(labels)
        for start in range(0, len(labels), chunk):
            d = pairwise(embeddings[start:start + chunk], embeddings)
            other = labels[start:start + chunk, None] != labels[None, :]
            rows.extend(np.sort(r[o]) for r, o in zip(d, other) if o.any())
    if not rows:
        raise ConfigError("open-set calibration needs held-out images of two or more classes")
    pooled = np.sort(np.concatenate(rows))
    # Thresholds at log-spaced ranks of the pooled impostor distances: dense in the low tail, where
    # a large gallery's threshold lies.
    ranks = np.unique(np.geomspace(1, len(pooled) / 2, points).astype(np.int64)) - 1
    thresholds = np.unique(pooled[ranks])
    within = np.stack([np.searchsorted(r, thresholds, side="right") / len(r) for r in rows])
    log_keep = np.log1p(-np.minimum(within, 1 - 1e-12))
    fpir = [tuple(float(v) for v in np.mean(-np.expm1(n * log_keep), axis=0))
            for n in GALLERY_SIZES]
    return OpenSetModel(tuple(map(float, thresholds)), GALLERY_SIZES, tuple(fpir), len(rows),
                        int(len(pooled)))


def verdict_calibration(distances: np.ndarray, same: np.ndarray,
                        heldout: list[tuple[np.ndarray, np.ndarray]], seed: int = 0) -> dict:
    """What a model card stores for the verdict besides `Calibration`, from held-out pairs
    (`distances`, `same`) and the held-out embeddings and labels they came from (per fold):
    the `ModelCard` fields operating_points, probability and open_set."""
    return {"operating_points": operating_points(distances, same),
            "probability": fit_probability(distances, same, seed),
            "open_set": fit_open_set(heldout)}
