import gzip
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from encoder.datasets import (Dataset, colour_mode, infer_preprocessing, load_dataset,
                              load_fashion_mnist, load_image_folder, load_omniglot)
from encoder.errors import DatasetError
from encoder.images import Preprocessing


def test_fashion_mnist_from_split_parts_matches_the_official_order(fashion_dir):
    train = load_fashion_mnist(fashion_dir, "train")
    test = load_fashion_mnist(fashion_dir, "test")
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    assert train.labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert test.labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert set(test.class_counts().values()) == {1000}


def _official_layout(fashion_dir, folder, gz: bool):
    """The four official file names, whole (not split), gzipped or plain."""
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        parts = sorted(fashion_dir.glob(stem + ".gz*"))
        raw = b"".join(p.read_bytes() for p in parts)
        if gz:
            (folder / (stem + ".gz")).write_bytes(raw)
        else:
            (folder / stem).write_bytes(gzip.decompress(raw))


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_whole_files(tmp_path, fashion_dir, fashion_test, gz):
    _official_layout(fashion_dir, tmp_path, gz)
    ds = load_fashion_mnist(tmp_path, "test")
    np.testing.assert_array_equal(ds.images, fashion_test.images)


def test_fashion_mnist_bad_files_are_named(tmp_path, fashion_dir):
    with pytest.raises(DatasetError, match="no such folder"):
        load_fashion_mnist(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no t10k-images-idx3-ubyte.gz"):
        load_fashion_mnist(tmp_path, "test")
    _official_layout(fashion_dir, tmp_path, gz=True)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(DatasetError, match="corrupt or truncated gzip"):
        load_fashion_mnist(tmp_path, "test")
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00" * 8))
    with pytest.raises(DatasetError, match="bad magic number"):
        load_fashion_mnist(tmp_path, "test")
    with pytest.raises(DatasetError, match="split must be"):
        load_fashion_mnist(fashion_dir, "validation")


def test_folder_tree_reports_bad_files_and_skips_them(small_folder, tmp_path):
    root = tmp_path / "tree"
    shutil.copytree(small_folder, root)
    cls = sorted(p for p in root.iterdir())[0]
    (cls / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (cls / "empty.jpg").write_bytes(b"")
    (cls / "notes.txt").write_text("not an image, and not an image name either")
    ds = load_image_folder(root)
    assert len(ds) == 120 and ds.num_classes == 4
    assert sorted(os.path.basename(n) for n, _ in ds.skipped) == ["broken.png", "empty.jpg"]
    assert ds.images.shape[1:] == (28, 28, 1)


def test_folder_tree_mixed_sizes_and_modes_get_one_shape(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), np.uint8)).save(tmp_path / c / "1.jpg")
        Image.fromarray(rng.integers(0, 255, (50, 50), np.uint8)).save(tmp_path / c / "2.png")
    ds = load_image_folder(tmp_path)
    # Colour present -> RGB; median side 45 -> 44, but at most 32 for fewer than 1,000 images.
    assert ds.images.shape == (4, 32, 32, 3)
    assert infer_preprocessing([(60, 40), (50, 50)] * 500, ["RGB", "L"] * 500).shape == (44, 44, 3)
    assert infer_preprocessing([(500, 400)] * 999, ["L"] * 999).shape == (32, 32, 1)
    assert infer_preprocessing([(500, 400)] * 1000, ["1"] * 1000).shape == (64, 64, 1)
    assert infer_preprocessing([(9, 9)] * 5, ["RGB"] * 5, side=20).shape == (20, 20, 3)
    ds = load_image_folder(tmp_path, Preprocessing(32, 32, 1))
    assert ds.images.shape == (4, 32, 32, 1)


def test_folder_tree_symlink_loop_does_not_hang(small_folder, tmp_path):
    root = tmp_path / "tree"
    shutil.copytree(small_folder, root)
    cls = sorted(root.iterdir())[0]
    os.symlink(root, cls / "loop")
    assert len(load_image_folder(root)) == 120


def test_too_few_classes_or_images_is_a_clear_error(tmp_path, small_folder):
    one = tmp_path / "one"
    shutil.copytree(sorted(small_folder.iterdir())[0], one / "only-class")
    with pytest.raises(DatasetError, match="needs at least two classes, found 1"):
        load_image_folder(one).check_trainable()
    single = tmp_path / "single"
    shutil.copytree(small_folder, single)
    lonely = single / "lonely"
    lonely.mkdir()
    shutil.copy(next(sorted(small_folder.iterdir())[0].iterdir()), lonely / "x.png")
    with pytest.raises(DatasetError, match="at least two images; 1 class.*lonely"):
        load_image_folder(single).check_trainable()
    with pytest.raises(DatasetError, match="no class sub-folders"):
        load_image_folder(lonely)
    with pytest.raises(DatasetError, match="unknown dataset kind 'mnist'"):
        load_dataset("mnist", [])


