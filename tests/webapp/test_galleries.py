"""Several galleries behind one server: each with its own model, its own items and its own keys,
at /api/galleries/NAME/...; the first also at /api/...."""
from __future__ import annotations

import base64
import zipfile
from pathlib import Path

import pytest

from tests.support import REPO, start_serve
from webapp import Settings, create_app
from webapp.settings import GalleryEntry

OMNIGLOT_MODEL = REPO / "models" / "omniglot"


@pytest.fixture(scope="module")
def omniglot_pngs(tmp_path_factory, omniglot_dir) -> dict[str, list[Path]]:
    """Two images of each of three Omniglot characters, as PNG files: {character: [paths]}."""
    folder = tmp_path_factory.mktemp("omniglot")
    found: dict[str, list[Path]] = {}
    with zipfile.ZipFile(omniglot_dir / "images_background_small1.zip") as zf:
        for name in sorted(n for n in zf.namelist() if n.endswith(".png")):
            character = "-".join(name.split("/")[-3:-1])
            if len(found) == 3 and character not in found or len(found.get(character, [])) == 2:
                continue
            path = folder / character / Path(name).name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(zf.read(name))
            found.setdefault(character, []).append(path)
    return found


@pytest.fixture(scope="module")
def staff_template(tmp_path_factory, omniglot_pngs) -> Path:
    """A second gallery, with another model (Omniglot's): the first image of each character."""
    from encoder import Embedder
    from indexer import Gallery

    path = tmp_path_factory.mktemp("staff") / "staff"
    with Gallery.create(path, Embedder.load(OMNIGLOT_MODEL)) as gallery:
        for character, paths in omniglot_pngs.items():
            gallery.add(paths[:1], labels=character)
    return path


@pytest.fixture
def staff_path(staff_template, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(staff_template, tmp_path / "staff"))


@pytest.fixture
def two(gallery_path, gallery_url, staff_path, model_dir, model_embedder):
    """A test client of an app serving the test gallery as `shop` (open) and the Omniglot gallery
    as `staff` (read key r3ad, write key wr1te)."""
    settings = Settings(galleries=(
        GalleryEntry("shop", gallery_path, model=model_dir, db_url=gallery_url),
        GalleryEntry("staff", staff_path, api_key="wr1te", read_key="r3ad")))
    app = create_app(settings, embedder=model_embedder)
    yield app.test_client()
    app.extensions["siamese_search"].close()


READ, WRITE = {"X-API-Key": "r3ad"}, {"X-API-Key": "wr1te"}


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_each_gallery_answers_at_its_name_with_its_own_model(two, model_embedder, omniglot_pngs,
                                                             sample_pngs):
    listed = two.get("/api/galleries").get_json()["galleries"]
    assert [g["name"] for g in listed] == ["shop", "staff"]
    shop, staff = listed
    assert shop["default"] and not staff["default"]
    assert shop["items"] == 50 and staff["items"] is None  # staff's count needs its read key
    assert shop["model"] == model_embedder.model_id and staff["model"] != shop["model"]
    assert staff["read_key_required"] and staff["write_key_required"]
    assert shop["url"] == "/api/galleries/shop" and staff["url"] == "/api/galleries/staff"
    assert two.get("/api/galleries", headers=READ).get_json()["galleries"][1]["items"] == 3

    character, paths = next(iter(omniglot_pngs.items()))
    found = two.post("/api/galleries/staff/search", json={"image": b64(paths[1]), "k": 3},
                     headers=READ).get_json()
    assert found["model"] == staff["model"]
    assert found["matches"][0]["label"] == character  # another image of the same character
    image_url = found["matches"][0]["image_url"]
    assert image_url.startswith("/api/galleries/staff/gallery/")
    assert two.get(image_url, headers=READ).data == paths[0].read_bytes()

    default = two.post("/api/search", json={"image": b64(sample_pngs["Bag"][0])}).get_json()
    assert default["model"] == shop["model"] and default["matches"][0]["label"] == "Bag"
    assert default["matches"][0]["image_url"].startswith("/api/gallery/")
    named = two.post("/api/galleries/shop/search", json={"image": b64(sample_pngs["Bag"][0])})
    assert [m["id"] for m in named.get_json()["matches"]] == [m["id"] for m in default["matches"]]


def test_a_write_to_one_gallery_never_shows_in_another(two, sample_pngs, omniglot_pngs):
    before = two.get("/api/gallery").get_json()["total"]
    character, paths = list(omniglot_pngs.items())[1]
    added = two.post("/api/galleries/staff/gallery", headers=WRITE,
                     json={"image": b64(paths[1]), "label": character, "metadata": {"desk": 4}})
    assert added.status_code == 201, added.get_json()
    item = added.get_json()["item"]
    assert item["metadata"] == {"desk": 4}
    assert added.headers["Location"] == f"/api/galleries/staff/gallery/{item['id']}"
    assert two.get("/api/galleries/staff/gallery", headers=READ).get_json()["total"] == 4
    assert two.get("/api/gallery").get_json()["total"] == before  # the default: shop
    assert two.get("/api/galleries/shop/gallery").get_json()["total"] == before
    shop_ids = {i["id"] for i in two.get("/api/gallery?limit=1000").get_json()["items"]}
    gone = two.delete(f"/api/galleries/staff/gallery/{item['id']}", headers=WRITE)
    assert gone.status_code == 204
    assert {i["id"] for i in two.get("/api/gallery?limit=1000").get_json()["items"]} == shop_ids


