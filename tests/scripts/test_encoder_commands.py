"""The encoder's command-line programs, run in-process through the same wrapper as the console
commands (so exit codes and one-line errors are what users get)."""
import json
import shutil

import pytest

from scripts import bench, evaluate, make_samples, train
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


def test_train_command_writes_a_loadable_model(small_folder, tmp_path, capsys):
    from encoder import Embedder

    code, out, err = run_command(train.main, [
        "--dataset", "folder", str(small_folder), "--out", str(tmp_path / "m"), "--epochs", "1",
        "--classes-per-batch", "4", "--images-per-class", "8", "--val-fraction", "0.2"], capsys)
    assert code == 0, err
    assert "epoch 1/1" in out and "saved" in out
    assert Embedder.load(tmp_path / "m").embedding_dim == 64


def test_encoder_benchmark_prints_a_table_with_its_baseline(tiny_model, fashion_dir, capsys):
    code, out, err = run_command(bench.main, ["encoder", "--model", str(tiny_model), "--dataset",
                                              str(fashion_dir), "--repeats", "5"], capsys)
    assert code == 0, err
    assert "baseline: model.predict, one image" in out and "Embedder.embed, batch of 1,024" in out


def test_make_samples_writes_labelled_pngs(fashion_dir, tmp_path, capsys):
    code, out, _ = run_command(make_samples.main, ["--dataset", str(fashion_dir), "--out",
                                                   str(tmp_path / "s"), "--per-class", "2"], capsys)
    assert code == 0 and "wrote 20 PNG files in 10 folders" in out
    assert sorted(p.name for p in (tmp_path / "s" / "Ankle-boot").iterdir()) == [
        "t10k-00000.png", "t10k-00023.png"]  # the first two ankle boots of the test split


def test_training_benchmark_trains_both_recipes_for_the_same_budget(tiny_model, fashion_dir,
                                                                     tmp_path, capsys):
    code, out, err = run_command(bench.main, [
        "training", "--dataset", str(fashion_dir), "--budget", "2", "--recipe-from", str(tiny_model),
        "--out", str(tmp_path / "runs"), "--json"], capsys)
    assert code == 0, err
    results = json.loads(out[out.index("["):])
    assert [r["recipe"] for r in results] == ["tutorial", "ours"]
    assert results[0]["val_loss_vs_tutorial"] == 1.0 and results[1]["val_loss_vs_tutorial"] > 0
    assert all(0 < r["test_accuracy"] <= 1 and r["epochs"] >= 1 for r in results)
    ours = json.loads((tmp_path / "runs" / "ours" / "card.json").read_text())["training"]["settings"]
    recipe = json.loads((tiny_model / "card.json").read_text())["training"]["settings"]
    assert {k: ours[k] for k in ("arch", "width", "augment", "hard_fraction")} == \
        {k: recipe[k] for k in ("arch", "width", "augment", "hard_fraction")}
    assert ours["time_budget"] == 2
