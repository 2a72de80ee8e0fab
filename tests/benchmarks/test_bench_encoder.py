"""The encoder benchmark (`python -m benchmarks encoder`), on the tiny model and a few repeats."""
from __future__ import annotations

import pytest

from benchmarks import bench
from tests.support import cli

pytestmark = pytest.mark.slow  # times embedding with the tiny model


def test_encoder_benchmark_prints_a_table_with_its_baseline(tiny_model, fashion_dir, capsys):
    code, out, err = cli(bench, ["encoder", "--model", tiny_model, "--dataset", fashion_dir,
                                 "--repeats", "5"], capsys)
    assert code == 0, err
    assert "baseline: model.predict, one image" in out and "Embedder.embed, batch of 1,024" in out
    # The model-call alternatives, each against TensorFlow's compiled call at 1, 8 and 64 images,
    # LiteRT's outputs within float rounding of TensorFlow's.
    calls = [line for line in out.splitlines() if line.lstrip().startswith(("TensorFlow", "LiteRT"))]
    assert len(calls) == 12, out
    lite = [line for line in calls if "LiteRT, 1 thread" in line]
    assert len(lite) == 3 and all(float(line.split()[-1]) < 1e-4 for line in lite), lite
