"""siamese-gallery: stats, check, export and import (a backup that round-trips)."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from indexer import Gallery
from scripts import gallery as gallery_cmd
from scripts import index as index_cmd
from tests.support import cli, error_line, write_fashion_pngs


def built(tmp_path, png_folder, model_dir, capsys):
    gallery = tmp_path / "g"
    code, _, err = cli(index_cmd, [png_folder, "--gallery", gallery, "--model", model_dir,
                                   "--index", "hnsw:m=8", "--operating-point", "far-1e-2"], capsys)
    assert code == 0, err
    with Gallery.open(gallery, _embedder(model_dir)) as g:
        g.remove(g.items(limit=1)[0].id)  # a gap in the ids, which the import must keep
        first = g.items(limit=1)[0]
    return gallery, first


_EMBEDDERS = {}


def _embedder(model_dir):
    from encoder import Embedder

    if model_dir not in _EMBEDDERS:
        _EMBEDDERS[model_dir] = Embedder.load(model_dir)
    return _EMBEDDERS[model_dir]


def test_export_then_import_round_trips_every_item(tmp_path, png_folder, model_dir, capsys):
    gallery, _ = built(tmp_path, png_folder, model_dir, capsys)
    with Gallery.open(gallery, _embedder(model_dir)) as g:
        g.add(sorted(png_folder.rglob("*.png"))[0], labels="again")  # already there: same id
        items = g.items(limit=1000)
        ids, vectors = g.embeddings()
        images = {i.id: g.image(i.id) for i in items}
    code, out, err = cli(gallery_cmd, ["export", gallery, tmp_path / "backup.zip"], capsys)
    assert code == 0, err
    assert out.strip() == f"exported {len(items)} items of {gallery} to {tmp_path / 'backup.zip'}"
    code, out, err = cli(gallery_cmd, ["import", tmp_path / "backup.zip", tmp_path / "copy",
                                       "--model", model_dir], capsys)
    assert code == 0, err
    with Gallery.open(tmp_path / "copy", _embedder(model_dir)) as copy:
        assert copy.items(limit=1000) == items  # ids, labels, metadata, sources, sizes, dates
        assert {i.id: copy.image(i.id) for i in items} == images
        copy_ids, copy_vectors = copy.embeddings()
        assert np.array_equal(copy_ids, ids) and np.array_equal(copy_vectors, vectors)
        stats = copy.stats()
        assert (stats.operating_point, stats.index) == ("far-1e-2", "hnsw:m=8,ef_construction=80,"
                                                        "ef_search=64")
        query = images[items[3].id][0]
        assert copy.search(query, k=1)[0].id == items[3].id
        new = copy.add(np.zeros((28, 28), np.uint8), labels="new")  # ids go on past the last
        assert new[0] > max(i.id for i in items)


def test_import_refuses_another_model_unless_told_to_reembed(tmp_path, png_folder, model_dir,
                                                             other_model_dir, capsys):
    gallery, _ = built(tmp_path, png_folder, model_dir, capsys)
    cli(gallery_cmd, ["export", gallery, tmp_path / "backup.zip"], capsys)
    code, _, err = cli(gallery_cmd, ["import", tmp_path / "backup.zip", tmp_path / "other",
                                     "--model", other_model_dir], capsys)
    assert code == 2 and "was embedded with model" in error_line(err)
    assert not (tmp_path / "other").exists()  # nothing half made
    code, out, err = cli(gallery_cmd, ["import", tmp_path / "backup.zip", tmp_path / "other",
                                       "--model", other_model_dir, "--reembed"], capsys)
    assert code == 0, err
    with Gallery.open(tmp_path / "other", _embedder(other_model_dir)) as other:
        assert other.model_id == _embedder(other_model_dir).model_id and len(other) > 0


def test_bad_exports_are_one_error_line_and_leave_nothing(tmp_path, png_folder, model_dir, capsys):
    (tmp_path / "notes.zip").write_text("not a zip")
    code, _, err = cli(gallery_cmd, ["import", tmp_path / "notes.zip", tmp_path / "g1",
                                     "--model", model_dir], capsys)
    assert code == 2 and "not a gallery export" in error_line(err)
    gallery, _ = built(tmp_path, png_folder, model_dir, capsys)
    cli(gallery_cmd, ["export", gallery, tmp_path / "backup.zip"], capsys)
    with zipfile.ZipFile(tmp_path / "backup.zip") as src, \
            zipfile.ZipFile(tmp_path / "damaged.zip", "w") as dst:
        first_image = next(n for n in src.namelist() if n.startswith("images/"))
        for info in src.infolist():
            data = src.read(info)
            if info.filename == first_image:
                data = data[:-8] + b"\0" * 8  # its bytes no longer match its sha256
            dst.writestr(info, data)
    code, _, err = cli(gallery_cmd, ["import", tmp_path / "damaged.zip", tmp_path / "g2",
                                     "--model", model_dir], capsys)
    assert code == 2 and "is damaged in the export" in error_line(err)
    assert not (tmp_path / "g2").exists() and not list(tmp_path.glob(".g2*"))


def test_stats_and_check(tmp_path, png_folder, model_dir, capsys):
    gallery, _ = built(tmp_path, png_folder, model_dir, capsys)
    code, out, _ = cli(gallery_cmd, ["stats", gallery, "--json"], capsys)
    assert code == 0 and json.loads(out)["operating_point"] == "far-1e-2"
    code, out, _ = cli(gallery_cmd, ["check", gallery], capsys)
    assert code == 0 and out.startswith(f"ok: {gallery}: ")
    (gallery / "index.faiss").unlink()  # derived data: noted, and rebuilt by opening
    code, out, _ = cli(gallery_cmd, ["check", gallery], capsys)
    assert code == 0 and "note: the index file was not current (no index.faiss)" in out
    db = gallery / "gallery.db"
    data = bytearray(db.read_bytes())
    middle = len(data) // 2 // 4096 * 4096
    data[middle:middle + 4096] = b"\xab" * 4096  # 4 KiB of garbage in the middle
    db.write_bytes(bytes(data))
    code, out, err = cli(gallery_cmd, ["check", gallery], capsys)
    assert code == 1 and "Traceback" not in err, (out, err)
    assert out.startswith("damaged: database: "), out


def test_check_names_the_items_the_model_finds_no_features_in(
        tmp_path, png_folder, model_dir, capsys, fashion_test, featureless):
    """An operator's way to find the enrolments that can never be matched, and redo them."""
    write_fashion_pngs(png_folder, fashion_test, featureless[:2])
    gallery = tmp_path / "g"
    assert cli(index_cmd, [png_folder, "--gallery", gallery, "--model", model_dir], capsys)[0] == 0
    with Gallery.open(gallery, _embedder(model_dir)) as g:
        blank = sorted(i.id for i in g.items(limit=100)
                       if int(i.source.rsplit("/", 1)[-1][:-4]) in set(featureless[:2].tolist()))
    code, out, _ = cli(gallery_cmd, ["check", gallery], capsys)
    assert code == 0 and len(blank) == 2
    assert (f"note: the model finds no features in 2 item(s), so nothing will be verified "
            f"against them; enrol another image of each: {blank[0]}, {blank[1]}") in out, out


