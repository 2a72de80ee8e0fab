"""siamese-evaluate measures the trustworthy verdict: the card's operating points, TAR@FAR, the
probability map's calibration, the domain check and open-set 1:N identification, on a model
really trained (the session's tiny model, whose card has all of them) and on the same model with
a card from before they existed."""
import json
import shutil

import pytest
from PIL import Image

from encoder.artifact import load_card
from scripts import evaluate
from scripts.common import run

FPIRS = [0.01, 0.05, 0.1]


def run_command(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(lambda: evaluate.main(argv))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def assert_png(path):
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= 300
        image.verify()


@pytest.fixture(scope="module")
def old_model(tmp_path_factory, tiny_model):
    """The tiny model with a card from before operating points, probability, open-set and domain
    models (the weights, and so the model id, unchanged)."""
    out = tmp_path_factory.mktemp("old") / "model"
    shutil.copytree(tiny_model, out)
    card = json.loads((out / "card.json").read_text())
    for key in ("operating_points", "probability", "open_set", "domain"):
        card.pop(key)
    (out / "card.json").write_text(json.dumps(card, indent=2))
    (out / "domain.keras").unlink()
    return out


def test_json_has_operating_points_calibration_domain_and_open_set(tiny_model, small_folder,
                                                                  tmp_path, capsys):
    card = load_card(tiny_model)
    code, out, err = run_command([
        "--model", str(tiny_model), "--dataset", "folder", str(small_folder), "--json",
        "--open-set", "--open-set-rounds", "4", "--plots", str(tmp_path / "plots")], capsys)
    assert code == 0, err
    result = json.loads(out)
    points = result["operating_points"]
    assert list(points) == ["balanced", "far-1e-2", "far-1e-3"]
    for name, p in points.items():
        assert p["threshold"] == pytest.approx(card.operating_points[name].threshold)
        # Every distinct pair of the 120 images of 4 classes, once.
        assert (p["positives"], p["negatives"], p["classes"]) == (4 * 435, 7140 - 4 * 435, 4)
        assert p["tar_ci95"][0] <= p["tar"] <= p["tar_ci95"][1]
        assert p["far_ci95"][0] <= p["far"] <= p["far_ci95"][1]
        assert (p["card_tar"], p["card_far"]) == (card.operating_points[name].tar,
                                                  card.operating_points[name].far)
        # What the service answers: the domain check can only take verified pairs away.
        assert p["service_tar"] <= p["tar"] and p["service_far"] <= p["far"]
        assert p["far_above_card"] == (p["far"] > card.operating_points[name].far_ci95[1])
    assert points["far-1e-3"]["tar"] <= points["balanced"]["tar"]
    assert [r["far_target"] for r in result["tar_at_far"]] == [0.01, 0.001]
    assert all(r["far"] <= r["far_target"] for r in result["tar_at_far"])
    assert 0.0 <= result["probability"]["ece"] <= 1.0
    assert result["probability"]["card_ece"] == card.probability.ece
    domain = result["domain"]
    assert domain["images"] == 120 and 0 <= domain["rejected_images"] <= 120
    assert domain["rejected"] == domain["rejected_images"] / 120

    open_set = result["open_set"]
    assert (open_set["enrolled_classes"], open_set["not_enrolled_classes"]) == (2, 2)  # half of 4
    assert (open_set["shots"], open_set["gallery_size"], open_set["rounds"]) == (1, 2, 4)
    assert (open_set["mated_probes"], open_set["nonmated_probes"]) == (58, 60)
    assert 0.0 <= open_set["rank1"]["mean"] <= open_set["rank5"]["mean"] == 1.0  # 2 candidates
    assert [p["fpir"] for p in open_set["fnir_at_fpir"]] == FPIRS
    assert [p["fpir"] for p in open_set["predicted"]] == FPIRS
    for p in open_set["predicted_by_card"]:
        assert p["threshold"] == card.open_set.threshold_for(p["fpir"], 2)[0]
    for p in open_set["predicted"]:  # a gallery of 2 is too small for its own estimate: the card
        assert p["threshold"] == card.open_set.threshold_for(p["fpir"], 2)[0]
    for by_distance, served in zip(open_set["predicted"], open_set["predicted_service"]):
        assert served["threshold"] == by_distance["threshold"]
        assert served["identification_rate"]["mean"] <= by_distance["identification_rate"]["mean"]
        assert 0.0 <= p["measured_fpir"]["mean"] <= 1.0
        assert 0.0 <= p["identification_rate"]["mean"] <= 1.0
    names = ["roc.png", "det.png", "distances.png", "pairs.png", "open_set_det.png"]
    assert result["plots"] == [str(tmp_path / "plots" / n) for n in names]
    for name in names:
        assert_png(tmp_path / "plots" / name)


def test_text_output_shows_the_tables(tiny_model, small_folder, capsys):
    code, out, err = run_command([
        "--model", str(tiny_model), "--dataset", "folder", str(small_folder), "--open-set",
        "--open-set-rounds", "3", "--shots", "2", "--enrolled", "3"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(
        "operating points on every distinct pair of the test images (1,740 same-class, 5,400 "
        "different-class, 4 classes; 95% intervals over resampled images), by distance and as "
        "the service answers"))
    assert lines[start + 1].split() == ["point", "threshold", "TAR", "[95%", "CI]", "FAR", "[95%",
                                        "CI]", "service", "TAR", "service", "FAR", "card", "TAR",
                                        "card", "FAR"]
    assert [line.split()[0] for line in lines[start + 3:start + 6]] == ["balanced", "far-1e-2",
                                                                        "far-1e-3"]
    assert "TAR@FAR (oracle: threshold chosen on the test pairs themselves):" in lines
    assert any(line.startswith("  FAR 0.01: TAR ") for line in lines)
    assert any(line.startswith("probability: expected calibration error ") for line in lines)
    assert any(line.startswith("domain check: ") and "of test images rejected as out of domain"
               in line for line in lines)
    assert any(line.startswith("open-set 1:N identification (3 rounds") and "3 classes enrolled x "
               "2 image(s) = gallery of 6, 1 classes not enrolled" in line for line in lines)
    assert any(line.startswith("  rank-1 identification ") for line in lines)
    assert "  the card's open-set model alone, gallery of 6:" in lines
    assert any(line.startswith("  the same, as the service answers") for line in lines)
    assert any(line.startswith("  the threshold identify takes") for line in lines)
    assert sum(line.split()[0] in ("0.01", "0.05", "0.1") for line in lines if line.strip()) == 12


def test_a_card_from_before_says_what_it_lacks(old_model, small_folder, tmp_path, capsys):
    argv = ["--model", str(old_model), "--dataset", "folder", str(small_folder), "--open-set",
            "--open-set-rounds", "2"]
    code, out, err = run_command(argv + ["--json", "--plots", str(tmp_path)], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert list(result["operating_points"]) == ["balanced", "far-1e-3"]  # from the calibration
    assert result["operating_points"]["balanced"]["card_tar"] is None
    assert result["probability"] is None and result["domain"] is None
    assert result["open_set"]["predicted_by_card"] is None
    assert all(not p["calibrated"] for p in result["open_set"]["predicted"])  # the far-1e-3 stand-in
    assert len(result["open_set"]["fnir_at_fpir"]) == 3
    assert_png(tmp_path / "det.png")
    assert_png(tmp_path / "open_set_det.png")
    code, out, err = run_command(argv, capsys)
    assert code == 0, err
    model_id = load_card(old_model).model_id
    assert f"(model {model_id}'s card predates operating points: it predicts no TAR/FAR to " \
           "compare with)" in out
    assert "probability: the card has no distance -> probability map" in out
    assert f"domain check: model {model_id} has no domain model; test images were not checked" \
        in out
    assert "the card has no open-set model: no prediction of its own" in out


def class_tree(source, root, counts):
    """A class-per-subfolder tree with the first `counts[i]` images of the source's i-th class."""
    for folder, count in zip(sorted(source.iterdir()), counts):
        (root / folder.name).mkdir(parents=True)
        for f in sorted(folder.iterdir())[:count]:
            shutil.copy(f, root / folder.name / f.name)
    return root


def test_classes_too_small_to_enrol_are_skipped_and_counted(tiny_model, small_folder, tmp_path,
                                                           capsys):
    root = class_tree(small_folder, tmp_path / "tree", [30, 30, 30, 12])
    code, out, err = run_command(["--model", str(tiny_model), "--dataset", "folder", str(root),
                                  "--open-set", "--shots", "20", "--open-set-rounds", "2"], capsys)
    assert code == 0, err
    assert "  1 class(es) with fewer than 21 images were never enrolled (they probe as non-mated " \
           "only)" in out
    assert "2 classes enrolled x 20 image(s) = gallery of 40, 2 classes not enrolled" in out


@pytest.mark.parametrize("extra, counts, message", [
    (["--open-set-rounds", "0"], None, "--open-set-rounds must be at least 1, not 0"),
    (["--enrolled", "1"], None, "--enrolled must be at least 2, not 1"),
    (["--enrolled", "4"], None, "open-set identification: enrolled classes must be between 2 and "
                                "3 (the data has 4 classes, 4 with at least 2 images, and at least "
                                "one class stays not enrolled), not 4"),
    (["--shots", "30"], None, "open-set identification with 30 enrolled image(s) per class needs "
                              "at least 2 classes with 31 or more images (one left to probe with); "
                              "the data has 0 (4 skipped)"),
    ([], [10, 10], "open-set identification needs at least 3 classes (2 enrolled and 1 not); the "
                   "data has 2"),
])
def test_bad_open_set_input_is_one_error_line(tiny_model, small_folder, tmp_path, capsys, extra,
                                              counts, message):
    data = small_folder if counts is None else class_tree(small_folder, tmp_path / "t", counts)
    code, out, err = run_command(["--model", str(tiny_model), "--dataset", "folder", str(data),
                                  "--open-set", *extra], capsys)
    assert code == 2 and out == ""
    assert err.strip().splitlines()[-1] == f"error: {message}"
    assert sum(line.startswith("error:") for line in err.splitlines()) == 1
