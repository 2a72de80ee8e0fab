"""Multipart bodies as real clients (curl, browsers, requests) write them go through the fast
paths (a plain split, else python-multipart); quirky and malformed ones still get werkzeug's
answers."""
from __future__ import annotations

from flask import request

import random

import pytest

from webapp.uploads import (_disposition, _parse_multipart_body, _parse_with_python_multipart,
                            _split_plain_multipart)

BOUNDARY = b"----siamese-test-boundary-7c1f"


def post(client, body: bytes, content_type: str, path: str = "/api/search"):
    return client.post(path, data=body, content_type=content_type)


def assert_error(response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, (response.status_code, response.data[:300])
    error = response.get_json()["error"]
    assert error["message"] and "Traceback" not in error["message"]
    assert code is None or error["code"] == code


def test_a_standard_body_parses_fast_with_fields_and_files(sample_pngs, multipart):
    png = sample_pngs["Bag"][0].read_bytes()
    body, _ = multipart({"k": "3", "image": ("bag \u00e9.png", png), "label": "sac \u00e0 main"})
    parts = _parse_multipart_body(body, BOUNDARY, max_parts=100)
    assert parts is not None
    assert [h.get("Content-Disposition") for h, _ in parts] == [
        'form-data; name="k"', 'form-data; name="image"; filename="bag \u00c3\u00a9.png"',
        'form-data; name="label"']  # headers are bytes decoded as latin-1, as werkzeug does
    assert [data for _, data in parts] == [b"3", png, "sac \u00e0 main".encode()]


def test_the_app_sees_the_same_form_either_way(app, sample_pngs, multipart):
    png = sample_pngs["Bag"][0].read_bytes()
    body, content_type = multipart({"k": "3", "image": ("bag.png", png), "label": "sac \u00e0 main"})
    with app.test_request_context("/api/search", method="POST", data=body,
                                  content_type=content_type):
        assert request.form.to_dict() == {"k": "3", "label": "sac \u00e0 main"}
        upload = request.files["image"]
        assert upload.filename == "bag.png" and upload.stream.read() == png


def test_search_answers_a_standard_body(client, sample_pngs, multipart):
    body, content_type = multipart({"image": ("q.png", sample_pngs["Bag"][0].read_bytes()), "k": "4"})
    response = post(client, body, content_type)
    assert response.status_code == 200, response.data
    assert len(response.get_json()["matches"]) == 4


def test_werkzeug_quirks_fall_back_to_werkzeug():
    """werkzeug's test client writes an empty part with no line break before the next boundary;
    RFC 2046 reads that as data containing the boundary, so the fast parser declines it."""
    body = (b"--%s\r\nContent-Disposition: form-data; name=\"image\"; filename=\"e.png\"\r\n\r\n"
            b"--%s\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n3\r\n--%s--\r\n"
            % (BOUNDARY, BOUNDARY, BOUNDARY))
    assert _parse_multipart_body(body, BOUNDARY, max_parts=100) is None


def test_too_many_parts_is_413(client, multipart):
    # the limit: two batches of images (image_a and image_b, 100 each) and 20 fields beside
    body, content_type = multipart({f"f{i}": "x" for i in range(221)})
    assert_error(post(client, body, content_type), 413, "too_large")


def test_over_size_text_fields_are_413(client, multipart):
    body, content_type = multipart({"metadata": "x" * 1_000_001})
    assert_error(post(client, body, content_type, "/api/gallery"), 413, "too_large")


def test_a_body_cut_short_is_a_json_error(client, sample_pngs, multipart):
    body, content_type = multipart({"image": ("q.png", sample_pngs["Bag"][0].read_bytes())})
    assert_error(post(client, body[:len(body) // 2], content_type), 400)
    assert_error(post(client, body[:-10], content_type), 400)


def _body(parts: list[tuple[list[bytes], bytes]], boundary: bytes = BOUNDARY) -> bytes:
    return b"".join(b"--" + boundary + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"
                    + data + b"\r\n" for headers, data in parts) + b"--" + boundary + b"--\r\n"


def test_plain_bodies_split_exactly_as_python_multipart_parses_them():
    """The splitter that takes the common case (`bytes.find`, ten times faster) gives what
    python-multipart gives, part for part, on bodies whose data is full of line breaks, dashes
    and bytes that are not text."""
    rng = random.Random(0)
    alphabet = b"ab\r\n-\x00\xff\t :\"="
    for _ in range(400):
        parts = []
        for i in range(rng.randint(1, 6)):
            headers = [b'Content-Disposition: form-data; name="f%d"' % i
                       + (b'; filename="x%d.png"' % i if rng.random() < 0.5 else b"")]
            if rng.random() < 0.5:
                headers.append(b"Content-Type:" + rng.choice([b"", b" ", b"  ", b"\t", b" \t"])
                               + b"image/png")
            if rng.random() < 0.2:
                headers = []
            data = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
            parts.append((headers, data))
        body = _body(parts)
        if rng.random() < 0.5:
            body = body[:-2]  # no line break after the close delimiter
        fast = _split_plain_multipart(body, BOUNDARY, max_parts=100)
        assert fast is not None and fast == _parse_with_python_multipart(body, BOUNDARY, 100)
        assert [data for _, data in fast] == [data for _, data in parts]


@pytest.mark.parametrize("body", [
    b"preamble\r\n" + _body([([b'Content-Disposition: form-data; name="k"'], b"3")]),
    _body([([b'Content-Disposition: form-data; name="k"'], b"3")]) + b"epilogue",
    _body([([b'Content-Disposition: form-data; name="k"'], b"3")]).replace(b"\r\n", b"\n"),
    _body([([b'Content-Disposition: form-data; name="k"'], b"3")]).replace(
        BOUNDARY + b"\r\n", BOUNDARY + b"  \r\n", 1),  # transport padding after a boundary
    _body([([b'Content-Disposition: form-data;', b' name="k"'], b"3")]),  # a folded header
    _body([([b'Content-Disposition : form-data; name="k"'], b"3")]),
    _body([([b'Content-Disposition: form-data; name="k"'], b"3")])[:-4],  # no close delimiter
    b"--" + BOUNDARY + b"--\r\n",  # no parts at all
    # past python-multipart's limits, or what it refuses (werkzeug answers these, as before)
    _body([([b'Content-Disposition: form-data; name="k"'] + [b"a: b"] * 8, b"3")]),
    _body([([b'Content-Disposition: form-data; name="k"', b"a: " + b"b" * 5000], b"3")]),
    _body([([b'Content-Disposition: form-data; name="k"', b"\xe9: 1"], b"3")]),
    _body([([b'Content-Disposition: form-data; name="k"', b"a: b\rc"], b"3")]),
])
def test_anything_unusual_is_left_to_python_multipart_and_werkzeug(body):
    assert _split_plain_multipart(body, BOUNDARY, max_parts=100) is None


def test_the_plain_splitter_counts_parts_against_the_limit():
    body = _body([([b'Content-Disposition: form-data; name="f%d"' % i], b"x") for i in range(5)])
    assert len(_split_plain_multipart(body, BOUNDARY, max_parts=5)) == 5
    with pytest.raises(Exception, match="more than 4 form fields"):
        _split_plain_multipart(body, BOUNDARY, max_parts=4)


@pytest.mark.parametrize("value", [
    'form-data; name="image"; filename="q.png"', 'form-data;name="x";filename="y"',
    'Form-Data; NAME="x"; FileName="Y.png"', 'form-data; name="x"; filename=""',
    'form-data ; name="\u00e9"', 'form-data; name=image',
    'form-data; name="a b"; filename="C:\\\\x\\\\y.png"',
    "form-data; name=\"x\"; filename*=UTF-8''%e2%82%ac.png", 'attachment; filename="x"', "",
    'form-data; name="image"; filename="a%22b.png"',  # a browser's quote in a file name
    'form-data;\xa0name="a"', 'form-data;\x0bname="a"; filename="f"',
    'form-data; name="image"; \x0bfilename="x"',  # werkzeug's separators are spaces and tabs
])
def test_a_content_disposition_reads_as_werkzeug_reads_it(value):
    from werkzeug.http import parse_options_header

    assert _disposition(value) == parse_options_header(value)[1]


def test_a_part_with_a_megabyte_of_header_lines_is_refused(client, sample_pngs):
    """python-multipart allows 8 headers a part and leaves a body with more to werkzeug, which
    refuses over a megabyte of them (413) without reading them one by one into a list (a
    splitter without that limit accepted 12 MB of them, taking 2.3 s and 425 MB)."""
    png = sample_pngs["Bag"][0].read_bytes()
    body = _body([([b'Content-Disposition: form-data; name="image"; filename="x.png"']
                   + [b"a:"] * 300_000, png)])
    response = post(client, body, f"multipart/form-data; boundary={BOUNDARY.decode()}")
    assert_error(response, 413, "too_large")
