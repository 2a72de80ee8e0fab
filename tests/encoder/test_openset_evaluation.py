"""The verdict measured on test data (operating points, TAR@FAR) and open-set 1:N identification,
on synthetic Gaussian clusters: counted against brute force, and the card-style prediction
checked against a draw it was not fitted on."""
import numpy as np
import pytest

from encoder.calibration import (HeldOutPairs, calibrate, fit_open_set, operating_points,
                                 roc_points, wilson_interval)
from encoder.errors import ConfigError, DatasetError
from encoder.evaluation import (open_set_identification, open_set_rounds,
                                operating_point_metrics, tar_at_far)


def clusters(seed, classes=60, per=8, dim=16, spread=0.5, sizes=None):
    """Gaussian clusters: unit-normal class centres, `spread` noise around them."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    labels = np.repeat(np.arange(classes), per if sizes is None else sizes)
    points = centres[labels] + spread * rng.normal(size=(len(labels), dim))
    return points.astype(np.float32), labels


def pair_distances(seed, n=400):
    rng = np.random.default_rng(seed)
    same = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    distances = np.r_[rng.normal(0.4, 0.15, n), rng.normal(1.0, 0.2, n)]
    return distances, same


# --- operating points and TAR@FAR -----------------------------------------------------------------

def test_operating_points_are_counted_beside_the_card_and_as_the_service_answers():
    fitted = operating_points(HeldOutPairs.of(*clusters(0)))  # the card's, from other classes
    test = HeldOutPairs.of(*clusters(1, classes=30))
    thresholds = {name: p.threshold for name, p in fitted.items()}
    in_domain = np.arange(test.images) % 10 != 0  # a tenth of the images refused
    result = operating_point_metrics(test, thresholds, fitted, in_domain=in_domain)
    assert list(result) == ["balanced", "far-1e-2", "far-1e-3"]
    both = in_domain[test.first] & in_domain[test.second]
    for name, r in result.items():
        t = thresholds[name]
        accepted = test.distances <= t
        positives, negatives = test.positives, test.negatives
        assert r["threshold"] == t and (r["positives"], r["negatives"]) == (positives, negatives)
        assert r["tar"] == np.sum(accepted & test.same) / positives
        assert r["far"] == np.sum(accepted & ~test.same) / negatives
        assert r["far_ci95_pairs"] == list(wilson_interval(int(np.sum(accepted & ~test.same)),
                                                           negatives))
        assert r["tar_ci95"][0] <= r["tar"] <= r["tar_ci95"][1]
        assert r["service_tar"] == np.sum(accepted & test.same & both) / positives
        assert r["service_far"] == np.sum(accepted & ~test.same & both) / negatives
        assert (r["card_tar"], r["card_far"]) == (fitted[name].tar, fitted[name].far)
        assert r["far_above_card"] == (r["far"] > fitted[name].far_ci95[1])
    # A card without operating points: measured only.
    bare = operating_point_metrics(test, {"balanced": 0.7})
    assert bare["balanced"]["card_tar"] is None and bare["balanced"]["far_above_card"] is None
    assert "service_tar" not in bare["balanced"]


def test_tar_at_far_is_the_oracle_threshold_on_the_same_pairs():
    distances, same = pair_distances(2)
    result = tar_at_far(distances, same)
    assert [r["far_target"] for r in result] == [1e-2, 1e-3]
    for r in result:
        cal = calibrate(distances, same, far_target=r["far_target"])
        assert (r["tar"], r["threshold"]) == (cal.tar_at_far, cal.far_threshold)
        assert r["far"] <= r["far_target"] and r["negatives"] == 400
    assert result[0]["resolved"] and not result[1]["resolved"]  # 400 pairs cannot show 1e-3
    far, tar, *_ = roc_points(distances, same)
    assert result[0]["tar"] == tar[far <= 1e-2].max()


# --- open-set identification --------------------------------------------------------------------

def test_rounds_deal_every_image_once_and_skip_classes_too_small_to_enrol():
    sizes = [6] * 10 + [2, 2]  # the last two classes cannot give 3 gallery images and a probe
    labels = np.repeat(np.arange(12), sizes)
    draws, enrolled, skipped = open_set_rounds(labels, None, shots=3, rounds=5, seed=4)
    assert (enrolled, skipped, len(draws)) == (6, 2, 5)
    for gallery, mated, nonmated in draws:
        assert gallery.shape == (6, 3)
        everything = np.concatenate([gallery.ravel(), mated, nonmated])
        assert sorted(everything) == list(range(len(labels)))  # a partition of the images
        enrolled_classes = set(labels[gallery.ravel()])
        assert all((labels[g] == labels[g[0]]).all() for g in gallery)
        assert set(labels[mated]) == enrolled_classes and not {10, 11} & enrolled_classes
        assert not enrolled_classes & set(labels[nonmated])
    again, *_ = open_set_rounds(labels, None, shots=3, rounds=5, seed=4)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(draws, again))
    other, *_ = open_set_rounds(labels, None, shots=3, rounds=5, seed=5)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(draws, other))


def test_well_separated_clusters_are_identified_at_rank_1():
    embeddings, labels = clusters(0, classes=20, per=5, spread=0.01)
    result = open_set_identification(embeddings, labels, enrolled=8, shots=2, rounds=3, seed=1)
    assert result["rank1"] == {"mean": 1.0, "sd": 0.0} and result["rank5"]["mean"] == 1.0
    assert (result["gallery_size"], result["enrolled_classes"], result["not_enrolled_classes"]) \
        == (16, 8, 12)
    assert (result["mated_probes"], result["nonmated_probes"]) == (8 * 3, 12 * 5)
    # Even at FPIR 0.01 (no false positive allowed among 60) every mated probe is identified.
    assert all(p["fnir"]["mean"] == 0.0 and p["measured_fpir"]["mean"] <= p["fpir"] + 1e-12
               for p in result["fnir_at_fpir"])
    assert result["predicted"] is None
    assert result["curve"]["fpir"][0] == 0.0 and len(result["curve"]["fpir"]) == \
        len(result["curve"]["fnir"])


def brute_force(embeddings, labels, gallery, mated, nonmated, threshold):
    """Rank-1, FPIR and identification rate at `threshold`, one probe at a time."""
    def nearest(probe):
        return min(((float(np.sqrt(np.sum((embeddings[probe] - embeddings[g]) ** 2))),
                     int(labels[g])) for g in gallery.ravel()), key=lambda x: x[0])

    false_positives = sum(nearest(p)[0] <= threshold for p in nonmated)
    rank1 = identified = 0
    for p in mated:
        distance, label = nearest(p)
        rank1 += label == labels[p]
        identified += label == labels[p] and distance <= threshold
    return rank1 / len(mated), false_positives / len(nonmated), identified / len(mated)


def test_measured_rates_equal_a_brute_force_count():
    embeddings, labels = clusters(3, classes=24, per=5, dim=8, spread=0.7)
    thresholds = {0.01: 2.2, 0.05: 2.6, 0.1: 2.9}
    result = open_set_identification(embeddings, labels, enrolled=10, shots=2, rounds=3, seed=7,
                                     predict=lambda fpir, *_: (thresholds[fpir], True))
    draws, *_ = open_set_rounds(labels, 10, 2, 3, 7)
    counted = {t: [brute_force(embeddings, labels, *draw, t) for draw in draws]
               for t in thresholds.values()}
    assert result["rank1"]["mean"] == pytest.approx(np.mean([c[0] for c in counted[2.2]]))
    assert 0.0 < result["rank1"]["mean"] < 1.0  # overlapping clusters: a real test
    for p in result["predicted"]:
        assert p["threshold"] == thresholds[p["fpir"]] and p["calibrated"]
        rows = counted[p["threshold"]]
        assert p["measured_fpir"]["mean"] == pytest.approx(np.mean([r[1] for r in rows]))
        assert p["measured_fpir"]["sd"] == pytest.approx(np.std([r[1] for r in rows], ddof=1))
        assert p["identification_rate"]["mean"] == pytest.approx(np.mean([r[2] for r in rows]))
    # FNIR at a target FPIR: the threshold is the largest keeping the measured FPIR within it.
    one = open_set_identification(embeddings, labels, enrolled=10, shots=2, rounds=1, seed=7)
    for p in one["fnir_at_fpir"]:
        t = p["threshold"]["mean"]
        _, fpir, identified = brute_force(embeddings, labels, *draws[0], t)
        assert p["measured_fpir"]["mean"] == pytest.approx(fpir) and fpir <= p["fpir"]
        assert p["fnir"]["mean"] == pytest.approx(1 - identified)
        # Raising it to the next non-mated probe's nearest distance would exceed the target.
        gallery, _, nonmated = draws[0]
        nearest = np.linalg.norm(embeddings[nonmated, None] - embeddings[None, gallery.ravel()],
                                 axis=-1).min(1)
        _, more, _ = brute_force(embeddings, labels, *draws[0], nearest[nearest > t].min())
        assert more > p["fpir"]


def test_the_cards_prediction_holds_on_clusters_it_was_not_fitted_on():
    """The open-set model a card stores, fitted on one draw of classes, predicts the FPIR
    measured on another draw of classes from the same distribution within a few points."""
    fitted, fitted_labels = clusters(10, classes=200, per=6)
    model = fit_open_set(fitted, fitted_labels)
    embeddings, labels = clusters(100, classes=200, per=6)
    result = open_set_identification(embeddings, labels, enrolled=100, shots=1, rounds=5, seed=0,
                                     predict=lambda fpir, size, *_: model.threshold_for(fpir, size))
    assert result["gallery_size"] == 100
    for p in result["predicted"]:
        assert p["threshold"] == model.threshold_for(p["fpir"], 100)[0]
        assert abs(p["measured_fpir"]["mean"] - p["fpir"]) <= max(0.01, 0.3 * p["fpir"]), p
    # Predicting for a gallery of 1 instead of 100 would be far too lenient.
    naive, _ = model.threshold_for(0.05, 1)
    draws, *_ = open_set_rounds(labels, 100, 1, 1, 0)
    assert brute_force(embeddings, labels, *draws[0], naive)[1] > 0.5


@pytest.mark.parametrize("kwargs, error, message", [
    ({"labels": np.repeat([0, 1], 5)}, DatasetError, "at least 3 classes (2 enrolled and 1 not); "
                                                     "the data has 2"),
    ({"enrolled": 6}, ConfigError, "enrolled classes must be between 2 and 5"),
    ({"enrolled": 1}, ConfigError, "between 2 and 5 (the data has 6 classes, 6 with at least 2 "
                                   "images, and at least one class stays not enrolled), not 1"),
    ({"shots": 5}, DatasetError, "needs at least 2 classes with 6 or more images (one left to "
                                 "probe with); the data has 0 (6 skipped)"),
    ({"shots": 0}, ConfigError, "at least 1 enrolled image per class (shots), not 0"),
    ({"rounds": 0}, ConfigError, "at least 1 round, not 0"),
])
def test_bad_open_set_input_is_refused(kwargs, error, message):
    args = {"labels": np.repeat(np.arange(6), 5), "enrolled": None, "shots": 1, "rounds": 2,
            "seed": 0, **kwargs}
    embeddings = np.zeros((len(args["labels"]), 4), np.float32)
    with pytest.raises(error) as info:
        open_set_identification(embeddings, **args)
    assert message in str(info.value)


def test_the_galleries_own_items_predict_the_fpir_of_people_not_enrolled():
    """What `identify` does when the gallery is large enough: the share of gallery items whose
    nearest item of another label is within the threshold, a leave-one-out FPIR, taken on the
    round's gallery alone, holds on probes of classes not enrolled."""
    from encoder.verdict import leave_one_out_threshold, nearest_impostors

    embeddings, labels = clusters(5, classes=300, per=4)

    def from_gallery(fpir, size, gallery, gallery_labels):
        return leave_one_out_threshold(nearest_impostors(gallery, gallery_labels), fpir), True

    result = open_set_identification(embeddings, labels, enrolled=200, shots=1, rounds=5, seed=1,
                                     predict=from_gallery)
    for p in result["predicted"]:
        assert abs(p["measured_fpir"]["mean"] - p["fpir"]) <= max(0.01, 0.35 * p["fpir"]), p
