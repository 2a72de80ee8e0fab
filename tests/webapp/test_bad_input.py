"""Bad input gets a JSON error with the right 4xx status, never a 500 or a traceback.

`corpus()` makes the bad (and odd but valid) files: empty, text, noise, other formats, truncated
PNG and JPEG, decompression bombs declared in PNG, GIF, BMP, TIFF and JPEG headers, bad CRCs,
odd colour modes, and seeded random bit flips of real PNGs and JPEGs. Each goes to every endpoint
that takes an image.
"""
from __future__ import annotations

import base64
import io
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.support import BACKENDS, copy_gallery, page_form, start_serve

IMAGE_ENDPOINTS = [("/api/search", "image"), ("/api/identify", "image"), ("/api/verify", "image_a"),
                   ("/api/verify", "image_b"), ("/api/gallery", "image"), ("/", "image"),
                   ("/verify", "image_a")]
FINE = {200, 201}


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A small, well-formed PNG whose header claims `width` x `height` pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def jpeg_declaring(width: int, height: int, real: bytes) -> bytes:
    """A real JPEG with its frame header (SOF0) rewritten to claim `width` x `height`."""
    at = real.index(b"\xff\xc0")
    return real[:at + 5] + struct.pack(">HH", height, width) + real[at + 9:]


def gif_declaring(width: int, height: int, real: bytes) -> bytes:
    """A real GIF whose screen and first frame claim `width` x `height`."""
    at = real.index(b"\x2c")  # the image descriptor: left, top, width, height
    size = struct.pack("<HH", width, height)
    return real[:6] + size + real[10:at + 5] + size + real[at + 9:]


