"""The verdict through the JSON API and the pages: the domain check, operating points, the
probability and open-set identification, with the bundled model over a real gallery."""
from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from tests.support import page_form

def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def portrait() -> bytes:
    """A real photograph of a person (scikit-image's astronaut): nothing like Fashion-MNIST."""
    from skimage import data

    out = io.BytesIO()
    Image.fromarray(data.astronaut()).save(out, "JPEG")
    return out.getvalue()


def noise(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return png(Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8), "L"))


def field(data: bytes, name: str = "image.png") -> tuple[io.BytesIO, str]:
    return io.BytesIO(data), name


@pytest.fixture(scope="module")
def needs_domain_model(model_embedder):
    assert model_embedder.has_domain_model, "the bundled model ships its domain model"


def test_a_portrait_is_out_of_domain_and_never_verified(client, needs_domain_model):
    body = client.post("/api/search", data={"image": field(portrait(), "me.jpg"),
                                            "threshold": "5"}).get_json()
    assert body["in_domain"] is False and "does not look like" in body["domain_reason"]
    assert "fashion-mnist" in body["domain_reason"]
    assert body["matches"] and not any(m["verified"] for m in body["matches"])
    assert all(m["probability"] is None for m in body["matches"])  # calibrated in domain only
    found = client.post("/api/identify", data={"image": field(portrait(), "me.jpg")}).get_json()
    assert found["in_domain"] is False and found["match"] is None
    assert found["nearest"] is not None and found["nearest"]["verified"] is False


def test_a_portrait_against_noise_is_not_verified(client, needs_domain_model):
    body = client.post("/api/verify", data={"image_a": field(portrait(), "me.jpg"),
                                            "image_b": field(noise())}).get_json()
    assert body["verified"] is False and body["in_domain"] is False
    assert body["domain_reason"].startswith("the first image")


def test_gallery_images_are_in_domain_and_verified_with_a_probability(client, upload, sample_pngs):
    coat = sample_pngs["Coat"][0]
    body = client.post("/api/search", data={"image": upload(coat)}).get_json()
    assert body["in_domain"] is True and body["matches"][0]["verified"]
    first = body["matches"][0]
    assert first["probability"] > 0.95
    assert all(0 <= m["probability"] <= 1 for m in body["matches"])
    # the probability falls as the distance grows
    by_distance = sorted(body["matches"], key=lambda m: m["distance"])
    assert [m["probability"] for m in by_distance] == sorted(
        (m["probability"] for m in by_distance), reverse=True)


def test_operating_points_per_request(client, upload, sample_pngs, model_embedder):
    points = model_embedder.verdicts.operating_points
    assert set(points) == {"balanced", "far-1e-2", "far-1e-3"}
    bag = sample_pngs["Bag"][1]
    for name, threshold in points.items():
        body = client.post("/api/search", data={"image": upload(bag), "k": "8",
                                                "operating_point": name}).get_json()
        assert body["operating_point"] == name and body["threshold"] == pytest.approx(threshold)
        assert all(m["verified"] == (m["distance"] <= threshold) for m in body["matches"])
    strict = client.post("/api/verify", data={"image_a": upload(bag), "image_b": upload(bag),
                                              "operating_point": "far-1e-3"}).get_json()
    assert strict["operating_point"] == "far-1e-3" and strict["verified"]


@pytest.mark.parametrize("path, form, message", [
    ("/api/search", {"operating_point": "strict"}, "unknown operating point 'strict'"),
    ("/api/search", {"operating_point": "balanced", "threshold": "0.5"}, "not both"),
    ("/api/verify", {"operating_point": "far-1e-4"}, "unknown operating point"),
    ("/api/identify", {"fpir": "0"}, "fpir must be between 0 and 1"),
    ("/api/identify", {"fpir": "1.5"}, "fpir must be between 0 and 1"),
    ("/api/identify", {"fpir": "often"}, "fpir must be a number"),
    ("/api/identify", {"fpir": "0.1", "threshold": "0.2"}, "not both"),
])
def test_bad_verdict_parameters_are_400(client, upload, sample_pngs, path, form, message):
    image = sample_pngs["Dress"][0]
    files = ({"image_a": upload(image), "image_b": upload(image)} if path == "/api/verify"
             else {"image": upload(image)})
    r = client.post(path, data={**files, **form})
    assert r.status_code == 400, r.get_json()
    assert r.get_json()["error"]["code"] == "bad_parameter"
    assert message in r.get_json()["error"]["message"]


