"""Fixtures for the indexer tests: the real model, real Fashion-MNIST PNGs, real galleries.

The model is `model_dir` of tests/conftest.py: `models/fashion-mnist` when the repository bundles
it, else the `SIAMESE_TEST_MODEL` environment variable (a model directory written by siamese-train).
"""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
DATASETS = REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def embedder(model_embedder):
    """The real model (`model_dir`, in tests/conftest.py), not the tiny one of the encoder tests."""
    return model_embedder


@pytest.fixture(scope="session")
def fashion():
    """The Fashion-MNIST test split: real images, uint8 (N, 28, 28, 1)."""
    from encoder.datasets import load_fashion_mnist

    return load_fashion_mnist(DATASETS / "fashion-mnist", "test")


def cli(command, argv, capsys) -> tuple[int, str, str]:
    """Run a command module's `main` as its console script does: (exit status, stdout, stderr)."""
    from scripts.common import run

    with pytest.raises(SystemExit) as exit_info:
        run(lambda: command.main([str(a) for a in argv]))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def error_line(err: str) -> str:
    """The one `error: ...` line a failed command printed."""
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def write_pngs(folder: Path, fashion, indices) -> list[Path]:
    """Fashion-MNIST images as PNG files in class sub-folders (`Ankle boot/00009.png`)."""
    paths = []
    for i in indices:
        label = fashion.class_names[fashion.labels[i]].replace("/", "-")
        path = folder / label / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(fashion.images[i, :, :, 0], "L").save(path)
        paths.append(path)
    return paths


@pytest.fixture
def png_folder(tmp_path, fashion) -> Path:
    """48 real Fashion-MNIST PNGs in class sub-folders (all ten classes)."""
    folder = tmp_path / "photos"
    write_pngs(folder, fashion, range(48))
    return folder


@pytest.fixture
def gallery(tmp_path, embedder, png_folder):
    """A flat gallery holding the 48 PNGs of `png_folder`, labelled by class."""
    from indexer import Gallery

    paths = sorted(png_folder.rglob("*.png"))
    g = Gallery.create(tmp_path / "gallery", embedder)
    g.add(paths, labels=[p.parent.name for p in paths])
    yield g
    g.close()
