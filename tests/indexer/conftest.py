"""Fixtures for the indexer tests: real galleries of real Fashion-MNIST PNGs (`png_folder`, in
tests/conftest.py).

The model is `model_embedder` of tests/conftest.py (`model_dir`: `models/fashion-mnist` when the
repository bundles it, else the `SIAMESE_TEST_MODEL` environment variable, a model directory
written by siamese-train).
"""
from __future__ import annotations

import pytest


@pytest.fixture
def gallery(tmp_path, model_embedder, png_folder, db_url):
    """A flat gallery made with the real model, holding the 48 PNGs of `png_folder`, labelled by
    class; on SQLite and on PostgreSQL (`db_url`)."""
    from indexer import Gallery

    paths = sorted(png_folder.rglob("*.png"))
    g = Gallery.create(tmp_path / "gallery", model_embedder, url=db_url)
    g.add(paths, labels=[p.parent.name for p in paths])
    yield g
    g.close()
