"""PostgreSQL goes away under a live server and comes back: while it is away every request gets a
503 with a JSON error (no path, no traceback in the log), nothing half-written; once it is back
the service is whole again without a restart, and nothing committed is lost. A private PostgreSQL
cluster of its own (the session's is shared by other tests), a real gunicorn."""
from __future__ import annotations

import time

import pytest

from benchmarks.postgres import PrivateCluster
from indexer import Gallery
from tests.support import start_serve

pytestmark = pytest.mark.slow  # a server of its own, a database server stopped and started


@pytest.fixture
def outage(tmp_path, model_embedder, model_dir, sample_pngs):
    cluster = PrivateCluster()
    url = cluster.create_database("gallery")
    with Gallery.create(tmp_path / "gallery", model_embedder, url=url) as gallery:
        for label, paths in sample_pngs.items():
            gallery.add(paths[:2], labels=label)
    live = start_serve(tmp_path / "gallery", model_dir, tmp_path / "serve.log", "--db-url", url)
    yield cluster, live
    live.stop()
    cluster.remove()


def png(sample_pngs, label: str, i: int) -> tuple[str, bytes]:
    path = sample_pngs[label][i]
    return path.name, path.read_bytes()


def test_a_database_outage_is_503_then_the_service_resumes(outage, sample_pngs):
    cluster, live = outage
    status, body = live.json("POST", "/api/gallery", fields={
        "image": png(sample_pngs, "Bag", 3), "label": "before"})
    assert status == 201
    before_id = body["item"]["id"]
    assert live.json("GET", "/healthz")[1]["items"] == 21

    cluster.stop("fast")
    for method, path, fields in [
            ("GET", "/healthz", None), ("GET", "/api/gallery?limit=3", None),
            ("GET", f"/api/gallery/{before_id}", None),
            ("POST", "/api/search", {"image": png(sample_pngs, "Coat", 0)}),
            ("POST", "/api/gallery", {"image": png(sample_pngs, "Bag", 4), "label": "during"}),
            ("DELETE", f"/api/gallery/{before_id}", None)]:
        for _ in range(2):  # each of the two workers, as far as gunicorn spreads them
            status, headers, raw = live.request(method, path, fields=fields)
            assert status == 503, (method, path, status, raw[:300])
            assert headers["Content-Type"] == "application/json"
            assert b'"database_unavailable"' in raw and str(live.gallery).encode() not in raw

    cluster.start()
    deadline = time.monotonic() + 30
    while live.request("GET", "/healthz")[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    status, body = live.json("GET", "/api/gallery?limit=100")
    assert status == 200
    labels = [item["label"] for item in body["items"]]
    assert "before" in labels and "during" not in labels and len(labels) == 21
    status, body = live.json("POST", "/api/gallery", fields={
        "image": png(sample_pngs, "Bag", 4), "label": "after"})
    assert status == 201
    for _ in range(4):  # every worker is whole again
        assert live.json("GET", "/healthz")[1]["items"] == 22
    log = live.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
