import numpy as np
import pytest

from encoder.errors import ConfigError, DatasetError
from encoder.evaluation import heldout_oneshot, oneshot_accuracy, oneshot_episodes

# 12 classes in 3 groups of 4 (classes 0-3: group 0, ...), 3 to 6 images each.
LABELS = np.repeat(np.arange(12), [3, 4, 5, 6] * 3)
GROUPS = LABELS // 4


def test_episodes_hold_distinct_classes_and_images():
    episodes = oneshot_episodes(LABELS, way=4, shots=2, episodes=300, seed=0)
    assert episodes.shape == (300, 4, 3)
    for episode in episodes:
        classes = LABELS[episode]
        assert (classes == classes[:, :1]).all()  # a row: one class's references and query
        assert len(set(classes[:, 0])) == 4 and len(set(episode.ravel())) == 12
    # Without groups, episodes mix groups; every class is drawn sooner or later.
    assert any(len(set(GROUPS[e[:, 0]])) > 1 for e in episodes)
    assert set(LABELS[episodes[:, :, 0]].ravel()) == set(range(12))


def test_episodes_within_one_group_and_seeded():
    episodes = oneshot_episodes(LABELS, way=3, shots=1, episodes=200, seed=5, groups=GROUPS)
    assert all(len(set(GROUPS[e.ravel()])) == 1 for e in episodes)
    assert set(GROUPS[episodes[:, 0, 0]]) == {0, 1, 2}
    np.testing.assert_array_equal(
        episodes, oneshot_episodes(LABELS, way=3, shots=1, episodes=200, seed=5, groups=GROUPS))
    assert not np.array_equal(
        episodes, oneshot_episodes(LABELS, way=3, shots=1, episodes=200, seed=6, groups=GROUPS))


def test_classes_too_small_for_the_shots_are_not_drawn():
    episodes = oneshot_episodes(LABELS, way=2, shots=4, episodes=100, seed=0, groups=GROUPS)
    assert set(LABELS[episodes.ravel()]) == {2, 3, 6, 7, 10, 11}  # the classes of 5 and 6 images
    with pytest.raises(DatasetError, match="need 3 classes with at least 5 images within one "
                                           "group; the largest group has 2"):
        oneshot_episodes(LABELS, way=3, shots=4, episodes=10, seed=0, groups=GROUPS)
    with pytest.raises(DatasetError, match="need 13 classes with at least 2 images; the data has 12"):
        oneshot_episodes(LABELS, way=13, shots=1, episodes=10, seed=0)
    with pytest.raises(ConfigError, match="at least 2 classes"):
        oneshot_episodes(LABELS, way=1, shots=1, episodes=10, seed=0)
    with pytest.raises(ConfigError, match="at least 2 episodes"):
        oneshot_episodes(LABELS, way=2, shots=1, episodes=1, seed=0)


def test_accuracy_of_perfect_useless_and_noisy_embeddings():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(12, 16))
    perfect = centres[LABELS]
    result = oneshot_accuracy(perfect, LABELS, way=5, episodes=200, seed=1)
    assert result.accuracy == 1.0 and result.ci95 == 0.0 and result.episode_classes == "any"
    useless = np.zeros((len(LABELS), 16), np.float32)  # every query ties: nearest is the first
    result = oneshot_accuracy(useless, LABELS, way=5, episodes=400, seed=1)
    assert result.accuracy == pytest.approx(1 / 5) and result.ci95 == 0.0
    # Noise about as large as the class spread: better than chance, worse than perfect, and more
    # references per class (nearest class mean) help.
    noisy = perfect + rng.normal(scale=1.2, size=perfect.shape) * np.sqrt(16) / 4
    one = oneshot_accuracy(noisy, LABELS, way=5, shots=1, episodes=2000, seed=1)
    two = oneshot_accuracy(noisy, LABELS, way=5, shots=2, episodes=2000, seed=1)
    assert 0.3 < one.accuracy < 0.95 and two.accuracy > one.accuracy + 2 * one.ci95
    assert 0.005 < one.ci95 < 0.05
    assert str(one).startswith(f"5-way 1-shot: {one.accuracy:.4f} ± {one.ci95:.4f} (95% CI; "
                               "2000 episodes, any classes)")


def test_within_group_episodes_are_harder_when_groups_share_a_style():
    # Each group's classes sit close together: within-group episodes hold only near neighbours.
    rng = np.random.default_rng(0)
    centres = 5 * rng.normal(size=(3, 16))[np.arange(12) // 4] + 0.4 * rng.normal(size=(12, 16))
    x = centres[LABELS] + 0.5 * rng.normal(size=(len(LABELS), 16))
    within = oneshot_accuracy(x, LABELS, way=4, episodes=1000, seed=2, groups=GROUPS)
    across = oneshot_accuracy(x, LABELS, way=4, episodes=1000, seed=2)
    assert within.episode_classes == "group" and across.episode_classes == "any"
    assert within.accuracy < across.accuracy - 2 * (within.ci95 + across.ci95)


def test_heldout_oneshot_per_group_or_overall_and_only_ways_that_fit():
    # 30 classes of 3 images: group 0 holds 22 classes, group 1 holds 8 (too few for 20-way).
    labels = np.repeat(np.arange(30), 3)
    groups = (labels >= 22).astype(int)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 16))[labels] + 0.3 * rng.normal(size=(90, 16))
    by_group = heldout_oneshot(x, labels, groups, ["Greek", "Korean"], seed=4)
    assert set(by_group) == {"Greek", "Korean"}
    assert set(by_group["Greek"]) == {"20-way", "5-way"} and set(by_group["Korean"]) == {"5-way"}
    first = labels < 22
    assert by_group["Greek"]["20-way"] == round(oneshot_accuracy(
        x[first], labels[first], 20, 1, 1000, 4, groups[first]).accuracy, 4)
    overall = heldout_oneshot(x, labels, None, [], seed=4)
    assert list(overall) == ["all"] and 0.5 < overall["all"]["20-way"] <= 1.0
    assert heldout_oneshot(x[:12], labels[:12], None, [], seed=4) == {}  # 4 classes: no way fits
