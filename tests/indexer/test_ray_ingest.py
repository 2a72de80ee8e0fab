"""Batch indexing on Ray: `siamese-index FOLDER --ray` on a real local Ray cluster gives the same
gallery as the single-process path (same items, no duplicates), reports bad files the same way,
and a run killed mid-way resumes with no duplicates. SQLite and PostgreSQL."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from indexer import Gallery
from scripts import index as index_cmd
from tests.support import REPO, child_env, cli, error_line, write_fashion_pngs

pytestmark = pytest.mark.slow  # a Ray cluster, TensorFlow in its actors


def items_by_hash(gallery: Gallery) -> dict[str, tuple]:
    return {i.sha256: (i.label, i.source) for i in gallery.items(limit=10_000)}


def test_ray_builds_the_same_gallery_as_one_process(tmp_path, fashion_test, model_dir,
                                                   model_embedder, capsys, db_url, featureless):
    photos = tmp_path / "photos"
    files = write_fashion_pngs(photos, fashion_test, range(300))
    blank = sorted(map(str, write_fashion_pngs(photos, fashion_test, featureless[:2])))
    (photos / files[0].parent.name / "copy.png").write_bytes(files[0].read_bytes())
    (photos / "Coat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (photos / "People").mkdir()
    portrait = photos / "People" / "me.png"  # out of the model's domain
    portrait.write_bytes((REPO / "samples" / "queries" / "portrait.png").read_bytes())
    database = ["--db-url", db_url] if db_url else []
    code, out, err = cli(index_cmd, [photos, "--gallery", tmp_path / "ray", "--model", model_dir,
                                     "--ray", "--batch-size", "64", "--json", *database], capsys)
    report = json.loads(out)["report"]
    assert code == 1 and report["added"] == 303 and report["duplicates"] == 1
    assert sorted(report["featureless"]) == blank  # named as one process names them
    # The portrait, and the rare test image the bundled check refuses (about 0.5% of them).
    refused = sorted(report["out_of_domain"])
    assert str(portrait) in refused and len(refused) <= 4
    assert [f["file"] for f in report["failed"]] == [str(photos / "Coat" / "broken.png")]
    assert "ray" not in err.lower()  # Ray's own chatter stays out of the command's output
    code, out, _ = cli(index_cmd, [photos, "--gallery", tmp_path / "one", "--model", model_dir,
                                   "--json"], capsys)
    report = json.loads(out)["report"]
    assert code == 1 and report["added"] == 303 and sorted(report["featureless"]) == blank
    assert sorted(report["out_of_domain"]) == refused
    with Gallery.open(tmp_path / "ray", model_embedder, url=db_url) as on_ray, \
            Gallery.open(tmp_path / "one", model_embedder) as in_one:
        assert items_by_hash(on_ray) == items_by_hash(in_one)
        flagged = [{g.get(i).sha256 for i in g.domain_ids()[0]} for g in (on_ray, in_one)]
        assert flagged[0] == flagged[1] and len(flagged[0]) == len(refused)
        assert on_ray.domain_ids()[1] == []  # every item checked
        query = files[123].read_bytes()
        assert on_ray.search(query, k=1)[0].distance == pytest.approx(
            in_one.search(query, k=1)[0].distance, abs=1e-5)
    code, out, _ = cli(index_cmd, [photos, "--gallery", tmp_path / "ray", "--model", model_dir,
                                   "--ray", "--json", *database], capsys)
    assert json.loads(out)["report"]["added"] == 0  # a second run adds nothing


def test_a_killed_ray_ingest_resumes_without_duplicates(tmp_path, fashion_test, model_dir,
                                                        model_embedder, capsys):
    photos = tmp_path / "photos"
    write_fashion_pngs(photos, fashion_test, range(1500))
    gallery = tmp_path / "g"
    child = subprocess.Popen([sys.executable, "-m", "scripts.index", photos, "--gallery", gallery,
                              "--model", model_dir, "--ray", "--batch-size", "32",
                              "--progress", "never"], env=child_env(), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        committed = 0
        while committed < 64 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.2)
            if (gallery / "gallery.json").exists():
                with Gallery.open(gallery, model_embedder) as g:
                    committed = len(g)
        # the whole run: the command, and the Ray cluster it started (actors included)
        subprocess.run(["pkill", "-KILL", "-s", str(child.pid)], check=False)
    finally:
        child.wait(timeout=60)
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL and 64 <= committed < 1500
    code, out, _ = cli(index_cmd, [photos, "--gallery", gallery, "--model", model_dir, "--ray",
                                   "--json"], capsys)
    report = json.loads(out)["report"]
    assert code == 0 and report["skipped"] >= committed
    assert report["added"] + report["skipped"] == 1500
    with Gallery.open(gallery, model_embedder) as g:
        assert len(g) == 1500 and len({i.sha256 for i in g.items(limit=10_000)}) == 1500


def test_a_cluster_address_nothing_answers_at_is_one_line(tmp_path, png_folder, model_dir, capsys):
    for address, expected in [("127.0.0.1:1", "error: cannot reach the Ray cluster at 127.0.0.1:1: "
                                              "connection refused"),
                              ("head", "error: --ray head: expected HOST:PORT")]:
        code, _, err = cli(index_cmd, [png_folder, "--gallery", tmp_path / "g", "--model",
                                       model_dir, "--ray", address], capsys)
        assert code == 2 and error_line(err).startswith(expected), err
    assert not (tmp_path / "g").exists()  # refused before anything was made
