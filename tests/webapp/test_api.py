"""The JSON API through Flask's test client, over a real gallery of 50 sample PNGs."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from encoder.errors import ConfigError
from indexer import Gallery
from webapp import Settings, create_app


def test_search_returns_ranked_matches_with_verdicts(client, upload, sample_pngs, model_embedder):
    coat = sample_pngs["Coat"][0]
    r = client.post("/api/search", data={"image": upload(coat, "coat.png"), "k": "5"})
    assert r.status_code == 200
    body = r.get_json()
    assert list(body)[:3] == ["model", "operating_point", "threshold"] and "matches" in body
    assert body["model"] == model_embedder.model_id
    assert body["operating_point"] == "balanced"
    assert body["threshold"] == pytest.approx(model_embedder.threshold)
    matches = body["matches"]
    assert len(matches) == 5
    assert set(matches[0]) == {"id", "label", "distance", "probability", "verified", "same_image",
                               "featureless", "item_in_domain", "image_url", "metadata"}
    assert all(m["item_in_domain"] is True for m in matches)  # checked when they were added
    assert matches[0]["label"] == "Coat" and matches[0]["distance"] < 1e-3  # the very image
    assert [m["distance"] for m in matches] == sorted(m["distance"] for m in matches)
    assert all(m["verified"] == (m["distance"] <= body["threshold"]) for m in matches)
    assert matches[0]["image_url"] == f"/api/gallery/{matches[0]['id']}/image"


def test_search_k_and_threshold(client, upload, sample_pngs):
    bag = sample_pngs["Bag"][1]
    default = client.post("/api/search", data={"image": upload(bag)}).get_json()
    assert len(default["matches"]) == 8  # settings.default_k
    strict = client.post("/api/search", data={"image": upload(bag), "k": "3",
                                              "threshold": "0.000001"}).get_json()
    assert strict["threshold"] == 1e-6
    assert [m["verified"] for m in strict["matches"]] == [True, False, False]


def test_verify_two_images(client, upload, sample_pngs):
    shoe = sample_pngs["Sandal"][0]
    same = client.post("/api/verify", data={"image_a": upload(shoe), "image_b": upload(shoe)})
    assert same.status_code == 200
    body = same.get_json()
    assert body["verified"] is True and body["distance"] < 1e-3
    assert {"model", "distance", "probability", "operating_point", "threshold", "verified",
            "in_domain", "domain_reason"} <= set(body)
    other = client.post("/api/verify", data={"image_a": upload(shoe),
                                             "image_b": upload(sample_pngs["Trouser"][0])})
    body = other.get_json()
    assert body["verified"] is False and body["distance"] > body["threshold"]


def test_identify_is_one_to_many_verification(client, upload, sample_pngs):
    pullover = sample_pngs["Pullover"][2]
    found = client.post("/api/identify", data={"image": upload(pullover)}).get_json()
    assert found["match"]["label"] == "Pullover" and found["match"]["verified"]
    assert found["match"]["distance"] < 1e-3
    assert found["operating_point"] == "fpir" and found["fpir"] == 0.01
    assert found["gallery_size"] == 50 and found["nearest"] == found["match"]


def test_identify_without_a_verified_match_says_null(client, upload):
    body = client.post("/api/identify", data={"image": upload(png(white())),
                                              "threshold": "0.001"}).get_json()
    assert body["match"] is None and body["threshold"] == 0.001


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def white() -> Image.Image:
    return Image.new("L", (28, 28), 255)  # nothing in the gallery looks like a white square


def test_gallery_add_get_image_list_delete(client, upload, fashion_test):
    data = png(Image.fromarray(fashion_test.images[9000, :, :, 0]))
    r = client.post("/api/gallery", data={"image": upload(data, "new shoe.png"), "label": "Mine",
                                          "metadata": json.dumps({"sku": "A-1", "price": 3.5})})
    assert r.status_code == 201
    item = r.get_json()["item"]
    assert r.get_json()["created"] is True
    assert r.headers["Location"] == f"/api/gallery/{item['id']}"
    assert (item["label"], item["metadata"], item["source"]) == ("Mine", {"sku": "A-1", "price": 3.5},
                                                                 "new_shoe.png")
    assert (item["width"], item["height"], item["media_type"]) == (28, 28, "image/png")

    again = client.post("/api/gallery", data={"image": upload(data), "label": "Mine"})
    assert again.status_code == 200 and again.get_json() == {
        "item": item, "created": False, "featureless": False, "in_domain": True,
        "domain_reason": "the gallery item: looks like fashion-mnist:train"}
    assert (item["in_domain"], item["domain_reason"]) == (True, again.get_json()["domain_reason"])

    assert client.get(f"/api/gallery/{item['id']}").get_json() == {"item": item}
    image = client.get(item["image_url"])
    assert image.status_code == 200 and image.data == data and image.mimetype == "image/png"
    # Cached privately and revalidated: a shared cache never keeps a deleted image.
    assert image.headers["Cache-Control"] == "private, no-cache"
    again = client.get(item["image_url"], headers={"If-None-Match": image.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""

    listed = client.get("/api/gallery?label=Mine").get_json()
    assert listed["total"] == 1 and [i["id"] for i in listed["items"]] == [item["id"]]
    found = client.post("/api/search", data={"image": upload(data), "k": "1"}).get_json()
    assert found["matches"][0]["id"] == item["id"]
    assert found["matches"][0]["metadata"] == {"sku": "A-1", "price": 3.5}

    assert client.delete(f"/api/gallery/{item['id']}").status_code == 204
    assert client.get(f"/api/gallery/{item['id']}").status_code == 404
    assert client.delete(f"/api/gallery/{item['id']}").status_code == 404
    after = client.post("/api/search", data={"image": upload(data), "k": "1"}).get_json()
    assert after["matches"][0]["id"] != item["id"]


def test_gallery_listing_pages_and_filters(client):
    first = client.get("/api/gallery?limit=20").get_json()
    assert first["total"] == 50 and len(first["items"]) == 20 and first["offset"] == 0
    ids = [i["id"] for i in first["items"]]
    assert ids == sorted(ids)
    second = client.get(first["next"]).get_json()
    third = client.get(second["next"]).get_json()
    assert len(third["items"]) == 10 and third["next"] is None
    all_ids = ids + [i["id"] for i in second["items"] + third["items"]]
    assert len(set(all_ids)) == 50
    coats = client.get("/api/gallery?label=Coat").get_json()
    assert coats["total"] == 5 and {i["label"] for i in coats["items"]} == {"Coat"}
    assert client.get("/api/gallery?label=Nothing").get_json()["items"] == []


def test_stats_and_health(client, model_embedder):
    stats = client.get("/api/stats").get_json()
    assert stats["model"]["id"] == model_embedder.model_id
    assert stats["model"]["input_shape"] == [28, 28, 1]
    assert stats["threshold"] == pytest.approx(model_embedder.threshold)
    gallery = stats["gallery"]
    assert gallery["items"] == 50 and len(gallery["labels"]) == 10
    assert gallery["index"] == "flat" and gallery["recall_at_10"] == 1.0
    assert client.get("/healthz").get_json() == {"status": "ok", "model": model_embedder.model_id,
                                                  "items": 50, "galleries": 1}


def test_api_key_guards_changes_only(make_app, upload, sample_pngs):
    client = make_app(api_key="s3cret").test_client()
    shoe = sample_pngs["Sneaker"][0]
    fields = lambda: {"image": upload(shoe), "label": "Sneaker"}  # noqa: E731
    missing = client.post("/api/gallery", data=fields())
    assert missing.status_code == 401 and missing.get_json()["error"]["code"] == "unauthorized"
    wrong = client.post("/api/gallery", data=fields(), headers={"X-API-Key": "guess"})
    assert wrong.status_code == 403 and wrong.get_json()["error"]["code"] == "forbidden"
    assert client.delete("/api/gallery/1").status_code == 401
    assert client.delete("/api/gallery/1", headers={"X-API-Key": "nope"}).status_code == 403
    assert client.get("/api/gallery/1").status_code == 200  # reading needs no key
    assert client.post("/api/search", data={"image": upload(shoe)}).status_code == 200
    ok = client.post("/api/gallery", data=fields(), headers={"X-API-Key": "s3cret"})
    assert ok.status_code == 200  # already in the gallery: the existing item
    assert client.delete("/api/gallery/1", headers={"X-API-Key": "s3cret"}).status_code == 204


def test_changes_by_another_process_show_up_without_a_restart(client, upload, gallery_path,
                                                               gallery_url, model_embedder,
                                                               fashion_test):
    """siamese-index (or another worker) writes; the app sees it at its next request."""
    query = fashion_test.images[9100]
    assert client.get("/healthz").get_json()["items"] == 50
    with Gallery.open(gallery_path, model_embedder, url=gallery_url) as other:
        [new_id] = other.add([query], labels="Added elsewhere")
    assert client.get("/healthz").get_json()["items"] == 51
    assert client.get(f"/api/gallery/{new_id}").get_json()["item"]["label"] == "Added elsewhere"
    data = png(Image.fromarray(query[:, :, 0]))
    best = client.post("/api/search", data={"image": upload(data), "k": "1"}).get_json()
    assert best["matches"][0]["id"] == new_id
    with Gallery.open(gallery_path, model_embedder, url=gallery_url) as other:
        other.remove([new_id])
    best = client.post("/api/search", data={"image": upload(data), "k": "1"}).get_json()
    assert best["matches"][0]["id"] != new_id


def test_two_apps_side_by_side(gallery_path, gallery_url, tmp_path, template_gallery, model_dir,
                               model_embedder):
    """Settings are passed in, not global: two apps with different settings coexist."""
    shutil.copytree(template_gallery, tmp_path / "second")
    a = create_app(Settings(gallery=gallery_path, db_url=gallery_url, model=model_dir, default_k=3),
                   embedder=model_embedder)
    b = create_app(Settings(gallery=tmp_path / "second", model=model_dir, api_key="k"),
                   embedder=model_embedder)
    try:
        a.test_client().delete("/api/gallery/1")
        assert a.test_client().get("/healthz").get_json()["items"] == 49
        assert b.test_client().get("/healthz").get_json()["items"] == 50
        assert b.test_client().delete("/api/gallery/1").status_code == 401
    finally:
        a.extensions["siamese_search"].close()
        b.extensions["siamese_search"].close()


def test_settings_from_the_environment(tmp_path):
    s = Settings.from_env({"SIAMESE_GALLERY": str(tmp_path), "SIAMESE_PORT": "9000",
                           "SIAMESE_API_KEY": "k", "SIAMESE_MAX_IMAGE_MB": "2"},
                          model="m").replace(port=9001, workers=None)
    assert (s.gallery, s.model, s.port, s.workers, s.api_key) == (tmp_path, Path("m"), 9001, 2, "k")
    assert s.max_image_bytes == 2_000_000 and s.url == "http://127.0.0.1:9001/"
    with pytest.raises(ConfigError, match="SIAMESE_PORT='http' is not a valid port"):
        Settings.from_env({"SIAMESE_PORT": "http"})
    with pytest.raises(ConfigError, match="workers must be an integer in 1..64, not 0"):
        Settings(workers=0)
    assert Settings.from_env({"SIAMESE_API_KEY": ""}).api_key is None


def test_the_service_serves_a_gallery_with_the_model_it_remembers(gallery_path, model_dir,
                                                                  tmp_path):
    import json as json_module

    from webapp.settings import BUNDLED_MODEL

    assert Settings(gallery=gallery_path).gallery_entries[0].model_dir() == model_dir.resolve()
    assert Settings(gallery=gallery_path, model=tmp_path).gallery_entries[0].model_dir() == tmp_path
    marker = gallery_path / "gallery.json"
    info = json_module.loads(marker.read_text())
    info.pop("model")  # a gallery made before galleries remembered their model
    marker.write_text(json_module.dumps(info))
    assert Settings(gallery=gallery_path).gallery_entries[0].model_dir() == BUNDLED_MODEL
