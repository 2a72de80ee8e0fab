"""indexer.ingest: sources from a folder tree or a CSV manifest, and ingest into a real gallery
(the real model, real Fashion-MNIST PNG files): each image once, bad files reported, resumable."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from encoder.errors import BadImageError, DatasetError, NotFoundError
from indexer import Gallery
from indexer.ingest import IngestReport, Source, folder_sources, ingest, manifest_sources
from tests.support import write_fashion_pngs


@pytest.fixture
def empty_gallery(tmp_path, model_embedder, db_url):
    g = Gallery.create(tmp_path / "gallery", model_embedder, url=db_url)
    yield g
    g.close()


def png(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (28, 28), value).save(path)
    return path


# --- sources -------------------------------------------------------------------------------------

def test_folder_sources_label_images_by_their_first_level_folder(tmp_path):
    root = tmp_path / "photos"
    png(root / "loose.png")
    png(root / "Bag" / "a.png")
    png(root / "Bag" / "deeper" / "b.png")
    png(root / "Coat" / "c.png")
    png(root / "Coat" / ".hidden.png")
    (root / "Coat" / "notes.txt").write_text("not an image")
    sources, others = folder_sources(root)
    assert [(Path(s.path).relative_to(root).as_posix(), s.label) for s in sources] == [
        ("loose.png", None), ("Bag/a.png", "Bag"), ("Bag/deeper/b.png", "Bag"),
        ("Coat/c.png", "Coat")]
    assert others == [str(root / "Coat" / "notes.txt")]


def test_folder_sources_refuse_what_is_not_a_folder_of_images(tmp_path):
    with pytest.raises(NotFoundError, match=f"{tmp_path / 'absent'}: no such folder"):
        folder_sources(tmp_path / "absent")
    png(tmp_path / "one.png")
    with pytest.raises(DatasetError, match=f"{tmp_path / 'one.png'}: not a folder"):
        folder_sources(tmp_path / "one.png")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    with pytest.raises(DatasetError, match="texts: no image files"):
        folder_sources(tmp_path / "texts")


def test_manifest_sources_resolve_paths_and_keep_labels_and_metadata(tmp_path):
    manifest = tmp_path / "lists" / "items.csv"
    manifest.parent.mkdir()
    manifest.write_text("\ufeff path , label , sku,colour\n"  # a BOM, as Excel writes it
                        "Coat/1.png, coat ,S1,\n"
                        "2.png,,S2,red\n", encoding="utf-8")
    sources = manifest_sources(manifest)
    assert sources == [
        Source(str(manifest.parent / "Coat/1.png"), "coat", {"sku": "S1"},
               where=f"{manifest} line 2 (Coat/1.png)"),
        Source(str(manifest.parent / "2.png"), None, {"sku": "S2", "colour": "red"},
               where=f"{manifest} line 3 (2.png)")]
    assert manifest_sources(manifest, base=tmp_path / "images")[1].path == \
        str(tmp_path / "images" / "2.png")


@pytest.mark.parametrize("content, message", [
    (b"file,label\na.png,x\n", "the first row must name the columns, one of them 'path' "
                               "(and optionally 'label' and metadata columns); found file, label"),
    (b"path,label\na.png,x\n,y\n", "items.csv line 3: empty path"),
    (b"path,label\n", "items.csv: no rows after the header"),
    (b"path\n\xff\xfe.png\n", "items.csv: not a UTF-8 text file"),
])
def test_manifest_sources_name_what_is_wrong(tmp_path, content, message):
    (tmp_path / "items.csv").write_bytes(content)
    with pytest.raises(DatasetError) as error:
        manifest_sources(tmp_path / "items.csv")
    assert message in str(error.value)


def test_a_missing_manifest_is_not_found(tmp_path):
    with pytest.raises(NotFoundError, match="items.csv: no such manifest file"):
        manifest_sources(tmp_path / "items.csv")


# --- ingest --------------------------------------------------------------------------------------

def test_each_image_is_added_once_within_a_run_and_across_runs(tmp_path, fashion_test,
                                                                empty_gallery):
    files = write_fashion_pngs(tmp_path / "photos", fashion_test, range(20))
    for n, original in enumerate(files[:3]):  # three copies, in a folder that sorts last
        shutil.copy(original, png(tmp_path / "photos" / "~copies" / f"copy{n}.png"))
    sources, _ = folder_sources(tmp_path / "photos")
    first = ingest(empty_gallery, sources)
    assert (first.files, first.added, first.duplicates, first.skipped) == (23, 20, 3, 0)
    assert len(empty_gallery) == 20
    assert "~copies" not in {item.label for item in empty_gallery.items(limit=100)}
    again = ingest(empty_gallery, sources)
    assert (again.added, again.duplicates, again.skipped, again.failed) == (0, 0, 23, [])
    assert len(empty_gallery) == 20


def test_copies_in_later_batches_are_not_added_again(tmp_path, fashion_test, empty_gallery):
    """Batches are read ahead of the one being stored: a copy of an image of the batch before
    is caught by this run's own record of what it added."""
    files = write_fashion_pngs(tmp_path / "photos", fashion_test, range(12))
    sources = [Source(str(p)) for p in files]
    sources = [s for pair in zip(sources, sources) for s in pair]  # each file twice in a row
    report = ingest(empty_gallery, sources, batch_size=3)
    assert report.added == 12 and report.skipped + report.duplicates == 12
    assert len(empty_gallery) == 12


