"""python -m benchmarks: benchmarks that print a table and compare against a baseline in the same
run.

Machines here are shared and noisy, so every row is read against its baseline measured moments
before or after it, as a ratio.
"""
from __future__ import annotations

import argparse
import importlib

from scripts.common import run

# subcommand -> module with add_arguments(parser) and run(args) -> int
BENCHMARKS = {
    "encoder": ("benchmarks.bench_encoder", "embedding latency and throughput vs model.predict"),
    "training": ("benchmarks.bench_training", "our default vs the tutorial, same wall-clock budget"),
    "gallery": ("benchmarks.bench_gallery", "ingestion throughput and search latency vs NumPy"),
    "writes": ("benchmarks.bench_writes", "single adds and searches under writes in a large gallery, "
               "vs a whole-index save per add"),
    "servers": ("benchmarks.bench_servers", "3 servers on one PostgreSQL gallery under 16 clients "
                "with 10% writes, vs one server"),
    "hardening": ("benchmarks.bench_hardening", "searches while clients send worst-case images, "
                  "health probes while clients trickle bodies, vs alone"),
    "web": ("benchmarks.bench_web", "search, identify, verify and a mixed load with writes over "
            "HTTP, 1-16 clients, vs a naive Flask server and the model's own batched rate"),
    "trust": ("benchmarks.bench_trust", "models trained on folders of several kinds, measured on "
              "classes they never saw, vs what their cards state"),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = p.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, (module, help_text) in BENCHMARKS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(sp)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return importlib.import_module(BENCHMARKS[args.benchmark][0]).run(args)


def entry() -> None:
    run(main)