def test_identify_picks_its_threshold_for_the_target_fpir_at_the_gallery_size(
        client, upload, sample_pngs, model_embedder):
    image = upload(sample_pngs["Shirt"][0])
    loose = client.post("/api/identify", data={"image": image, "fpir": "0.1"}).get_json()
    strict = client.post("/api/identify", data={"image": upload(sample_pngs["Shirt"][0]),
                                                "fpir": "0.001"}).get_json()
    assert loose["operating_point"] == strict["operating_point"] == "fpir"
    assert loose["gallery_size"] == 50 and loose["fpir"] == 0.1
    assert loose["identities"] == 10  # ten labels, five images each
    assert strict["threshold"] < loose["threshold"]
    # 50 items are enough to show 5 false identifications at 0.1: the gallery's own estimate
    assert loose["basis"] == "gallery"
    # ... but not 0.05 of them at 0.001: the card's open-set model, scaled to how far apart
    # this gallery's ten labels lie (its items' median nearest impostor against the card's)
    assert strict["basis"] == "scaled-card"
    card, _ = model_embedder.card.open_set.threshold_for(0.001, 10, 5)
    assert strict["threshold"] == pytest.approx(card * strict["scale"], abs=1e-6)
    assert 0.25 <= strict["scale"] <= 2
    assert loose["match"]["distance"] < 1e-3  # the very image is enrolled


def test_identify_in_an_empty_gallery_is_a_clear_error(make_app, upload, sample_pngs, gallery_path,
                                                      gallery_url, model_embedder):
    from indexer import Gallery

    with Gallery.open(gallery_path, model_embedder, url=gallery_url) as gallery:
        gallery.remove([item.id for item in gallery.items(limit=1000)])
    client = make_app().test_client()
    r = client.post("/api/identify", data={"image": upload(sample_pngs["Bag"][0])})
    assert r.status_code == 400 and "the gallery is empty" in r.get_json()["error"]["message"]
    search = client.post("/api/search", data={"image": upload(sample_pngs["Bag"][0])}).get_json()
    assert search["matches"] == [] and search["in_domain"] is True


def test_a_gallery_default_operating_point_applies_to_every_request(make_app, upload, sample_pngs,
                                                                   gallery_path, gallery_url,
                                                                   model_embedder):
    from indexer import Gallery

    with Gallery.open(gallery_path, model_embedder, url=gallery_url) as gallery:
        gallery.set_verdict(operating_point="far-1e-2", fpir=0.05)
    client = make_app().test_client()
    body = client.post("/api/search", data={"image": upload(sample_pngs["Bag"][0])}).get_json()
    assert body["operating_point"] == "far-1e-2"
    found = client.post("/api/identify", data={"image": upload(sample_pngs["Bag"][0])}).get_json()
    assert found["fpir"] == 0.05
    stats = client.get("/api/stats").get_json()
    assert stats["operating_point"] == "far-1e-2" and stats["fpir"] == 0.05
    assert stats["model"]["domain_model"] is True


def test_the_search_page_says_plainly_that_a_portrait_is_not_what_the_model_knows(
        client, needs_domain_model):
    r = client.post("/", data=page_form(client, {"image": field(portrait(), "me.jpg")}))
    html = r.get_data(as_text=True)
    assert r.status_code == 200
    assert 'data-verdict="out-of-domain"' in html and 'data-verdict="verified"' not in html
    assert "does not look like what this model was trained on" in html
    assert "fashion-mnist" in html
    assert "✓ verified" not in html


