"""Several siamese-serve processes over one PostgreSQL gallery, each with its own folder (its own
FAISS index and lock), sharing nothing but the database, as separate hosts behind a load balancer
would: a change made through any of them shows in all, without a restart."""
from __future__ import annotations

import shutil
import time

import pytest

from tests.support import SAMPLES, start_serve

pytestmark = pytest.mark.slow  # three servers


@pytest.fixture
def three_servers(tmp_path, postgres, postgres_template, model_dir):
    template, database = postgres_template
    url = postgres.create_database("shared", template=database)
    shutil.copytree(template, tmp_path / "host-1" / "gallery")
    servers = []
    try:
        for host in ("host-1", "host-2", "host-3"):  # hosts 2 and 3 start with no folder at all
            servers.append(start_serve(tmp_path / host / "gallery", model_dir,
                                       tmp_path / f"{host}.log", "--db-url", url, workers=1))
        yield servers
    finally:
        for server in servers:
            server.stop()


def wait_for(condition, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_change_through_any_server_shows_in_all(three_servers):
    one, two, three = three_servers
    new_image = sorted((SAMPLES / "Bag").glob("*.png"))[-1].read_bytes()  # not in the gallery
    assert (two.gallery / "gallery.json").is_file()  # made for it, from the database
    status, body = two.json("POST", "/api/gallery", fields={
        "image": ("x.png", new_image), "label": "via two"})
    assert status == 201
    new_id = body["item"]["id"]
    for server in three_servers:
        assert wait_for(lambda: server.json("GET", f"/api/gallery/{new_id}")[0] == 200), server.url
        status, found = server.json("POST", "/api/search", fields={
            "image": ("q.png", new_image), "k": "1"})
        assert found["matches"][0]["id"] == new_id
    assert three.request("DELETE", f"/api/gallery/{new_id}")[0] == 204
    for server in three_servers:
        assert wait_for(lambda: server.json("GET", f"/api/gallery/{new_id}")[0] == 404), server.url
    counts = {server.json("GET", "/healthz")[1]["items"] for server in three_servers}
    assert counts == {50}
    for server in three_servers:
        log = server.log.read_text(errors="replace")
        assert "Traceback" not in log and "comparing ids" not in log, log[-2000:]
