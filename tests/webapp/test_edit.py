"""Editing an item's label and metadata (PATCH), and an item's neighbours: through the API, and
seen at once by another app on the same gallery (another worker or server)."""
from __future__ import annotations

import base64

import pytest


def test_an_edit_changes_label_and_metadata_and_every_app_sees_it(make_app, sample_pngs):
    first, second = make_app().test_client(), make_app().test_client()
    query = {"image": base64.b64encode(sample_pngs["Coat"][0].read_bytes()).decode(), "k": 1}
    top = second.post("/api/search", json=query).get_json()["matches"][0]  # now in its cache
    assert top["label"] == "Coat" and top["metadata"] == {}

    edited = first.patch(f"/api/gallery/{top['id']}", json={"label": "Parka",
                                                             "metadata": {"sku": "P-1"}})
    assert edited.status_code == 200, edited.get_json()
    assert edited.get_json()["item"]["label"] == "Parka"
    again = second.post("/api/search", json=query).get_json()["matches"][0]
    assert (again["id"], again["label"], again["metadata"]) == (top["id"], "Parka", {"sku": "P-1"})
    assert second.get("/api/stats").get_json()["gallery"]["labels"]["Parka"] == 1

    only_metadata = first.patch(f"/api/gallery/{top['id']}", data={"metadata": '{"sku": "P-2"}'},
                                content_type="multipart/form-data")
    item = only_metadata.get_json()["item"]
    assert (item["label"], item["metadata"]) == ("Parka", {"sku": "P-2"})  # the label stays


def test_bad_edits_change_nothing(make_app, sample_pngs):
    client = make_app(api_key="s3cret").test_client()
    key = {"X-API-Key": "s3cret"}
    before = client.get("/api/gallery/1").get_json()["item"]
    cases = [
        (client.patch("/api/gallery/1", json={"label": "x"}), 401),
        (client.patch("/api/gallery/1", json={"label": "x"}, headers={"X-API-Key": "no"}), 403),
        (client.patch("/api/gallery/999999", json={"label": "x"}, headers=key), 404),
        (client.patch("/api/gallery/1", json={}, headers=key), 400),
        (client.patch("/api/gallery/1", json={"label": ""}, headers=key), 400),
        (client.patch("/api/gallery/1", json={"label": "x" * 201}, headers=key), 400),
        (client.patch("/api/gallery/1", json={"metadata": [1]}, headers=key), 400),
        (client.patch("/api/gallery/1", json={"label": "x", "metadata": "{"}, headers=key), 400),
        (client.patch("/api/gallery/1", data="label=x", headers=key,
                      content_type="text/plain"), 415),
    ]
    for response, status in cases:
        assert response.status_code == status, response.get_json()
        assert response.get_json()["error"]["message"]
    assert client.get("/api/gallery/1").get_json()["item"] == before


def test_neighbours_are_the_nearest_other_items(client):
    item = client.get("/api/gallery?limit=1").get_json()["items"][0]
    body = client.get(f"/api/gallery/{item['id']}/neighbours?k=4").get_json()
    matches = body["matches"]
    assert len(matches) == 4 and item["id"] not in [m["id"] for m in matches]
    assert [m["distance"] for m in matches] == sorted(m["distance"] for m in matches)
    assert matches[0]["label"] == item["label"]  # its nearest is one of its kind
    # Judged by the check its image had when it was added
    assert body["in_domain"] is True and body["domain_reason"].startswith("the gallery item: ")
    assert client.get("/api/gallery/999999/neighbours").status_code == 404
    assert client.get(f"/api/gallery/{item['id']}/neighbours?k=0").status_code == 400


@pytest.mark.parametrize("keys, says", [
    ({"api_key": "w"}, "Anyone can search and browse this gallery without a key; adding, editing "
                       "and deleting need its <strong>write key</strong>."),
    ({"api_key": "w", "read_key": "r"}, "Searching and browsing this gallery need its <strong>read "
                                        "key</strong> (or its write key); adding, editing and "
                                        "deleting need its <strong>write key</strong>."),
])
def test_the_sign_in_page_says_what_a_key_opens_on_this_server(make_app, keys, says):
    """With only a write key set it once said the gallery needed a key to search and browse,
    while /gallery answered without one."""
    client = make_app(**keys).test_client()
    html = client.get("/signin").get_data(as_text=True)
    assert says in html and "needs a key to search and browse" not in html
    if "read_key" not in keys:
        assert client.get("/gallery").status_code == 200  # as the page says