def test_the_verify_page_names_the_operating_point_and_probability(client, upload, sample_pngs):
    shoe = sample_pngs["Sandal"][0]
    html = client.post("/verify", data=page_form(client, {
        "image_a": upload(shoe), "image_b": upload(shoe), "operating_point": "far-1e-3"})
    ).get_data(as_text=True)
    assert 'data-verdict="verified"' in html and "operating point far-1e-3" in html
    assert "% same" in html


def test_two_images_the_model_finds_no_features_in_are_not_the_same(client, fashion_test,
                                                                    featureless):
    """A coat and a dress that both silence the encoder meet at distance 0: the API says so,
    and that the model found nothing to compare, not "verified"."""
    labels = fashion_test.labels[featureless]
    a = featureless[0]
    b = featureless[labels != labels[0]][0]
    pair = {"image_a": field(png(Image.fromarray(fashion_test.images[a].squeeze())), "coat.png"),
            "image_b": field(png(Image.fromarray(fashion_test.images[b].squeeze())), "dress.png")}
    body = client.post("/api/verify", data={**pair, "operating_point": "far-1e-3"}).get_json()
    assert body["distance"] == 0 and body["verified"] is False and body["in_domain"] is False
    assert body["domain_reason"].startswith("the first image: the model finds no features")
    html = client.post("/verify", data=page_form(client, {
        "image_a": field(png(Image.fromarray(fashion_test.images[a].squeeze())), "coat.png"),
        "image_b": field(png(Image.fromarray(fashion_test.images[b].squeeze())), "dress.png")})
    ).get_data(as_text=True)
    assert 'data-verdict="verified"' not in html
    assert "The model finds nothing to compare in this image" in html
    assert "does not look like" not in html  # it is Fashion-MNIST: the domain model says so


def test_adding_an_image_the_model_finds_no_features_in_warns(client, fashion_test, featureless):
    """It is added (it is the user's image, and found again as the same file), with a warning
    that nothing else will be verified against it; a plain image gets none."""
    blank = png(Image.fromarray(fashion_test.images[featureless[0]].squeeze()))
    response = client.post("/api/gallery", data={"image": field(blank, "blank.png"),
                                                 "label": "Coat"})
    body = response.get_json()
    assert response.status_code == 201 and body["created"] and body["featureless"] is True
    assert body["warning"] == ("the model finds no features in this image, so no other image "
                               "will be verified against this item")
    again = client.post("/api/gallery", data={"image": field(blank, "blank.png"), "label": "Coat"})
    assert again.status_code == 200 and again.get_json()["featureless"] is True
    plain = png(Image.fromarray(fashion_test.images[9000].squeeze()))
    body = client.post("/api/gallery", data={"image": field(plain, "plain.png"),
                                             "label": "x"}).get_json()
    assert body["featureless"] is False and "warning" not in body


def test_the_item_page_of_an_image_the_model_finds_no_features_in_says_so(client, fashion_test,
                                                                          featureless):
    blank = png(Image.fromarray(fashion_test.images[featureless[1]].squeeze()))
    item = client.post("/api/gallery", data={"image": field(blank, "blank.png"),
                                             "label": "Tee"}).get_json()["item"]
    html = client.get(f"/gallery/{item['id']}").get_data(as_text=True)
    assert 'data-domain="featureless"' in html and "✓ same kind of garment" not in html
    plain = client.get("/gallery/1")
    assert plain.status_code == 200 and 'data-domain="featureless"' not in plain.get_data(
        as_text=True)


