"""The API through a real gunicorn (`siamese-serve`, two workers) on 127.0.0.1, and the demo."""
from __future__ import annotations

import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support import REPO, SAMPLES, child_env, start_serve

pytestmark = pytest.mark.slow  # real gunicorn processes that load the model

KEY = {"X-API-Key": "s3cret"}
PNG_HEADER_ONLY = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


def png_of(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "PNG")
    return out.getvalue()


def test_search_verify_identify_stats(server, sample_pngs):
    coat = sample_pngs["Coat"][0].read_bytes()
    status, health = server.json("GET", "/healthz")
    assert status == 200 and health["status"] == "ok"
    status, body = server.json("POST", "/api/search", fields={"image": ("coat.png", coat), "k": "4"})
    assert status == 200 and len(body["matches"]) == 4
    assert body["matches"][0]["label"] == "Coat" and body["matches"][0]["verified"]
    image_status, headers, data = server.request("GET", body["matches"][0]["image_url"])
    assert image_status == 200 and data == coat and headers["Content-Type"] == "image/png"
    status, body = server.json("POST", "/api/verify", fields={"image_a": ("a.png", coat),
                                                              "image_b": ("b.png", coat)})
    assert status == 200 and body["verified"] is True
    status, body = server.json("POST", "/api/identify", fields={"image": ("a.png", coat)})
    assert status == 200 and body["match"]["label"] == "Coat"
    status, stats = server.json("GET", "/api/stats")
    assert status == 200 and stats["gallery"]["index"] == "flat"


def test_changes_reach_every_worker(server, fashion_test):
    """An item added through one worker is seen by both at once; so is its removal."""
    data = png_of(fashion_test.images[9500, :, :, 0])
    status, body = server.json("POST", "/api/gallery", fields={"image": ("new.png", data),
                                                               "label": "Live"})
    assert status == 401
    status, body = server.json("POST", "/api/gallery", headers={"X-API-Key": "wrong"},
                               fields={"image": ("new.png", data), "label": "Live"})
    assert status == 403
    status, body = server.json("POST", "/api/gallery", headers=KEY,
                               fields={"image": ("new.png", data), "label": "Live",
                                       "metadata": '{"note": "through gunicorn"}'})
    assert status == 201, body
    item = body["item"]
    # Connections are new each time, so the two workers share these requests between them.
    for _ in range(12):
        status, found = server.json("POST", "/api/search", fields={"image": ("q.png", data),
                                                                   "k": "1"})
        assert status == 200 and found["matches"][0]["id"] == item["id"]
        assert found["matches"][0]["metadata"] == {"note": "through gunicorn"}
    assert server.request("DELETE", f"/api/gallery/{item['id']}", headers=KEY)[0] == 204
    for _ in range(12):
        assert server.request("GET", f"/api/gallery/{item['id']}")[0] == 404
        status, found = server.json("POST", "/api/search", fields={"image": ("q.png", data),
                                                                   "k": "1"})
        assert found["matches"][0]["id"] != item["id"]


def test_workers_write_concurrently_through_the_gallery_lock(server, fashion_test):
    """Eight adds at once, spread over both workers: every one lands, none is lost."""
    from concurrent.futures import ThreadPoolExecutor

    before = server.json("GET", "/healthz")[1]["items"]
    images = [png_of(fashion_test.images[9600 + i, :, :, 0]) for i in range(8)]

    def add(data: bytes):
        return server.json("POST", "/api/gallery", headers=KEY,
                           fields={"image": ("x.png", data), "label": "Concurrent"})

    with ThreadPoolExecutor(8) as pool:
        added = list(pool.map(add, images))
    assert [status for status, _ in added] == [201] * 8, added
    ids = sorted(body["item"]["id"] for _, body in added)
    assert len(set(ids)) == 8
    for _ in range(4):
        status, listed = server.json("GET", "/api/gallery?label=Concurrent")
        assert sorted(i["id"] for i in listed["items"]) == ids
        assert server.json("GET", "/healthz")[1]["items"] == before + 8
    with ThreadPoolExecutor(8) as pool:
        removed = list(pool.map(lambda i: server.request("DELETE", f"/api/gallery/{i}",
                                                         headers=KEY)[0], ids))
    assert removed == [204] * 8
    assert server.json("GET", "/healthz")[1]["items"] == before