def _tables(url: str) -> list[str]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        return sqlalchemy.inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_a_backup_moves_into_postgresql_with_its_images_in_a_folder(
        tmp_path, png_folder, model_dir, capsys, postgres, monkeypatch):
    """The deployer's move from one box to a shared database: export the SQLite gallery, import
    it into PostgreSQL (--db-url) with its images in a folder (--originals); every action then
    takes --db-url (or SIAMESE_DB_URL, as siamese-serve does), and says so when it is missing."""
    gallery, _ = built(tmp_path, png_folder, model_dir, capsys)
    backup, again = tmp_path / "backup.zip", tmp_path / "again.zip"
    assert cli(gallery_cmd, ["export", gallery, backup], capsys)[0] == 0
    url, moved, images = postgres.create_database("moved"), tmp_path / "moved", tmp_path / "images"
    code, out, err = cli(gallery_cmd, ["import", backup, moved, "--db-url", url,
                                       "--originals", images], capsys)
    with zipfile.ZipFile(backup) as zf:
        items = json.loads(zf.read("export.json"))["items"]
    assert code == 0 and out.strip() == f"imported {len(items)} items from {backup} into {moved}"
    assert not (moved / "gallery.db").exists() and "items" in _tables(url)
    assert len([p for p in images.rglob("*") if p.is_file()]) == len(items)
    code, out, _ = cli(gallery_cmd, ["stats", moved, "--db-url", url, "--json"], capsys)
    assert code == 0 and json.loads(out)["items"] == len(items)
    code, out, _ = cli(gallery_cmd, ["check", moved, "--db-url", url], capsys)
    assert code == 0 and out.startswith(f"ok: {moved}: {len(items)} items")
    assert cli(gallery_cmd, ["export", moved, again, "--db-url", url], capsys)[0] == 0
    with zipfile.ZipFile(again) as zf:
        assert json.loads(zf.read("export.json"))["items"] == items
        assert all(zf.read(f"images/{i['sha256']}") for i in items)
    code, _, err = cli(gallery_cmd, ["stats", moved], capsys)
    assert code == 2 and error_line(err) == (
        f"error: {moved}: this gallery keeps its metadata in an external database; give its "
        "SQLAlchemy URL (--db-url)")
    monkeypatch.setenv("SIAMESE_DB_URL", url)
    code, out, _ = cli(gallery_cmd, ["stats", moved, "--json"], capsys)
    assert code == 0 and json.loads(out)["items"] == len(items)
    # An import never lands on a database that holds a gallery.
    code, _, err = cli(gallery_cmd, ["import", backup, tmp_path / "third"], capsys)
    assert code == 2 and "already holds a gallery" in error_line(err)
    assert cli(gallery_cmd, ["check", moved], capsys)[0] == 0
    # siamese-index and siamese-search take the variable too (docs/deployment.md relies on it).
    shared = postgres.create_database("from_env")
    monkeypatch.setenv("SIAMESE_DB_URL", shared)
    code, _, err = cli(index_cmd, [png_folder, "--gallery", tmp_path / "env", "--model",
                                   model_dir], capsys)
    assert code == 0, err
    assert "items" in _tables(shared) and not (tmp_path / "env" / "gallery.db").exists()


