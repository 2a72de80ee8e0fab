"""The encoder's command-line programs, run in-process through the same wrapper as the console
commands (so exit codes and one-line errors are what users get)."""
import json
import re
import shutil

import numpy as np
import pytest

from scripts import evaluate, make_samples, train
from scripts.common import run


def run_command(main, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(lambda: main(argv))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_evaluate_prints_metrics_and_writes_plots(tiny_model, small_folder, tmp_path, capsys):
    code, out, err = run_command(evaluate.main, [
        "--model", str(tiny_model), "--dataset", "folder", str(small_folder), "--json",
        "--plots", str(tmp_path / "plots")], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["images"] == 120 and result["pairs"] == 240
    for key in ("contrastive_loss", "accuracy", "roc_auc", "eer", "recall@1", "recall@5", "map@r"):
        assert 0.0 <= result[key] <= 1.0 or key == "contrastive_loss"
    assert result["recall@5"] >= result["recall@1"]
    for name in ("roc.png", "distances.png", "pairs.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_draws_more_pairs_with_pair_rounds(tiny_model, small_folder, capsys):
    argv = ["--model", str(tiny_model), "--dataset", "folder", str(small_folder), "--json"]
    code, out, err = run_command(evaluate.main, argv + ["--pair-rounds", "5"], capsys)
    assert code == 0, err
    five = json.loads(out)
    assert five["pairs"] == 5 * 240  # each round: one positive and one negative pair per image
    code, out, err = run_command(evaluate.main, argv, capsys)
    one = json.loads(out)
    assert one["pairs"] == 240 and 0.0 <= five["accuracy"] <= 1.0
    code, out, err = run_command(evaluate.main, argv + ["--pair-rounds", "0"], capsys)
    assert code == 2 and "--pair-rounds must be at least 1, not 0" in err.strip().splitlines()[-1]


def test_train_refuses_a_one_class_folder_in_one_line(small_folder, tmp_path, capsys):
    one = tmp_path / "one"
    shutil.copytree(sorted(small_folder.iterdir())[0], one / "only")
    code, out, err = run_command(train.main, ["--dataset", "folder", str(one), "--out",
                                              str(tmp_path / "m")], capsys)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("error: folder:") and "two classes" in err
    assert not (tmp_path / "m").exists()


def test_commands_name_bad_paths(tmp_path, capsys, small_folder):
    code, _, err = run_command(evaluate.main, ["--model", str(tmp_path / "nope"), "--dataset",
                                               "folder", str(small_folder)], capsys)
    assert code == 2 and "no such model directory" in err
    code, _, err = run_command(train.main, ["--dataset", "fashion-mnist", str(tmp_path / "x"),
                                            "--out", str(tmp_path / "m")], capsys)
    assert code == 2 and err.strip() == f"error: {tmp_path / 'x'}: no such folder"
    code, _, err = run_command(train.main, ["--dataset", "folder", str(small_folder), "--out",
                                            str(tmp_path / "m"), "--epochs", "0"], capsys)
    assert code == 2 and "epochs must be at least 1, not 0" in err


@pytest.mark.slow
def test_train_command_writes_a_loadable_model(small_folder, tmp_path, capsys):
    from encoder import Embedder

    code, out, err = run_command(train.main, [
        "--dataset", "folder", str(small_folder), "--out", str(tmp_path / "m"), "--epochs", "1",
        "--classes-per-batch", "4", "--images-per-class", "8", "--val-fraction", "0.2",
        "--no-domain-leave-out"], capsys)
    assert code == 0, err
    assert "epoch 1/1" in out and "saved" in out
    # The summary says how long training took in words a reader cannot take for a time of day
    # (it ended "1:50 in all").
    saved = next(line for line in out.splitlines() if line.startswith("saved "))
    assert re.search(r"; training took (\d+ min )?\d+ s$", saved), saved
    assert Embedder.load(tmp_path / "m").embedding_dim == 64


def test_make_samples_writes_labelled_pngs(fashion_dir, tmp_path, capsys):
    code, out, _ = run_command(make_samples.main, ["--dataset", str(fashion_dir), "--out",
                                                   str(tmp_path / "s"), "--per-class", "2"], capsys)
    assert code == 0 and "wrote 20 PNG files in 10 folders" in out
    assert sorted(p.name for p in (tmp_path / "s" / "Ankle-boot").iterdir()) == [
        "t10k-00000.png", "t10k-00023.png"]  # the first two ankle boots of the test split
    # The docs' queries beside the gallery (not in the repository's samples/queries), none of
    # them one of its images.
    queries = {p.name: p.read_bytes() for p in (tmp_path / "queries").iterdir()}
    assert set(queries) == {"sneaker.png", "bag.png", "coat.png", "coat-2.png", "trouser.png",
                            "portrait.png"}
    gallery = {p.read_bytes() for p in (tmp_path / "s").rglob("*.png")}
    assert not gallery & set(queries.values())


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory, omniglot_dir):
    """8 Omniglot characters x 6 images as users' files come: sizes 40-150 px, grey, colour,
    palette, transparent and 16-bit, PNG, JPEG and GIF (written by scripts.make_folder)."""
    from scripts import make_folder

    out = tmp_path_factory.mktemp("mixed") / "tree"
    make_folder.main(["--omniglot", str(omniglot_dir / "images_background_small1.zip"),
                      "--out", str(out), "--classes", "8", "--per-class", "6", "--seed", "2"])
    return out


@pytest.mark.slow
def test_train_on_a_small_mixed_folder_reports_and_records_its_choices(mixed_folder, tmp_path,
                                                                        capsys):
    from encoder import Embedder

    root = tmp_path / "tree"
    shutil.copytree(mixed_folder, root, symlinks=True)
    first = sorted(root.iterdir())[0]
    (first / "torn.png").write_bytes((next(first.glob("*.png"))).read_bytes()[:200])
    (first / "empty.jpg").write_bytes(b"")
    (first / "loop.png").symlink_to(first / "loop.png")
    (root / "again").symlink_to(root)  # a class folder that is the tree itself
    code, out, err = run_command(train.main, [
        "--dataset", "folder", str(root), "--out", str(tmp_path / "m"), "--epochs", "1",
        "--val-fraction", "0.25", "--images-per-class", "4", "--no-domain-leave-out"], capsys)
    assert code == 0, err
    assert "8 classes, 48 images; 6 per class" in out
    for name in ("torn.png", "empty.jpg", "loop.png", "again"):
        assert any(line.startswith("skipped ") and name in line for line in out.splitlines()), name
    assert "validation split by class" in out and "augmentation affine" in out
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["input_shape"] == [32, 32, 3]  # colour present; median side 80, few images: 32
    assert card["training"]["settings"]["augment"] == "affine"
    assert card["training"]["settings"]["val_split"] == "class"
    # Three calibration folds (3, 3 and 2 classes held out): the saved encoder is the first
    # fold's, its verdict calibrated on the 3 classes it never trained on; the other two folds
    # measure the recipe on every class. No final fit on all 8 (--refit is off by default).
    settings = card["training"]["settings"]
    assert settings["calibration_folds"] == 3 and settings["refit"] is False
    assert card["training"]["classes"] == 5 and card["training"]["images"] == 30
    assert card["training"]["fold_best_epochs"] == [1, 1, 1]
    assert len(card["training"]["fold_seconds"]) == 3 and "final_fit_seconds" not in card["training"]
    # The first fold's run, validated on its held-out classes each epoch.
    assert [set(h) for h in card["training"]["history"]] == [{"epoch", "loss", "val_loss",
                                                              "seconds"}]
    assert "final fit" not in out
    assert "calibrating on 18 held-out images of 3 classes that the saved encoder never trained on" in out
    assert (card["validation"]["folds"], card["validation"]["classes"]) == (3, 3)
    assert card["validation"]["fold_classes"] == [3, 3, 2]
    assert card["validation"]["images"] == 18
    assert "oneshot" not in card["validation"]  # 2 or 3 classes a fold: too few for 5-way
    # Each fold scored at the threshold chosen on the other two (see test_calibration).
    assert 0.0 < card["validation"]["cross_validated_accuracy"] <= 1.0
    assert f"(cross-validated {card['validation']['cross_validated_accuracy']:.4f})" in out
    assert card["validation"]["pairs"] == 18 * 17 // 2  # every distinct pair, each once
    assert all(f"fold {k}/3: data:" in out for k in (1, 2, 3))
    embedder = Embedder.load(tmp_path / "m")
    assert embedder.embed(sorted(first.glob("*.*"))[:3]).shape == (3, 64)


@pytest.mark.parametrize("layout, message", [
    ({"a": 3, "b": 3, "c": 3}, "3 classes are too few to hold out 2 for validation"),
    ({"a": 3, "b": 1, "c": 3, "d": 3, "e": 3}, "every class needs at least two images; 1 class(es) "
                                               "have fewer: b"),
    ({"only": 5}, "needs at least two classes, found 1"),
])
def test_train_refuses_data_too_small_to_train_or_validate(mixed_folder, tmp_path, capsys, layout,
                                                          message):
    files = sorted(mixed_folder.rglob("*.png"))
    for n, (name, count) in enumerate(layout.items()):
        (tmp_path / "tree" / name).mkdir(parents=True)
        for i in range(count):
            shutil.copy(files[n * 5 + i], tmp_path / "tree" / name / f"{i}.png")
    code, out, err = run_command(train.main, ["--dataset", "folder", str(tmp_path / "tree"),
                                              "--out", str(tmp_path / "m")], capsys)
    assert code == 2 and message in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_oneshot_evaluation_defaults_to_alphabets_the_model_never_saw(omniglot_dir, tmp_path,
                                                                     capsys):
    source = str(omniglot_dir / "images_background_small1.zip")
    code, out, err = run_command(train.main, [
        "--dataset", "omniglot", source, "--out", str(tmp_path / "m"), "--input-size", "28",
        "--invert", "--epochs", "1", "--seed", "1", "--no-domain-leave-out"], capsys)
    assert code == 0, err
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    held_out = card["training"]["validation_groups"]
    assert len(held_out) == 2 and not set(held_out) & set(card["training"]["groups"])
    assert f"validation groups (never trained on): {', '.join(held_out)}" in out

    def evaluate_json(*extra):
        code, out, err = run_command(evaluate.main, [
            "--model", str(tmp_path / "m"), "--dataset", "omniglot", source, "--json",
            "--oneshot", "5", "3", "--episodes", "50", *extra], capsys)
        assert code == 0, err
        return json.loads(out)

    result = evaluate_json()
    assert result["groups"] == held_out and result["groups_chosen"] == "not seen in training"
    assert [(r["way"], r["shots"], r["episodes"], r["episode_classes"]) for r in result["oneshot"]] \
        == [(5, 1, 50, "group"), (3, 1, 50, "group")]
    assert all(0.2 < r["accuracy"] <= 1.0 and 0 <= r["ci95"] < 0.2 for r in result["oneshot"])
    assert evaluate_json("--groups", "all")["images"] == 2720
    both = evaluate_json("--groups", "Greek", "--shots", "3", "--episode-classes", "any")
    assert both["groups"] == ["Greek"] and both["images"] == 480
    assert both["oneshot"][0]["shots"] == 3 and both["oneshot"][0]["episode_classes"] == "any"
    assert evaluate_json("--seed", "7")["oneshot"] != result["oneshot"]

    # The card's one-shot accuracy of each held-out alphabet is what evaluating it gives, with
    # the training seed: the same episodes on the same embeddings.
    oneshot = card["validation"]["oneshot"]
    assert sorted(oneshot["by_group"]) == held_out and oneshot["episode_classes"] == "group"
    for alphabet in held_out:
        alone = evaluate_json("--groups", alphabet, "--seed", "1", "--episodes", "1000",
                              "--oneshot", "20", "5")
        assert oneshot["by_group"][alphabet] == {
            f"{r['way']}-way": round(r["accuracy"], 4) for r in alone["oneshot"]}
    assert oneshot["20-way"] == round(np.mean([oneshot["by_group"][a]["20-way"] for a in held_out]), 4)
    assert f"one-shot on held-out classes: {held_out[0]} 20-way " in out

    code, out, err = run_command(evaluate.main, [
        "--model", str(tmp_path / "m"), "--dataset", "omniglot", source, "--oneshot", "30"], capsys)
    assert code == 2 and "30-way 1-shot episodes need 30 classes" in err and "within one group" in err
    code, out, err = run_command(evaluate.main, [
        "--model", str(tmp_path / "m"), "--dataset", "omniglot", source, "--groups",
        ",".join(card["training"]["groups"][:1]), "--oneshot", "5"], capsys)
    assert code == 0 and "one-shot  5-way 1-shot: " in out and "classes within one group" in out


def test_oneshot_evaluation_of_a_folder(tiny_model, small_folder, capsys):
    code, out, err = run_command(evaluate.main, [
        "--model", str(tiny_model), "--dataset", "folder", str(small_folder), "--oneshot", "4",
        "--shots", "5", "--episodes", "20"], capsys)
    assert code == 0, err
    assert "4-way 5-shot" in out and "any classes" in out and "groups" not in out
    code, out, err = run_command(evaluate.main, [
        "--model", str(tiny_model), "--dataset", "folder", str(small_folder), "--oneshot", "4",
        "--episode-classes", "group"], capsys)
    assert code == 2 and "has no groups" in err
    code, out, err = run_command(evaluate.main, [
        "--model", str(tiny_model), "--dataset", "folder", str(small_folder), "--groups", "x"],
        capsys)
    assert code == 2 and "has no groups" in err


# The domain check is trained, but not once per foreign kind left out (the tiny model does that).
TINY = ["--epochs", "1", "--width", "8", "--classes-per-batch", "2", "--images-per-class", "4",
        "--no-domain-leave-out"]


@pytest.mark.slow
def test_classes_held_out_of_training_are_evaluated_on_by_name(small_folder, tmp_path, capsys):
    code, out, err = run_command(train.main, [
        "--dataset", "folder", str(small_folder), "--out", str(tmp_path / "m"),
        "--exclude-classes", "Bag,Sneaker", "--val-split", "image", "--val-fraction", "0.2",
        *TINY], capsys)
    assert code == 0, err
    assert "left out 2 class(es): Bag, Sneaker" in out and "2 classes, 60 images" in out
    training = json.loads((tmp_path / "m" / "card.json").read_text())["training"]
    assert training["excluded_classes"] == ["Bag", "Sneaker"]
    assert training["class_names"] == ["T-shirt-top", "Trouser"] and training["images"] == 48
    code, out, err = run_command(evaluate.main, [
        "--model", str(tmp_path / "m"), "--dataset", "folder", str(small_folder), "--json",
        "--classes", "Bag,Sneaker"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert (result["images"], result["classes"]) == (60, 2)
    # Unknown names: one line naming them, before anything is trained or measured.
    for main, argv in ((train.main, ["--out", str(tmp_path / "n"), "--classes", "Bag,Hat,Sock"]),
                       (evaluate.main, ["--model", str(tmp_path / "m"),
                                        "--exclude-classes", "hat"])):
        code, out, err = run_command(main, ["--dataset", "folder", str(small_folder), *argv],
                                     capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert err.startswith(f"error: folder:{small_folder}: no class named ")
        assert ("'Hat', 'Sock'; it has Bag, Sneaker" if main is train.main else "'hat'") in err
    assert not (tmp_path / "n").exists()


@pytest.mark.slow
def test_train_pads_long_images_when_told_and_the_model_keeps_doing_so(tmp_path, capsys):
    from PIL import Image

    from encoder import Embedder
    from encoder.images import prepare_batch

    rng = np.random.default_rng(0)
    for c in range(4):
        (tmp_path / "tree" / f"s{c}").mkdir(parents=True)
        for i in range(6):  # "signatures": dark strokes on white paper, three times as wide
            a = np.full((24, 72), 245, np.uint8)
            a[8 + c: 16, rng.integers(0, 20): 52 + 4 * c] = 20
            Image.fromarray(a).save(tmp_path / "tree" / f"s{c}" / f"{i}.png")
    code, out, err = run_command(train.main, [
        "--dataset", "folder", str(tmp_path / "tree"), "--out", str(tmp_path / "m"), "--fit", "pad",
        "--val-split", "image", "--val-fraction", "0.34", *TINY], capsys)
    assert code == 0, err
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["preprocessing"]["fit"] == "pad" and card["input_shape"] == [28, 28, 1]
    embedder = Embedder.load(tmp_path / "m")
    x = embedder.prepare([tmp_path / "tree" / "s0" / "0.png"])
    assert (x[0, :9] == 245).all() and (x[0, 19:] == 245).all()  # padded with paper, not stretched
    np.testing.assert_array_equal(x, prepare_batch([tmp_path / "tree" / "s0" / "0.png"],
                                                   embedder.card.preprocessing))
