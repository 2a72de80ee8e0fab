"""A deleted item leaves no trace in the SQLite database files: not its image bytes, not its
metadata, not its embedding."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from indexer import Gallery


def database_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.glob("gallery.db*")))


def test_a_deleted_item_leaves_no_bytes_in_the_database_files(tmp_path, model_embedder,
                                                               png_folder):
    files = sorted(png_folder.rglob("*.png"))[:6]
    with Gallery.create(tmp_path / "g", model_embedder) as gallery:
        ids = gallery.add(files, labels="x",
                          metadata=[{"owner": f"TOPSECRET-{i:04d}"} for i in range(len(files))])
        other = Gallery.open(tmp_path / "g", model_embedder)  # a second reader, as a server has
        assert len(other) == len(files)
        _, vectors = gallery.embeddings([ids[2]])
        traces = [files[2].read_bytes()[16:96], b"TOPSECRET-0002",
                  np.asarray(vectors[0], np.float32).tobytes()[:128]]
        before = database_bytes(gallery.path)
        assert all(t in before for t in traces)  # the check can see them while they are there
        gallery.remove(ids[2])
        after = database_bytes(gallery.path)
        assert [t in after for t in traces] == [False, False, False]
        assert b"TOPSECRET-0003" in after  # the others are kept
        other.refresh()
        assert len(other) == len(files) - 1
        other.close()
