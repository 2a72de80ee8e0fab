"""Fixtures for the web tests, flaskr style: `app` and `client` over a real gallery (SQLite, FAISS)
built with the real model from the bundled sample PNGs; `server`, the same app served by a real
gunicorn (`siamese-serve`, two workers) on 127.0.0.1; `browser`, Debian's headless Chromium."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Optional

import pytest

from tests.support import (BACKENDS, PER_LABEL, SAMPLES, copy_gallery, multipart,
                           start_serve)
from webapp import Settings, create_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture(scope="session")
def sample_pngs() -> dict[str, list[Path]]:
    """{label: the first PNG files of that label} from the bundled samples."""
    return {d.name: sorted(d.glob("*.png"))[:PER_LABEL] for d in sorted(SAMPLES.iterdir())}


def build_template(path: Path, embedder, sample_pngs, url=None) -> Path:
    from indexer import Gallery

    with Gallery.create(path, embedder, url=url) as gallery:
        for label, paths in sample_pngs.items():
            gallery.add(paths, labels=label)
    return path


@pytest.fixture(scope="session")
def template_gallery(tmp_path_factory, model_embedder, sample_pngs) -> Path:
    """A flat gallery of the sample PNGs on SQLite, built once; each test gets a copy
    (`gallery_path`)."""
    return build_template(tmp_path_factory.mktemp("template") / "gallery", model_embedder,
                          sample_pngs)


@pytest.fixture(scope="session")
def postgres_template(tmp_path_factory, model_embedder, sample_pngs, postgres) -> tuple[Path, str]:
    """The same gallery on PostgreSQL: its folder and its database's name, copied per test."""
    path = tmp_path_factory.mktemp("template-pg") / "gallery"
    build_template(path, model_embedder, sample_pngs, postgres.create_database("web_template"))
    return path, "web_template"


@pytest.fixture
def copied_gallery(request, tmp_path, backend) -> tuple[Path, Optional[str]]:
    return copy_gallery(request, backend, tmp_path)


@pytest.fixture
def gallery_path(copied_gallery) -> Path:
    """The test's own copy of the test gallery, on SQLite and on PostgreSQL (`gallery_url`)."""
    return copied_gallery[0]


@pytest.fixture
def gallery_url(copied_gallery) -> Optional[str]:
    """The database URL of `gallery_path`: None (its own gallery.db) or a PostgreSQL URL."""
    return copied_gallery[1]


@pytest.fixture
def make_app(gallery_path, gallery_url, model_dir, model_embedder):
    """Apps over the test's gallery, with settings changed as the test asks."""
    apps = []

    def make(**settings):
        settings.setdefault("db_url", gallery_url)
        app = create_app(Settings(gallery=gallery_path, model=model_dir, **settings),
                         embedder=model_embedder)
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["siamese_search"].close()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    """A test client (`tests.support.page_form` gives its page forms their CSRF token)."""
    return app.test_client()


def upload(path_or_bytes, name: str = "image.png") -> tuple[io.BytesIO, str]:
    """A multipart file field for the test client."""
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return io.BytesIO(data), name


@pytest.fixture(name="upload")
def upload_fixture():
    """`upload(path or bytes, name)`: a multipart file field for the test client."""
    return upload


# --- a real gunicorn ------------------------------------------------------------------------------

@pytest.fixture(name="multipart")
def multipart_fixture():
    """`multipart({name: text or (filename, bytes)})`: (body, content type), as curl writes it."""
    return multipart


@pytest.fixture(scope="session", params=BACKENDS)
def server(request, tmp_path_factory, model_dir):
    """`siamese-serve` with two gunicorn workers over a copy of the test gallery (one for the
    session on each back end; the API key is s3cret)."""
    folder = tmp_path_factory.mktemp("served")
    gallery, url = copy_gallery(request, request.param, folder)
    live = start_serve(gallery, model_dir, folder / "serve.log",
                       *(["--db-url", url] if url else []), env={"SIAMESE_API_KEY": "s3cret"})
    yield live
    live.stop()


# --- a real Chromium ----------------------------------------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--hide-scrollbars", "--force-device-scale-factor=1"]


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """Debian's headless Chromium driven by Selenium through Debian's chromedriver (installed by
    .ci/run: apt-get install chromium chromium-driver). Nothing is downloaded."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        assert path.is_file(), f"{path} is missing: apt-get install -y chromium chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_argument("--window-size=1280,900")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Path:
    """Where page screenshots go: SIAMESE_SCREENSHOTS if set (to look at them), else a temp dir."""
    folder = Path(os.environ.get("SIAMESE_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder
