"""The second hardening audit's findings that live in the app (issue 25): text that is not valid
Unicode, metadata without a size limit, ids in other scripts' digits, host names that are not the
server's, `next` that leads off the site, sign-out with no keys, and the session's secret."""
from __future__ import annotations

import json
import os
import stat
from urllib.parse import urlsplit

import pytest

from indexer.records import MAX_METADATA_BYTES
from tests.support import page_form
from webapp import Settings


def test_text_that_is_not_valid_unicode_is_refused_and_every_page_still_shows(client):
    # "\ud800" in JSON is a lone surrogate: Python reads it, UTF-8 cannot write it.
    for body in ('{"metadata": {"a": "\\ud800"}}', '{"metadata": {"\\udc00": 1}}',
                 '{"label": "Bag\\ud800"}'):
        r = client.patch("/api/gallery/2", data=body, content_type="application/json")
        assert r.status_code == 400, body
        assert "valid Unicode" in r.get_json()["error"]["message"]
    for page in ("/gallery", "/gallery/2", "/api/gallery/2", "/api/gallery"):
        assert client.get(page).status_code == 200, page


def test_metadata_has_one_size_limit_on_every_path(client, sample_pngs):
    big = {"notes": "x" * MAX_METADATA_BYTES}
    r = client.patch("/api/gallery/2", json={"metadata": big})
    assert r.status_code == 400
    assert f"at most {MAX_METADATA_BYTES:,} bytes" in r.get_json()["error"]["message"]
    many = {f"k{i}": i for i in range(20_000)}  # small values, many keys: over the limit too
    assert client.patch("/api/gallery/2", json={"metadata": many}).status_code == 400
    as_form = client.patch("/api/gallery/2", data={"metadata": json.dumps(big)},
                           content_type="multipart/form-data")
    assert as_form.status_code == 400
    added = client.post("/api/gallery", data={"image": (open(sample_pngs["Bag"][0], "rb"), "b.png"),
                                              "label": "Bag", "metadata": json.dumps(big)})
    assert added.status_code == 400
    fits = {"notes": "x" * (MAX_METADATA_BYTES - 100)}
    assert client.patch("/api/gallery/2", json={"metadata": fits}).status_code == 200
    assert len(client.get("/gallery").get_data()) < 10 * MAX_METADATA_BYTES


def test_ids_are_ascii_digits_only(client):
    before = client.get("/api/gallery/3")
    assert before.status_code == 200
    for path in ("/api/gallery/\u0663", "/api/gallery/\uff13", "/api/gallery/3\u0660"):
        assert client.delete(path).status_code == 404, path
        assert client.get(path).status_code == 404, path
    assert client.get("/api/gallery/3").get_json() == before.get_json()  # not deleted
    # In a query: not an item id (404), and not item 3 either.
    page = client.get("/?item=\u0663")
    assert page.status_code == 404 and "Gallery item 3" not in page.get_data(as_text=True)
    assert "Gallery item 3" in client.get("/?item=3").get_data(as_text=True)
    # Numbers in parameters too: "k=٣" is not 3.
    r = client.get("/api/gallery?limit=\u0663")
    assert r.status_code == 400 and "limit must be" in r.get_json()["error"]["message"]


def test_requests_for_another_host_name_are_refused_before_any_view(make_app):
    app = make_app()
    client = app.test_client()
    for path in ("/api/gallery", "/healthz", "/gallery"):
        r = client.get(path, headers={"Host": "evil.example"})
        assert r.status_code == 400, path
    r = client.delete("/api/gallery/1", headers={"Host": "evil.example:8000"})
    assert r.status_code == 400 and "evil.example" in r.get_json()["error"]["message"]
    assert client.get("/api/gallery/1").status_code == 200  # still there
    for host in ("127.0.0.1:8000", "localhost", "[::1]:8000"):
        assert client.get("/healthz", headers={"Host": host}).status_code == 200, host
    shop = make_app(allowed_hosts=("shop.example",)).test_client()
    assert shop.get("/healthz", headers={"Host": "Shop.Example:443"}).status_code == 200
    assert shop.get("/healthz", headers={"Host": "evil.example"}).status_code == 400


def test_settings_name_the_hosts_of_the_bound_address():
    local = Settings(gallery="g")
    assert all(local.host_allowed(h) for h in ("127.0.0.1", "localhost", "[::1]"))
    assert not local.host_allowed("10.0.0.7") and not local.host_allowed("rebind.evil.example")
    everywhere = Settings(gallery="g", host="0.0.0.0")
    assert everywhere.host_allowed("10.0.0.7") and everywhere.host_allowed("::1")
    assert not everywhere.host_allowed("rebind.evil.example")
    assert Settings(gallery="g", allowed_hosts=("*",)).host_allowed("anything.example")
    env = Settings.from_env({"SIAMESE_GALLERY": "g", "SIAMESE_ALLOWED_HOSTS": "a.example, B.example"})
    assert env.allowed_hosts == ("a.example", "b.example")


