"""siamese-calibrate gives a model card from before the verdict's calibration its operating
points, probability map, open-set model and domain model, without touching the weights."""
from __future__ import annotations

import json
import shutil

import pytest

from encoder import Embedder
from encoder.artifact import CARD_FILE, load_card
from encoder.domain import DOMAIN_FILE
from scripts import calibrate as calibrate_cmd
from tests.support import cli, error_line

pytestmark = pytest.mark.slow  # trains domain models


def old_model(tmp_path, tiny_model):
    """The tiny model as a card written before operating points and the domain check had it."""
    model = tmp_path / "old"
    shutil.copytree(tiny_model, model)
    card = json.loads((model / CARD_FILE).read_text())
    for key in ("operating_points", "probability", "open_set", "domain"):
        card.pop(key, None)
    (model / CARD_FILE).write_text(json.dumps(card))
    (model / DOMAIN_FILE).unlink(missing_ok=True)
    return model


def test_calibrate_adds_the_verdict_and_keeps_the_weights(tmp_path, tiny_model, small_folder,
                                                          capsys):
    model = old_model(tmp_path, tiny_model)
    before = load_card(model)
    assert not before.operating_points and before.probability is None and before.domain is None
    code, out, err = cli(calibrate_cmd, ["--model", model, "--dataset", "folder", small_folder,
                                         "--domain-epochs", "1"], capsys)
    assert code == 0, err
    assert "threshold" in out and "reproduced" in out
    after = load_card(model)
    assert after.model_id == before.model_id  # same weights: galleries built with it stay valid
    assert after.calibration == before.calibration
    assert set(after.operating_points) == {"balanced", "far-1e-2", "far-1e-3"}
    assert after.probability is not None and after.open_set is not None
    assert after.domain is not None and after.domain.epochs == 1
    embedder = Embedder.load(model)  # loading re-checks the id against the weights
    assert embedder.has_domain_model and embedder.verdicts.operating_points


def test_calibrate_refuses_other_data(tmp_path, tiny_model, small_folder, capsys):
    model = old_model(tmp_path, tiny_model)
    other = tmp_path / "other"
    shutil.copytree(small_folder, other)
    shutil.rmtree(sorted(p for p in other.iterdir() if p.is_dir())[0])  # one class fewer
    code, _, err = cli(calibrate_cmd, ["--model", model, "--dataset", "folder", other,
                                       "--no-domain"], capsys)
    assert code == 2
    assert "is not the data model" in error_line(err) and "Traceback" not in err
    assert load_card(model).operating_points == {}  # nothing written