def test_bad_input_through_gunicorn(server):
    cases = [
        ({"image": ("x.txt", b"plain text")}, 415, "unsupported_media_type"),
        ({"image": ("x.png", b"")}, 400, "bad_image"),
        ({"image": ("x.png", PNG_HEADER_ONLY)}, 400, "bad_image"),
        ({"k": "5"}, 400, "missing_field"),
        ({"image": ("x.png", b"\x89PNG" + bytes(21_000_000))}, 413, "too_large"),
    ]
    for fields, status, code in cases:
        got, body = server.json("POST", "/api/search", fields=fields)
        assert (got, body["error"]["code"]) == (status, code), body
    got, _, body = server.request("POST", "/api/search", headers={"Content-Type": "application/json"})
    assert got == 400 and b"the body must be a JSON object" in body
    got, _, body = server.request("POST", "/api/search", headers={"Content-Type": "text/plain"})
    assert got == 415 and b'"unsupported_media_type"' in body
    assert server.json("GET", "/api/gallery/123456")[0] == 404


@pytest.fixture
def own_server(tmp_path, template_gallery, model_dir):
    """A `siamese-serve` (two workers) of the test's own, over its own copy of the test gallery."""
    gallery = tmp_path / "gallery"
    shutil.copytree(template_gallery, gallery)
    live = start_serve(gallery, model_dir, tmp_path / "serve.log",
                       env={"SIAMESE_API_KEY": "s3cret"})
    yield live
    live.stop()


def test_no_worker_logs_an_error_after_good_and_bad_requests(own_server, sample_pngs):
    """Every endpoint, asked well and badly on new connections (so both workers answer): the log,
    read after a graceful stop, has no traceback and no [ERROR] line."""
    coat, bag = (sample_pngs[label][0].read_bytes() for label in ("Coat", "Bag"))
    for _ in range(4):
        assert own_server.json("POST", "/api/search", fields={"image": ("c.png", coat)})[0] == 200
        assert own_server.json("POST", "/api/verify", fields={"image_a": ("a.png", coat),
                                                              "image_b": ("b.png", bag)})[0] == 200
        assert own_server.json("POST", "/api/identify", fields={"image": ("c.png", bag)})[0] == 200
        assert own_server.json("GET", "/api/stats")[0] == 200
        assert own_server.json("GET", "/api/gallery?label=Coat")[0] == 200
    eye = png_of(np.eye(28, dtype=np.uint8) * 255)
    status, body = own_server.json("POST", "/api/gallery", headers=KEY,
                                   fields={"image": ("eye.png", eye), "label": "Eye"})
    assert status == 201, body
    item = body["item"]["id"]
    assert own_server.request("GET", f"/api/gallery/{item}/image")[0] == 200
    assert own_server.request("DELETE", f"/api/gallery/{item}", headers=KEY)[0] == 204
    bad = [("POST", "/api/search", {"image": ("x.txt", b"plain text")}, 415),
           ("POST", "/api/search", {"image": ("x.png", PNG_HEADER_ONLY)}, 400),
           ("POST", "/api/verify", {"image_a": ("a.png", coat)}, 400),
           ("POST", "/api/gallery", {"image": ("x.png", coat)}, 401),
           ("GET", "/api/gallery/123456", None, 404),
           ("DELETE", "/api/gallery/123456", None, 401)]
    for method, path, fields, expected in bad:
        assert own_server.request(method, path, fields=fields)[0] == expected, (method, path)
    own_server.stop()
    log = own_server.log.read_text()
    assert log.count("ready: gallery of") == 2  # the log is the two workers'
    assert "Traceback" not in log and "[ERROR]" not in log, log[-3000:]


