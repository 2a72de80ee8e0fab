"""The trust benchmark's parts (`python -m benchmarks trust`): its folders hold the classes they
say, new classes never among the training ones; its measurements, run with the bundled model
(no training here: the whole benchmark trains four models, 15 minutes), count what they say."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks import bench, bench_trust
from tests.support import cli


@pytest.mark.parametrize("kind, train_classes, unseen_classes, per_class", [
    ("omniglot", 30, 30, 10), ("alphabets", 30, 30, 10), ("fashion", 7, 3, None),
    ("photos", 30, 24, 10)])
def test_the_folders_hold_new_classes_never_trained_on(tmp_path, kind, train_classes,
                                                       unseen_classes, per_class):
    train, unseen = bench_trust.make_folders(kind, tmp_path / kind, seed=0)
    trained = {p.name for p in train.iterdir()}
    new = {p.name for p in unseen.iterdir()}
    assert (len(trained), len(new)) == (train_classes, unseen_classes) and not trained & new
    if per_class:
        assert all(len(list(c.iterdir())) == per_class for c in train.iterdir())
    if kind in ("alphabets", "photos"):  # new characters from alphabets never trained on, new
        # objects from photographs never trained on
        groups = {name.rsplit("-", 1)[0] for name in trained}
        assert not groups & {name.rsplit("-", 1)[0] for name in new}
    if kind == "photos":  # each object photographed differently each time
        from PIL import Image

        views = [Image.open(f) for f in sorted(next(train.iterdir()).iterdir())]
        assert len({v.size for v in views}) > 5 and {v.format for v in views} <= {"JPEG", "PNG"}


def test_its_measurements_count_what_they_say(model_embedder, fashion_test):
    pick = np.concatenate([np.flatnonzero(fashion_test.labels == c)[:20] for c in range(10)])
    vectors = model_embedder.embed(fashion_test.images[pick])
    fpir, identified = bench_trust.open_set(model_embedder, vectors, fashion_test.labels[pick],
                                            seed=0, rounds=20)
    assert 0.0 <= fpir <= 1.0 and 0.0 < identified <= 1.0
    # The card's threshold alone, and an oracle's: an open-set model fitted on these very classes
    from encoder.calibration import fit_open_set

    oracle = fit_open_set(vectors, fashion_test.labels[pick])
    for model in (model_embedder.card.open_set, oracle):
        alone, found = bench_trust.open_set(model_embedder, vectors, fashion_test.labels[pick],
                                            seed=0, rounds=20, model=model)
        assert 0.0 <= alone <= 1.0 and 0.0 < found <= 1.0
    # ... which, fitted on them, predicts what they measure, within the rounds' noise
    assert abs(bench_trust.open_set(model_embedder, vectors, fashion_test.labels[pick], seed=0,
                                    rounds=200, model=oracle)[0] - bench_trust.FPIR_TARGET) < 0.03
    too_few = bench_trust.open_set(model_embedder, vectors[:40], fashion_test.labels[pick][:40], 0)
    assert all(np.isnan(too_few))  # 2 classes cannot deal 5 enrolled and 5 strangers
    accepted = bench_trust.foreign_accepted(model_embedder, "clothing", n=50)
    assert set(accepted) >= {"sklearn digits, white on black", "sklearn digits, black on white",
                             "sklearn photos", "LFW faces", "Fashion-MNIST"}
    assert accepted["Fashion-MNIST"] > 0.9 and accepted["sklearn digits, white on black"] < 0.1


def test_an_unknown_kind_is_one_error_line(capsys):
    code, _, err = cli(bench, ["trust", "--kinds", "omniglot,faces"], capsys)
    assert code == 2 and "unknown kind(s) faces; choose from omniglot, alphabets, clothing, " \
                         "fashion, photos" in err


def test_ece_halves_judge_three_maps_on_the_same_half(model_embedder, fashion_test):
    pick = np.concatenate([np.flatnonzero(fashion_test.labels == c)[:20] for c in range(10)])
    vectors = model_embedder.embed(fashion_test.images[pick])
    halves = bench_trust.ece_halves(model_embedder.card, vectors, fashion_test.labels[pick],
                                    seed=0, rounds=5)
    assert set(halves) == {"card", "other_half", "in_sample"}
    assert all(0.0 <= v <= 1.0 for v in halves.values())
    # A map fitted on the very pairs it is judged on is the best of the three, on average.
    assert halves["in_sample"] < min(halves["card"], halves["other_half"])