def test_a_search_beside_an_item_the_model_finds_no_features_in_does_not_verify_it(
        client, fashion_test, featureless, near_featureless):
    """A shirt the model describes lies within far-1e-3 of the point where every featureless
    image lands: the API marks that item `featureless` and not verified, identification names
    nobody, and the page says why instead of "Verified match"."""
    blank = png(Image.fromarray(fashion_test.images[featureless[0]].squeeze()))
    item = client.post("/api/gallery", data={"image": field(blank, "blank.png"),
                                             "label": "Coat"}).get_json()["item"]
    shirt = png(Image.fromarray(fashion_test.images[near_featureless].squeeze()))
    body = client.post("/api/search", data={"image": field(shirt, "shirt.png"), "k": "3",
                                            "operating_point": "far-1e-3"}).get_json()
    assert body["in_domain"] is True  # the query is fine; the item is not
    first = body["matches"][0]
    assert first["id"] == item["id"] and first["featureless"] is True
    assert first["verified"] is False and first["distance"] < body["threshold"]
    assert [m["featureless"] for m in body["matches"][1:]] == [False, False]
    # The answer is about the nearest item that can be judged, in 1:N as on the page.
    second = body["matches"][1]["id"]
    found = client.post("/api/identify", data={"image": field(shirt, "shirt.png"),
                                               "threshold": "5"}).get_json()
    assert found["match"]["id"] == second and found["nearest"]["featureless"] is False
    html = client.post("/", data=page_form(client, {"image": field(shirt, "shirt.png"), "k": "3",
                                            "threshold": "5"})).get_data(as_text=True)
    assert 'data-verdict="verified"' in html and f"item {second} at distance" in html
    assert f"Item {item['id']} is an image the model finds no features in" in html
    assert html.count("✗ no features") == 1
    strict = client.post("/", data=page_form(client, {
        "image": field(shirt, "shirt.png"), "k": "3", "operating_point": "far-1e-3"})
    ).get_data(as_text=True)
    assert 'data-verdict="none"' in strict
    assert f"the nearest item that can be judged, item {second}, is at distance" in strict


def test_enrolling_a_portrait_flags_it_and_nothing_is_verified_against_it(
        client, sample_pngs, needs_domain_model):
    """The issue's case: a portrait added to the demo gallery answered 201 with no flag, and its
    item page then showed bags "98% same". Now the answer flags it with a warning, the item says
    so, its neighbours are not verified and carry no probability, and a search that finds it
    marks it; the item page and the search page say why."""
    response = client.post("/api/gallery", data={"image": field(portrait(), "me.jpg"),
                                                 "label": "me"})
    body = response.get_json()
    assert response.status_code == 201 and body["created"] and body["in_domain"] is False
    assert body["featureless"] is False and "does not look like" in body["domain_reason"]
    assert body["warning"] == ("the image does not look like what the model was trained on, so "
                               "no other image will be verified against this item")
    item = body["item"]
    assert item["in_domain"] is False and item["domain_score"] is not None
    assert client.get(f"/api/gallery/{item['id']}").get_json()["item"]["in_domain"] is False
    near = client.get(f"/api/gallery/{item['id']}/neighbours?k=5&threshold=5").get_json()
    assert near["in_domain"] is False and near["domain_reason"].startswith("the gallery item:")
    assert not any(m["verified"] for m in near["matches"])
    assert all(m["probability"] is None for m in near["matches"])
    # A garment near it finds it marked and not verified, whatever the threshold.
    bag = sample_pngs["Bag"][0].read_bytes()
    everything = client.post("/api/search", data={"image": field(bag), "k": "60",
                                                  "threshold": "5"}).get_json()
    [found] = [m for m in everything["matches"] if m["id"] == item["id"]]
    assert found["item_in_domain"] is False and not found["verified"]
    assert all(m["verified"] for m in everything["matches"] if m["id"] != item["id"])
    html = client.get(f"/gallery/{item['id']}").get_data(as_text=True)
    assert 'data-domain="out-of-domain"' in html and "✓ same kind of garment" not in html
    page = client.post("/", data=page_form(client, {"image": field(bag), "k": "60", "threshold": "5"}))
    assert 'data-domain="out-of-domain-item"' in page.get_data(as_text=True)
    assert "✗ out of domain" in page.get_data(as_text=True)