def corpus(real_png: bytes) -> list[tuple[str, bytes, set[int]]]:
    """(name, bytes, acceptable statuses)."""
    rng = np.random.default_rng(7)
    photo = Image.fromarray(rng.integers(0, 255, (40, 60, 3), np.uint8), "RGB")
    real_jpeg = encoded(photo, "JPEG", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotated
    exif_jpeg = encoded(photo, "JPEG", exif=exif.tobytes())
    bad_crc = bytearray(real_png)
    bad_crc[29] ^= 0xFF  # the IHDR checksum
    files = [
        ("empty.png", b"", {400}),
        ("text.png", b"hello, I am not an image\n" * 10, {415}),
        ("noise.bin", rng.integers(0, 256, 4096, np.uint8).tobytes(), {415}),
        ("drawing.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
         {415}),
        ("doc.pdf", b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", {415}),
        ("archive.zip", b"PK\x03\x04" + bytes(100), {415}),
        ("signature-only.png", real_png[:8], {400, 415}),
        ("truncated.png", real_png[:len(real_png) // 2], {400}),
        ("truncated.jpg", real_jpeg[:len(real_jpeg) // 2], {400}),
        ("bad-crc.png", bytes(bad_crc), {400, 415}),  # Pillow: "cannot identify"
        ("bomb.png", png_declaring(100_000, 100_000), {400}),
        ("bomb-wide.png", png_declaring(2**31 - 1, 1), {400}),
        ("zero.png", png_declaring(0, 0), {400, 415}),
        ("bomb.jpg", jpeg_declaring(65_000, 65_000, real_jpeg), {400}),
        ("bomb.gif", gif_declaring(65_535, 65_535, encoded(Image.new("L", (8, 8)), "GIF")), {400}),
        ("bomb.bmp", b"BM" + struct.pack("<IHHI", 1000, 0, 0, 54)
         + struct.pack("<IiiHHIIiiII", 40, 100_000, 100_000, 1, 24, 0, 0, 0, 0, 0, 0), {400}),
        ("bomb.tiff", _tiff_declaring(100_000, 100_000), {400}),
        # formats Pillow reads but the service does not: an icon may hide a PNG of any size
        ("icon.ico", encoded(photo, "ICO"), {415}),
        ("picture.tga", encoded(photo, "TGA"), {415}),
        # odd but valid: accepted
        ("photo.jpg", real_jpeg, FINE),
        ("rotated.jpg", exif_jpeg, FINE),
        ("sixteen-bit.png", encoded(Image.fromarray(
            rng.integers(0, 65_535, (28, 28), np.uint16)), "PNG"), FINE),
        ("cmyk.jpg", encoded(photo.convert("CMYK"), "JPEG"), FINE),
        ("alpha.png", encoded(photo.convert("RGBA"), "PNG"), FINE),
        ("palette.gif", encoded(photo.convert("P"), "GIF"), FINE),
        ("one-bit.bmp", encoded(photo.convert("1"), "BMP"), FINE),
        ("float.tiff", encoded(Image.fromarray(rng.random((28, 28), np.float32)), "TIFF"), FINE),
        ("tiny.png", encoded(Image.new("L", (1, 1), 128), "PNG"), FINE),
        ("animated.gif", encoded(photo.convert("P"), "GIF", save_all=True,
                                 append_images=[photo.rotate(90).convert("P")]), FINE),
        ("webp.webp", encoded(photo, "WEBP"), FINE),
    ]
    for name, source in (("png", real_png), ("jpg", real_jpeg), ("exif.jpg", exif_jpeg)):
        for n in range(12):
            flipped = bytearray(source)
            for at in rng.integers(0, len(flipped), int(rng.integers(1, 8))):
                flipped[at] ^= 1 << int(rng.integers(0, 8))
            files.append((f"flipped-{n}.{name}", bytes(flipped), FINE | {400, 415}))
        files.append((f"cut-{name}", source[:int(rng.integers(20, len(source) - 1))],
                      FINE | {400, 415}))
    return files


def _tiff_declaring(width: int, height: int) -> bytes:
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1),
               (262, 3, 1, 1), (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, height),
               (279, 4, 1, 16)]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", tag, kind, count, value) for tag, kind, count, value in entries)
    return b"II*\x00" + struct.pack("<I", 24) + bytes(16) + ifd + b"\x00\x00\x00\x00"


@pytest.fixture(scope="module")
def files(sample_pngs):
    return corpus(sample_pngs["Bag"][0].read_bytes())


def assert_error(response, status: int | set[int], code: str | None = None) -> dict:
    allowed = {status} if isinstance(status, int) else status
    assert response.status_code in allowed, (response.status_code, response.data[:300])
    assert response.status_code < 500
    body = response.data.decode(errors="replace")
    assert "Traceback" not in body and 'File "' not in body
    if response.status_code < 400:
        return {}
    if response.mimetype == "text/html":  # the form again with the message at its field, or
        assert 'class="field-error"' in body or f'data-status="{response.status_code}"' in body
        return {}
    error = response.get_json()["error"]
    assert set(error) == {"code", "message"} and error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def post_image(client, endpoint: str, field: str, data: bytes, name: str, good: bytes):
    fields = {field: (io.BytesIO(data), name)}
    if endpoint.endswith("verify"):
        other = "image_b" if field == "image_a" else "image_a"
        fields[other] = (io.BytesIO(good), "good.png")
    if endpoint == "/api/gallery":
        fields["label"] = "fuzz"
    return client.post(endpoint, data=fields if endpoint.startswith("/api") else page_form(client, fields))


def test_fuzz_corpus_never_breaks_an_endpoint(client, files, sample_pngs):
    good = sample_pngs["Coat"][0].read_bytes()
    seen = set()
    for name, data, statuses in files:
        for endpoint, field in IMAGE_ENDPOINTS:
            expected = statuses | ({200} if endpoint == "/api/gallery" and 201 in statuses else set())
            response = post_image(client, endpoint, field, data, name, good)
            assert_error(response, expected)
            seen.add(response.status_code)
            if response.mimetype == "application/json" and response.status_code >= 400:
                assert name in response.get_json()["error"]["message"]  # names the upload
    assert {200, 400, 415} <= seen


@pytest.mark.parametrize("name, status, code", [
    ("empty.png", 400, "bad_image"), ("text.png", 415, "unsupported_media_type"),
    ("truncated.png", 400, "bad_image"), ("truncated.jpg", 400, "bad_image"),
    ("bomb.png", 400, "bad_image"), ("bomb.gif", 400, "bad_image"), ("bomb.jpg", 400, "bad_image"),
])
def test_bad_files_have_precise_errors(client, files, name, status, code):
    data = next(d for n, d, _ in files if n == name)
    error = assert_error(client.post("/api/search", data={"image": (io.BytesIO(data), name)}),
                         status, code)
    assert error["message"].startswith(f"image ({name}): ")


def test_over_size_uploads_are_413(make_app, sample_pngs):
    client = make_app(max_image_bytes=50_000).test_client()
    big = encoded(Image.fromarray(np.random.default_rng(1).integers(0, 255, (200, 200, 3), np.uint8)),
                  "PNG")
    assert len(big) > 50_000
    error = assert_error(client.post("/api/search", data={"image": (io.BytesIO(big), "big.png")}),
                         413, "too_large")
    assert error["message"] == "image: the image is over the 0.05 MB limit"
    whole = client.post("/api/search", data={"image": (io.BytesIO(big * 3), "huge.png")})
    assert_error(whole, 413, "too_large")  # the whole request is over the limit: refused unread
    small = sample_pngs["Coat"][0].read_bytes()
    assert client.post("/api/search", data={"image": (io.BytesIO(small), "a.png")}).status_code == 200


@pytest.mark.parametrize("method, path, form, status, code", [
    ("POST", "/api/search", {}, 400, "missing_field"),
    ("POST", "/api/search", {"picture": "x.png"}, 400, "missing_field"),
    ("POST", "/api/search", {"image": "just text"}, 400, "bad_parameter"),
    ("POST", "/api/search", {"image": "FILE", "k": "0"}, 400, "bad_parameter"),
    ("POST", "/api/search", {"image": "FILE", "k": "101"}, 400, "bad_parameter"),
    ("POST", "/api/search", {"image": "FILE", "k": "ten"}, 400, "bad_parameter"),
    ("POST", "/api/search", {"image": "FILE", "k": "2.5"}, 400, "bad_parameter"),
    ("POST", "/api/search", {"image": "FILE", "threshold": "-1"}, 400, "bad_parameter"),
    ("POST", "/api/search", {"image": "FILE", "threshold": "nan"}, 400, "bad_parameter"),
    ("POST", "/api/search", {"image": "FILE", "threshold": "inf"}, 400, "bad_parameter"),
    ("POST", "/api/search", {"image": "FILE", "threshold": "close"}, 400, "bad_parameter"),
    ("POST", "/api/identify", {"image": "FILE", "threshold": "-0.5"}, 400, "bad_parameter"),
    ("POST", "/api/verify", {"image_a": "FILE"}, 400, "missing_field"),
    ("POST", "/api/verify", {"image_a": "FILE", "image_b": "FILE", "threshold": "x"}, 400,
     "bad_parameter"),
    ("POST", "/api/gallery", {"image": "FILE"}, 400, "missing_field"),
    ("POST", "/api/gallery", {"image": "FILE", "label": "x" * 201}, 400, "bad_parameter"),
    ("POST", "/api/gallery", {"image": "FILE", "label": "a", "metadata": "{oops"}, 400,
     "bad_parameter"),
    ("POST", "/api/gallery", {"image": "FILE", "label": "a", "metadata": "[1, 2]"}, 400,
     "bad_parameter"),
    ("POST", "/api/gallery", {"image": "FILE", "label": "a", "metadata": '{"a": NaN}'}, 400,
     "bad_parameter"),
    ("GET", "/api/gallery?limit=0", None, 400, "bad_parameter"),
    ("GET", "/api/gallery?limit=5000", None, 400, "bad_parameter"),
    ("GET", "/api/gallery?offset=-1", None, 400, "bad_parameter"),
    ("GET", "/api/gallery/999999", None, 404, "not_found"),
    ("GET", "/api/gallery/999999/image", None, 404, "not_found"),
    ("DELETE", "/api/gallery/999999", None, 404, "not_found"),
    ("GET", "/api/gallery/abc", None, 404, "not_found"),
    ("GET", "/api/gallery/-1", None, 404, "not_found"),
    ("GET", "/api/nothing-here", None, 404, "not_found"),
    ("GET", "/api/search", None, 405, "method_not_allowed"),
    ("PUT", "/api/gallery/1", None, 405, "method_not_allowed"),
])
def test_bad_requests_are_json_errors(client, sample_pngs, method, path, form, status, code):
    data = None
    if form is not None:
        good = sample_pngs["Coat"][0].read_bytes()
        data = {k: (io.BytesIO(good), "coat.png") if v == "FILE" else v for k, v in form.items()}
    response = client.open(path, method=method, data=data,
                           content_type="multipart/form-data" if form is not None else None)
    assert_error(response, status, code)


@pytest.mark.parametrize("content_type, body", [
    ("text/plain", b"image=/etc/passwd"),
    ("application/x-www-form-urlencoded", b"image=%2Fetc%2Fpasswd"),
    ("image/png", b"\x89PNG\r\n\x1a\n"),
    (None, b""),
])
def test_anything_but_multipart_or_json_is_415(client, content_type, body):
    for path in ("/api/search", "/api/identify", "/api/verify", "/api/gallery",
                 "/api/search/batch", "/api/verify/batch"):
        response = client.post(path, data=body, content_type=content_type)
        message = assert_error(response, 415, "unsupported_media_type")["message"]
        assert "multipart/form-data" in message and "application/json" in message


@pytest.mark.parametrize("body, status, words", [
    (b'{"image": "/etc/passwd"}', 400, "image: not base64"),  # a path is never read
    (b'{"image": "iVBORw0KGgo="}', 415, "image: not an image"),  # a PNG signature, no more
    (b'{"image": "data:image/png,abc"}', 400, "must be base64"),
    (b'{"image": 42}', 400, "image must be an image as base64 text"),
    (b'{"image": ["aGk="]}', 400, "image must be an image as base64 text"),
    (b'{"picture": "aGk="}', 400, "missing the image field 'image'"),
    (b'["image"]', 400, "must be a JSON object"),
    (b'', 400, "must be a JSON object"),
    (b'{"image": ', 400, "not valid JSON"),
    (b'{"image": NaN}', 400, "not valid JSON"),
    (b'\xff\xfe{}', 400, "not valid JSON"),
    (b'[' * 100_000, 400, "nested too deeply"),
    (b'{"image": "PNG", "k": "many"}', 400, "k must be"),
    (b'{"image": "PNG", "k": true}', 400, "k must be"),
    (b'{"image": "PNG", "k": 0}', 400, "k must be"),
    (b'{"image": "PNG", "threshold": "low"}', 400, "threshold"),
    (b'{"image": "PNG", "operating_point": ["far"]}', 400, "operating_point must be"),
])
def test_bad_json_bodies_are_400_with_the_field_named(client, sample_pngs, body, status, words):
    png = base64.b64encode(sample_pngs["Bag"][0].read_bytes())
    response = client.post("/api/search", data=body.replace(b'"PNG"', b'"' + png + b'"'),
                           content_type="application/json")
    assert words in assert_error(response, status)["message"]


def test_malformed_multipart_is_a_json_error(client):
    response = client.post("/api/search", data=b"--nope\r\ngarbage", content_type=(
        "multipart/form-data; boundary=nope"))
    assert_error(response, 400)
    response = client.post("/api/search", data=b"x", content_type="multipart/form-data")
    assert_error(response, 400)  # no boundary at all


def test_no_endpoint_reads_a_path_given_by_the_client(client, tmp_path):
    """A path in a field, or as the upload's file name, is never opened."""
    secret = tmp_path / "secret.png"
    secret.write_bytes(encoded(Image.new("L", (28, 28), 0), "PNG"))
    as_text = client.post("/api/search", data={"image": str(secret)},
                          content_type="multipart/form-data")
    assert_error(as_text, 400, "bad_parameter")
    as_name = client.post("/api/search", data={"image": (io.BytesIO(b"not an image"), str(secret))})
    error = assert_error(as_name, 415)
    assert str(tmp_path) not in error["message"]  # the name was cleaned, and only shown


def test_uploads_stay_in_memory(app, sample_pngs):
    """werkzeug spools uploads over 500 kB to a temporary file; ours stay in memory, so an image
    is only ever written by the gallery, into its own database."""
    big = encoded(Image.fromarray(np.random.default_rng(2).integers(0, 255, (600, 600, 3), np.uint8)),
                  "PNG")
    assert len(big) > 600_000
    from flask import request

    with app.test_request_context("/api/search", method="POST",
                                  data={"image": (io.BytesIO(big), "big.png")}):
        stream = request.files["image"].stream
        assert isinstance(stream, io.BytesIO) and stream.getvalue() == big


def test_page_errors_are_html_pages(client):
    response = client.post("/", data=page_form(client, {"image": (io.BytesIO(b"nope"), "nope.txt")}))
    assert response.status_code == 415 and response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    # The form again, the message next to the image field, in words: no codes, no field names.
    assert re.search(r'class="field-error" role="alert" data-field="image">nope.txt: not an image '
                     r'file that can be read', html), html
    assert "unsupported_media_type" not in html and "415" not in html
    missing = client.get("/no-such-page")
    text = missing.get_data(as_text=True)
    assert missing.status_code == 404 and "Not found" in text and "not_found" not in text
    assert client.get("/gallery?page=zero").status_code == 400


@pytest.fixture(scope="module", params=BACKENDS)
def fuzz_server(request, tmp_path_factory, model_dir):
    """Its own siamese-serve (two gunicorn workers), on each back end: the corpus adds to its
    gallery."""
    folder = tmp_path_factory.mktemp("fuzz")
    gallery, url = copy_gallery(request, request.param, folder)
    live = start_serve(gallery, model_dir, folder / "serve.log", *(["--db-url", url] if url else []))
    yield live
    live.stop()


@pytest.mark.slow  # a real gunicorn, every file of the corpus to every endpoint
def test_fuzz_corpus_through_gunicorn_has_no_5xx(fuzz_server, files, sample_pngs):
    """The same corpus through the real server: the statuses the in-process app gives, never
    a 5xx, never a hang (each request times out after 30 s), and nothing in the log."""
    good = sample_pngs["Coat"][0].read_bytes()
    statuses = []
    cookie, token = fuzz_server.page_session()  # a browser that opened a page of the server
    for name, data, allowed in files:
        for endpoint, field in IMAGE_ENDPOINTS:
            fields = {field: (name, data)}
            if endpoint.endswith("verify"):
                fields["image_b" if field == "image_a" else "image_a"] = ("good.png", good)
            if endpoint == "/api/gallery":
                fields["label"] = "fuzz"
            if not endpoint.startswith("/api"):  # a page form, sent as the page would
                fields = {**fields, "csrf_token": token}
            status, _, body = fuzz_server.request("POST", endpoint, fields=fields,
                                                  headers={"Cookie": cookie})
            statuses.append(status)
            assert status < 500, (name, endpoint, status, body[:300])
    assert {200, 400, 415} <= set(statuses)
    assert fuzz_server.json("GET", "/healthz")[0] == 200
    log = fuzz_server.log.read_text(errors="replace")
    assert "Traceback" not in log and "[ERROR]" not in log, log[-3000:]
