import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from encoder import Embedder
from encoder.artifact import CARD_FILE, MODEL_FILE, load_card
from encoder.errors import BadImageError, ModelError


def test_card_describes_the_model(tiny_model, tiny_embedder):
    card = json.loads((tiny_model / CARD_FILE).read_text())
    assert card["input_shape"] == [28, 28, 1]
    assert card["preprocessing"]["channels"] == 1 and card["preprocessing"]["dtype"] == "uint8"
    assert card["embedding_dim"] == 64 == tiny_embedder.embedding_dim
    for key in ("threshold", "accuracy", "roc_auc", "eer", "far_threshold", "far_target"):
        assert key in card["calibration"]
    assert card["calibration"]["far_target"] == 0.001
    assert card["calibration"]["far_threshold"] <= card["calibration"]["threshold"]
    assert card["training"]["dataset"].startswith("folder:")
    assert card["training"]["settings"]["epochs"] == 10 and card["training"]["train_seconds"] > 0
    assert len(card["training"]["fingerprint"]) == 16
    assert {"contrastive_loss", "recall@1", "map@r"} <= set(card["validation"])
    assert tiny_embedder.model_id == card["model_id"] and len(tiny_embedder.model_id) == 16
    assert tiny_embedder.threshold == card["calibration"]["threshold"] > 0


def test_every_input_type_gives_the_same_embedding(tiny_embedder, small_folder):
    path = sorted(next(iter(sorted(small_folder.iterdir()))).iterdir())[0]
    data = path.read_bytes()
    array = np.asarray(Image.open(path))
    sources = [str(path), path, data, Image.open(io.BytesIO(data))]
    e = tiny_embedder.embed(sources)
    assert e.shape == (4, 64) and e.dtype == np.float32
    np.testing.assert_allclose(e, np.repeat(e[:1], 4, 0), atol=1e-6)
    np.testing.assert_allclose(tiny_embedder.embed(array[None]), e[:1], atol=1e-6)
    np.testing.assert_allclose(tiny_embedder.embed(array[None, :, :, None]), e[:1], atol=1e-6)
    big = np.asarray(Image.open(path).convert("RGB").resize((56, 56), Image.Resampling.NEAREST))
    assert tiny_embedder.embed(big[None]).shape == (1, 64)  # resized and converted as the card says


def test_batches_match_single_images(tiny_embedder, fashion_test):
    x = fashion_test.images[:700]
    batched = tiny_embedder.embed(x)
    one_by_one = np.concatenate([tiny_embedder.embed(x[i:i + 1]) for i in range(0, 700, 97)])
    np.testing.assert_allclose(batched[::97], one_by_one, atol=1e-5)
    assert tiny_embedder.distance(batched[0], batched[0]) == 0.0
    d = tiny_embedder.distance(batched[:5], batched[5:10])
    assert d.shape == (5,) and (d > 0).all()


def test_bad_images_get_clear_errors(tiny_embedder):
    with pytest.raises(BadImageError, match="the file is empty"):
        tiny_embedder.embed([b""])
    with pytest.raises(BadImageError, match="not an image"):
        tiny_embedder.embed([b"GIF89a but not really"])


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_model_directory_problems_are_named(tiny_model, tmp_path):
    with pytest.raises(ModelError, match="no such model directory"):
        Embedder.load(tmp_path / "absent")
    no_card = _copy(tiny_model, tmp_path / "no-card")
    (no_card / CARD_FILE).unlink()
    with pytest.raises(ModelError, match="no card.json"):
        Embedder.load(no_card)
    bad_json = _copy(tiny_model, tmp_path / "bad-json")
    (bad_json / CARD_FILE).write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        Embedder.load(bad_json)
    incomplete = _copy(tiny_model, tmp_path / "incomplete")
    card = json.loads((incomplete / CARD_FILE).read_text())
    del card["calibration"]
    (incomplete / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelError, match="incomplete or malformed model card"):
        Embedder.load(incomplete)
    no_model = _copy(tiny_model, tmp_path / "no-model")
    (no_model / MODEL_FILE).unlink()
    with pytest.raises(ModelError, match="no model.keras"):
        Embedder.load(no_model)
    corrupt = _copy(tiny_model, tmp_path / "corrupt")
    (corrupt / MODEL_FILE).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ModelError, match="cannot load the Keras model"):
        Embedder.load(corrupt)


def test_card_that_does_not_belong_to_the_weights_is_refused(tiny_model, tmp_path):
    other = _copy(tiny_model, tmp_path / "tampered")
    card = json.loads((other / CARD_FILE).read_text())
    card["model_id"] = "0123456789abcdef"
    (other / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelError, match="do not belong together"):
        Embedder.load(other)
    shape = _copy(tiny_model, tmp_path / "shape")
    card = json.loads((shape / CARD_FILE).read_text())
    card["preprocessing"]["height"] = card["preprocessing"]["width"] = 32
    (shape / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelError, match=r"model input \(None, 28, 28, 1\) does not match"):
        Embedder.load(shape)
    assert load_card(tiny_model).embedding_dim == 64


def test_bundled_omniglot_model_tells_characters_apart(omniglot_dir):
    """The shipped one-shot model loads (its id checked against its weights) and, on one
    alphabet's real drawings, picks the right character out of 20 from one drawing each."""
    from pathlib import Path

    from encoder.datasets import load_dataset
    from encoder.evaluation import oneshot_accuracy

    embedder = Embedder.load(Path(__file__).resolve().parents[2] / "models" / "omniglot")
    assert embedder.card.preprocessing.shape == (28, 28, 1) and embedder.card.preprocessing.invert
    ds = load_dataset("omniglot", [omniglot_dir / "images_background_small1.zip"],
                      pre=embedder.card.preprocessing).select_groups(["Greek"])
    result = oneshot_accuracy(embedder.embed(ds.images), ds.labels, 20, 1, 300, seed=0,
                              groups=ds.groups)
    assert result.accuracy > 0.9
