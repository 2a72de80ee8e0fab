"""Limits on what a request may send, through a real gunicorn (chunked bodies need one)."""
from __future__ import annotations

import http.client
import select
import shutil
import socket
import time

import pytest

from tests.support import multipart, start_serve

pytestmark = pytest.mark.slow  # a real gunicorn (chunked bodies need one)


@pytest.fixture(scope="module")
def small_limit_server(tmp_path_factory, template_gallery, model_dir):
    """siamese-serve taking images up to 0.05 MB (requests up to about 1.18 MB), received within
    2 s."""
    folder = tmp_path_factory.mktemp("limits")
    shutil.copytree(template_gallery, folder / "gallery")
    live = start_serve(folder / "gallery", model_dir, folder / "serve.log", "--max-image-mb", "0.05",
                       workers=1, env={"SIAMESE_BODY_TIMEOUT": "2"})
    yield live
    live.stop()


def send_chunked(port: int, body: bytes, content_type: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.putrequest("POST", "/api/search")
    connection.putheader("Content-Type", content_type)
    connection.putheader("Transfer-Encoding", "chunked")
    connection.endheaders()
    for i in range(0, len(body), 8192):
        part = body[i:i + 8192]
        connection.send(b"%x\r\n" % len(part) + part + b"\r\n")
    connection.send(b"0\r\n\r\n")
    response = connection.getresponse()
    return response.status, response.read()


def test_a_chunked_body_over_the_limit_is_413(small_limit_server, sample_pngs):
    png = sample_pngs["Bag"][0].read_bytes()
    status, body = send_chunked(small_limit_server.port, *multipart({"image": ("a.png", png)}))
    assert status == 200, body[:300]
    status, body = send_chunked(small_limit_server.port,
                                *multipart({"image": ("a.png", png + b"\0" * 3_000_000)}))
    assert status == 413 and b'"too_large"' in body, body[:300]
    assert b"the request is over the 1.18 MB limit" in body


def test_a_client_that_sends_its_whole_body_before_reading_gets_its_413(small_limit_server):
    """The declared length is over the limit, so the server answers without reading the body;
    the client sends all 8 MB anyway, then reads. Its answer is the 413, not a reset (the server
    drains what comes after its answer, then closes)."""
    for _ in range(3):
        client = socket.create_connection(("127.0.0.1", small_limit_server.port), timeout=30)
        body = b"\0" * 8_000_000
        client.sendall(b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                       b"multipart/form-data; boundary=x\r\nContent-Length: %d\r\n\r\n" % len(body))
        client.sendall(body)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
        client.close()
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b'"too_large"' in answer and b"connection: close" in answer.lower()


def test_requests_sent_after_a_refused_body_are_not_run(small_limit_server):
    """A chunked body over the limit, then a GET and the start of another POST in the same
    stream: the 413 is the one answer, and the server runs nothing after it (the GET used to run
    and then fail to write on a connection already half closed)."""
    before = small_limit_server.log.read_text()
    body = b"\0" * 1_500_000
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    client = socket.create_connection(("127.0.0.1", small_limit_server.port), timeout=30)
    client.sendall(b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                   b"multipart/form-data; boundary=x\r\nTransfer-Encoding: chunked\r\n\r\n"
                   + chunked + b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                   b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n"
                   b"Content-Type: multipart/form-data; boundary=x\r\n\r\nabc")
    answer = b""
    while chunk := client.recv(65536):
        answer += chunk
    client.close()
    assert answer.startswith(b"HTTP/1.1 413") and answer.count(b"HTTP/1.1 ") == 1, answer[:300]
    time.sleep(0.5)  # anything run after it would have logged by now
    log = small_limit_server.log.read_text()[len(before):]
    assert "Exception in ASGI application" not in log and "Traceback" not in log, log[-2000:]


def trickle(port: int, body: bytes, content_type: str) -> bytes:
    """Send a POST whose body comes a byte every 0.2 s; the server's answer."""
    slow = socket.create_connection(("127.0.0.1", port), timeout=60)
    slow.sendall(f"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}"
                 f"\r\nContent-Length: {len(body)}\r\n\r\n".encode())
    answer = b""
    for byte in body:  # the body would take minutes
        readable, _, _ = select.select([slow], [], [], 0.2)
        if readable:
            answer = slow.recv(65536)
            break
        try:
            slow.send(bytes([byte]))
        except OSError:  # the server has stopped reading
            answer = slow.recv(65536)
            break
    slow.settimeout(5)
    try:
        while b"\r\n\r\n" in answer and len(answer.split(b"\r\n\r\n", 1)[1]) < int(
                answer.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0]):
            more = slow.recv(65536)  # the rest of the answer
            if not more:
                break
            answer += more
    except (OSError, IndexError, ValueError):
        pass
    slow.close()
    return answer


