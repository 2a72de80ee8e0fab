"""Limits on what a request may send, through a real gunicorn (chunked bodies need one)."""
from __future__ import annotations

import http.client
import shutil

import pytest

from tests.support import multipart, start_serve

pytestmark = pytest.mark.slow  # a real gunicorn (chunked bodies need one)


@pytest.fixture(scope="module")
def small_limit_server(tmp_path_factory, template_gallery, model_dir):
    """siamese-serve taking images up to 0.05 MB (requests up to about 1.15 MB)."""
    folder = tmp_path_factory.mktemp("limits")
    shutil.copytree(template_gallery, folder / "gallery")
    live = start_serve(folder / "gallery", model_dir, folder / "serve.log", "--max-image-mb", "0.05",
                       workers=1)
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
    assert b"the request is over the 1.15 MB limit" in body
