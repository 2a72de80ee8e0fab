"""Fixtures for the indexer tests: the real model, real Fashion-MNIST PNGs, real galleries.

The model is `model_embedder` of tests/conftest.py (`model_dir`: `models/fashion-mnist` when the
repository bundles it, else the `SIAMESE_TEST_MODEL` environment variable, a model directory
written by siamese-train).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import DATASETS, write_fashion_pngs


@pytest.fixture(scope="session")
def fashion():
    """The Fashion-MNIST test split: real images, uint8 (N, 28, 28, 1)."""
    from encoder.datasets import load_fashion_mnist

    return load_fashion_mnist(DATASETS / "fashion-mnist", "test")


@pytest.fixture
def png_folder(tmp_path, fashion) -> Path:
    """48 real Fashion-MNIST PNGs in class sub-folders (all ten classes)."""
    folder = tmp_path / "photos"
    write_fashion_pngs(folder, fashion, range(48))
    return folder


@pytest.fixture
def gallery(tmp_path, model_embedder, png_folder):
    """A flat gallery made with the real model, holding the 48 PNGs of `png_folder`, labelled by
    class."""
    from indexer import Gallery

    paths = sorted(png_folder.rglob("*.png"))
    g = Gallery.create(tmp_path / "gallery", model_embedder)
    g.add(paths, labels=[p.parent.name for p in paths])
    yield g
    g.close()
