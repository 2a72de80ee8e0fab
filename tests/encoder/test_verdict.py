"""The verdict's calibration (operating points, probability, open set) and its one owner,
`encoder.verdict.Verdicts`, on known distributions and real cards."""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

from encoder.artifact import ModelCard, load_card
from encoder.calibration import (MIN_ERRORS, HeldOutPairs, class_bootstrap, distinct_pairs,
                                 expected_calibration_error, fit_open_set, fit_probability,
                                 operating_points, wilson_interval)
from encoder.errors import ConfigError
from encoder.verdict import DomainCheck, Verdicts


def clusters(classes=60, per_class=20, dim=16, spread=0.3, seed=0, spreads=None):
    """Gaussian classes on the unit sphere, as an encoder's are: (embeddings, labels).
    `spreads`: each class's own spread (classes differ in how tight they are)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(classes), per_class)
    spread = np.full(classes, spread) if spreads is None else np.asarray(spreads)
    e = centres[labels] + spread[labels, None] * rng.normal(size=(len(labels), dim)) / np.sqrt(dim)
    return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32), labels


def heldout(**kwargs) -> HeldOutPairs:
    return HeldOutPairs.of(*clusters(**kwargs))


def test_held_out_pairs_are_distinct_and_all_of_them_when_few():
    labels = np.repeat(np.arange(10), 10)
    first, second, same = distinct_pairs(labels)
    assert len(first) == 100 * 99 // 2 and (first < second).all()  # every pair, once
    assert len(set(zip(first, second))) == len(first)
    assert same.sum() == 10 * 45 and np.array_equal(same, labels[first] == labels[second])
    # Many images: a sample of each kind, still without a pair twice.
    big = np.repeat(np.arange(20), 300)
    first, second, same = distinct_pairs(big, max_pairs=5000)
    assert same.sum() == 5000 and (~same).sum() == 5000
    assert len(set(zip(first.tolist(), second.tolist()))) == 10_000 and (first < second).all()
    with pytest.raises(ConfigError, match="two or more classes"):
        distinct_pairs(np.zeros(5, int))


def test_operating_points_meet_their_false_accept_rates():
    pairs = heldout(classes=200, per_class=10, spread=0.9)
    points = operating_points(pairs)
    assert list(points) == ["balanced", "far-1e-2", "far-1e-3"]
    d, same = pairs.distances, pairs.same
    for name, target in (("far-1e-2", 1e-2), ("far-1e-3", 1e-3)):
        p = points[name]
        assert p.far <= target and np.mean(d[~same] <= p.threshold) == pytest.approx(p.far)
        assert p.tar == pytest.approx(np.mean(d[same] <= p.threshold))
        assert p.tar_ci95[0] <= p.tar <= p.tar_ci95[1] and p.far_ci95[0] <= p.far <= p.far_ci95[1]
        assert p.calibrated and (p.classes, p.images) == (200, 2000)
    assert points["far-1e-3"].threshold < points["far-1e-2"].threshold
    # Balanced: the best mean of TAR and 1 - FAR, however many more different-class pairs there are.
    b = points["balanced"]
    grid = np.linspace(0, 2, 400)
    best = max((np.mean(d[same] <= t) - np.mean(d[~same] <= t)) for t in grid)
    assert b.tar - b.far >= best - 1e-3


def test_intervals_resample_classes_not_pairs():
    """Classes that differ in how tight they are make the rate depend on which classes are held
    out: an interval from the pairs alone (Wilson) is far too narrow for that."""
    spreads = np.random.default_rng(1).uniform(0.3, 1.4, 30)
    pairs = heldout(classes=30, per_class=10, spreads=spreads, seed=1)
    p = operating_points(pairs)["far-1e-2"]
    wilson = wilson_interval(int(round(p.far * p.negatives)), p.negatives)
    assert p.far_ci95[1] - p.far_ci95[0] > 2 * (wilson[1] - wilson[0])
    # The bootstrap resamples classes: with each class drawn once and all its images, the rate
    # is the plain one.
    tar, far = class_bootstrap(pairs, np.array([p.threshold]), rounds=50)
    assert np.all(np.isfinite(far)) and far.std() > 0


def test_intervals_resample_whole_groups_when_alphabets_were_held_out():
    """Two held-out alphabets unlike each other, one of look-alike characters and one of distinct
    ones: drawing the alphabets first shows how much the rate depends on which come next."""
    rng = np.random.default_rng(3)

    def alphabet(n, packed):  # character centres around the alphabet's own
        base = rng.normal(size=16)
        c = base / np.linalg.norm(base) + packed * rng.normal(size=(n, 16)) / 4
        return c / np.linalg.norm(c, axis=1, keepdims=True)

    centres = np.r_[alphabet(20, 0.6), alphabet(20, 2.0)]
    y = np.repeat(np.arange(40), 10)
    e = centres[y] + 0.25 * rng.normal(size=(400, 16)) / 4
    e = (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)
    plain = operating_points(HeldOutPairs.of(e, y))["far-1e-2"]
    grouped = operating_points(HeldOutPairs.of(e, y, groups=y // 20))["far-1e-2"]
    assert grouped.threshold == plain.threshold and grouped.far == plain.far
    width = lambda p: p.far_ci95[1] - p.far_ci95[0]  # noqa: E731
    assert width(grouped) > 1.5 * width(plain)


def test_points_the_held_out_classes_cannot_support_are_not_calibrated():
    few = operating_points(heldout(classes=10, per_class=10, spread=0.9))
    assert few["balanced"].calibrated
    strict = few["far-1e-3"]  # 4,500 different-class pairs: about 4 false accepts, not 30
    assert not strict.calibrated
    assert f"needs about {MIN_ERRORS} false accepts" in strict.reason
    assert "10 held-out classes" in strict.reason
    thin = operating_points(heldout(classes=5, per_class=10, spread=0.9))
    assert not any(p.calibrated for p in thin.values())
    assert all("5 held-out classes" in p.reason for p in thin.values())
    assert OperatingPointRoundTrip(thin["far-1e-2"])


def OperatingPointRoundTrip(point) -> bool:
    from encoder.calibration import OperatingPoint

    return OperatingPoint.from_dict(point.to_dict()) == pytest.approx(point) or \
        OperatingPoint.from_dict(point.to_dict()).reason == point.reason


def test_wilson_interval_is_sound_at_the_edges():
    low, high = wilson_interval(0, 1000)
    assert low == 0.0 and 0.0 < high < 0.005  # no false accept seen is not a rate of 0
    assert wilson_interval(50, 100) == pytest.approx((0.404, 0.596), abs=1e-3)
    # more pairs, narrower interval
    assert np.diff(wilson_interval(500, 1000)) < np.diff(wilson_interval(50, 100))


def test_probability_map_is_calibrated_on_new_classes_and_monotone():
    p = fit_probability(heldout(classes=40, per_class=10, spread=0.8, seed=1))
    assert p.ece <= 0.03 and p.ece_by == "classes" and p.classes == 40
    grid = np.linspace(0, 2, 50)
    assert np.all(np.diff(p(grid)) <= 1e-12) and p(0.0) > 0.99 and p(2.0) < 0.01
    new = heldout(classes=40, per_class=10, spread=0.8, seed=2)  # other classes, other draws
    assert expected_calibration_error(p(new.distances), new.same) <= 0.03
    # Half the weight on each kind of pair: P = 0.5 where the two kinds are equally dense.
    d, same = new.distances, new.same
    t = d[np.argmin(np.abs(p(d) - 0.5))]
    near = np.abs(d - t) < 0.02
    assert 0.3 < (same[near].mean() / same.mean()) / (
        same[near].mean() / same.mean() + (~same[near]).mean() / (~same).mean()) < 0.7
    assert fit_probability(heldout(classes=3, per_class=10)).ece_by == "pairs"


def test_open_set_model_predicts_the_fpir_of_small_galleries_of_new_classes():
    """5 people enrolled with 1 or 3 images each, 5 strangers: the FPIR measured at the
    threshold predicted for 0.05, from other classes."""
    model = fit_open_set(*clusters(classes=60, per_class=10, spread=0.9, seed=0))
    e, labels = clusters(classes=400, per_class=10, spread=0.9, seed=1)
    rng = np.random.default_rng(0)
    for shots in (1, 3):
        t, calibrated = model.threshold_for(0.05, 5, shots)
        assert calibrated
        false = []
        for _ in range(400):
            chosen = rng.permutation(400)[:10]
            enrolled, strangers = chosen[:5], chosen[5:]
            gallery = np.concatenate([rng.choice(np.flatnonzero(labels == c), shots, replace=False)
                                      for c in enrolled])
            probes = np.flatnonzero(np.isin(labels, strangers))
            nearest = np.min(np.linalg.norm(e[probes, None] - e[None, gallery], axis=2), axis=1)
            false.append(np.mean(nearest <= t))
        assert np.mean(false) == pytest.approx(0.05, abs=0.015), shots
    # Three images of 5 people are not 15 strangers: the threshold for them is looser.
    assert model.threshold_for(0.05, 5, 3)[0] > model.threshold_for(0.05, 15, 1)[0]


def test_open_set_thresholds_tighten_as_the_gallery_grows():
    model = fit_open_set(*clusters())
    thresholds = [model.threshold_for(0.01, n)[0] for n in (1, 10, 100, 1000)]
    assert thresholds == sorted(thresholds, reverse=True) and thresholds[0] > thresholds[-1]
    assert model.predicted_fpir(thresholds[2], 100) == pytest.approx(0.01, rel=0.05)
    t, calibrated = model.threshold_for(1e-9, 10_000_000)  # far past what 1,200 probes measured
    assert not calibrated and t < model.thresholds[0]


def test_open_set_needs_two_classes():
    with pytest.raises(ConfigError, match="two or more classes"):
        fit_open_set(np.zeros((3, 4), np.float32), np.zeros(3))


def card_with_calibration(card: ModelCard) -> ModelCard:
    return dataclasses.replace(card, **calibration(), calibration_note="")


@functools.lru_cache(maxsize=1)
def calibration() -> dict:
    """Operating points, probability map and open-set model of 200 synthetic classes: their
    bootstrap intervals over 2 million pairs take most of a minute, so once a session."""
    pairs = heldout(classes=200, per_class=10, spread=0.9)
    return {"operating_points": operating_points(pairs), "probability": fit_probability(pairs),
            "open_set": fit_open_set(*clusters())}


def test_rules_name_their_operating_point_and_check_their_parameters(tiny_model):
    card = card_with_calibration(load_card(tiny_model))
    verdicts = Verdicts(card)
    assert verdicts.rule().operating_point == "balanced"
    assert verdicts.rule("far-1e-3").threshold == card.operating_points["far-1e-3"].threshold
    explicit = verdicts.rule(threshold="0.25")
    assert (explicit.operating_point, explicit.threshold) == ("threshold", 0.25)
    assert verdicts.rule(default="far-1e-2").operating_point == "far-1e-2"
    assert verdicts.rule(default=0.5).threshold == 0.5  # a gallery's explicit threshold
    for bad, message in [({"operating_point": "strict"}, "unknown operating point 'strict'"),
                         ({"threshold": "-1"}, "finite distance >= 0"),
                         ({"threshold": "nan"}, "finite distance >= 0"),
                         ({"threshold": "abc"}, "must be a number"),
                         ({"operating_point": "balanced", "threshold": 1}, "not both")]:
        with pytest.raises(ConfigError, match=message):
            verdicts.rule(**bad)
    rule = verdicts.identification_rule(50, fpir=0.05)
    assert rule.operating_point == "fpir" and rule.gallery_size == 50 and rule.calibrated
    assert rule.threshold == card.open_set.threshold_for(0.05, 50)[0]
    for fpir in (0, 1, -0.1, 2, "x"):
        with pytest.raises(ConfigError, match="fpir must be"):
            verdicts.identification_rule(50, fpir=fpir)
    with pytest.raises(ConfigError, match="at least one item"):
        verdicts.identification_rule(0)


def test_a_card_from_before_operating_points_says_what_it_lacks(model_dir):
    old = dataclasses.replace(load_card(model_dir), operating_points={}, probability=None,
                              open_set=None, domain=None)
    verdicts = Verdicts(old)
    assert set(verdicts.operating_points) == {"balanced", "far-1e-3"}
    with pytest.raises(ConfigError, match="no 'far-1e-2'"):
        verdicts.rule("far-1e-2")
    assert verdicts.probability([0.1]) is None
    rule = verdicts.identification_rule(10)
    assert not rule.calibrated and rule.threshold == old.calibration.far_threshold
    check = verdicts.domain_checks(None, 1)[0]
    assert check.in_domain is None and "no domain model" in check.reason
    assert ModelCard.from_dict(old.to_dict()) == old


def test_an_image_out_of_domain_is_never_verified(tiny_model):
    verdicts = Verdicts(card_with_calibration(load_card(tiny_model)))
    rule = verdicts.rule(threshold=10.0)
    out = DomainCheck(False, -3.0, "the image does not look like ...")
    assert [v.verified for v in verdicts.judge([0.0, 0.5], rule, out)] == [False, False]
    inside = DomainCheck(True, 3.0, "looks like ...")
    judged = verdicts.judge([0.0, 11.0], rule, inside)
    assert [v.verified for v in judged] == [True, False]
    assert judged[0].probability > judged[1].probability
    both = DomainCheck.both(inside, out)
    assert both.in_domain is False and both.reason.startswith("the second image")


def test_the_card_round_trips_everything(tiny_model):
    card = card_with_calibration(load_card(tiny_model))
    again = ModelCard.from_dict(card.to_dict())
    assert again.operating_points.keys() == card.operating_points.keys()
    assert again.probability(0.4) == pytest.approx(card.probability(0.4), abs=1e-4)
    assert again.open_set.threshold_for(0.05, 30)[0] == pytest.approx(
        card.open_set.threshold_for(0.05, 30)[0], rel=1e-3)


def copy_model(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_a_model_directory_from_before_still_loads_and_says_so(tiny_model, tmp_path):
    import json

    from encoder import Embedder

    old = copy_model(tiny_model, tmp_path / "old")
    card = json.loads((old / "card.json").read_text())
    for key in ("operating_points", "probability", "open_set", "domain"):
        card.pop(key)
    (old / "card.json").write_text(json.dumps(card))
    (old / "domain.keras").unlink()
    embedder = Embedder.load(old)
    assert not embedder.has_domain_model
    image = np.zeros((28, 28), np.uint8)
    verdict = embedder.verify(image, image)
    assert verdict.verified and verdict.domain.in_domain is None and verdict.probability is None
    assert "has no domain model" in verdict.domain.reason
    with pytest.raises(Exception, match="has no domain model"):
        embedder.domain_score([image])


def test_a_domain_model_that_is_missing_or_not_the_cards_is_refused(tiny_model, tmp_path):
    from encoder import Embedder
    from encoder.errors import ModelError

    missing = copy_model(tiny_model, tmp_path / "missing")
    (missing / "domain.keras").unlink()
    with pytest.raises(ModelError, match="domain.keras is missing"):
        Embedder.load(missing)
    swapped = copy_model(tiny_model, tmp_path / "swapped")
    embedder = Embedder.load(tiny_model)
    weights = embedder.domain.model.get_weights()
    weights[-1] = weights[-1] + np.float32(1.0)
    embedder.domain.model.set_weights(weights)
    embedder.domain.model.save(swapped / "domain.keras")
    with pytest.raises(ModelError, match="do not belong together"):
        Embedder.load(swapped)


def test_the_tiny_model_knows_its_domain(tiny_model, small_folder):
    """A really trained domain model: its own kind of image in, foreign kinds out."""
    from encoder import Embedder
    from encoder.foreign import FAMILIES, foreign_batch

    embedder = Embedder.load(tiny_model)
    domain = embedder.card.domain
    assert domain.heldout_rejected <= 0.05 and set(domain.foreign_accepted) >= {"photos", "faces"}
    # Trained without the leave-one-kind-out measurement (tests/encoder/test_domain.py has it);
    # the kinds found to be the training images' own are left out of the foreign ones all the same.
    assert domain.left_out is None
    assert set(domain.foreign_families) == set(FAMILIES) - set(domain.same_kind)
    assert set(domain.foreign_accepted) == set(domain.foreign_families)
    own = sorted(small_folder.rglob("*.png"))
    assert np.mean(embedder.in_domain(own)) >= 0.9
    foreign = foreign_batch(200, embedder.card.preprocessing, seed=11)
    scores = embedder.domain_score_prepared(foreign)
    assert np.mean(scores >= domain.threshold) <= 0.1


def test_a_kind_is_the_training_kind_only_when_it_alone_passes_a_check_trained_against_it():
    from encoder.domain import _same_kind

    # Omniglot characters for a model of characters: still accepted far more than the others.
    assert _same_kind({"noise": 0.01, "text": 0.02, "digits": 0.13, "omniglot": 0.29,
                       "faces": 0.0}) == {"omniglot": 0.29}
    # A check that lets most kinds through is weak, not surrounded by its own kind.
    assert _same_kind({"noise": 0.9, "text": 0.8, "faces": 0.7, "omniglot": 0.85}) == {}
    assert _same_kind({"a": 0.15, "b": 0.0, "c": 0.0}) == {}  # under 20%: a foreign kind
    assert len(_same_kind({"a": 0.9, "b": 0.95})) <= 1  # one kind always stays foreign


def test_a_large_enough_gallery_sets_its_own_identification_threshold(tiny_model):
    from encoder.verdict import MIN_FALSE_IDENTIFICATIONS, leave_one_out_threshold, nearest_impostors

    verdicts = Verdicts(card_with_calibration(load_card(tiny_model)))
    e, labels = clusters(classes=50, per_class=2, seed=4)
    impostors = nearest_impostors(e, labels)
    brute = [min(np.linalg.norm(e[i] - e[j]) for j in range(len(e)) if labels[j] != labels[i])
             for i in range(len(e))]
    assert impostors == pytest.approx(brute, rel=1e-4)
    unlabelled = nearest_impostors(e, [None] * len(e))  # each its own identity
    assert np.all(unlabelled <= impostors + 1e-6)
    t = leave_one_out_threshold(impostors, 0.05)
    assert np.mean(impostors <= t) == 0.05  # 5 of 100 items within
    rule = verdicts.identification_rule(100, fpir=0.05, impostors=impostors)
    assert (rule.basis, rule.threshold) == ("gallery", t)
    few = impostors[: int(MIN_FALSE_IDENTIFICATIONS / 0.05) - 1]  # too few to show 5
    assert verdicts.identification_rule(100, fpir=0.05, impostors=few).basis == "scaled-card"


def test_a_small_gallery_scales_the_cards_threshold_to_its_own_spread(tiny_model):
    """Too small to read its threshold from its own items, a gallery still shows how far apart
    its identities lie: the card's threshold is scaled by the median of its items' nearest-
    impostor distances against the card's prediction of that median (where the card predicts
    FPIR 0.5 for the other N - 1 identities), within SCALE_RANGE; with too few items, or one
    identity, the card's threshold alone."""
    from encoder.verdict import MIN_SCALE_ITEMS, SCALE_RANGE, nearest_impostors

    verdicts = Verdicts(card_with_calibration(load_card(tiny_model)))
    model = verdicts.card.open_set
    e, labels = clusters(classes=5, per_class=3, seed=2)
    impostors = nearest_impostors(e, labels)
    card_t = model.threshold_for(0.05, 5, 3)[0]
    expected = model.threshold_for(0.5, 4, 3)[0]
    rule = verdicts.identification_rule(15, fpir=0.05, impostors=impostors, identities=5)
    scale = float(np.clip(np.median(impostors) / expected, *SCALE_RANGE))
    assert (rule.basis, rule.scale) == ("scaled-card", pytest.approx(scale))
    assert rule.threshold == pytest.approx(card_t * scale)
    assert rule.to_dict()["scale"] == round(scale, 4)
    # Identities twice as close together: a threshold half as large (inside the range).
    half = verdicts.identification_rule(15, fpir=0.05, impostors=impostors / 2, identities=5)
    if SCALE_RANGE[0] < scale / 2:
        assert half.threshold == pytest.approx(rule.threshold / 2)
    # However far apart they lie, at most SCALE_RANGE[1] times the card's threshold.
    far = verdicts.identification_rule(15, fpir=0.05, impostors=impostors * 1e3, identities=5)
    assert far.threshold == pytest.approx(card_t * SCALE_RANGE[1])
    # Too few items to say, or nobody else enrolled: the card's threshold as it is.
    for few, identities in ((impostors[:MIN_SCALE_ITEMS - 1], 5), (impostors, 1)):
        alone = verdicts.identification_rule(15, fpir=0.05, impostors=few, identities=identities)
        assert (alone.basis, alone.scale) == ("card", None)
        assert alone.threshold == model.threshold_for(0.05, identities, 15 / identities)[0]
        assert "scale" not in alone.to_dict()


