"""The gallery benchmark runs end to end on a tiny scale (the real numbers come from a long run)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import bench

pytestmark = pytest.mark.slow  # ingests, builds and times indexes


def test_bench_runs_small(model_dir, fashion_dir, capsys):
    code = bench.main(["gallery", "--model", str(model_dir), "--dataset", str(fashion_dir),
                       "--images", "300", "--real", "2000", "--sizes", "1000,3000",
                       "--queries", "60", "--seconds", "0.1", "--index", "flat",
                       "--index", "hnsw:m=8,ef_search=16", "--index", "hnsw:m=8,ef_search=64",
                       "--index", "ivf:nlist=16,nprobe=4", "--json"])
    out, err = capsys.readouterr()
    results = json.loads(out)
    assert code == 0
    ingest = results["ingest"]
    assert ingest["added"] == 300 and ingest["again_added"] == 0 and ingest["images_per_s"] > 0
    rows = results["search"]
    assert [r["size"] for r in rows] == [1000] * 5 + [3000] * 5
    assert rows[0]["index"] == "numpy brute force" and rows[1]["index"] == "flat"
    assert rows[0]["recall_at_10"] == rows[1]["recall_at_10"] == 1.0  # both exact
    hnsw = [r for r in rows if r["index"].startswith("hnsw") and r["size"] == 3000]
    assert [r["index"] for r in hnsw] == ["hnsw:m=8,ef_construction=80,ef_search=16",
                                          "hnsw:m=8,ef_construction=80,ef_search=64"]
    assert hnsw[0]["build_s"] == hnsw[1]["build_s"]  # one build, two search settings
    assert hnsw[1]["recall_at_10"] >= hnsw[0]["recall_at_10"]
    assert all(r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] and r["queries"] >= 50 for r in rows)
    assert "images/s end to end" in err


def test_bench_distinct_vectors_are_embedded_once_and_cached(model_dir, fashion_dir, omniglot_dir,
                                                             tmp_path, capsys):
    argv = ["gallery", "--model", str(model_dir), "--dataset", str(fashion_dir),
            "--omniglot", str(omniglot_dir / "images_background_small1.zip"),
            "--skip-ingest", "--vectors", "distinct", "--cache", str(tmp_path), "--real", "2000",
            "--sizes", "3000", "--queries", "60", "--seconds", "0.1",
            "--index", "hnsw:m=8,ef_search=64", "--json"]
    assert bench.main(argv) == 0
    out, err = capsys.readouterr()
    first = json.loads(out)["search"]
    [cache] = tmp_path.glob("distinct-*.npy")
    vectors = np.load(cache)
    assert vectors.shape == (1060, 64)  # 60 queries, then 1,000 gallery vectors past the real 2,000
    # Distinct images: distinct vectors, but for the few (~0.3%) the model maps onto one point
    # (every unit of its ReLU head dead, so the embedding is the next layer's bias).
    assert len(np.unique(vectors, axis=0)) >= 1040
    assert "embedding distinct images: 1,060/1,060" in err
    assert [r["index"] for r in first] == ["numpy brute force",
                                           "hnsw:m=8,ef_construction=80,ef_search=64"]
    assert first[1]["recall_at_10"] >= 0.9

    assert bench.main(argv) == 0  # the second run reads the cache: same vectors, same recall
    out, err = capsys.readouterr()
    assert "embedding distinct images" not in err
    assert json.loads(out)["search"][1]["recall_at_10"] == first[1]["recall_at_10"]
