"""The verdict: the one place that decides whether a distance means "the same".

Every caller (the gallery's search, verify and identify, `Embedder.verify`, the commands, the JSON
API and the pages) asks `Verdicts` for a `Rule` and for the verdict; none compares a distance to a
threshold itself. A verdict combines:

- the domain check: an image unlike the model's training data is never verified (`domain.py`);
- the operating point: "balanced" (best accuracy), "far-1e-2" or "far-1e-3" (false-accept rate on
  held-out pairs), all from the model card, or an explicit threshold;
- for 1:N identification, the threshold for a target false-positive identification rate (FPIR)
  at the gallery's current size (`calibration.OpenSetModel`): with N items enrolled, somebody not
  enrolled is N times as likely to be near *someone*, so a 1:1 threshold is the wrong one;
- a calibrated probability that the two images show the same class, next to the distance.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Optional, Union

import numpy as np

from .calibration import FAR_POINTS, MIN_CLASSES, OPERATING_POINTS
from .errors import ConfigError

if TYPE_CHECKING:
    from .artifact import ModelCard

DEFAULT_OPERATING_POINT = "balanced"
# Below this ROC AUC on held-out pairs an encoder verifies nothing (`Verdicts.weakness`).
WEAK_AUC = 0.75
DEFAULT_FPIR = 0.01
# A gallery's own items give its 1:N threshold once they show at least this many false
# identifications at the target (fewer: the card's open-set model decides).
MIN_FALSE_IDENTIFICATIONS = 5
# Below that, the card's threshold is scaled to the gallery's spread once it has this many items
# with an impostor (`Verdicts.identification_rule`), by at most these factors: a spread-out
# gallery makes the threshold only so much more lenient.
MIN_SCALE_ITEMS, SCALE_RANGE = 5, (0.25, 2.0)
EXPLICIT = "threshold"  # the operating point's name when the caller gave a threshold


# What answers show: distances lie in [0, 2] (unit-length embeddings), and no threshold means
# anything finer than 1e-4; a probability's third decimal is already past its calibration.
# (Thresholds are settings, and are shown as given, to 1e-6; verdicts use unrounded distances.)
DISTANCE_DECIMALS = 4
PROBABILITY_DECIMALS = 3


def rounded(distance: float) -> float:
    """A distance as answers show it."""
    return round(float(distance), DISTANCE_DECIMALS)


def rounded_probability(p: Optional[float]) -> Optional[float]:
    return None if p is None else round(float(p), PROBABILITY_DECIMALS)


@dataclass(frozen=True)
class Rule:
    """How distances are judged: `distance <= threshold`, and where the threshold came from."""

    threshold: float
    operating_point: str  # one of OPERATING_POINTS, "threshold" (explicit), or "fpir"
    fpir: Optional[float] = None  # 1:N: the target false-positive identification rate ...
    gallery_size: Optional[int] = None  # ... at this gallery size (items) ...
    identities: Optional[int] = None  # ... holding this many identities (labels)
    calibrated: bool = True  # False: held-out data cannot show its rate, or a card without it
    # 1:N: "gallery" (its own items), "card" (held-out classes) or "scaled-card" (the card's
    # threshold times `scale`, the gallery's spread against what the card expects)
    basis: Optional[str] = None
    scale: Optional[float] = None
    note: str = ""  # why it is not calibrated, in words a reader can act on

    def describe(self) -> str:
        uncalibrated = "" if self.calibrated else f"; not calibrated: {self.note}"
        if self.operating_point == "fpir":
            who = (f"{self.gallery_size:,} enrolled" if self.identities in (None, self.gallery_size)
                   else f"{self.identities:,} enrolled in {self.gallery_size:,} items")
            return f"FPIR {self.fpir:g} with {who} (threshold {self.threshold:.4f}{uncalibrated})"
        if self.operating_point == EXPLICIT:
            return f"threshold {self.threshold:.4f} (given{uncalibrated})"
        return f"{self.operating_point} (threshold {self.threshold:.4f}{uncalibrated})"

    def to_dict(self) -> dict:
        d = {"operating_point": self.operating_point, "threshold": round(self.threshold, 6)}
        if self.operating_point == "fpir":
            d.update(fpir=self.fpir, gallery_size=self.gallery_size,
                     identities=self.identities, basis=self.basis)
            if self.scale is not None:
                d["scale"] = round(self.scale, 4)
        if not self.calibrated:
            d.update(calibrated=False, calibration_note=self.note)
        return d


FEATURELESS = ("the model finds no features in this image: it gives every such image the same "
               "embedding, so a match would mean nothing")


@dataclass(frozen=True)
class DomainCheck:
    """Whether an image looks like the model's training data. `in_domain` is None for a model
    without a domain model: nothing was checked, and the verdict says so."""

    in_domain: Optional[bool]
    score: Optional[float]
    reason: str
    featureless: bool = False  # out of domain because the encoder found no features in it
    weak: bool = False  # the model's domain check misses its targets (its card says which)

    @staticmethod
    def no_features(score: Optional[float] = None, whose: str = "") -> "DomainCheck":
        """The check of an image the encoder finds no features in (`whose`: e.g. "the gallery
        item: ")."""
        return DomainCheck(False, score, whose + FEATURELESS, featureless=True)

    @staticmethod
    def both(first: "DomainCheck", second: "DomainCheck") -> "DomainCheck":
        """The check of a pair: out of domain if either image is, naming which."""
        for which, check in (("first", first), ("second", second)):
            if check.in_domain is False:
                return DomainCheck(False, check.score, f"the {which} image: {check.reason}",
                                   check.featureless, check.weak)
        if first.in_domain is None:
            return first
        return DomainCheck(True, min(first.score, second.score), first.reason,
                           weak=first.weak or second.weak)

    def to_dict(self) -> dict:
        return {"in_domain": self.in_domain,
                "domain_score": None if self.score is None else round(self.score, 4),
                "domain_reason": self.reason, "domain_check_weak": self.weak}


@dataclass(frozen=True)
class Verdict:
    """The verdict on one pair of images (or an image and a gallery item)."""

    verified: bool
    distance: float
    probability: Optional[float]  # P(same class | distance), None if the card has no map
    rule: Rule
    domain: DomainCheck

    def to_dict(self) -> dict:
        return {"verified": self.verified, "distance": rounded(self.distance),
                "probability": rounded_probability(self.probability),
                **self.rule.to_dict(), **self.domain.to_dict()}


class Verdicts:
    """The verdict rules of one model card (`Embedder.verdicts`)."""

    def __init__(self, card: "ModelCard"):
        self.card = card

    @property
    def weakness(self) -> str:
        """Why this model verifies nothing, or "": an encoder that barely tells classes it never
        trained on apart (ROC AUC under `WEAK_AUC` on its held-out pairs). Trained with the
        defaults on a few garment classes of real photos, one read 0.65, and on other photos
        every top match came back "verified", 59% of them the wrong garment."""
        auc = self.card.validation.get("roc_auc")
        if auc is None or auc >= WEAK_AUC:
            return ""
        return (f"model {self.card.model_id} barely tells apart classes it never trained on (ROC "
                f"AUC {auc:.2f} on its held-out pairs, under {WEAK_AUC}), so it verifies nothing; "
                "train it on more classes, or more images of each")

    def _said(self, rule: Rule) -> Rule:
        """The rule, saying it verifies nothing when the encoder is weak."""
        weakness = self.weakness
        return rule if not weakness else replace(rule, calibrated=False, note=weakness)

    @property
    def operating_points(self) -> dict[str, float]:
        """Name -> threshold of the operating points this card has. Cards from before operating
        points have the best-accuracy and the FAR 1e-3 threshold only."""
        if self.card.operating_points:
            return {name: p.threshold for name, p in self.card.operating_points.items()}
        cal = self.card.calibration
        points = {"balanced": cal.threshold}
        for name, target in FAR_POINTS.items():
            if np.isclose(cal.far_target, target):
                points[name] = cal.far_threshold
        return points

    def rule(self, operating_point: Optional[str] = None, threshold: Optional[float] = None,
             default: Union[None, str, float] = None) -> Rule:
        """The 1:1 rule: an explicit `threshold`, else the named `operating_point`, else the
        `default` (a gallery's: a name or a threshold), else "balanced"."""
        if threshold is not None and operating_point is not None:
            raise ConfigError("give an operating point or a threshold, not both")
        if threshold is not None:
            return self._said(Rule(check_threshold(threshold), EXPLICIT))
        if operating_point is None:
            if default is not None and not isinstance(default, str):
                return self._said(Rule(check_threshold(default), EXPLICIT))
            operating_point = default or DEFAULT_OPERATING_POINT
        points = self.operating_points
        if operating_point not in OPERATING_POINTS:
            raise ConfigError(f"unknown operating point {operating_point!r}; choose one of "
                              f"{', '.join(OPERATING_POINTS)}, or give a threshold")
        if operating_point not in points:
            raise ConfigError(f"model {self.card.model_id} was calibrated before operating points "
                              f"and has no {operating_point!r}; it has {', '.join(points)} "
                              "(siamese-calibrate adds the rest)")
        point = self.card.operating_points.get(operating_point)
        note = self.card.calibration_note or (point.reason if point is not None else "")
        return self._said(Rule(float(points[operating_point]), operating_point,
                               calibrated=not note, note=note))

    def identification_rule(self, gallery_size: int, fpir: Optional[float] = None,
                            threshold: Optional[float] = None,
                            default_fpir: Optional[float] = None,
                            impostors: Optional[np.ndarray] = None,
                            identities: Optional[int] = None) -> Rule:
        """The 1:N rule for a gallery of `gallery_size` items of `identities` people or things
        (labels; default: every item its own): an explicit `threshold`, else the threshold for
        the target `fpir` (default: the gallery's, else 0.01).

        That threshold comes from the gallery itself when it can: `impostors` holds, for
        (a sample of) its items, the distance to the nearest item of another label. Each item
        is a stand-in for somebody not enrolled, and the share of them within a threshold is a
        leave-one-out estimate of the FPIR at this size, for this encoder and these classes.
        The card's open-set model, measured on held-out classes, predicted FPIRs up to 7 times
        too high on Omniglot alphabets unlike its calibration alphabets (docs/trust.md); it
        decides when the gallery has too few items to show `MIN_FALSE_IDENTIFICATIONS`, its
        threshold scaled to the gallery's own spread (`gallery_scale`) once the gallery has a
        few items with an impostor."""
        if threshold is not None and fpir is not None:
            raise ConfigError("give a target fpir or a threshold, not both")
        if threshold is not None:
            return self._said(Rule(check_threshold(threshold), EXPLICIT))
        fpir = check_fpir(default_fpir if fpir is None else fpir, DEFAULT_FPIR)
        if gallery_size < 1:
            raise ConfigError("identification needs a gallery with at least one item")
        identities = int(gallery_size if identities is None else max(1, min(identities,
                                                                             gallery_size)))
        size = dict(fpir=fpir, gallery_size=int(gallery_size), identities=identities)
        if impostors is not None and len(impostors) * fpir >= MIN_FALSE_IDENTIFICATIONS:
            return self._said(Rule(leave_one_out_threshold(impostors, fpir), "fpir",
                                   basis="gallery", **size))
        model = self.card.open_set
        if model is None:
            # Without open-set calibration, the strict 1:1 point is the honest stand-in.
            return self._said(Rule(
                self.rule("far-1e-3").threshold, "fpir", calibrated=False, basis="card",
                note=f"model {self.card.model_id}'s card has no open-set model; this is its "
                     "far-1e-3 threshold", **size))
        shots = gallery_size / identities
        t, measured = model.threshold_for(fpir, identities, shots)
        scale = gallery_scale(model, impostors, identities, shots)
        if scale is not None:
            t *= scale
        note = self.card.calibration_note
        if not note and not measured:
            note = (f"FPIR {fpir:g} with {identities:,} enrolled needs a threshold stricter than "
                    f"the closest impostor pair its {model.classes or 'held-out'} held-out "
                    "classes showed, so it is set just below that pair")
        elif not note and model.classes is not None and model.classes < MIN_CLASSES:
            note = (f"measured on {model.classes} held-out classes: fewer than {MIN_CLASSES}, "
                    "and which classes they happen to be decides the rate")
        return self._said(Rule(t, "fpir", calibrated=not note, note=note, scale=scale,
                               basis="card" if scale is None else "scaled-card", **size))

    def probability(self, distances) -> Optional[np.ndarray]:
        """P(same class | distance) for each distance; None if the card has no calibrated map."""
        if self.card.probability is None:
            return None
        return np.asarray(self.card.probability(np.asarray(distances, np.float64)))

    def judge(self, distances, rule: Rule, domain: DomainCheck) -> list[Verdict]:
        """Verdicts for distances under one rule, all of one query image (its domain check)."""
        distances = np.atleast_1d(np.asarray(distances, np.float64))
        # The probability was calibrated on in-domain pairs; for a foreign image it means nothing.
        probabilities = None if domain.in_domain is False else self.probability(distances)
        usable = domain.in_domain is not False and not self.weakness
        return [Verdict(bool(usable and d <= rule.threshold), float(d),
                        None if probabilities is None else float(p), rule, domain)
                for d, p in zip(distances, probabilities if probabilities is not None
                                else [None] * len(distances))]

    def domain_checks(self, scores: Optional[np.ndarray], count: int,
                      featureless: Optional[np.ndarray] = None) -> list[DomainCheck]:
        """The domain verdict on each of `count` images from their domain scores (None: the
        model has no domain model) and whether the encoder found no features in it (then it is
        out of domain whatever its score: it would match every other such image at distance 0)."""
        domain = self.card.domain
        featureless = np.zeros(count, bool) if featureless is None else np.asarray(featureless)
        if scores is None or domain is None:
            reason = (f"model {self.card.model_id} has no domain model: inputs are not checked "
                      "against its training data")
            scores = [None] * count
        weak = bool(domain is not None and domain.weak)
        caveat = "" if not weak else (
            f"; but this model's domain check is weak ({domain.weak[0]}"
            + (f", and {len(domain.weak) - 1} more in its card" if len(domain.weak) > 1 else "")
            + "), so this says less than it should")
        out = []
        for s, blank in zip(scores, featureless):
            s = None if s is None else float(s)
            if blank:
                out.append(DomainCheck.no_features(s))
            elif s is None:
                out.append(DomainCheck(None, None, reason))
            elif s >= domain.threshold:
                out.append(DomainCheck(True, s, f"looks like {domain.training_data}{caveat}",
                                       weak=weak))
            else:
                out.append(DomainCheck(False, s, "the image does not look like what this "
                                       f"model was trained on ({domain.training_data}){caveat}",
                                       weak=weak))
        return out


def gallery_scale(model, impostors: Optional[np.ndarray], identities: int, shots: float
                  ) -> Optional[float]:
    """How much farther apart this gallery's identities lie than the card's held-out classes
    would: the median of the items' nearest-impostor distances against the card's prediction
    of it (for an item, the other N - 1 identities are a gallery of N - 1, so half the items
    have an impostor within the threshold where the card predicts FPIR 0.5 at N - 1), clipped
    to `SCALE_RANGE`. None when the gallery is too small to say (`MIN_SCALE_ITEMS`).

    New classes need not lie as the held-out ones did: on Omniglot folders, the card alone
    predicted FPIR 0.05 where galleries of 15-25 new characters measured 0.09-0.14, and 0.14-0.25
    on alphabets it never saw; scaled, 0.05-0.06 and 0.09-0.11 (docs/trust.md)."""
    if impostors is None or identities < 2 or len(impostors) < MIN_SCALE_ITEMS:
        return None
    expected, measured = model.threshold_for(0.5, identities - 1, shots)
    if not measured or expected <= 0:
        return None
    return float(np.clip(np.median(impostors) / expected, *SCALE_RANGE))


def leave_one_out_threshold(impostors: np.ndarray, fpir: float) -> float:
    """The threshold within which a share `fpir` (at most) of `impostors` (each item's distance
    to its nearest item of another label) lie: the last one allowed in, not midway to the next,
    which on galleries of 50-100 items measured half a step (0.5-1%) over the target."""
    d = np.sort(np.asarray(impostors, np.float64))
    allowed = int(np.floor(fpir * len(d)))
    if allowed == 0:
        return float(d[0]) * 0.999
    return float(d[min(allowed, len(d)) - 1])


def nearest_impostors(embeddings: np.ndarray, labels, chunk: int = 2048) -> np.ndarray:
    """Each item's distance to its nearest item of another label (an item without a label,
    None, is its own identity); inf when there is none."""
    from .distance import pairwise

    labels = np.array([f"\0{i}" if label is None else str(label) for i, label in
                       enumerate(labels)], dtype=object)
    out = np.empty(len(labels))
    for start in range(0, len(labels), chunk):
        d = pairwise(embeddings[start:start + chunk], embeddings).astype(np.float64)
        d[labels[start:start + chunk, None] == labels[None, :]] = np.inf
        out[start:start + chunk] = d.min(1)
    return out


def check_threshold(threshold) -> float:
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise ConfigError(f"threshold must be a number, not {threshold!r}") from None
    if not value >= 0.0 or not np.isfinite(value):
        raise ConfigError(f"threshold must be a finite distance >= 0, not {threshold!r}")
    return value


def check_fpir(fpir, default: Optional[float] = None) -> float:
    if fpir is None:
        if default is None:
            raise ConfigError("a target fpir is needed")
        fpir = default
    try:
        value = float(fpir)
    except (TypeError, ValueError):
        raise ConfigError(f"fpir must be a number between 0 and 1, not {fpir!r}") from None
    if not 0.0 < value < 1.0:
        raise ConfigError(f"fpir must be between 0 and 1 (exclusive), not {fpir!r}")
    return value