def test_a_failed_import_into_postgresql_leaves_no_tables_and_no_images(
        tmp_path, model_dir, capsys, postgres, fashion_test):
    """An export whose 511th image is damaged fails in its second batch of 500, after the first
    batch's images went to the originals folder: the database is left empty, the folder too,
    and the same database then takes a good export."""
    with Gallery.create(tmp_path / "big", _embedder(model_dir)) as g:
        g.add(fashion_test.images[:520], labels=[str(n) for n in fashion_test.labels[:520]])
    good, bad = tmp_path / "good.zip", tmp_path / "bad.zip"
    assert cli(gallery_cmd, ["export", tmp_path / "big", good], capsys)[0] == 0
    with zipfile.ZipFile(good) as zf, zipfile.ZipFile(bad, "w") as out:
        damaged = json.loads(zf.read("export.json"))["items"][510]
        for info in zf.infolist():
            data = zf.read(info)
            if info.filename == f"images/{damaged['sha256']}":
                data = zf.read(f"images/{json.loads(zf.read('export.json'))['items'][0]['sha256']}")
            out.writestr(info, data)
    url, images = postgres.create_database("failed_import"), tmp_path / "images"
    code, _, err = cli(gallery_cmd, ["import", bad, tmp_path / "copy", "--db-url", url,
                                     "--originals", images], capsys)
    assert code == 2 and error_line(err) == (
        f"error: the image of item {damaged['id']} is damaged in the export")
    assert _tables(url) == [] and not (tmp_path / "copy").exists()
    assert [p for p in images.rglob("*") if p.is_file()] == []
    code, _, err = cli(gallery_cmd, ["import", good, tmp_path / "copy", "--db-url", url,
                                     "--originals", images], capsys)
    assert code == 0, err
    assert len([p for p in images.rglob("*") if p.is_file()]) == 520


