"""Adding to the gallery through the API: an image added once however many ask at once, a label
that differs from the stored one said out loud, metadata that stays JSON."""
from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from encoder.errors import ConfigError
from indexer import Original

KEY = {"X-API-Key": "s3cret"}


def png_of(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "PNG")
    return out.getvalue()


@pytest.mark.slow  # the session's gunicorn server
def test_identical_concurrent_adds_create_one_item(server, fashion_test):
    data = png_of(fashion_test.images[9700, :, :, 0])

    def add(_):
        return server.json("POST", "/api/gallery", headers=KEY,
                           fields={"image": ("same.png", data), "label": "Same"})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(add, range(8)))
    assert sorted(status for status, _ in answers) == [200] * 7 + [201]
    assert [body["created"] for _, body in answers].count(True) == 1
    assert len({body["item"]["id"] for _, body in answers}) == 1
    item = answers[0][1]["item"]["id"]  # the session's server is shared: leave it as it was
    assert server.request("DELETE", f"/api/gallery/{item}", headers=KEY)[0] == 204


def test_adding_a_known_image_with_another_label_says_so(client, sample_pngs):
    coat = sample_pngs["Coat"][0].read_bytes()  # in the test gallery, labelled Coat
    answer = client.post("/api/gallery", data={"image": (io.BytesIO(coat), "c.png"),
                                               "label": "Jacket"})
    body = answer.get_json()
    assert answer.status_code == 200 and body["created"] is False
    assert body["item"]["label"] == "Coat" and body["label_changed"] is False
    assert "already in the gallery as item" in body["message"] and "'Coat'" in body["message"]
    same = client.post("/api/gallery", data={"image": (io.BytesIO(coat), "c.png"), "label": "Coat"})
    assert same.status_code == 200 and "label_changed" not in same.get_json()


@pytest.mark.parametrize("metadata, message", [
    ('{"a": 1e400}', "finite numbers"),
    ('{"a": NaN}', "NaN is not JSON"),
    ("[" * 1000 + "]" * 1000, "nested too deeply"),
    ('{"a": ' + "[" * 40 + "]" * 40 + "}", "nested deeper than 32 levels"),
])
def test_metadata_that_is_not_plain_json_is_400(client, sample_pngs, metadata, message):
    bag = sample_pngs["Bag"][0].read_bytes()
    answer = client.post("/api/gallery", data={"image": (io.BytesIO(bag), "b.png"), "label": "Bag",
                                               "metadata": metadata})
    assert answer.status_code == 400, answer.data[:300]
    assert message in answer.get_json()["error"]["message"]
    listed = client.get("/api/gallery?limit=1000").data
    json.loads(listed)  # every stored item is still plain JSON (no Infinity)


def test_answers_are_utf8_json_and_big_integers_come_back_whole(client, sample_pngs):
    """Answers are written by orjson: text beyond ASCII as UTF-8 (the same JSON as the \\u
    escapes of Flask's encoder). orjson refuses integers past 64 bits; metadata holding one (valid
    JSON, kept exactly) is answered by Flask's encoder, every digit intact, in UTF-8 too."""
    pixels = np.array(Image.open(sample_pngs["Bag"][1]))
    pixels[0, 0] ^= 1  # a new image, not one the test gallery holds
    bag = png_of(pixels)
    metadata = {"note": "Größe 42 — 靴", "small": -2 ** 63}
    answer = client.post("/api/gallery", data={"image": (io.BytesIO(bag), "b.png"),
                                               "label": "Bäg", "metadata": json.dumps(metadata)})
    assert answer.status_code == 201, answer.data[:300]
    item = answer.get_json()["item"]["id"]
    searched = client.post("/api/search", data={"image": (io.BytesIO(bag), "b.png"), "k": "1"})
    assert searched.status_code == 200 and searched.mimetype == "application/json"
    assert "Bäg".encode() in searched.data and b"\\u" not in searched.data
    assert searched.get_json()["matches"][0]["metadata"] == metadata

    metadata["serial"] = 2 ** 70
    edited = client.patch(f"/api/gallery/{item}", json={"metadata": metadata})
    assert edited.status_code == 200, edited.data[:300]
    got = client.get(f"/api/gallery/{item}")
    assert got.status_code == 200 and got.mimetype == "application/json"
    assert json.loads(got.data)["item"]["metadata"] == metadata
    assert b"1180591620717411303424" in got.data
    assert "Größe".encode() in got.data and b"\\u" not in got.data


def test_the_gallery_refuses_such_metadata_and_reports_what_it_added(tmp_path, model_embedder,
                                                                    sample_pngs):
    from indexer import Gallery

    with Gallery.create(tmp_path / "g", model_embedder) as gallery:
        with pytest.raises(ConfigError, match="finite numbers"):
            gallery.add(sample_pngs["Bag"][0], labels="Bag", metadata={"a": float("inf")})
        assert len(gallery) == 0
        originals = [Original.from_source(p) for p in sample_pngs["Bag"][:2]]
        first = gallery.add_originals(originals, ["Bag", "Bag"], [{}, {}])
        again = gallery.add_originals(originals + originals[:1], ["Bag"] * 3, [{}] * 3)
    assert first.created == [True, True]
    assert again.created == [False, False, False] and again.ids == first.ids + first.ids[:1]


