"""`python -m benchmarks BENCHMARK ...` (see benchmarks/bench.py)."""
from benchmarks.bench import entry

entry()
