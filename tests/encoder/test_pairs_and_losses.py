import numpy as np
import pytest

from encoder.distance import euclidean, from_squared, pairwise
from encoder.errors import DatasetError
from encoder.pairs import class_balanced_batches, tutorial_pairs

LABELS = np.repeat(np.arange(5), [7, 3, 10, 2, 8])


def test_tutorial_pairs_protocol():
    first, second, same = tutorial_pairs(LABELS, seed=0)
    n = len(LABELS)
    assert len(first) == 2 * n and first.dtype.kind == "i" and second.dtype.kind == "i"
    assert (np.bincount(first) == 2).all()  # every image: one positive and one negative pair
    assert same.tolist() == [1.0, 0.0] * n
    pos, neg = same == 1, same == 0
    assert (LABELS[first[pos]] == LABELS[second[pos]]).all()
    assert (first[pos] != second[pos]).all()  # never an image with itself
    assert (LABELS[first[neg]] != LABELS[second[neg]]).all()


def test_tutorial_pairs_are_seeded():
    a, b = tutorial_pairs(LABELS, 1), tutorial_pairs(LABELS, 1)
    c = tutorial_pairs(LABELS, 2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])


def test_tutorial_pairs_need_two_classes_of_two():
    with pytest.raises(DatasetError):
        tutorial_pairs(np.array([0, 0, 0]), 0)
    with pytest.raises(DatasetError):
        tutorial_pairs(np.array([0, 0, 1]), 0)


def test_class_balanced_batches_cover_the_epoch():
    labels = np.repeat(np.arange(10), 40)
    batches = class_balanced_batches(labels, classes_per_batch=5, per_class=4, seed=0)
    assert batches.shape == (20, 20)
    for batch in batches:
        counts = np.bincount(labels[batch], minlength=10)
        assert sorted(counts[counts > 0].tolist()) == [4] * 5
    seen = np.bincount(batches.ravel(), minlength=len(labels))
    assert (seen >= 0).all() and seen.sum() == 400 and (seen > 0).mean() > 0.6


def test_class_balanced_batches_small_data_and_groups():
    labels = np.repeat(np.arange(10), 4)
    assert class_balanced_batches(labels, 5, 4, seed=0).shape == (2, 20)
    assert class_balanced_batches(labels, 5, 4, seed=0, min_batches=30).shape == (30, 20)
    # Groups: classes 0-5 in group 0, 6-9 in group 1. A batch of 5 classes is all group 0, or
    # group 1's four topped up with one class of group 0.
    groups = np.where(labels < 6, 0, 1)
    batches = class_balanced_batches(labels, 5, 4, seed=1, min_batches=200, groups=groups)
    of_group_1 = set()
    for batch in batches:
        classes = set(labels[batch].tolist())
        assert len(classes) == 5
        of_group_1.add(len([c for c in classes if c >= 6]))
    assert of_group_1 == {0, 4}
    plain = class_balanced_batches(labels, 5, 4, seed=1, min_batches=200)
    assert {len([c for c in set(labels[b].tolist()) if c >= 6]) for b in plain} >= {1, 2, 3}


def test_distance_helpers_agree():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 8)), rng.normal(size=(4, 8))
    full = pairwise(a, b)
    for i in range(6):
        np.testing.assert_allclose(full[i], euclidean(a[i], b), rtol=1e-5)
    np.testing.assert_allclose(from_squared(np.array([4.0, -1e-9])), [2.0, 0.0])


def test_contrastive_losses_match_the_formula():
    import tensorflow as tf

    from encoder.losses import batch_contrastive_loss, contrastive_loss, euclidean_distance

    rng = np.random.default_rng(0)
    e = rng.normal(scale=0.5, size=(12, 4)).astype(np.float32)
    labels = np.repeat(np.arange(3), 4)
    d = euclidean(e[:6], e[6:])
    y = (labels[:6] == labels[6:]).astype(np.float32)
    expected = np.mean(y * d ** 2 + (1 - y) * np.maximum(1 - d, 0) ** 2)
    got = contrastive_loss(tf.constant(y), euclidean_distance(tf.constant(e[:6]), tf.constant(e[6:])))
    assert float(got) == pytest.approx(expected, rel=1e-5)

    # All-pairs batch loss == mean over positive pairs / 2 + mean over negative pairs / 2.
    i, j = np.triu_indices(12, 1)
    dij = euclidean(e[i], e[j])
    same = labels[i] == labels[j]
    expected = 0.5 * np.mean(dij[same] ** 2) + 0.5 * np.mean(np.maximum(1 - dij[~same], 0) ** 2)
    got = batch_contrastive_loss(tf.constant(e), tf.constant(labels))
    assert float(got) == pytest.approx(expected, rel=1e-4)
    hardest = batch_contrastive_loss(tf.constant(e), tf.constant(labels), hard_fraction=0.25)
    assert float(hardest) > float(got)
