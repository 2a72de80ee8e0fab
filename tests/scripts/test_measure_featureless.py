"""scripts/measure_featureless on the bundled model: the table of docs/trust.md, and its errors."""
from __future__ import annotations

import re

from scripts import measure_featureless
from tests.conftest import FASHION
from tests.support import cli, error_line


def test_it_counts_featureless_images_and_the_false_accepts_the_check_removes(model_dir, capsys):
    code, out, err = cli(measure_featureless, ["--model", model_dir, "--dataset", "fashion-mnist",
                                               FASHION, "--images", "3000"], capsys)
    assert code == 0, err
    rows = [line.split(" | ") for line in out.splitlines() if re.match(r"\| (as|affine)", line)]
    assert [(r[0], r[4]) for r in rows] == [
        (f"| {kind}", point) for kind in ("as they are", "affine-distorted")
        for point in ("balanced", "far-1e-2", "far-1e-3")]
    for row in rows:
        featureless, in_domain = int(row[1].split()[0]), int(row[2])
        without, with_ = (int(cell.split()[0].replace(",", "")) for cell in row[5:7])
        assert in_domain <= featureless and with_ <= without
    # Strict points accept fewer pairs of different labels, and fewer images beside a
    # featureless one.
    accepts = [int(r[6].split()[0].replace(",", "")) for r in rows[:3]]
    assert accepts == sorted(accepts, reverse=True) and accepts[0] > 0
    beside = [int(r[8].split()[0].replace(",", "")) for r in rows[:3]]
    assert beside == sorted(beside, reverse=True)
    # A search reads back every match that is featureless, and hardly any other.
    reads = [re.fullmatch(r"(as they are|affine-distorted): searching each image's 8 nearest among "
                          r"the others: ([\d,]+) of 24,000 matches .* read back, ([\d,]+) of them "
                          r"featureless \(0 missed\); the filter takes \d+ us per search "
                          r"\(1 image, k=8\)", line) for line in out.splitlines()
             if "searching" in line]
    assert len(reads) == 2 and all(reads), out
    thresholds = [line for line in out.splitlines() if "1:N thresholds" in line]
    rule = r"[\d.]+ \((gallery|card|scaled-card)\)"  # a threshold and where it came from
    assert len(thresholds) == 2 and all(re.search(
        rf"featureless images counted: {rule} / {rule}; left out: {rule} / {rule}$", line)
        for line in thresholds), thresholds
    for read in reads:
        assert int(read[2].replace(",", "")) <= 2 * int(read[3].replace(",", "")) + 10
    assert re.fullmatch(r"the check took [\d.]+ ms for 3,000 embeddings, [\d.]+% of the time to "
                        r"embed them", out.splitlines()[-1])


def test_bad_arguments_are_one_error_line(tmp_path, model_dir, capsys):
    code, _, err = cli(measure_featureless, ["--model", tmp_path / "none", "--dataset",
                                             "fashion-mnist", FASHION], capsys)
    assert code == 2 and str(tmp_path / "none") in error_line(err)
    code, _, err = cli(measure_featureless, ["--model", model_dir, "--dataset", "fashion-mnist",
                                             FASHION, "--images", "1"], capsys)
    assert code == 2 and error_line(err) == ("error: --images must be at least 2 (pairs are "
                                             "measured), not 1")
