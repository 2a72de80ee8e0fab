import numpy as np
import pytest

from encoder.calibration import accuracy_at, calibrate, cross_validated_accuracy, roc_auc
from encoder.errors import ConfigError


def separated(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    d = np.r_[rng.normal(0.3, 0.1, n), rng.normal(0.8, 0.1, n)]
    return d, np.r_[np.ones(n), np.zeros(n)]


def test_threshold_and_metrics_on_known_distributions():
    d, y = separated()
    cal = calibrate(d, y, far_target=1e-3)
    assert cal.threshold == pytest.approx(0.55, abs=0.02)  # where the two normals cross
    assert cal.accuracy == pytest.approx(0.9938, abs=0.004)  # Phi(2.5)
    assert cal.accuracy == pytest.approx(accuracy_at(d, y, cal.threshold))
    assert cal.eer == pytest.approx(1 - 0.9938, abs=0.004)
    assert cal.far_threshold < cal.threshold
    far = np.mean(d[y == 0] <= cal.far_threshold)
    assert far <= 1e-3
    assert cal.tar_at_far == pytest.approx(np.mean(d[y == 1] <= cal.far_threshold))


def test_auc_matches_the_pairwise_definition():
    rng = np.random.default_rng(1)
    d = rng.normal(size=300).round(1)  # many ties
    y = rng.integers(0, 2, 300)
    pos, neg = d[y == 1], d[y == 0]
    brute = np.mean((neg[None, :] > pos[:, None]) + 0.5 * (neg[None, :] == pos[:, None]))
    assert roc_auc(d, y) == pytest.approx(brute, abs=1e-9)


def test_calibration_needs_both_kinds_of_pairs():
    with pytest.raises(ConfigError, match="both same-class and different-class"):
        calibrate(np.array([0.1, 0.2]), np.array([1, 1]))
    with pytest.raises(ConfigError, match="far_target"):
        calibrate(*separated(10), far_target=0)


def test_cross_validated_accuracy_scores_each_fold_at_the_others_threshold():
    # Fold 0 separates at 0.5; fold 1 at 1.5. Pooled, one threshold fits one of them.
    d0, s0 = np.array([0.1, 0.2, 0.8, 0.9]), np.array([1, 1, 0, 0])
    d1, s1 = np.array([1.1, 1.2, 1.8, 1.9]), np.array([1, 1, 0, 0])
    # Fold 0 at fold 1's threshold (between 1.2 and 1.8) accepts everything: 2 of 4 right;
    # fold 1 at fold 0's threshold (between 0.2 and 0.8) rejects everything: 2 of 4 right.
    assert cross_validated_accuracy([d0, d1], [s0, s1]) == 0.5
    in_sample = calibrate(np.r_[d0, d1], np.r_[s0, s1]).accuracy
    assert in_sample == 0.75  # choosing and scoring on the same pairs looks better
    # Folds drawn alike: the cross-validated figure is close to, and not above, the in-sample one.
    rng = np.random.default_rng(0)
    folds = [(np.r_[rng.normal(0.4, 0.15, 500), rng.normal(0.9, 0.15, 500)], np.repeat([1, 0], 500))
             for _ in range(3)]
    cv = cross_validated_accuracy([f[0] for f in folds], [f[1] for f in folds])
    pooled = calibrate(np.concatenate([f[0] for f in folds]), np.concatenate([f[1] for f in folds]))
    assert pooled.accuracy - 0.02 < cv <= pooled.accuracy
    with pytest.raises(ConfigError, match="two or more folds"):
        cross_validated_accuracy([d0], [s0])
