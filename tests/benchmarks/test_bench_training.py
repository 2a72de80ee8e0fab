"""The training benchmark (`python -m benchmarks training`), on a two-second budget."""
from __future__ import annotations

import json

import pytest

from benchmarks import bench
from tests.support import cli

pytestmark = pytest.mark.slow  # trains two models for their budget


def test_training_benchmark_trains_both_recipes_for_the_same_budget(tiny_model, fashion_dir,
                                                                     tmp_path, capsys):
    code, out, err = cli(bench, [
        "training", "--dataset", fashion_dir, "--budget", "2", "--recipe-from", tiny_model,
        "--out", tmp_path / "runs", "--json"], capsys)
    assert code == 0, err
    results = json.loads(out)  # --json: the JSON alone on stdout
    assert "== ours: 2 s budget" in err
    assert [r["recipe"] for r in results] == ["tutorial", "ours"]
    assert results[0]["val_loss_vs_tutorial"] == 1.0 and results[1]["val_loss_vs_tutorial"] > 0
    assert all(0 < r["test_accuracy"] <= 1 and r["epochs"] >= 1 for r in results)
    ours = json.loads((tmp_path / "runs" / "ours" / "card.json").read_text())["training"]["settings"]
    recipe = json.loads((tiny_model / "card.json").read_text())["training"]["settings"]
    assert {k: ours[k] for k in ("arch", "width", "augment", "hard_fraction")} == \
        {k: recipe[k] for k in ("arch", "width", "augment", "hard_fraction")}
    assert ours["time_budget"] == 2