def test_a_client_trickling_its_upload_gets_408_and_others_are_served(small_limit_server,
                                                                      sample_pngs):
    """Past SIAMESE_BODY_TIMEOUT (2 s here) the upload is cut off."""
    body, content_type = multipart({"image": ("a.png", sample_pngs["Bag"][0].read_bytes())})
    answer = trickle(small_limit_server.port, body, content_type)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"request_timeout"' in answer and b"it took over 2 s" in answer
    status, _, _ = small_limit_server.request("GET", "/healthz")
    assert status == 200


def test_an_upload_slower_than_the_minimum_rate_is_cut_off_before_the_timeout(server,
                                                                             sample_pngs):
    """With the default 30 s timeout, a body averaging under 4 KB/s after its first 5 s is cut
    off then: a slow client frees its thread long before the timeout."""
    body, content_type = multipart({"image": ("a.png", sample_pngs["Bag"][0].read_bytes())})
    answer = trickle(server.port, body, content_type)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"it came at under 4 KB/s" in answer


def test_clients_sending_their_headers_slowly_hold_no_thread(small_limit_server):
    """16 connections each sending a header line every half second (the worker has 4 threads,
    which such clients once held, so that nothing else was answered): /healthz is answered
    meanwhile, and each slow request is answered once its headers end."""
    slow = []
    for n in range(16):
        s = socket.create_connection(("127.0.0.1", small_limit_server.port), timeout=60)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        slow.append(s)
    try:
        for line in range(3):
            for s in slow:
                s.sendall(f"X-Slow-{line}: {line}\r\n".encode())
            status, body = small_limit_server.json("GET", "/healthz")  # urllib: 30 s at most
            assert status == 200 and body["status"] == "ok"
        for s in slow:
            s.sendall(b"\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        for s in slow:
            s.close()


def test_large_uploads_are_received_a_few_at_a_time_and_searches_pass_them(small_limit_server,
                                                                          sample_pngs):
    """Bodies over 1 MB wait for one of the worker's few large slots (tests/webapp/test_front.py);
    small ones never wait: with 6 clients each sending a 1.1 MB body slowly, a search's small
    upload is answered meanwhile, and each slow one gets its 408."""
    large = []
    for n in range(6):
        s = socket.create_connection(("127.0.0.1", small_limit_server.port), timeout=60)
        s.sendall(b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                  b"application/json\r\nContent-Length: 1100000\r\n\r\n" + b" " * 50_000)
        large.append(s)
    try:
        png = sample_pngs["Bag"][0].read_bytes()
        status, body = small_limit_server.json("POST", "/api/search",
                                               fields={"image": ("bag.png", png)})
        assert status == 200 and body["matches"][0]["label"] == "Bag"
        answers = []
        for s in large:  # each is cut off in turn (2 s timeout here) with its own 408
            s.settimeout(30)
            answers.append(s.recv(65536))
        assert all(a.startswith(b"HTTP/1.1 408") for a in answers), [a[:60] for a in answers]
    finally:
        for s in large:
            s.close()