@pytest.mark.parametrize("target", ["/%09/evil.example/", "//evil.example/", "/\\evil.example",
                                    "https://evil.example/", "/%0a/evil.example", "/ok%0d%0aSet-Cookie:x=1",
                                    "javascript:alert(1)", "/%2F/evil.example"])
def test_sign_in_goes_back_only_to_a_path_of_this_site(make_app, target):
    app = make_app(api_key="w" * 20)
    client = app.test_client()
    r = client.post(f"/signin?next={target}", data=page_form(client, {"key": "w" * 20}))
    assert r.status_code == 303
    location = r.headers["Location"]
    parts = urlsplit(location)
    assert not parts.scheme and not parts.netloc and location.startswith("/")
    assert not location.startswith("//") and not any(c in location for c in "\\\t\r\n")
    ok = client.post("/signin?next=/gallery%3Flabel%3DBag", data=page_form(client, {"key": "w" * 20}))
    assert ok.headers["Location"] == "/gallery?label=Bag"


def test_sign_out_works_on_a_server_with_no_keys(client):
    r = client.post("/signout", data=page_form(client, {}))
    assert r.status_code == 303 and r.headers["Location"] == "/"


def test_the_session_secret_is_random_kept_with_the_gallery_and_shared(make_app, gallery_path):
    first = make_app(api_key="w" * 20)
    secret = gallery_path / "server-secret"
    text = secret.read_text().strip()
    assert len(text) == 64 and int(text, 16) >= 0
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    second = make_app(api_key="w" * 20, read_key="r" * 20)  # other keys, the same secret
    assert second.secret_key == first.secret_key == text.encode()
    # A sign-in on one server (or worker) counts on another that reads the same secret.
    a = first.test_client()
    a.post("/signin", data=page_form(a, {"key": "w" * 20}))
    cookie = a.get_cookie("siamese_session")
    assert cookie is not None and "w" * 20 not in cookie.value
    b = second.test_client()
    b.set_cookie("siamese_session", cookie.value)
    assert b.delete("/api/gallery/1").status_code == 204
    # When the key changes, a sign-in made with the old one no longer counts.
    changed = make_app(api_key="v" * 20).test_client()
    changed.set_cookie("siamese_session", cookie.value)
    assert changed.delete("/api/gallery/2").status_code == 401


def test_an_unreadable_secret_file_is_a_clear_error(make_app, tmp_path):
    from encoder.errors import ConfigError

    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(ConfigError, match="at least 32"):
        make_app(secret_file=short)


def test_the_session_cookie_is_secure_behind_a_trusted_tls_proxy(make_app):
    def cookie(app, **headers):
        client = app.test_client()
        r = client.post("/signin", data=page_form(client, {"key": "w" * 20}), headers=headers)
        assert r.status_code == 303
        return next(h for h in r.headers.getlist("Set-Cookie") if h.startswith("siamese_session="))

    direct = make_app(api_key="w" * 20)
    assert "Secure" not in cookie(direct, **{"X-Forwarded-Proto": "https"})  # not trusted
    proxied = make_app(api_key="w" * 20, trusted_proxies=1)
    assert "Secure" in cookie(proxied, **{"X-Forwarded-Proto": "https"})
    assert "Secure" not in cookie(proxied)


def test_an_icon_hiding_a_huge_png_is_refused_on_every_path(client):
    import io

    from PIL import Image

    from tests.encoder.test_images import ico_holding

    big = io.BytesIO()
    Image.new("L", (9000, 9000)).save(big, "PNG")
    ico = ico_holding(big.getvalue())
    before = client.get("/healthz").get_json()["items"]
    search = client.post("/api/search", data={"image": (io.BytesIO(ico), "x.ico")})
    assert search.status_code == 415 and "not an image file" in search.get_json()["error"]["message"]
    add = client.post("/api/gallery", data={"image": (io.BytesIO(ico), "x.ico"), "label": "x"})
    assert add.status_code == 415
    assert client.get("/healthz").get_json()["items"] == before


def test_signing_out_revokes_the_session_everywhere(make_app):
    """A copy of a signed-in cookie, taken before sign-out, no longer opens the gallery: not on
    this server, nor on another sharing its database and secret."""
    app = make_app(api_key="w" * 20)
    browser = app.test_client()
    browser.post("/signin", data=page_form(browser, {"key": "w" * 20}))
    copied = browser.get_cookie("siamese_session").value
    other = make_app(api_key="w" * 20).test_client()  # another worker or server
    other.set_cookie("siamese_session", copied)
    assert other.get("/gallery/add").status_code == 200  # signed in to write: the add page
    r = browser.post("/signout", data=page_form(browser, {}))
    assert r.status_code == 303
    assert browser.get("/gallery/add").status_code == 302  # signed out here
    thief = app.test_client()
    thief.set_cookie("siamese_session", copied)
    for client in (thief, other):
        refused = client.get("/gallery/add")
        assert refused.status_code == 302 and "/signin" in refused.headers["Location"]
        assert client.delete("/api/gallery/1").status_code == 401
    # Signing in again makes a new session, which works.
    browser.post("/signin", data=page_form(browser, {"key": "w" * 20}))
    assert browser.get("/gallery/add").status_code == 200
