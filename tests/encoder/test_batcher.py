"""`encoder.batcher.Batcher`, with the real model: concurrent callers' images in one call, each
answered with its own rows, as one at a time would answer them."""
from __future__ import annotations

import logging
import threading

import numpy as np
import pytest

from encoder.batcher import Batcher


def test_concurrent_images_are_embedded_together_and_answered_as_alone(model_embedder,
                                                                      fashion_test):
    e = model_embedder
    x = e.prepare(fashion_test.images[:240])
    alone_v = np.stack([e.embed_prepared(x[i:i + 1])[0] for i in range(len(x))])
    alone_s = np.concatenate([e.domain.score(x[i:i + 1]) for i in range(len(x))])
    calls, rows = e.batcher.calls, e.batcher.rows
    got: list = [None] * len(x)
    start = threading.Barrier(8)

    def caller(k: int) -> None:
        start.wait()
        for i in range(k, len(x), 8):
            got[i] = e.batcher(x[i:i + 1])

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    vectors = np.stack([g[0][0] for g in got])
    scores = np.array([g[1][0] for g in got])
    # Float rounding only (a batch's matrix products are summed in another order).
    assert np.abs(vectors - alone_v).max() < 1e-5 and np.abs(scores - alone_s).max() < 1e-3
    assert e.batcher.rows - rows == len(x)
    assert e.batcher.calls - calls < len(x)  # some calls took several callers' images
    # Alone, a caller leads its own call at once: one call, one image.
    calls = e.batcher.calls
    e.batcher(x[:1])
    assert e.batcher.calls == calls + 1


def test_a_failed_call_fails_its_callers_and_the_next_call_works():
    fail = threading.Event()

    def call(rows):
        if fail.is_set():
            raise RuntimeError("the model call failed")
        return rows * 2, rows.sum(axis=1)

    batcher = Batcher(call, max_rows=4)
    fail.set()
    with pytest.raises(RuntimeError, match="the model call failed"):
        batcher(np.ones((1, 3)))
    fail.clear()
    doubled, sums = batcher(np.arange(6.0).reshape(2, 3))
    assert doubled.tolist() == [[0, 2, 4], [6, 8, 10]] and sums.tolist() == [3, 12]
    big, _ = batcher(np.ones((5, 3)))  # more than max_rows: a call of its own
    assert big.shape == (5, 3)


@pytest.mark.parametrize("model", ["fashion-mnist", "omniglot"])
def test_the_services_litert_call_answers_as_tensorflow_does(model, caplog):
    """A service's embedder (`lite=True`) runs batches of up to LITE_ROWS images in LiteRT: the
    same embeddings and domain logits as TensorFlow's compiled call, within float rounding, at
    every batch size it sees (the interpreter is resized from one call to the next)."""
    from encoder import Embedder
    from encoder.embedder import LITE_ROWS
    from tests.conftest import ROOT

    loggers = [logging.getLogger(name) for name in ("absl", "tensorflow")]
    levels = [logger.level for logger in loggers]
    with caplog.at_level("INFO"):  # as a server's logging shows it (gunicorn's)
        lite = Embedder.load(ROOT / "models" / model, lite=True)
    assert lite.lite is not None
    # Converting logs nothing a server's log would show (TensorFlow's renamed inputs, its
    # temporary assets folder), and leaves those loggers as they were.
    assert not [r for r in caplog.records if r.name in ("absl", "tensorflow")], caplog.text
    assert [logger.level for logger in loggers] == levels
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (LITE_ROWS + 6, *lite.card.preprocessing.shape), dtype=np.uint8)
    for rows in (1, 5, 1, LITE_ROWS, 3):
        want_v, want_s = (t.numpy() for t in lite._both(x[:rows]))
        got_v, got_s = lite.embed_and_score_prepared(x[:rows])
        assert got_v.shape == want_v.shape and got_s.shape == want_s.shape
        assert np.abs(got_v - want_v).max() < 1e-6 and np.abs(got_s - want_s).max() < 1e-4
    calls = lite.batcher.calls
    lite.embed_and_score_prepared(x)  # more than LITE_ROWS: TensorFlow, all cores, one call
    assert lite.batcher.calls == calls


def test_without_litert_a_services_model_runs_in_tensorflow(monkeypatch, caplog):
    """Where ai-edge-litert has no wheel (Windows), a service's embedder says so once and runs
    its small batches in TensorFlow, with the same answers."""
    import sys

    from encoder import Embedder
    from tests.conftest import ROOT

    for name in ("ai_edge_litert", "ai_edge_litert.interpreter"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: import fails
    with caplog.at_level("WARNING", logger="encoder.embedder"):
        embedder = Embedder.load(ROOT / "models" / "fashion-mnist", lite=True)
    assert embedder.lite is None
    assert "ai-edge-litert is not installed" in caplog.text
    x = np.random.default_rng(1).integers(0, 256, (3, *embedder.card.preprocessing.shape),
                                          dtype=np.uint8)
    vectors, scores = embedder.embed_and_score_prepared(x)
    want_v, want_s = (t.numpy() for t in embedder._both(x))
    assert np.array_equal(vectors, want_v) and np.array_equal(scores, want_s)