def test_index_flags_a_portrait_and_check_records_what_older_galleries_never_checked(
        tmp_path, png_folder, model_dir, capsys):
    """Enrolment's domain check from the command line: siamese-index names the image the check
    refused (a warning line, and the JSON's out_of_domain); siamese-gallery check names the item;
    a gallery from before the check says so, and check --record checks and records it."""
    import shutil
    import sqlite3
    from pathlib import Path

    portrait = Path(__file__).resolve().parents[2] / "samples" / "queries" / "portrait.png"
    (png_folder / "People").mkdir()
    shutil.copy(portrait, png_folder / "People" / "me.png")
    gallery = tmp_path / "g"
    code, out, _ = cli(index_cmd, [png_folder, "--gallery", gallery, "--model", model_dir], capsys)
    assert code == 0
    assert (f"warning: the model's domain check refused 1 added image(s), so no other image will "
            f"be verified against them: {png_folder / 'People' / 'me.png'}") in out, out
    code, out, _ = cli(index_cmd, [png_folder, "--gallery", tmp_path / "g2", "--model", model_dir,
                                   "--json"], capsys)
    assert json.loads(out)["report"]["out_of_domain"] == [str(png_folder / "People" / "me.png")]
    with Gallery.open(gallery, _embedder(model_dir)) as g:
        [me] = [i.id for i in g.items(limit=100) if i.label == "People"]
    code, out, _ = cli(gallery_cmd, ["check", gallery], capsys)
    assert code == 0 and (f"note: the images of 1 item(s) do not look like what the model was "
                          f"trained on, so nothing will be verified against them; enrol another "
                          f"image of each: {me}") in out, out
    db = sqlite3.connect(gallery / "gallery.db")
    db.execute("UPDATE items SET domain_score = NULL")  # as a gallery from before the check
    db.commit()
    db.close()
    code, out, _ = cli(gallery_cmd, ["check", gallery], capsys)
    assert code == 0 and "note: 49 item(s) were added before enrolment checked images; " \
        "siamese-gallery check --record checks them and records the result" in out, out
    assert "do not look like" not in out
    code, out, _ = cli(gallery_cmd, ["check", gallery, "--record", "--progress", "never"], capsys)
    assert code == 0 and "checked and recorded the domain of 49 item(s)" in out
    assert f"enrol another image of each: {me}" in out and "were added before" not in out


@pytest.fixture(scope="module")
def export_zip(tmp_path_factory, fashion_test, model_dir):
    """An honest export of a small gallery, made once; each forgery starts from it."""
    tmp = tmp_path_factory.mktemp("export")
    write_fashion_pngs(tmp / "photos", fashion_test, range(6))
    with Gallery.create(tmp / "g", _embedder(model_dir)) as g:
        paths = sorted((tmp / "photos").rglob("*.png"))
        g.add(paths, labels=[p.parent.name for p in paths])
        archive_export(g, tmp / "backup.zip")
    return tmp / "backup.zip"


def archive_export(gallery, file):
    from indexer import archive

    archive.export(gallery, file)