def test_images_the_model_finds_no_features_in_are_never_verified(model_embedder, fashion_test):
    """Some real images silence every unit of the encoder's head: their embedding is the last
    layer's bias alone, the same for all of them, so a coat and a dress meet at distance 0. Found
    here from the head's own activations, not from the check under test."""
    import keras

    head = keras.Model(model_embedder.model.inputs, model_embedder.model.get_layer("head").output)
    batch = model_embedder.prepare(fashion_test.images)
    silent = np.flatnonzero(~np.asarray(head.predict(batch, batch_size=1000, verbose=0)).any(axis=1))
    assert len(set(fashion_test.labels[silent])) >= 2, "pick inputs this model has no features for"
    vectors, checks = model_embedder.embed_checked_prepared(batch)
    assert np.array_equal(np.flatnonzero(model_embedder.is_featureless(vectors)), silent)
    assert [checks[i].in_domain for i in silent] == [False] * len(silent)
    assert all("finds no features" in checks[i].reason for i in silent)
    # Before the check, two of them of different labels were "verified", at any operating point.
    a, b = (next(i for i in silent if fashion_test.labels[i] == label)
            for label in sorted(set(fashion_test.labels[silent]))[:2])
    images = [fashion_test.images[a], fashion_test.images[b]]
    for point in ("balanced", "far-1e-3"):
        verdict = model_embedder.verify(*images, operating_point=point)
        assert verdict.distance < 1e-4 and not verdict.verified and verdict.probability is None
        assert verdict.domain.in_domain is False and "the first image" in verdict.domain.reason
    # The check takes nothing else: every other image keeps the domain model's verdict.
    plain = model_embedder.verdicts.domain_checks(model_embedder.domain_score_prepared(batch),
                                                  len(batch))
    others = np.setdiff1d(np.arange(len(checks)), silent)
    assert [checks[i] for i in others] == [plain[i] for i in others]


