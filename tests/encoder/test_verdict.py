"""The verdict's calibration (operating points, probability, open set) and its one owner,
`encoder.verdict.Verdicts`, on known distributions and real cards."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from encoder.artifact import ModelCard, load_card
from encoder.calibration import (expected_calibration_error, fit_open_set, fit_probability,
                                 operating_points, wilson_interval)
from encoder.errors import ConfigError
from encoder.verdict import DomainCheck, Verdicts


def separated(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    d = np.r_[rng.normal(0.3, 0.1, n), rng.normal(0.8, 0.1, n)]
    return d, np.r_[np.ones(n), np.zeros(n)]


def clusters(classes=60, per_class=20, dim=16, spread=0.3, seed=0):
    """Gaussian classes: (embeddings, labels)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    labels = np.repeat(np.arange(classes), per_class)
    return (centres[labels] + spread * rng.normal(size=(len(labels), dim))).astype(np.float32), labels


def test_operating_points_meet_their_false_accept_rates_with_intervals():
    d, y = separated()
    points = operating_points(d, y)
    assert list(points) == ["balanced", "far-1e-2", "far-1e-3"]
    for name, target in (("far-1e-2", 1e-2), ("far-1e-3", 1e-3)):
        p = points[name]
        assert p.far <= target and np.mean(d[y == 0] <= p.threshold) == pytest.approx(p.far)
        assert p.tar == pytest.approx(np.mean(d[y == 1] <= p.threshold))
        assert p.tar_ci95[0] <= p.tar <= p.tar_ci95[1] and p.far_ci95[0] <= p.far <= p.far_ci95[1]
    assert points["far-1e-3"].threshold < points["far-1e-2"].threshold
    assert points["balanced"].threshold == pytest.approx(0.55, abs=0.02)


def test_wilson_interval_is_sound_at_the_edges():
    low, high = wilson_interval(0, 1000)
    assert low == 0.0 and 0.0 < high < 0.005  # no false accept seen is not a rate of 0
    assert wilson_interval(50, 100) == pytest.approx((0.404, 0.596), abs=1e-3)
    # more pairs, narrower interval
    assert np.diff(wilson_interval(500, 1000)) < np.diff(wilson_interval(50, 100))


def test_probability_map_is_calibrated_and_monotone():
    d, y = separated(seed=1)
    p = fit_probability(d, y)
    assert p.ece <= 0.03
    grid = np.linspace(0, 1.2, 50)
    assert np.all(np.diff(p(grid)) <= 1e-12) and p(0.0) > 0.99 and p(1.2) < 0.01
    d2, y2 = separated(seed=2)  # fresh pairs from the same distributions
    assert expected_calibration_error(p(d2), y2) <= 0.03
    # overlapping classes: probabilities in between, still calibrated
    rng = np.random.default_rng(3)
    d3 = np.r_[rng.normal(0.5, 0.2, 5000), rng.normal(0.7, 0.2, 5000)]
    y3 = np.r_[np.ones(5000), np.zeros(5000)]
    p3 = fit_probability(d3, y3)
    assert 0.3 < p3(0.6) < 0.7 and p3.ece <= 0.03


def test_open_set_model_predicts_the_fpir_of_new_classes():
    model = fit_open_set([clusters(seed=0)])
    e, labels = clusters(classes=120, seed=1)  # other classes, other draws
    rng = np.random.default_rng(0)
    measured = []
    for _ in range(20):
        enrolled = rng.permutation(120)[:60]
        gallery = np.array([rng.choice(np.nonzero(labels == c)[0]) for c in enrolled])
        probes = np.nonzero(~np.isin(labels, enrolled))[0]
        nearest = np.min(np.linalg.norm(e[probes, None] - e[None, gallery], axis=2), axis=1)
        t, calibrated = model.threshold_for(0.05, len(gallery))
        assert calibrated
        measured.append(np.mean(nearest <= t))
    assert np.mean(measured) == pytest.approx(0.05, abs=0.02)


def test_open_set_thresholds_tighten_as_the_gallery_grows():
    model = fit_open_set([clusters()])
    thresholds = [model.threshold_for(0.01, n)[0] for n in (1, 10, 100, 1000)]
    assert thresholds == sorted(thresholds, reverse=True) and thresholds[0] > thresholds[-1]
    assert model.predicted_fpir(thresholds[2], 100) == pytest.approx(0.01, rel=0.05)
    t, calibrated = model.threshold_for(1e-9, 10_000_000)  # far past what 1,200 probes measured
    assert not calibrated and t < model.thresholds[0]


def test_open_set_needs_two_classes():
    with pytest.raises(ConfigError, match="two or more classes"):
        fit_open_set([(np.zeros((3, 4), np.float32), np.zeros(3))])


def card_with_calibration(card: ModelCard) -> ModelCard:
    d, y = separated()
    return dataclasses.replace(card, operating_points=operating_points(d, y),
                               probability=fit_probability(d, y),
                               open_set=fit_open_set([clusters()]))


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
    from encoder.foreign import foreign_batch

    embedder = Embedder.load(tiny_model)
    domain = embedder.card.domain
    assert domain.heldout_rejected <= 0.05 and set(domain.foreign_accepted) >= {"photos", "faces"}
    own = sorted(small_folder.rglob("*.png"))
    assert np.mean(embedder.in_domain(own)) >= 0.9
    foreign = foreign_batch(200, embedder.card.preprocessing, seed=11)
    scores = embedder.domain_score_prepared(foreign)
    assert np.mean(scores >= domain.threshold) <= 0.1


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
    assert verdicts.identification_rule(100, fpir=0.05, impostors=few).basis == "card"


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
