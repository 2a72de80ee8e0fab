import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from encoder.errors import ConfigError
from encoder.foreign import FAMILIES, MAX_SIDE, MIN_SIDE, foreign_batch, foreign_images
from encoder.images import Preprocessing, prepare_batch

ROOT = Path(__file__).resolve().parents[2]
GREY28 = Preprocessing(28, 28, 1)


def fingerprint(images) -> list[tuple]:
    return [(im.mode, im.size, im.tobytes()) for im in images]


@pytest.fixture(scope="module")
def per_family() -> dict[str, np.ndarray]:
    """120 model inputs (28x28 grey) per family, generated once for the statistics tests."""
    return {fam: foreign_batch(120, GREY28, seed=1, families=[fam]).astype(np.float32)[..., 0]
            for fam in FAMILIES}


def test_same_seed_gives_identical_images():
    a, b = foreign_images(40, seed=5), foreign_images(40, seed=5)
    assert fingerprint(a) == fingerprint(b)
    assert np.array_equal(foreign_batch(40, GREY28, seed=5), foreign_batch(40, GREY28, seed=5))


def test_different_seeds_give_different_images():
    a, b = foreign_batch(40, GREY28, seed=5), foreign_batch(40, GREY28, seed=6)
    differing = [not np.array_equal(x, y) for x, y in zip(a, b)]
    assert sum(differing) >= 38


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_has_varied_sizes_both_modes_and_content(family):
    images = foreign_images(40, seed=2, families=[family])
    assert len(images) == 40
    sizes = [im.size for im in images]
    assert all(MIN_SIDE <= s <= MAX_SIDE for size in sizes for s in size)
    assert len(set(sizes)) >= 30
    assert min(min(s) for s in sizes) < 48 and max(max(s) for s in sizes) > 150
    assert any(w > 1.4 * h for w, h in sizes) and any(h > 1.4 * w for w, h in sizes)
    assert {im.mode for im in images} == {"L", "RGB"}
    # Not degenerate: most images have visible structure, and not all are dark or all light.
    stds = [np.asarray(im.convert("L"), np.float32).std() for im in images]
    assert np.mean(np.array(stds) > 3) >= 0.7
    means = [np.asarray(im.convert("L"), np.float32).mean() for im in images]
    assert min(means) < 100 and max(means) > 155


@pytest.mark.parametrize("pre", [Preprocessing(28, 28, 1), Preprocessing(32, 32, 3),
                                 Preprocessing(28, 28, 1, invert=True)], ids=str)
def test_foreign_batch_is_prepare_batch_of_foreign_images(pre):
    batch = foreign_batch(24, pre, seed=3)
    assert batch.dtype == np.uint8 and batch.shape == (24, *pre.shape)
    assert np.array_equal(batch, prepare_batch(foreign_images(24, seed=3), pre))


def test_inverted_preprocessing_inverts_the_batch():
    plain = foreign_batch(16, GREY28, seed=4)
    inverted = foreign_batch(16, Preprocessing(28, 28, 1, invert=True), seed=4)
    assert np.array_equal(inverted, 255 - plain)


def test_foreign_batch_crosses_its_chunk_boundary():
    # More than one internal chunk: the chunked preparation must match the one-shot one.
    batch = foreign_batch(530, Preprocessing(8, 8, 1), seed=9, families=["noise", "gradients"])
    expected = prepare_batch(foreign_images(530, seed=9, families=["noise", "gradients"]),
                             Preprocessing(8, 8, 1))
    assert np.array_equal(batch, expected)


def test_zero_images():
    assert foreign_images(0, seed=0) == []
    empty = foreign_batch(0, Preprocessing(32, 32, 3), seed=0)
    assert empty.shape == (0, 32, 32, 3) and empty.dtype == np.uint8


def test_a_single_family_name_as_a_string_is_one_family():
    assert fingerprint(foreign_images(6, 0, "text")) == fingerprint(foreign_images(6, 0, ["text"]))


def test_unknown_family_is_a_config_error_naming_it_and_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        foreign_images(4, seed=0, families=["noise", "galaxies"])
    assert "'galaxies'" in str(err.value)
    assert all(f in str(err.value) for f in FAMILIES)
    with pytest.raises(ConfigError):
        foreign_batch(4, GREY28, seed=0, families=["Photos"])
    with pytest.raises(ConfigError):
        foreign_images(4, seed=0, families=[])


@pytest.mark.parametrize("n", [-1, 2.5, True])
def test_bad_counts_are_config_errors(n):
    with pytest.raises(ConfigError, match="number of foreign images"):
        foreign_images(n, seed=0)
    with pytest.raises(ConfigError, match="number of foreign images"):
        foreign_batch(n, GREY28, seed=0)


def test_families_differ_in_simple_statistics(per_family):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import cross_val_score

    def edges(b: np.ndarray) -> np.ndarray:
        return np.abs(np.diff(b, axis=2)).mean((1, 2)) + np.abs(np.diff(b, axis=1)).mean((1, 2))

    energy = {fam: float(edges(b).mean()) for fam, b in per_family.items()}
    assert energy["gradients"] < energy["noise"] and energy["gradients"] < energy["documents"]
    means = np.stack([b.mean(0) for b in per_family.values()]).reshape(len(FAMILIES), -1)
    gaps = np.sqrt(((means[:, None] - means[None]) ** 2).mean(-1))
    assert np.all(gaps[~np.eye(len(FAMILIES), dtype=bool)] > 0.5)
    # Edge energy and contrast alone tell the families apart well above chance (1/8).
    x = np.concatenate([np.stack([edges(b), b.std((1, 2))], 1) for b in per_family.values()])
    y = np.repeat(np.arange(len(FAMILIES)), 120)
    accuracy = cross_val_score(RandomForestClassifier(50, random_state=0), x, y, cv=3).mean()
    assert accuracy > 0.25


def test_no_family_is_told_by_its_brightness(per_family):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import cross_val_score

    for fam, b in per_family.items():
        assert 105 < b.mean() < 150, fam
    # Random polarity and contrast: brightness alone tells the families apart barely above chance.
    x = np.concatenate([b.mean((1, 2))[:, None] for b in per_family.values()])
    y = np.repeat(np.arange(len(FAMILIES)), 120)
    accuracy = cross_val_score(RandomForestClassifier(50, min_samples_leaf=5, random_state=0),
                               x, y, cv=3).mean()
    assert accuracy < 0.22


def test_module_imports_no_sklearn_and_skimage_only_for_the_photo_families():
    code = ("import sys; from encoder.foreign import foreign_images\n"
            "foreign_images(16, 0, ['noise', 'gradients', 'shapes', 'text', 'scribbles'])\n"
            "assert 'skimage' not in sys.modules, 'skimage imported too early'\n"
            "foreign_images(16, 0, ['photos', 'faces', 'documents'])\n"
            "assert 'skimage' in sys.modules\n"
            "assert 'sklearn' not in sys.modules, 'sklearn imported at run time'\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