def test_serve_refuses_a_missing_gallery_in_one_line(tmp_path, model_dir):
    done = subprocess.run([sys.executable, "-m", "scripts.serve", "--gallery", str(tmp_path / "nope"),
                           "--model", str(model_dir)], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'nope'}: no such gallery; make one with siamese-index FOLDER "
        f"--gallery {tmp_path / 'nope'}")
    (tmp_path / "folder").mkdir()
    done = subprocess.run([sys.executable, "-m", "scripts.serve", "--gallery",
                           str(tmp_path / "folder"),
                           "--model", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "no card.json" in done.stderr


def test_serve_stops_in_one_line_when_the_model_does_not_match(template_gallery, other_model_dir,
                                                                tmp_path):
    """Found before the workers start (from the card and the database, without TensorFlow):
    one error line, not one per worker, and exit status 2."""
    gallery = tmp_path / "gallery"
    shutil.copytree(template_gallery, gallery)
    done = subprocess.run([sys.executable, "-m", "scripts.serve", "--gallery", str(gallery),
                           "--model", str(other_model_dir), "--port", "0", "--workers", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr
    assert errors[0].startswith(f"error: {gallery}: this gallery was built with model ")
    assert errors[0].endswith(f"siamese-index --gallery {gallery} --model NEW_MODEL --reembed")
    assert "Traceback" not in done.stderr


def test_serve_says_in_one_line_that_the_port_is_taken(template_gallery, model_dir, tmp_path):
    gallery = tmp_path / "gallery"
    shutil.copytree(template_gallery, gallery)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "scripts.serve", "--gallery", str(gallery),
                               "--model", str(model_dir), "--port", str(port)],
                              cwd=REPO, capture_output=True, text=True, timeout=120,
                              env=child_env())
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: address already in use (another server? "
        "choose another --port)"]


def test_master_process_never_loads_tensorflow(server):
    maps = open(f"/proc/{server.process.pid}/maps").read()
    assert "tensorflow" not in maps.lower() and "_pywrap_tensorflow" not in maps


def test_demo_builds_once_then_starts_at_once(tmp_path, model_dir):
    samples = tmp_path / "samples"
    for label in ("Bag", "Trouser"):
        (samples / label).mkdir(parents=True)
        for path in sorted((SAMPLES / label).glob("*.png"))[:10]:
            shutil.copy(path, samples / label / path.name)
    gallery = tmp_path / "galleries" / "demo"
    command = [sys.executable, "-m", "scripts.demo", "--gallery", str(gallery), "--model",
               str(model_dir), "--samples", str(samples), "--build-only"]
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "building the gallery" in first.stderr
    # The summary names the gallery, not the folder it was built in.
    assert f"siamese-demo: built {gallery}: 20 items, 2 labels, in " in first.stderr
    assert "demo.building" not in first.stdout + first.stderr
    assert (gallery / "gallery.json").is_file()
    assert not (tmp_path / "galleries" / "demo.building").exists()
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "building" not in again.stderr


def test_demo_reembeds_a_gallery_built_with_an_earlier_model(tmp_path, model_dir, other_model_dir):
    """After an update brings a new bundled model, the demo re-embeds its gallery (items kept)."""
    from indexer.folder import gallery_model_id

    samples = tmp_path / "samples" / "Bag"
    samples.mkdir(parents=True)
    for path in sorted((SAMPLES / "Bag").glob("*.png"))[:5]:
        shutil.copy(path, samples / path.name)
    gallery = tmp_path / "demo"
    command = [sys.executable, "-m", "scripts.demo", "--gallery", str(gallery), "--samples",
               str(samples.parent), "--build-only", "--model"]
    built = subprocess.run(command + [str(model_dir)], cwd=REPO, capture_output=True, text=True,
                           timeout=120)
    assert built.returncode == 0, built.stderr
    updated = subprocess.run(command + [str(other_model_dir)], cwd=REPO, capture_output=True,
                             text=True, timeout=120)
    assert updated.returncode == 0, updated.stderr
    assert "re-embedding it with" in updated.stderr
    from encoder import load_card

    assert gallery_model_id(gallery) == load_card(other_model_dir).model_id
    from encoder import Embedder
    from indexer import Gallery

    reopened = Gallery.open(gallery, Embedder.load(other_model_dir))
    assert len(reopened) == 5
    reopened.close()


def _ready_workers(log: Path) -> list[int]:
    return [int(pid) for pid in re.findall(r"worker (\d+) ready", log.read_text())]


def _server_ends(port: int, client_ports: set[int], states: tuple[str, ...]) -> set[str]:
    """The server's ends of the connections from `client_ports` in those TCP states, as a
    worker's open files name them (Linux's /proc/net/tcp: 01 established, 08 closed by the
    client only)."""
    ends = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
        if (state in states and int(local.split(":")[1], 16) == port
                and int(remote.split(":")[1], 16) in client_ports):
            ends.add(f"socket:[{inode}]")
    return ends


def _held_by_each(workers: list[int], port: int, client_ports: set[int]) -> list[int]:
    """How many of the connections from `client_ports` each worker holds."""
    ends = _server_ends(port, client_ports, ("01",))
    held = []
    for pid in workers:
        n = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                n += os.readlink(f"/proc/{pid}/fd/{fd}") in ends
            except OSError:  # closed meanwhile
                pass
        held.append(n)
    return held


def _connect_together(server, workers: list[int], n: int = 16) -> list[int]:
    """Open `n` connections at once; how many each worker took (sorted). They are closed."""
    clients = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(n)]
    ports = {c.getsockname()[1] for c in clients}
    deadline = time.monotonic() + 10
    while sum(held := _held_by_each(workers, server.port, ports)) < n:
        assert time.monotonic() < deadline, held
        time.sleep(0.05)
    for c in clients:
        c.close()
    # A worker counts a close before it closes its end: once no end is open, all are counted.
    while _server_ends(server.port, ports, ("01", "08")):
        assert time.monotonic() < deadline + 10
        time.sleep(0.02)
    return sorted(held)


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc")
def test_connections_that_arrive_together_are_shared_by_the_workers(own_server):
    """16 clients connecting at once, ten times: each worker takes 6 or more every time (without
    the shared counts one worker took all 16 in most rounds). A worker killed leaves the count
    with it: its replacement and the other share the next connections alike."""
    workers = _ready_workers(own_server.log)
    assert len(workers) == 2
    rounds = [_connect_together(own_server, workers) for _ in range(10)]
    assert all(fewer >= 6 for fewer, _ in rounds), rounds
    os.kill(workers[0], signal.SIGKILL)
    deadline = time.monotonic() + 120
    while len(_ready_workers(own_server.log)) < 3:
        assert time.monotonic() < deadline, own_server.log.read_text()[-2000:]
        time.sleep(0.2)
    workers = _ready_workers(own_server.log)[1:]
    rounds = [_connect_together(own_server, workers) for _ in range(5)]
    assert all(fewer >= 6 for fewer, _ in rounds), rounds


def test_a_websocket_upgrade_is_a_plain_400(server):
    """The app serves no WebSockets: the upgrade is answered as a request (an upgraded connection
    used to leave the worker's count of connections one too high for good), and the log gets no
    advice to install a WebSocket library."""
    before = len(server.log.read_text())
    client = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    client.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n"
                   b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   b"Sec-WebSocket-Version: 13\r\n\r\n")
    answer = b""
    while b'"bad_request"' not in answer and (chunk := client.recv(65536)):  # the body may
        answer += chunk  # come after the headers
    client.close()
    assert answer.startswith(b"HTTP/1.1 400") and b'"bad_request"' in answer, answer[:300]
    time.sleep(0.3)
    assert "WebSocket" not in server.log.read_text()[before:]
