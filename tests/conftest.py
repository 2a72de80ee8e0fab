"""Shared fixtures: real data from datasets/ (in the repository), real PNG files, a tiny really-trained model,
and the real model (bundled, or named by SIAMESE_TEST_MODEL) for the gallery and web tests."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support import BACKENDS, new_database, write_fashion_pngs

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT / "datasets"
FASHION = DATASETS / "fashion-mnist"
OMNIGLOT = DATASETS / "omniglot"
BUNDLED_MODEL = ROOT / "models" / "fashion-mnist"


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The real model: `models/fashion-mnist` when the repository bundles it, else the model
    directory (written by siamese-train) named by the `SIAMESE_TEST_MODEL` environment variable."""
    if BUNDLED_MODEL.is_dir():
        return BUNDLED_MODEL
    env = os.environ.get("SIAMESE_TEST_MODEL")
    if env and Path(env).is_dir():
        return Path(env)
    pytest.fail(f"no model for the gallery and web tests: {BUNDLED_MODEL} is missing and "
                f"SIAMESE_TEST_MODEL is {'unset' if not env else repr(env) + ', not a folder'}")


@pytest.fixture(scope="session")
def model_embedder(model_dir):
    """The real model, loaded once for the whole session."""
    from encoder import Embedder

    return Embedder.load(model_dir)


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory, model_dir) -> Path:
    """A second real model (the first with its last layer's weights nudged), so its id differs."""
    from encoder.artifact import compute_model_id, load_model, save_model

    model, card = load_model(model_dir)
    weights = model.get_weights()
    weights[-2] = weights[-2] * np.float32(1.05)
    model.set_weights(weights)
    card = dataclasses.replace(card, model_id=compute_model_id(weights, card.preprocessing,
                                                               card.architecture), domain=None)
    return save_model(tmp_path_factory.mktemp("models") / "nudged", model, card)


# --- the two database back ends ------------------------------------------------------------------

# --- the two database back ends (tests.support.BACKENDS) --------------------------------------------

@pytest.fixture(scope="session")
def postgres():
    """A private PostgreSQL server for the session (`benchmarks.postgres.PrivateCluster`: a
    temporary cluster on 127.0.0.1, stopped and removed at the end). Its absence fails the tests
    that need it, with the command that installs it."""
    from benchmarks.postgres import PrivateCluster

    try:
        cluster = PrivateCluster()
    except RuntimeError as exc:
        pytest.fail(f"the PostgreSQL tests need a PostgreSQL server: {exc}")
    yield cluster
    cluster.remove()


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """Each gallery and web test that takes this (through `db_url`, `gallery`, `gallery_path`...)
    runs on both back ends. A test that is about one of them parametrizes `backend` itself."""
    return request.param


@pytest.fixture
def db_url(request, backend):
    """`url` for `Gallery.create`/`open` (and --db-url): None on SQLite, else a new, empty
    PostgreSQL database."""
    return new_database(request, backend)


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    return FASHION


@pytest.fixture(scope="session")
def omniglot_dir() -> Path:
    return OMNIGLOT


@pytest.fixture(scope="session")
def fashion_test():
    from encoder.datasets import load_fashion_mnist

    return load_fashion_mnist(FASHION, "test")


@pytest.fixture(scope="session")
def fashion_test_checked(model_embedder, fashion_test):
    """The real model's embeddings of the Fashion-MNIST test images, and their domain checks."""
    return model_embedder.embed_checked(fashion_test.images)


@pytest.fixture(scope="session")
def featureless(model_embedder, fashion_test, fashion_test_checked) -> np.ndarray:
    """Indices of the Fashion-MNIST test images the real model finds no features in (its head
    all silent), of at least two labels; tests/encoder/test_verdict.py checks how they are found."""
    found = np.flatnonzero(model_embedder.is_featureless(fashion_test_checked[0]))
    assert len(set(fashion_test.labels[found])) >= 2, "this model has no featureless test images"
    return found


@pytest.fixture(scope="session")
def near_featureless(model_embedder, fashion_test, fashion_test_checked, featureless) -> int:
    """The Fashion-MNIST test image nearest to `featureless[0]` that the model does describe and
    takes for in domain, of another label: near enough to be verified at far-1e-3 against it, were
    a gallery item the model finds no features in judged by distance."""
    from encoder.distance import euclidean

    vectors, checks = fashion_test_checked
    labels = fashion_test.labels
    usable = (np.array([c.in_domain is True for c in checks]) & (labels != labels[featureless[0]])
              & ~model_embedder.is_featureless(vectors))
    to_blank = euclidean(vectors, vectors[featureless[0]])
    found = int(np.argmin(np.where(usable, to_blank, np.inf)))
    assert to_blank[found] < model_embedder.verdicts.rule("far-1e-3").threshold
    return found


@pytest.fixture
def png_folder(tmp_path, fashion_test) -> Path:
    """48 real Fashion-MNIST test PNGs in class sub-folders (all ten classes)."""
    folder = tmp_path / "photos"
    write_fashion_pngs(folder, fashion_test, range(48))
    return folder


def write_pngs(folder: Path, images: np.ndarray, labels: np.ndarray, names: list[str]) -> Path:
    """A class-per-subfolder tree of real PNG files."""
    for i, (img, label) in enumerate(zip(images, labels)):
        d = folder / names[label]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.squeeze(-1)).save(d / f"{i:05d}.png")
    return folder


@pytest.fixture(scope="session")
def small_folder(tmp_path_factory, fashion_test) -> Path:
    """30 images of each of 4 Fashion-MNIST classes as PNG files."""
    pick = np.concatenate([np.nonzero(fashion_test.labels == c)[0][:30] for c in (0, 1, 7, 8)])
    names = [n.replace("/", "-") for n in fashion_test.class_names]
    return write_pngs(tmp_path_factory.mktemp("small"), fashion_test.images[pick],
                      fashion_test.labels[pick], names)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, small_folder) -> Path:
    """A model really trained (briefly) by `encoder.training.train` on the small folder, its domain
    check without the leave-one-kind-out measurement (a dozen more checks: test_domain.py)."""
    from encoder.datasets import load_image_folder
    from encoder.training import TrainConfig, train

    out = tmp_path_factory.mktemp("models") / "tiny"
    ds = load_image_folder(small_folder)
    train(ds, TrainConfig(epochs=10, seed=3, classes_per_batch=4, images_per_class=8,
                          val_fraction=0.2, val_split="image", augment="none",
                          min_steps_per_epoch=1, domain_leave_out=False), out, report=lambda s: None)
    return out


@pytest.fixture(scope="session")
def tiny_embedder(tiny_model):
    """The tiny model of `tiny_model`, loaded once (the real one is `model_embedder`)."""
    from encoder import Embedder

    return Embedder.load(tiny_model)
