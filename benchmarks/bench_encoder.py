"""Embedding speed: `Embedder.embed` against Keras' `model.predict`, in the same run."""
from __future__ import annotations

import io
import json
import time

import numpy as np


def add_arguments(p) -> None:
    from benchmarks import add_benchmark_arguments

    add_benchmark_arguments(p)
    p.add_argument("--repeats", type=int, default=200, help="single-image calls to time")
    p.add_argument("--json", action="store_true")


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm up (tracing, allocation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def _rate(fn, n: int, repeats: int = 5) -> float:
    fn()
    best = min(_timed(fn) for _ in range(repeats))
    return n / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(args) -> int:
    from PIL import Image

    from encoder import Embedder
    from encoder.datasets import load_fashion_mnist
    from scripts.table import format_table

    embedder = Embedder.load(args.model)
    images = load_fashion_mnist(args.dataset, "test").images
    batch = images[:1024]
    buf = io.BytesIO()
    Image.fromarray(images[0].squeeze(-1)).save(buf, "PNG")
    png = buf.getvalue()
    prepared = embedder.prepare(batch)
    model = embedder.model

    rows = []
    predict_one = _median_ms(lambda: model.predict(prepared[:1], verbose=0), max(20, args.repeats // 10))
    cases = [("Embedder.embed, one uint8 array", lambda: embedder.embed(batch[:1])),
             ("Embedder.embed, one PNG (decode included)", lambda: embedder.embed([png]))]
    if embedder.has_domain_model:  # what a query costs with the domain check a verdict needs
        cases.append(("Embedder.embed_checked, one PNG (+ domain check)",
                      lambda: embedder.embed_checked([png])))
    for name, fn in cases:
        ms = _median_ms(fn, args.repeats)
        rows.append([name, "median ms / image", ms, f"{predict_one / ms:.1f}x"])
    rows.append(["baseline: model.predict, one image", "median ms / image", predict_one, "1x"])

    predict_loop = _rate(lambda: [model.predict(prepared[i:i + 1], verbose=0) for i in range(64)], 64, 1)
    predict_batch = _rate(lambda: model.predict(prepared, batch_size=256, verbose=0), 1024)
    embed_batch = _rate(lambda: embedder.embed(batch), 1024)
    rows += [["Embedder.embed, batch of 1,024", "images / s", embed_batch, f"{embed_batch / predict_loop:.0f}x"],
             ["model.predict, batch of 1,024", "images / s", predict_batch, f"{predict_batch / predict_loop:.0f}x"],
             ["baseline: model.predict per image", "images / s", predict_loop, "1x"]]
    if args.json:
        print(json.dumps([dict(zip(["what", "unit", "value", "speed-up vs baseline"], r)) for r in rows],
                         indent=2))
    else:
        print(f"model {embedder.model_id} ({embedder.card.architecture}, "
              f"{model.count_params():,} parameters), input {embedder.card.preprocessing.shape}")
        print(format_table(["what", "unit", "value", "speed-up vs baseline"], rows))
    return 0

