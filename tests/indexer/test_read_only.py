"""A gallery folder that cannot be written (a read-only mount; for a user other than root, a folder
without write permission) is searched as usual; a change is refused in one line (commands) or
with 503 storage_unavailable (API), and nothing in the folder changes."""
from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest

from indexer import Gallery
from scripts import index as index_cmd
from scripts import search as search_cmd
from tests.support import cli, error_line
from webapp import Settings, create_app


@pytest.fixture
def read_only_gallery(tmp_path, model_embedder, png_folder):
    """A gallery of the 48 PNGs, then made read-only: bind-mounted read-only as root (who may
    write anywhere else), its write permission taken away otherwise."""
    made = tmp_path / "made"
    with Gallery.create(made, model_embedder) as gallery:
        gallery.add(sorted(png_folder.rglob("*.png")), labels="x")
    if os.geteuid() != 0:
        made.chmod(0o555)
        yield made
        made.chmod(0o755)
        return
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    for command in (["mount", "--bind", made, mounted],
                    ["mount", "-o", "remount,ro,bind", mounted]):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            subprocess.run(["umount", mounted], capture_output=True)
            pytest.fail(f"cannot make a read-only folder here ({' '.join(map(str, command))}: "
                        f"{done.stderr.strip()})")
    yield mounted
    subprocess.run(["umount", mounted], check=True)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_read_only_gallery_is_searched_and_refuses_changes(read_only_gallery, png_folder,
                                                             model_dir, model_embedder, capsys):
    before = snapshot(read_only_gallery)
    query = sorted(png_folder.rglob("*.png"))[5]
    code, out, _ = cli(search_cmd, [query, "--gallery", read_only_gallery, "--model", model_dir,
                                    "-k", "1", "--json"], capsys)
    assert code == 0 and '"distance": 0.0' in out
    new_folder = png_folder.parent / "new"
    new_folder.mkdir()
    (new_folder / "n.png").write_bytes(_new_png())
    code, out, _ = cli(index_cmd, [png_folder, "--gallery", read_only_gallery, "--model",
                                   model_dir], capsys)
    assert code == 0 and "added 0, skipped 48" in out  # nothing new: nothing to write
    code, _, err = cli(index_cmd, [new_folder, "--gallery", read_only_gallery, "--model",
                                   model_dir], capsys)
    reason = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
    assert code == 2 and error_line(err) == (
        f"error: {read_only_gallery / 'gallery.lock'}: cannot open the gallery's lock file to "
        f"write: {reason}")

    app = create_app(Settings(gallery=read_only_gallery, model=model_dir),
                     embedder=model_embedder)
    try:
        client = app.test_client()
        found = client.post("/api/search", data={"image": (io.BytesIO(query.read_bytes()),
                                                           "q.png"), "k": "1"})
        assert found.status_code == 200 and found.get_json()["matches"][0]["distance"] == 0.0
        assert client.get("/healthz").get_json()["items"] == 48
        added = client.post("/api/gallery", data={"image": (io.BytesIO(b"\x89PNG"), "x.png"),
                                                  "label": "y"})
        assert added.status_code in (400, 415)  # a bad image is still a bad image
        new = client.post("/api/gallery", data={"label": "y",
                                                "image": (io.BytesIO(_new_png()), "n.png")})
        assert new.status_code == 503, new.data[:300]
        assert new.get_json()["error"]["code"] == "storage_unavailable"
        assert client.delete("/api/gallery/1").status_code == 503
        assert client.get("/api/gallery/1").status_code == 200
    finally:
        app.extensions["siamese_search"].close()
    assert snapshot(read_only_gallery) == before


def _new_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (28, 28), 77).save(buffer, "PNG")
    return buffer.getvalue()