def test_bad_files_are_reported_and_the_rest_added(tmp_path, fashion_test, empty_gallery):
    files = write_fashion_pngs(tmp_path / "photos", fashion_test, range(10))
    broken = tmp_path / "photos" / "Coat" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "photos" / "Coat" / "empty.jpg").write_bytes(b"")
    sources, _ = folder_sources(tmp_path / "photos")
    report = ingest(empty_gallery, sources, batch_size=4)
    assert report.added == len(files) == len(empty_gallery)
    failed = dict(report.failed)
    empty = str(tmp_path / "photos" / "Coat" / "empty.jpg")
    assert set(failed) == {empty, str(broken)} and len(report.failed) == 2
    assert failed[empty] == "the file is empty"
    assert failed[str(broken)].startswith("the image is cut short or damaged")


def test_strict_stops_at_the_first_bad_file_keeping_the_batches_before(tmp_path, fashion_test,
                                                                       empty_gallery):
    write_fashion_pngs(tmp_path / "photos", fashion_test, range(10))
    broken = tmp_path / "photos" / "~last" / "broken.png"  # "~" sorts after the class folders
    broken.parent.mkdir()
    broken.write_bytes(b"not a png")
    sources, _ = folder_sources(tmp_path / "photos")
    assert sources[-1].path == str(broken)
    with pytest.raises(BadImageError) as error:
        ingest(empty_gallery, sources, batch_size=4, strict=True)
    assert str(error.value) == (f"{broken}: not an image file that can be read (PNG, JPEG, GIF, WebP, BMP or TIFF) "
                                "(stopped by --strict; "
                                "8 image(s) added before it)")
    assert len(empty_gallery) == 8  # the two whole batches before the bad file's


def test_an_interrupted_ingest_resumes_where_it_stopped(tmp_path, fashion_test, empty_gallery):
    files = write_fashion_pngs(tmp_path / "photos", fashion_test, range(20))
    sources, _ = folder_sources(tmp_path / "photos")

    class InterruptAfterTwoBatches:  # as Ctrl-C in the progress bar's update would
        batches = 0

        def update(self, n):
            self.batches += 1
            if self.batches == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ingest(empty_gallery, sources, batch_size=5, progress=InterruptAfterTwoBatches())
    assert len(empty_gallery) == 10
    resumed = ingest(empty_gallery, sources, batch_size=5)
    assert (resumed.skipped, resumed.added) == (10, 10)
    stored = {item.source for item in empty_gallery.items(limit=100)}
    assert stored == {str(p) for p in files}


def test_labels_and_metadata_from_a_manifest_reach_the_gallery(tmp_path, fashion_test,
                                                                empty_gallery):
    files = write_fashion_pngs(tmp_path / "photos", fashion_test, range(3))
    rows = [f"{p.relative_to(tmp_path / 'photos').as_posix()},item{i},S{i}"
            for i, p in enumerate(files)]
    (tmp_path / "photos" / "items.csv").write_text("path,label,sku\n" + "\n".join(rows) + "\n")
    report = ingest(empty_gallery, manifest_sources(tmp_path / "photos" / "items.csv"))
    assert report.added == 3
    assert sorted((i.label, i.metadata["sku"], i.source) for i in empty_gallery.items()) == [
        (f"item{i}", f"S{i}", str(p)) for i, p in enumerate(files)]


def test_report_as_json():
    report = IngestReport(files=4, added=2, skipped=1, failed=[("x.png", "empty file")],
                          featureless=["blank.png"], out_of_domain=["face.png"],
                          seconds=2.00049)
    assert report.to_dict() == {"files": 4, "added": 2, "skipped": 1, "duplicates": 0,
                                "failed": [{"file": "x.png", "reason": "empty file"}],
                                "ignored": [], "featureless": ["blank.png"],
                                "out_of_domain": ["face.png"], "seconds": 2.0,
                                "images_per_s": 2.0}