@pytest.mark.parametrize("path", ["/api/gallery/9223372036854775808",
                                  "/api/gallery/9223372036854775808/image",
                                  "/api/gallery/0", "/?item=9223372036854775808"])
def test_ids_beyond_the_database_range_are_404(client, path):
    answer = client.get(path)
    assert answer.status_code == 404, answer.data[:300]


def test_deleting_an_id_beyond_the_range_is_404(client):
    answer = client.delete("/api/gallery/99999999999999999999")
    assert answer.status_code == 404 and answer.get_json()["error"]["code"] == "not_found"


def test_a_non_ascii_api_key_matches_when_sent_as_utf8(make_app, sample_pngs):
    client = make_app(api_key="schlüssel-ключ").test_client()
    bag = sample_pngs["Bag"][1].read_bytes()

    def add(header_bytes: bytes):
        # What a WSGI server passes on: the header's bytes, read as Latin-1.
        return client.post("/api/gallery", headers={"X-API-Key": header_bytes.decode("latin-1")},
                           data={"image": (io.BytesIO(bag), "b.png"), "label": "Bag"})

    assert add("schlüssel-ключ".encode("utf-8")).status_code in (200, 201)
    assert add("schlüssel-kljuch".encode("utf-8")).status_code == 403
    assert add(b"schl\xfcssel").status_code == 403


@pytest.mark.parametrize("fields, message", [
    ({"label": "Ba\x00g"}, "label must not contain NUL characters"),
    ({"label": "Bag", "metadata": '{"sku": "A\\u0000"}'}, "metadata must not contain NUL"),
    ({"label": "Bag", "metadata": '{"A\\u0000": 1}'}, "metadata must not contain NUL"),
])
def test_text_a_database_cannot_store_is_400(client, sample_pngs, fields, message):
    bag = sample_pngs["Bag"][2].read_bytes()
    answer = client.post("/api/gallery", data={"image": (io.BytesIO(bag), "b.png"), **fields})
    assert answer.status_code == 400 and message in answer.get_json()["error"]["message"]


def test_a_nul_in_the_label_filter_is_400(client):
    answer = client.get("/api/gallery?label=%00")
    assert answer.status_code == 400
    assert "NUL" in answer.get_json()["error"]["message"]


@pytest.mark.parametrize("headers, status", [
    ({"Origin": "https://evil.example"}, 403),
    ({"Origin": "null"}, 403),
    ({"Referer": "http://evil.example/page.html"}, 403),
    ({"Origin": "http://localhost"}, 201),  # this site (the test client's host)
    ({"Referer": "http://localhost/gallery"}, 201),
    ({}, 201),  # not a browser: curl and scripts send neither header
])
def test_writes_from_pages_of_other_sites_are_refused(make_app, fashion_test, headers, status):
    client = make_app().test_client()  # no API key: the default set-up
    data = png_of(fashion_test.images[9800 + len(str(headers)) % 50, :, :, 0])
    answer = client.post("/api/gallery", headers=headers,
                         data={"image": (io.BytesIO(data), "x.png"), "label": "X"})
    assert answer.status_code == status, answer.data[:300]
    if status == 403:
        assert "other sites" in answer.get_json()["error"]["message"]
        assert client.get("/api/gallery?label=X").get_json()["total"] == 0  # nothing written


def test_deletes_from_pages_of_other_sites_are_refused(client):
    first = client.get("/api/gallery?limit=1").get_json()["items"][0]["id"]
    answer = client.delete(f"/api/gallery/{first}", headers={"Origin": "https://evil.example"})
    assert answer.status_code == 403
    assert client.get(f"/api/gallery/{first}").status_code == 200


@pytest.mark.parametrize("backend", ["sqlite"])  # PostgreSQL: test_postgres_outage.py
def test_a_database_that_goes_bad_is_503_without_a_path(make_app, gallery_path, sample_pngs):
    client = make_app().test_client()
    assert client.get("/api/gallery?limit=1").status_code == 200
    (gallery_path / "gallery.db").write_bytes(b"this is not a database" * 200)
    for name in ("gallery.db-wal", "gallery.db-shm"):
        (gallery_path / name).unlink(missing_ok=True)
    answer = client.get("/api/gallery?limit=5&offset=7")
    assert answer.status_code == 503, answer.data[:300]
    error = answer.get_json()["error"]
    assert error["code"] == "database_unavailable" and str(gallery_path) not in error["message"]
    assert answer.headers["Retry-After"] == "5"
