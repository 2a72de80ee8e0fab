"""Multipart bodies as real clients (curl, browsers, requests) write them go through the fast
parser (python-multipart); quirky and malformed ones still get werkzeug's answers."""
from __future__ import annotations

from flask import request

from webapp.uploads import _parse_multipart_body

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