def test_omniglot_zips_are_merged_without_duplicates(omniglot_dir):
    ds = load_omniglot([omniglot_dir / "images_background_small1.zip",
                        omniglot_dir / "images_background_small2.zip"], Preprocessing(28, 28, 1))
    assert len(ds) == 4840 and ds.num_classes == 242 and len(ds.group_names) == 8
    assert set(ds.class_counts().values()) == {20}
    assert ds.images.mean() > 200  # raw: white background, not inverted


def test_omniglot_from_an_extracted_tree(tmp_path, omniglot_dir):
    import zipfile

    with zipfile.ZipFile(omniglot_dir / "images_background_small1.zip") as zf:
        members = [n for n in zf.namelist() if "/Greek/" in n]
        zf.extractall(tmp_path, members)
    ds = load_omniglot([tmp_path / "images_background_small1"], Preprocessing(28, 28, 1))
    assert ds.num_classes == 24 and len(ds) == 480 and ds.group_names == ["Greek"]


def test_a_class_folder_linking_back_to_the_tree_is_refused(small_folder, tmp_path):
    root = tmp_path / "tree"
    shutil.copytree(small_folder, root)
    os.symlink(root, root / "loop")  # a "class" that is the whole tree again
    os.symlink(tmp_path, root / "parent")  # and one above it
    (root / "Bag" / "self.png").symlink_to(root / "Bag" / "self.png")  # a link to itself
    ds = load_image_folder(root)
    assert len(ds) == 120 and ds.num_classes == 4 and "loop" not in ds.class_names
    reasons = {os.path.basename(name): reason for name, reason in ds.skipped}
    assert "symbolic link loop" in reasons["loop"] and "symbolic link loop" in reasons["parent"]
    assert "cannot read" in reasons["self.png"]


