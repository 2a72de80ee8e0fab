"""The web benchmark runs end to end on a tiny scale (the real numbers come from a full run)."""
from __future__ import annotations

import json

import pytest

from benchmarks import bench

pytestmark = pytest.mark.slow  # starts two gunicorn servers and loads them


def test_bench_web_runs_small(model_dir, fashion_dir, capsys):
    code = bench.main(["web", "--model", str(model_dir), "--dataset", str(fashion_dir),
                       "--size", "300", "--clients", "1,2", "--seconds", "1",
                       "--baseline-seconds", "1", "--warmup", "0.3", "--workers", "1",
                       "--threads", "2", "--json"])
    out, err = capsys.readouterr()
    assert code == 0
    results = json.loads(out)
    rows = results["rows"]
    assert [(r["server"], r["clients"]) for r in rows] == [("ours", 1), ("naive", 1), ("ours", 2),
                                                           ("naive", 2)]
    assert all(r["requests"] > 0 and r["errors"] == 0 and r["non_200"] == 0 for r in rows), rows
    assert all(r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] for r in rows), rows
    # Speed-ups are ratios of the rows measured in this run, one per concurrency (no timing is
    # asserted: the machine is shared).
    row = {(r["server"], r["clients"]): r for r in rows}
    assert results["speedups"] == [
        {"clients": c, "p50": round(row["naive", c]["p50_ms"] / row["ours", c]["p50_ms"], 1),
         "throughput": round(row["ours", c]["per_s"] / row["naive", c]["per_s"], 1)}
        for c in (1, 2)]
    assert set(results["targets"]) == {"single client p50 <= 10 ms", "single client p99 <= 30 ms",
                                       "single client >= 20x the naive baseline (p50)",
                                       "2 clients for 1 s: no errors, no 5xx"}
    assert all(isinstance(met, bool) for met in results["targets"].values())
    assert results["targets"]["2 clients for 1 s: no errors, no 5xx"] is True
    assert "p50 ms" in err and "faster at p50" in err
