"""JSON bodies with base64 images, batch search and batch verify: the same answers as the
single multipart requests, and every bad part named."""
from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from tests.webapp.test_bad_input import assert_error


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def reencoded(data: bytes) -> bytes:
    """The same picture in another file: other bytes, the same pixels."""
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).save(out, "PNG", compress_level=1)
    assert out.getvalue() != data
    return out.getvalue()


def test_json_and_multipart_search_answer_alike(client, sample_pngs, upload):
    data = sample_pngs["Sneaker"][0].read_bytes()
    form = client.post("/api/search", data={"image": upload(data), "k": "4"}).get_json()
    as_json = client.post("/api/search", json={"image": b64(data), "k": 4}).get_json()
    as_data_url = client.post("/api/search", json={"image": "data:image/png;base64," + b64(data),
                                                   "k": "4"}).get_json()
    assert form == as_json == as_data_url
    assert len(form["matches"]) == 4


def test_a_gallery_image_is_marked_as_the_same_image_not_only_as_near(client, sample_pngs):
    data = sample_pngs["Coat"][0].read_bytes()
    top = client.post("/api/search", json={"image": b64(data)}).get_json()["matches"]
    assert top[0]["same_image"] and top[0]["distance"] == 0.0
    assert not any(m["same_image"] for m in top[1:])
    copy = client.post("/api/search", json={"image": b64(reencoded(data))}).get_json()["matches"]
    assert copy[0]["id"] == top[0]["id"] and copy[0]["distance"] < 1e-3
    assert not copy[0]["same_image"]  # the same pixels, but not the same file
    assert all(len(str(m["distance"]).split(".")[-1]) <= 4 for m in top)  # rounded to 1e-4
    same = client.post("/api/verify", json={"image_a": b64(data), "image_b": b64(data)}).get_json()
    assert same["same_image"] and same["verified"]
    alike = client.post("/api/verify", json={"image_a": b64(data),
                                             "image_b": b64(reencoded(data))}).get_json()
    assert not alike["same_image"] and alike["verified"]


def test_batch_search_answers_as_single_searches_do(client, sample_pngs, upload):
    files = [p.read_bytes() for p in (sample_pngs["Bag"][0], sample_pngs["Shirt"][1],
                                      sample_pngs["Sandal"][2])]
    singles = [client.post("/api/search", json={"image": b64(d), "k": 3}).get_json()
               for d in files]
    as_json = client.post("/api/search/batch", json={"image": [b64(d) for d in files], "k": 3})
    form = client.post("/api/search/batch", data={"image": [upload(d, f"q{i}.png")
                                                            for i, d in enumerate(files)],
                                                  "k": "3"})
    assert as_json.status_code == form.status_code == 200
    assert as_json.get_json() == form.get_json()
    body = as_json.get_json()
    assert body["operating_point"] == singles[0]["operating_point"]
    assert body["threshold"] == singles[0]["threshold"]
    for result, single in zip(body["results"], singles):
        assert result["matches"] == single["matches"]
        assert result["in_domain"] == single["in_domain"]


def test_batch_verify_answers_as_single_verifies_do(client, sample_pngs):
    a = [sample_pngs["Bag"][0], sample_pngs["Bag"][0], sample_pngs["Trouser"][1], sample_pngs["Bag"][3]]
    b = [sample_pngs["Bag"][1], sample_pngs["Trouser"][0], sample_pngs["Trouser"][2],
         sample_pngs["Bag"][3]]
    singles = [client.post("/api/verify", json={"image_a": b64(x.read_bytes()),
                                                "image_b": b64(y.read_bytes())}).get_json()
               for x, y in zip(a, b)]
    batch = client.post("/api/verify/batch", json={
        "image_a": [b64(x.read_bytes()) for x in a], "image_b": [b64(y.read_bytes()) for y in b],
        "operating_point": "balanced"})
    assert batch.status_code == 200, batch.get_json()
    body = batch.get_json()
    assert body["operating_point"] == "balanced"
    for result, single in zip(body["results"], singles):
        assert result["verified"] == single["verified"]
        assert result["distance"] == pytest.approx(single["distance"], abs=1e-4)
        assert result["same_image"] == single["same_image"]
    assert [r["verified"] for r in body["results"]][1] is False  # a bag is not a trouser
    assert [r["same_image"] for r in body["results"]] == [False, False, False, True]


def test_bad_batches_name_what_is_wrong(make_app, sample_pngs, upload):
    client = make_app(max_batch=3).test_client()
    good = b64(sample_pngs["Bag"][0].read_bytes())
    cases = [
        ("/api/search/batch", {"image": [good] * 4}, 400, "send 1 to 3 images"),
        ("/api/search/batch", {"image": []}, 400, "send 1 to 3 images"),
        ("/api/search/batch", {"image": good}, 400, "must be a list of images"),
        ("/api/search/batch", {"image": [good, "%%%"]}, 400, "image[1]: not base64"),
        ("/api/search/batch", {"image": [good, b64(b"not a picture")]}, 415, "image[1]"),
        ("/api/verify/batch", {"image_a": [good, good], "image_b": [good]}, 400,
         "as many of each (here 2 and 1)"),
        ("/api/verify/batch", {"image_a": [good]}, 400, "missing the image field 'image_b'"),
    ]
    for path, body, status, words in cases:
        message = assert_error(client.post(path, json=body), status)["message"]
        assert words in message, (body, message)
    form = client.post("/api/search/batch", data={"image": [upload(sample_pngs["Bag"][0]),
                                                            upload(b"", "empty.png")]})
    assert "image #2" in assert_error(form, 400)["message"]