def test_a_search_finds_every_match_that_may_be_featureless(model_embedder):
    """`may_be_featureless` flags every FAISS match lying within the gap of a featureless point,
    whatever its query, on FAISS's own float32 distances (a batch of 50 takes FAISS's BLAS path),
    and little else; each query's row is its own."""
    import faiss

    from encoder.distance import from_squared
    from encoder.embedder import FEATURELESS_GAP

    rng = np.random.default_rng(0)
    points = model_embedder.featureless
    dim = points.shape[1]

    def unit(x):
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)

    jitter = rng.normal(size=(40, dim))
    blank = np.repeat(points, 20, 0) + 0.9 * FEATURELESS_GAP * unit(jitter)  # within the gap
    others = unit(rng.normal(size=(2000, dim)))
    index = faiss.IndexFlatL2(dim)
    index.add(np.concatenate([blank, others]).astype(np.float32))
    # Queries near a featureless point (as close as a describable image comes), and anywhere.
    queries = unit(np.concatenate([points[[0, 1] * 10] + unit(rng.normal(size=(20, dim))) *
                                   rng.uniform(0.002, 0.5, (20, 1)), rng.normal(size=(30, dim))]))
    squared, ids = index.search(queries, 60)
    maybe = model_embedder.may_be_featureless(queries, from_squared(squared))
    is_blank = ids < len(blank)
    assert is_blank[:20].any() and (maybe | ~is_blank).all()  # none missed
    assert (maybe & ~is_blank).sum() <= 0.01 * (~is_blank).sum()  # few needless reads
    # A batch's rows do not mix: the same query alone gives its own row.
    alone = model_embedder.may_be_featureless(queries[:1], from_squared(squared[:1]))
    assert (alone[0] == maybe[0]).all()


