"""siamese-gallery: stats, check, export and import (a backup that round-trips)."""
from __future__ import annotations

import json
import zipfile

import numpy as np

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
