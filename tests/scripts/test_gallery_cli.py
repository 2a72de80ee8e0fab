"""siamese-index and siamese-search, run as users run them (through `scripts.common.run`)."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from indexer import Gallery
from scripts import index as index_cmd
from scripts import search as search_cmd
from tests.support import cli, error_line, write_fashion_pngs


def test_index_a_folder_then_again_adds_nothing(tmp_path, png_folder, model_dir, capsys):
    gallery = tmp_path / "g"
    code, out, _ = cli(index_cmd, [png_folder, "--gallery", gallery, "--model", model_dir, "--json"],
                       capsys)
    report = json.loads(out)
    assert code == 0 and report["report"]["added"] == 48 and report["report"]["failed"] == []
    assert report["gallery"]["items"] == 48 and len(report["gallery"]["labels"]) == 10
    assert report["report"]["images_per_s"] > 0
    code, out, _ = cli(index_cmd, [png_folder, "--gallery", gallery, "--model", model_dir], capsys)
    assert code == 0
    assert "added 0, skipped 48 already in the gallery, 0 duplicate(s), failed 0" in out


def test_bad_files_are_reported_at_the_end_and_do_not_stop(tmp_path, png_folder, model_dir, capsys):
    (png_folder / "Coat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (png_folder / "Coat" / "empty.jpg").write_bytes(b"")
    (png_folder / "notes.txt").write_text("not an image")
    first = sorted((png_folder / "Bag").glob("*.png"))[0]
    (png_folder / "Bag" / "copy.png").write_bytes(first.read_bytes())
    code, out, _ = cli(index_cmd, [png_folder, "--gallery", tmp_path / "g", "--model", model_dir],
                       capsys)
    assert code == 1
    assert f"failed: {png_folder / 'Coat' / 'broken.png'}: " in out
    assert f"failed: {png_folder / 'Coat' / 'empty.jpg'}: the file is empty" in out
    assert "ignored 1 file(s) without an image suffix" in out
    assert "added 48, skipped 0 already in the gallery, 1 duplicate(s), failed 2" in out


def test_strict_stops_at_the_first_bad_file(tmp_path, png_folder, model_dir, capsys):
    (png_folder / "Coat" / "broken.png").write_text("no")
    code, _, err = cli(index_cmd, [png_folder, "--gallery", tmp_path / "g", "--model", model_dir,
                                   "--strict"], capsys)
    assert code == 2
    assert error_line(err).startswith(f"error: {png_folder / 'Coat' / 'broken.png'}: not an image")
    assert "stopped by --strict" in err


def test_manifest_with_labels_metadata_and_absent_files(tmp_path, png_folder, model_dir, capsys):
    paths = sorted(png_folder.rglob("*.png"))[:3]
    rows = ["path,label,sku,colour"] + [f"{p.relative_to(png_folder)},item{i},S{i}," for i, p in
                                        enumerate(paths)] + ["Coat/absent.png,ghost,S9,red"]
    manifest = tmp_path / "items.csv"
    manifest.write_text("\n".join(rows) + "\n")
    code, out, _ = cli(index_cmd, [png_folder, "--manifest", manifest, "--gallery", tmp_path / "g",
                                   "--model", model_dir, "--json"], capsys)
    report = json.loads(out)["report"]
    assert code == 1 and report["added"] == 3
    assert report["failed"] == [{"file": f"{manifest} line 5 (Coat/absent.png)",
                                 "reason": "no such file"}]
    from encoder import Embedder
    with Gallery.open(tmp_path / "g", Embedder.load(model_dir)) as g:
        item = g.search(paths[1], k=1)[0]
    assert (item.label, item.metadata) == ("item1", {"sku": "S1"})


@pytest.mark.parametrize("setup, argv, message", [
    (None, ["{tmp}/absent"], "{tmp}/absent: no such folder"),
    ("empty", ["{tmp}/empty"], "{tmp}/empty: no image files"),
    ("bad_csv", ["--manifest", "{tmp}/m.csv"], "{tmp}/m.csv: the first row must name the columns"),
    ("not_gallery", ["{tmp}/photos", "--gallery", "{tmp}/photos"],
     "{tmp}/photos: not a gallery, and not an empty folder to make one in"),
    (None, [], "nothing to do"),
    (None, ["{tmp}/photos", "--index", "annoy"], "unknown index kind 'annoy'"),
    (None, ["{tmp}/photos", "--model", "{tmp}/no-model"], "{tmp}/no-model: no such model directory"),
])
def test_index_errors_are_one_line_exit_2(tmp_path, png_folder, model_dir, capsys, setup, argv,
                                          message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("hi")
    (tmp_path / "m.csv").write_text("file,label\na.png,x\n")
    argv = [a.format(tmp=tmp_path) for a in argv]
    if "--gallery" not in argv:
        argv += ["--gallery", str(tmp_path / "g")]
    if "--model" not in argv:
        argv += ["--model", str(model_dir)]
    code, out, err = cli(index_cmd, argv, capsys)
    assert code == 2 and out == ""
    assert error_line(err).startswith("error: " + message.format(tmp=tmp_path))
    assert not (tmp_path / "g").exists()


def test_model_mismatch_and_reembed(tmp_path, png_folder, model_dir, other_model_dir, capsys):
    gallery, query = tmp_path / "g", sorted(png_folder.rglob("*.png"))[0]
    assert cli(index_cmd, [png_folder, "--gallery", gallery, "--model", model_dir], capsys)[0] == 0
    code, _, err = cli(search_cmd, [query, "--gallery", gallery,
                                    "--model", other_model_dir], capsys)
    assert code == 2 and "this gallery was built with model" in error_line(err)
    code, out, _ = cli(index_cmd, ["--gallery", gallery, "--model", other_model_dir, "--reembed",
                                   "--json"], capsys)
    assert code == 0 and json.loads(out)["gallery"]["items"] == 48
    code, out, _ = cli(search_cmd, [query, "--gallery", gallery, "--model", other_model_dir,
                                    "-k", "2"], capsys)
    assert code == 0 and "verified match" in out


def test_search_command(tmp_path, png_folder, model_dir, capsys):
    gallery = tmp_path / "g"
    cli(index_cmd, [png_folder, "--gallery", gallery, "--model", model_dir, "--index", "hnsw:m=8"],
        capsys)
    query = sorted((png_folder / "Trouser").glob("*.png"))[0]
    code, out, _ = cli(search_cmd, [query, "--gallery", gallery, "--model", model_dir, "-k", "3"],
                       capsys)
    assert code == 0
    assert out.startswith(f"{query}: verified match: item ") and "(Trouser)" in out.splitlines()[0]
    assert len(out.splitlines()) == 4
    code, out, _ = cli(search_cmd, [query, query, "--gallery", gallery, "--model", model_dir,
                                    "--threshold", "0.001", "--json"], capsys)
    results = json.loads(out)
    assert len(results["results"]) == 2
    first = results["results"][0]
    assert (first["operating_point"], first["threshold"]) == ("threshold", 0.001)
    assert first["in_domain"] is True
    best = first["matches"][0]
    assert best["source"] == str(query) and best["label"] == "Trouser"
    # The very image: distance 0 up to float rounding, which differs with the batch size and the
    # CPU's kernels (not exactly 0 on an AVX-512 machine), so a threshold of exactly 0 would
    # leave the verdict to the CPU.
    assert best["verified"] and best["distance"] < 0.001 and 0.99 < best["probability"] <= 1
    code, out, _ = cli(search_cmd, [query, "--gallery", gallery, "--model", model_dir,
                                    "--operating-point", "far-1e-3"], capsys)
    assert code == 0 and "(far-1e-3 (threshold" in out.splitlines()[0]
    code, out, _ = cli(search_cmd, [query, "--gallery", gallery, "--model", model_dir,
                                    "--identify", "--fpir", "0.05"], capsys)
    assert code == 0 and out.startswith(f"{query}: identified: item ")
    assert "FPIR 0.05 with 10 enrolled in 48 items" in out
    code, _, err = cli(search_cmd, [query, "--gallery", gallery, "--model", model_dir,
                                    "--identify", "--fpir", "2"], capsys)
    assert code == 2 and "fpir must be between 0 and 1" in error_line(err)
    not_image = tmp_path / "q.png"
    not_image.write_text("x")
    code, _, err = cli(search_cmd, [not_image, "--gallery", gallery, "--model", model_dir], capsys)
    assert code == 2 and error_line(err) == (f"error: {not_image}: not an image file that can be "
                                             "read (PNG, JPEG, GIF, WebP, BMP or TIFF)")
    code, _, err = cli(search_cmd, [query, "--gallery", tmp_path, "--model", model_dir], capsys)
    assert code == 2 and f"{tmp_path}: not a gallery" in error_line(err)
    Image.new("L", (5, 5)).save(tmp_path / "tiny.png")  # any size is resized as the card says
    assert cli(search_cmd, [tmp_path / "tiny.png", "--gallery", gallery, "--model", model_dir],
               capsys)[0] == 0


def test_search_answers_the_good_images_and_names_each_bad_one(tmp_path, png_folder, model_dir,
                                                                capsys):
    gallery = tmp_path / "g"
    cli(index_cmd, [png_folder, "--gallery", gallery, "--model", model_dir], capsys)
    good = sorted((png_folder / "Trouser").glob("*.png"))[:2]
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    missing = tmp_path / "gone.png"
    argv = [good[0], notes, good[1], missing, "--gallery", gallery, "--model", model_dir]
    code, out, err = cli(search_cmd, argv, capsys)
    assert code == 1, err
    lines = out.splitlines()
    assert f"failed: {notes}: not an image file that can be read" in lines[0]
    assert lines[1] == f"failed: {missing}: no such file"
    answered = [line for line in lines if line.startswith(str(good[0]) + ":")
                or line.startswith(str(good[1]) + ":")]
    assert len(answered) == 2
    code, out, _ = cli(search_cmd, argv + ["--json", "--identify"], capsys)
    body = json.loads(out)
    assert code == 1 and [r["image"] for r in body["results"]] == [str(good[0]), str(good[1])]
    assert [f["image"] for f in body["failed"]] == [str(notes), str(missing)]
    code, _, err = cli(search_cmd, [notes, missing, "--gallery", gallery, "--model", model_dir],
                       capsys)
    assert code == 2 and error_line(err).startswith(f"error: {notes}: ")


def test_a_gallery_remembers_its_model_for_commands_run_anywhere(tmp_path, png_folder, model_dir,
                                                                 other_model_dir, monkeypatch,
                                                                 capsys):
    gallery = tmp_path / "g"
    code, _, err = cli(index_cmd, [png_folder, "--gallery", gallery, "--model", other_model_dir],
                       capsys)
    assert code == 0, err
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # models/fashion-mnist is not here
    query = sorted((png_folder / "Trouser").glob("*.png"))[0]
    code, out, err = cli(search_cmd, [query, "--gallery", gallery, "--json"], capsys)
    assert code == 0, err  # the gallery's own model, not the default one
    assert json.loads(out)["results"][0]["matches"][0]["label"] == "Trouser"
    code, _, err = cli(index_cmd, ["--gallery", gallery, "--model", model_dir, "--reembed"], capsys)
    assert code == 0, err
    info = json.loads((gallery / "gallery.json").read_text())
    assert info["model"] == str(model_dir.resolve())  # re-embedding moves what it remembers
    code, out, err = cli(search_cmd, [query, "--gallery", gallery], capsys)
    assert code == 0, err


def test_database_urls_that_cannot_serve_are_one_line(tmp_path, png_folder, model_dir, capsys,
                                                      postgres):
    """A URL that is not one, a scheme without its driver, a PostgreSQL server that is not there
    (with a password in the URL that must not be shown), and a database with no gallery."""
    query = sorted(png_folder.rglob("*.png"))[0]
    dead = "postgresql+psycopg://postgres:s3cret@127.0.0.1:1/gallery"  # nothing listens on port 1
    for url, expected in [
            ("not a url", "error: not a database URL (e.g. postgresql+psycopg://"),
            ("mysql://u@localhost/db", "error: no driver for the database URL's scheme: No "
                                       "module named 'MySQLdb'"),
            (dead, "error: database: connection failed: connection to server at \"127.0.0.1\", "
                   "port 1 failed"),
            (postgres.create_database("empty"), f"error: {tmp_path / 'g'}: no such gallery, and "
                                                "the database postgresql+psycopg://")]:
        code, _, err = cli(search_cmd, [query, "--gallery", tmp_path / "g", "--model", model_dir,
                                        "--db-url", url], capsys)
        assert code == 2 and error_line(err).startswith(expected), err
        assert "s3cret" not in err and "Traceback" not in err


def test_index_names_the_images_the_model_finds_no_features_in(tmp_path, png_folder, model_dir,
                                                               capsys, fashion_test, featureless):
    write_fashion_pngs(png_folder, fashion_test, featureless[:2])
    gallery = tmp_path / "g"
    code, out, _ = cli(index_cmd, [png_folder, "--gallery", gallery, "--model", model_dir], capsys)
    names = sorted(str(p) for p in png_folder.rglob("*.png")
                   if int(p.stem) in set(featureless[:2].tolist()))
    assert code == 0 and "added 50," in out
    warning = next(line for line in out.splitlines() if line.startswith("warning:"))
    assert warning.startswith("warning: the model finds no features in 2 added image(s), so no "
                              "other image will be verified against them: ")
    assert sorted(warning.split(": ")[-1].split(", ")) == names
    code, out, _ = cli(index_cmd, [png_folder, "--gallery", tmp_path / "g2", "--model", model_dir,
                                   "--json"], capsys)
    assert sorted(json.loads(out)["report"]["featureless"]) == names


def test_search_marks_the_items_the_model_finds_no_features_in(
        tmp_path, png_folder, model_dir, capsys, fashion_test, featureless, near_featureless):
    write_fashion_pngs(png_folder, fashion_test, featureless[:1])
    write_fashion_pngs(tmp_path / "query", fashion_test, [near_featureless])
    [query] = (tmp_path / "query").rglob("*.png")
    gallery = tmp_path / "g"
    assert cli(index_cmd, [png_folder, "--gallery", gallery, "--model", model_dir], capsys)[0] == 0
    args = [query, "--gallery", gallery, "--model", model_dir]
    code, out, _ = cli(search_cmd, args + ["-k", "2", "--operating-point", "far-1e-3"], capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0].endswith(": no verified match (far-1e-3 (threshold 0.0593))")
    assert "no feat." in lines[1] and "no feat." not in lines[2]
    assert lines[3].startswith("  note: the model finds no features in the images of the items "
                               'marked "no feat."')
    # 1:N names the nearest item that can be judged: not the featureless coat.
    code, out, _ = cli(search_cmd, args + ["--identify", "--threshold", "5"], capsys)
    assert code == 0 and ": identified: item " in out and "(Coat)" not in out, out
    code, out, _ = cli(search_cmd, args + ["-k", "1", "--json"], capsys)
    assert json.loads(out)["results"][0]["matches"][0]["featureless"] is True
