import numpy as np
import pytest

from encoder.calibration import accuracy_at, calibrate, roc_auc
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