def test_each_gallery_keeps_its_own_keys(two, sample_pngs, omniglot_pngs):
    paths = next(iter(omniglot_pngs.values()))
    search = lambda **kw: two.post("/api/galleries/staff/search", json={"image": b64(paths[1])},
                                   **kw)
    refused = search()
    assert refused.status_code == 401 and "X-API-Key" in refused.get_json()["error"]["message"]
    assert search(headers={"X-API-Key": "guess"}).status_code == 403
    assert search(headers=READ).status_code == 200
    assert search(headers=WRITE).status_code == 200  # the write key reads too
    assert two.get("/api/galleries/staff/stats").status_code == 401
    assert two.get("/api/galleries/staff/gallery/1/image").status_code == 401
    add = {"image": b64(paths[0]), "label": "x"}
    as_reader = two.post("/api/galleries/staff/gallery", json=add, headers=READ)
    assert as_reader.status_code == 403 and "write key" in as_reader.get_json()["error"]["message"]
    # The shop has no keys: its reads and writes are open, and staff's keys are not its keys.
    assert two.post("/api/search", json={"image": b64(sample_pngs["Bag"][0])}).status_code == 200
    assert two.get("/api/galleries/shop/stats", headers={"X-API-Key": "nonsense"}).status_code == 200


def test_an_unknown_gallery_is_a_404_naming_those_there_are(two, sample_pngs):
    for method, path in [("GET", "/api/galleries/nope/stats"), ("POST", "/api/galleries/nope/search"),
                         ("GET", "/api/galleries/nope/gallery/1/image"),
                         ("DELETE", "/api/galleries/nope/gallery/1"),
                         ("GET", "/api/galleries/NOPE/gallery")]:
        response = two.open(path, method=method)
        assert response.status_code == 404, (path, response.data[:200])
        error = response.get_json()["error"]
        assert error["code"] == "not_found" and "shop, staff" in error["message"], error
    page = two.get("/galleries/nope/")
    assert page.status_code == 404 and b"No gallery named" in page.data
    assert b"gallery=nope" not in page.data  # its links lead to pages that are there


def test_gallery_names_and_settings_are_checked():
    from encoder.errors import ConfigError

    for bad in ("", "Shop", "a/b", "-x", "x" * 64, "caf\u00e9"):
        with pytest.raises(ConfigError, match="gallery name"):
            GalleryEntry(bad, Path("g"))
    with pytest.raises(ConfigError, match="same name: a"):
        Settings(galleries=(GalleryEntry("a", Path("x")), GalleryEntry("a", Path("y"))))
    assert GalleryEntry.named_after(Path("/data/Shop Photos")).name == "shop-photos"
    assert GalleryEntry.named_after(Path("/data/___")).name == "gallery"


def test_serve_flags_name_galleries_and_give_each_its_keys(tmp_path):
    from scripts.serve import parser, settings_from

    args = parser().parse_args(["--gallery", "shop=galleries/a", "--gallery", "/srv/Faces",
                                "--gallery", "./x=y", "--api-key", "k", "--model", "m"])
    settings = settings_from(args, environ={"SIAMESE_API_KEY_FACES": "fk",
                                            "SIAMESE_READ_KEY_FACES": "fr",
                                            "SIAMESE_DB_URL_SHOP": "sqlite:////tmp/s.db"})
    shop, faces, odd = settings.gallery_entries
    assert (shop.name, shop.path, shop.model, shop.db_url) == (
        "shop", Path("galleries/a"), Path("m"), "sqlite:////tmp/s.db")
    assert (faces.name, faces.path, faces.model, faces.api_key, faces.read_key) == (
        "faces", Path("/srv/Faces"), None, "fk", "fr")
    assert (odd.name, odd.path, odd.api_key, odd.read_key) == ("x-y", Path("./x=y"), "k", None)
    assert settings.gallery == Path("galleries/a")  # the default
    one = settings_from(parser().parse_args([]), environ={"SIAMESE_GALLERY": "/srv/g"})
    assert [e.name for e in one.gallery_entries] == ["g"] and one.galleries == ()


@pytest.mark.slow
def test_siamese_serve_serves_two_galleries(gallery_path, gallery_url, staff_path, model_dir,
                                            tmp_path, omniglot_pngs, sample_pngs):
    server = start_serve(gallery_path, model_dir, tmp_path / "serve.log",
                         *(["--db-url", gallery_url] if gallery_url else []),
                         "--gallery", f"staff={staff_path}",
                         env={"SIAMESE_READ_KEY_STAFF": "r3ad"})
    try:
        status, body = server.json("GET", "/api/galleries")
        assert status == 200
        assert [(g["name"], g["items"]) for g in body["galleries"]] == [
            (gallery_path.name, 50), ("staff", None)]
        status, found = server.json("POST", "/api/galleries/staff/search", headers=READ,
                                    json_body={"image": b64(next(iter(omniglot_pngs.values()))[1])})
        assert status == 200 and found["model"] == body["galleries"][1]["model"]
        status, _ = server.json("POST", "/api/galleries/staff/search",
                                json_body={"image": b64(sample_pngs["Bag"][0])})
        assert status == 401
        log = (tmp_path / "serve.log").read_text()
        assert log.count("(and 1 more gallery)") == 2  # both workers loaded both
    finally:
        server.stop()