def _forge(source, target, manifest=None, embeddings=None):
    """A copy of the export `source` with its manifest (a function of the parsed JSON, or bytes)
    and/or its embeddings member (bytes) replaced."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "export.json" and manifest is not None:
                data = manifest if isinstance(manifest, bytes) else \
                    json.dumps(manifest(json.loads(data))).encode()
            if info.filename == "embeddings.npy" and embeddings is not None:
                data = embeddings
            dst.writestr(info, data)


def _item(n, **fields):
    def change(m):
        m["items"][n].update(fields)
        return m
    return change


def _drop_id(m):
    del m["items"][0]["id"]
    return m


def _same_ids(m):
    m["items"][1]["id"] = m["items"][0]["id"]
    return m


def _npy_header(shape):
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_2_0(buffer, {"descr": "<f4", "fortran_order": False,
                                                  "shape": shape})
    return np.lib.format.magic(2, 0) + buffer.getvalue()[8:]


FORGERIES = {
    "a label that is an object": (_item(0, label={"a": 1}), None, "label must be text"),
    "an id past 2^63": (_item(0, id=2**63), None, "id must be an integer from 1 to"),
    "a negative id": (_item(0, id=-4), None, "id must be an integer from 1 to"),
    "an id that is text": (_item(0, id="7"), None, "id must be an integer"),
    "the same id twice": (_same_ids, None, "is there twice"),
    "a date that is not one": (_item(0, added="yesterday"), None, "added must be an ISO date"),
    "no id": (_drop_id, None, "id must be an integer"),
    "a threshold that is text": (lambda m: {**m, "threshold": "close"}, None, "threshold must be"),
    "an unknown operating point": (lambda m: {**m, "operating_point": "lenient"}, None,
                                   "operating_point must be one of"),
    "a 10,000-character label": (_item(0, label="x" * 10_000), None, "at most 200 characters"),
    "NUL in a label": (_item(0, label="Bag\0"), None, "NUL"),
    "a lone surrogate in metadata": (_item(0, metadata={"a": "\ud800"}), None, "valid Unicode"),
    "a sha256 that is not one": (_item(0, sha256="../../etc/passwd"), None, "sha256 must be"),
    "items that are not a list": (lambda m: {**m, "items": {"1": {}}}, None, "not a gallery export"),
    "a manifest that is not JSON": (b"{not json", None, "not a gallery export"),
    "embeddings claiming 256e9 floats": (None, _npy_header((4_000_000_000, 64)), "holds float32"),
    "embeddings cut short": (None, _npy_header((6, 64)) + b"\0" * 100, "cut short"),
}


@pytest.mark.parametrize("name", FORGERIES)
def test_a_forged_export_is_one_error_line_and_leaves_nothing(export_zip, tmp_path, model_dir,
                                                              capsys, name):
    manifest, embeddings, message = FORGERIES[name]
    _forge(export_zip, tmp_path / "forged.zip", manifest, embeddings)
    code, out, err = cli(gallery_cmd, ["import", tmp_path / "forged.zip", tmp_path / "g",
                                       "--model", model_dir, "--progress", "never"], capsys)
    assert code == 2 and message in error_line(err), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "g").exists() and not list(tmp_path.glob(".g*"))


def test_an_export_whose_embeddings_were_swapped_is_refused(export_zip, tmp_path, model_dir,
                                                             capsys):
    """Item 1 given item 2's embedding: a search for item 2's image would name item 1."""
    import io

    with zipfile.ZipFile(export_zip) as z:
        vectors = np.load(io.BytesIO(z.read("embeddings.npy")))
    vectors[0] = vectors[1]
    buffer = io.BytesIO()
    np.save(buffer, vectors)
    _forge(export_zip, tmp_path / "forged.zip", embeddings=buffer.getvalue())
    code, _, err = cli(gallery_cmd, ["import", tmp_path / "forged.zip", tmp_path / "g",
                                     "--model", model_dir, "--progress", "never"], capsys)
    assert code == 2 and "is not its image's" in error_line(err)
    assert not (tmp_path / "g").exists()
    # The honest export imports, its embeddings kept as they were.
    code, _, err = cli(gallery_cmd, ["import", export_zip, tmp_path / "ok", "--model", model_dir,
                                     "--progress", "never"], capsys)
    assert code == 0, err
