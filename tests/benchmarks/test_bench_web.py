"""The web benchmark runs end to end on a tiny scale (the real numbers come from a full run)."""
from __future__ import annotations

import json

import pytest

from benchmarks import bench
from encoder.errors import ConfigError

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
    # The naive server has only a search; the mixed row comes last at each concurrency.
    assert [(r["server"], r["endpoint"], r["clients"]) for r in rows] == [
        (server, endpoint, c) for c in (1, 2)
        for server, endpoint in [("ours", "search"), ("naive", "search"), ("ours", "identify"),
                                 ("ours", "verify"), ("ours", "mixed")]]
    bad = [r for r in rows if not (r["requests"] > 0 and r["errors"] == 0 and r["non_2xx"] == 0)]
    assert not bad, bad
    assert all(r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] for r in rows), rows
    assert all(r["statuses"] == {"200": r["requests"]} for r in rows if r["endpoint"] != "mixed")
    # The mixed load added items (201) and deleted them (204), each answer checked; a client's
    # adds and deletes alternate, so in the measured window they differ by one at most.
    for mixed in (r for r in rows if r["endpoint"] == "mixed"):
        assert mixed["statuses"]["201"] > 0 and mixed["statuses"]["204"] > 0, mixed
        assert abs(mixed["statuses"]["201"] - mixed["statuses"]["204"]) <= mixed["clients"], mixed
    # Speed-ups are ratios of the rows measured in this run, one per concurrency (no timing is
    # asserted: the machine is shared).
    row = {(r["server"], r["endpoint"], r["clients"]): r for r in rows}
    assert results["speedups"] == [
        {"clients": c,
         "p50": round(row["naive", "search", c]["p50_ms"] / row["ours", "search", c]["p50_ms"], 1),
         "throughput": round(row["ours", "search", c]["per_s"]
                             / row["naive", "search", c]["per_s"], 1)}
        for c in (1, 2)]
    assert results["ceiling_per_s"] > 0
    assert set(results["targets"]) == {
        "single client p50 <= 10 ms", "single client p99 <= 30 ms",
        "single client >= 20x the naive baseline (p50)", "2 clients for 1 s: no errors, no 5xx",
        "1 client search p50 <= 2.0 ms",
        "identify within 1.5x of search (req/s and p50, at each concurrency)",
        "verify within 1.5x of search (req/s and p50, at each concurrency)",
        "mixed load: 0 errors"}
    assert all(isinstance(met, bool) for met in results["targets"].values())
    assert results["targets"]["2 clients for 1 s: no errors, no 5xx"] is True
    assert results["targets"]["mixed load: 0 errors"] is True
    assert "p50 ms" in err and "faster at p50" in err and "share of the ceiling" in err
    assert "identify serves" in err and "verify serves" in err


def test_bench_web_refuses_unknown_endpoints(model_dir, fashion_dir):
    with pytest.raises(ConfigError, match="--endpoints"):
        bench.main(["web", "--model", str(model_dir), "--dataset", str(fashion_dir),
                    "--endpoints", "search,upload"])