def test_classes_whose_files_are_all_unreadable_are_left_out(small_folder, tmp_path):
    root = tmp_path / "tree"
    shutil.copytree(small_folder, root)
    (root / "broken").mkdir()
    (root / "broken" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (root / "broken" / "2.jpg").write_bytes(b"not a jpeg")
    ds = load_image_folder(root)
    assert ds.num_classes == 4 and "broken" not in ds.class_names and len(ds.skipped) == 2
    assert ds.class_counts() == {"Bag": 30, "Sneaker": 30, "T-shirt-top": 30, "Trouser": 30}


def test_subsets_and_groups(omniglot_dir):
    ds = load_omniglot([omniglot_dir / "images_background_small1.zip"], side=28)
    assert ds.kind == "omniglot" and ds.images.shape[1:] == (28, 28, 1)
    assert ds.group_names == ["Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"]
    part = ds.select_groups(["Greek", "Latin"])
    assert part.groups_present() == ["Greek", "Latin"] and len(part) == (24 + 26) * 20
    assert part.num_classes == 50 and part.labels.max() == 49  # classes renumbered
    assert all(name.split("/")[0] in ("Greek", "Latin") for name in part.class_names)
    first_greek = np.nonzero(ds.groups == ds.group_names.index("Greek"))[0][0]
    assert part.class_names[part.labels[0]] == ds.class_names[ds.labels[first_greek]]
    np.testing.assert_array_equal(part.images[0], ds.images[first_greek])
    with pytest.raises(DatasetError, match="no group named 'Klingon'; it has Balinese"):
        ds.select_groups(["Klingon"])


def test_count_report_lists_classes_and_their_sizes(small_folder, tmp_path):
    ds = load_image_folder(small_folder)
    assert ds.count_report() == ["4 classes, 120 images; 30 per class"]
    ds.labels[0] = 1  # one Bag (class 0) becomes a Sneaker: 29 and 31 images
    lines = ds.count_report()
    assert lines[0] == "4 classes, 120 images; per class: min 29, median 30, max 31"
    assert lines[1].split() == ["Bag", "29", "T-shirt-top", "30", "Trouser", "30", "Sneaker", "31"]
    many = Dataset(np.zeros((300, 4, 4, 1), np.uint8), np.repeat(np.arange(100), 3),
                   [f"c{i}" for i in range(100)], name="many")
    many.labels[0] = 1  # c0 has 2 images, c1 has 4
    lines = many.count_report(shown=10)
    assert lines[1] == "the 5 smallest and 5 largest classes:"
    assert lines[2].split()[:2] == ["c0", "2"] and "c1 4" in " ".join(lines[2:])
    assert sum(len(line.split()) for line in lines[2:]) == 20  # ten classes, name and count


def test_input_size_is_chosen_or_inferred(small_folder):
    assert load_dataset("folder", [str(small_folder)]).images.shape[1:] == (28, 28, 1)
    assert load_dataset("folder", [str(small_folder)], side=40).images.shape[1:] == (40, 40, 1)
    with pytest.raises(DatasetError, match="fashion-mnist images are 28x28"):
        load_dataset("fashion-mnist", ["x"], side=32)


def _palette(grey_used: bool, colour_unused: bool = False) -> Image.Image:
    """A real palette image: grey strokes on white, its palette grey (or one colour in use), and
    optionally colours in the palette that no pixel uses."""
    a = np.full((40, 40), 255, np.uint8)
    a[10:30, 18:22] = 30
    image = Image.fromarray(a).convert("P")  # a palette of 256 greys
    if not grey_used:
        palette = image.getpalette("RGB")
        used = int(np.asarray(image)[20, 20])
        palette[3 * used: 3 * used + 3] = [200, 30, 30]  # the stroke is red
        image.putpalette(palette)
    elif colour_unused:
        palette = image.getpalette("RGB")
        index = int(np.setdiff1d(np.arange(len(palette) // 3), np.unique(np.asarray(image)))[0])
        palette[3 * index: 3 * index + 3] = [0, 255, 0]  # green, used by no pixel
        image.putpalette(palette)
    return image


def test_grey_palette_images_count_as_grey(tmp_path):
    """Grey images saved with a palette (GIF, or PNG and TIFF from an editor) keep a model grey;
    one palette image in colour makes it RGB."""
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        _palette(True).save(tmp_path / c / "1.png")
        _palette(True).save(tmp_path / c / "2.tif")
        _palette(True, colour_unused=True).save(tmp_path / c / "3.gif")
        Image.fromarray(np.full((40, 40), 128, np.uint8)).save(tmp_path / c / "4.png")
    assert Image.open(tmp_path / "a" / "2.tif").mode == "P"
    ds = load_image_folder(tmp_path)
    assert ds.images.shape == (8, 32, 32, 1)  # grey (40 pixels: at most 32 for few images)
    assert ds.images[0, 16, 16, 0] == 30
    _palette(False).save(tmp_path / "b" / "5.png")
    assert load_image_folder(tmp_path).images.shape[-1] == 3
    assert colour_mode(_palette(True).convert("PA")) == "LA"
    assert colour_mode(_palette(False).convert("PA")) == "PA"


def test_classes_are_kept_or_left_out_by_name(small_folder, omniglot_dir):
    ds = load_image_folder(small_folder)
    held = ds.select_classes(exclude=["Bag", "Trouser"])
    assert held.class_names == ["Sneaker", "T-shirt-top"] and len(held) == 60
    assert held.labels.max() == 1 and held.excluded_classes == ["Bag", "Trouser"]
    np.testing.assert_array_equal(held.images[0], ds.images[ds.labels == ds.class_names.index(
        "Sneaker")][0])
    kept = ds.select_classes(keep=["Trouser", "Bag"])
    assert kept.class_names == ["Bag", "Trouser"] and kept.excluded_classes == ["Sneaker",
                                                                                "T-shirt-top"]
    assert kept.select_classes(exclude=["Bag"]).excluded_classes == ["Bag", "Sneaker",
                                                                     "T-shirt-top"]
    with pytest.raises(DatasetError, match=r"no class named 'Hat', 'Sock'; it has Bag, "
                                           "Sneaker, T-shirt-top, Trouser"):
        ds.select_classes(exclude=["Bag", "Sock", "Hat"])
    with pytest.raises(DatasetError, match="no classes left once excluded"):
        ds.select_classes(exclude=ds.class_names)
    omniglot = load_omniglot([omniglot_dir / "images_background_small1.zip"], side=28)
    greek = [n for n in omniglot.class_names if n.startswith("Greek/")][:3]
    assert omniglot.select_classes(keep=greek).groups_present() == ["Greek"]
    with pytest.raises(DatasetError, match=r"no class named 'Greek/alpha'; it has "
                                           r"Balinese/character01, .* \(136 in all\)"):
        omniglot.select_classes(keep=["Greek/alpha"])


def test_pad_fits_long_images_into_the_dataset(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(2):
            a = np.full((30, 90), 240, np.uint8)
            a[10:20, 20 + 10 * i: 70] = 0
            Image.fromarray(a).save(tmp_path / c / f"{i}.png")
    ds = load_dataset("folder", [str(tmp_path)], side=30, fit="pad")
    assert ds.fit == "pad" and ds.images.shape == (4, 30, 30, 1)
    assert (ds.images[:, :10] == 240).all() and (ds.images[:, 20:] == 240).all()
    stretched = load_dataset("folder", [str(tmp_path)], side=30)
    assert stretched.fit == "stretch"
    # The 10-pixel-high stroke: 10 rows high stretched (30 -> 30), a third of that padded.
    rows = [np.ptp(np.nonzero((d.images[0, :, :, 0] < 128).any(axis=1))[0]) + 1
            for d in (stretched, ds)]
    assert rows[0] == 10 and 3 <= rows[1] <= 5
    assert load_image_folder(tmp_path, Preprocessing(30, 30, 1, fit="pad")).fit == "pad"
