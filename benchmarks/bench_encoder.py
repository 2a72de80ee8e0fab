"""Embedding speed: `Embedder.embed` against Keras' `model.predict`, in the same run; and the
ways to make one model call (encoder and domain check together, as a service makes it) against
TensorFlow's compiled function: wall time and CPU per image, and the largest difference in the
outputs."""
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
    p.add_argument("--skip-calls", action="store_true",
                   help="skip the table of model-call alternatives (TensorFlow, XLA, LiteRT)")


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
    calls = [] if args.skip_calls else model_calls(embedder, prepared)
    if args.json:
        print(json.dumps({"embedding": [dict(zip(["what", "unit", "value", "speed-up vs baseline"],
                                                 r)) for r in rows], "calls": calls}, indent=2))
    else:
        print(f"model {embedder.model_id} ({embedder.card.architecture}, "
              f"{model.count_params():,} parameters), input {embedder.card.preprocessing.shape}")
        print(format_table(["what", "unit", "value", "speed-up vs baseline"], rows))
        if calls:
            print("\none model call, encoder and domain check (baseline: TensorFlow's compiled "
                  "function; CPU is the process's, all threads):")
            print(format_table(["call", "images", "wall ms / image", "CPU ms / image",
                                "CPU vs baseline", "largest difference"],
                               [[c["call"], c["images"], c["wall_ms"], c["cpu_ms"],
                                 f"{c['cpu_ratio']:.2f}x", f"{c['difference']:.1e}"]
                                for c in calls]))
    return 0


def model_calls(embedder, prepared: np.ndarray, sizes=(1, 8, 64), seconds: float = 1.0
                ) -> list[dict]:
    """Each way to run the service's model call on batches of `sizes` images: TensorFlow's
    compiled function (the baseline), the same with XLA, and LiteRT on one thread (what
    `Embedder(lite=True)` uses) and on two."""
    import tensorflow as tf

    from encoder.embedder import _Lite

    if embedder._both is None:
        return []
    models = [embedder.model, embedder.domain.model]
    xla = tf.function(lambda x: (embedder.model(x, training=False),
                                 embedder.domain.model(x, training=False)[:, 0]), jit_compile=True)
    one, two = _Lite(embedder._both, models), _Lite(embedder._both, models, threads=2)
    ways = [("TensorFlow, compiled function", lambda x: embedder._both(x)),
            ("TensorFlow, compiled with XLA", lambda x: xla(tf.constant(x))),
            ("LiteRT, 1 thread (the service's)", one),
            ("LiteRT, 2 threads", two)]
    out = []
    for n in sizes:
        x = prepared[:n]
        want = [np.asarray(o) for o in embedder._both(x)]
        base = None
        for name, call in ways:
            got = [np.asarray(o) for o in call(x)]
            difference = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
            wall, cpu = _per_image(call, x, seconds)
            base = cpu if base is None else base
            out.append({"call": name, "images": n, "wall_ms": round(wall, 3), "cpu_ms": round(cpu, 3),
                        "cpu_ratio": round(cpu / base, 2), "difference": difference})
    return out


def _per_image(call, x: np.ndarray, seconds: float) -> tuple[float, float]:
    """Wall and CPU milliseconds per image of calling `call(x)` for about `seconds`."""
    for _ in range(3):
        call(x)
    calls, wall, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - wall < seconds:
        call(x)
        calls += 1
    return (1e3 * (time.perf_counter() - wall) / calls / len(x),
            1e3 * (time.process_time() - cpu) / calls / len(x))