def test_the_identify_page_names_the_enrolled_item_or_nobody_with_its_rule(client, sample_pngs,
                                                                          needs_domain_model):
    """1:N in the browser: an enrolled image is identified, with the rule in words (the share of
    strangers taken for someone, the identities enrolled, where the threshold came from) and the
    nearest candidates; a portrait is nobody, said plainly; a bad target is a message on the
    form, not an error page."""
    page = client.get("/identify")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "Who is this?" in html and "data-rule" in html
    assert 'href="/identify" aria-current="page"' in html  # linked from every page's menu
    assert 'href="/identify"' in client.get("/verify").get_data(as_text=True)
    shirt = sample_pngs["Shirt"][0].read_bytes()
    html = client.post("/identify", data=page_form(client, {"image": field(shirt, "shirt.png"),
                                                    "fpir": "0.1"})).get_data(as_text=True)
    assert 'data-verdict="identified"' in html and "Identified: Shirt" in html
    assert ("10% of people or things not enrolled would be taken for one of the 10 enrolled "
            "(50 images), measured on this gallery's own items") in html
    assert html.count('class="card ') == 5 and "✓ identified" in html
    # 50 items cannot show 5 strangers in 1,000: the card's threshold, scaled to this gallery
    html = client.post("/identify", data=page_form(client, {"image": field(shirt, "shirt.png"),
                                                    "fpir": "0.001"})).get_data(as_text=True)
    assert re.search(r"measured on the model's held-out classes and scaled by \d\.\d\d to "
                     r"how far apart this gallery's enrolled lie", html), html
    html = client.post("/identify", data=page_form(client, {"image": field(portrait(), "me.jpg")})
                       ).get_data(as_text=True)
    assert 'data-verdict="out-of-domain"' in html and "✓ identified" not in html
    bad = client.post("/identify", data=page_form(client, {"image": field(shirt, "shirt.png"),
                                                   "fpir": "2"}))
    assert bad.status_code == 400
    assert 'data-field="fpir"' in bad.get_data(as_text=True)


def test_badges_and_percentages_say_what_the_model_judges(client, sample_pngs):
    """The model's card says what one class is ("kind of garment" for the bundled model): a
    verified neighbour reads "✓ same kind of garment", not "✓ same?" (a tick with a question
    mark reads as unsure), and a probability "99% same kind of garment", not "the same garment"."""
    html = client.get("/gallery/1").get_data(as_text=True)
    assert "✓ same kind of garment" in html and "✓ same?" not in html
    assert re.search(r"(\d+|&gt;99|>99)% same kind of garment", html)
    page = client.post("/", data=page_form(client, {"image": field(sample_pngs["Coat"][0].read_bytes())}))
    assert "% same kind of garment" in page.get_data(as_text=True)


@pytest.mark.parametrize("size, kind, mode", [((280, 280), "PNG", "L"), ((1200, 788), "JPEG", "RGB"),
                                              ((300, 200), "TIFF", "RGB"),
                                              ((1500, 1500), "PNG", "RGB")])
def test_every_image_the_page_accepts_is_shown_back(client, size, kind, mode):
    """Searching with an ordinary photo showed "no preview": the preview was made from the
    decoded copy, shrunk, which has no format of its own. A browser format small enough comes
    back as it was sent; anything else as a PNG of at most 512 pixels a side."""
    import base64

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (size[1], size[0], 3 if mode == "RGB" else 1), dtype=np.uint8)
    image = Image.fromarray(pixels.squeeze(), mode)
    data = io.BytesIO()
    image.save(data, kind)
    html = client.post("/", data=page_form(client, {"image": field(data.getvalue(), f"x.{kind.lower()}")})
                       ).get_data(as_text=True)
    assert "no preview" not in html
    src = re.search(r'<figure[^>]*>\s*<img src="(data:image/[a-z]+;base64,[^"]+)"', html).group(1)
    shown = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    if kind in ("PNG", "JPEG") and len(data.getvalue()) <= 4_000_000:
        assert src.startswith(f"data:image/{kind.lower()};") and shown.size == size
    else:
        assert src.startswith("data:image/png;") and max(shown.size) <= 512