def test_an_encoder_that_barely_tells_classes_apart_verifies_nothing(tiny_model):
    """A weak model says so rather than verify: under WEAK_AUC on its held-out pairs, every rule
    says why it is not calibrated, and no distance is verified, however small."""
    from encoder.verdict import WEAK_AUC

    card = card_with_calibration(load_card(tiny_model))
    weak = Verdicts(dataclasses.replace(card, validation={**card.validation, "roc_auc": 0.65}))
    inside = DomainCheck(True, 3.0, "looks like ...")
    for rule in (weak.rule(), weak.rule("far-1e-3"), weak.rule(threshold=1.0),
                 weak.identification_rule(20, fpir=0.05)):
        assert not rule.calibrated and "barely tells apart" in rule.note
        assert f"under {WEAK_AUC}" in rule.describe()
        assert not any(v.verified for v in weak.judge([0.0, 0.01], rule, inside))
    strong = Verdicts(dataclasses.replace(card, validation={**card.validation, "roc_auc": 0.95}))
    assert strong.judge([0.0], strong.rule(threshold=1.0), inside)[0].verified


def test_every_verdict_of_a_model_with_a_weak_domain_check_says_so(tiny_model):
    card = card_with_calibration(load_card(tiny_model))
    weak = dataclasses.replace(card, domain=dataclasses.replace(
        card.domain, weak=["it accepts 12% of faces (target: at most 5%)", "another"]))
    threshold = card.domain.threshold
    checks = Verdicts(weak).domain_checks(np.array([threshold + 1, threshold - 1]), 2)
    assert [c.in_domain for c in checks] == [True, False] and all(c.weak for c in checks)
    assert all("this model's domain check is weak (it accepts 12% of faces (target: at most 5%), "
               "and 1 more in its card)" in c.reason for c in checks)
    assert checks[0].to_dict()["domain_check_weak"] is True
    strong = dataclasses.replace(card, domain=dataclasses.replace(card.domain, weak=[]))
    plain = Verdicts(strong).domain_checks(np.array([threshold + 1]), 1)[0]
    assert not plain.weak and "weak" not in plain.reason
    assert ModelCard.from_dict(weak.to_dict()).domain.weak == weak.domain.weak
