import json
from dataclasses import replace

import numpy as np
import pytest

from encoder import Embedder
from encoder.datasets import Dataset, load_image_folder
from encoder.errors import ConfigError, DatasetError
from encoder.images import Preprocessing
from encoder.models import build_encoder, siamese_model
from encoder.config import TrainConfig
from encoder.splits import split_train_val, validation_warnings
from encoder.training import oneshot_summary, train

GREY28 = Preprocessing(28, 28, 1)


def test_tutorial_network_is_reproduced_exactly():
    broken = build_encoder("tutorial", GREY28)
    fixed = build_encoder("tutorial", GREY28, fix_defect=True)
    # Defect: only one Conv2D(128, 2x2) is connected (1*4*128 + 128), then Dense(48) (128*48 + 48).
    assert broken.count_params() == 640 + 6192
    assert fixed.count_params() == 640 + (128 * 4 * 128 + 128) + 6192
    assert [l.__class__.__name__ for l in fixed.layers][2:] == [
        "Conv2D", "MaxPooling2D", "Dropout", "Conv2D", "MaxPooling2D", "Dropout",
        "GlobalAveragePooling2D", "Dense"]
    assert broken.output_shape == (None, 48)
    with pytest.raises(ConfigError, match="applies to --arch tutorial only"):
        build_encoder("default", GREY28, fix_defect=True)
    with pytest.raises(ConfigError, match="unknown architecture"):
        build_encoder("resnet", GREY28)


def test_siamese_model_shares_one_encoder():
    encoder = build_encoder("default", GREY28)
    siamese = siamese_model(encoder)
    assert len(siamese.trainable_weights) == len(encoder.trainable_weights)
    x = np.random.default_rng(0).integers(0, 255, (3, 28, 28, 1), np.uint8)
    d = siamese.predict([x, x], verbose=0)
    np.testing.assert_allclose(d, np.sqrt(1e-7), rtol=1e-3)  # sqrt(max(0, eps))


def test_validation_split_by_image_and_by_class(small_folder):
    ds = load_image_folder(small_folder)
    train_idx, val_idx = split_train_val(ds, TrainConfig(val_fraction=0.2, val_split="image"))
    assert len(set(train_idx) & set(val_idx)) == 0 and len(val_idx) == 24
    assert set(ds.labels[val_idx]) == set(ds.labels[train_idx])
    train_idx, val_idx = split_train_val(ds, TrainConfig(val_fraction=0.5, val_split="class"))
    assert not set(ds.labels[val_idx]) & set(ds.labels[train_idx])
    # Few classes: at least 12 are held out, or half of them when there are fewer than 24.
    assert len(set(ds.labels[split_train_val(ds, TrainConfig(val_fraction=0.1))[1]])) == 2
    many = Dataset(np.zeros((400, 4, 4, 1), np.uint8), np.repeat(np.arange(40), 10),
                   [str(i) for i in range(40)], name="forty", kind="folder")
    one = TrainConfig(calibration_folds=1)
    assert len(set(many.labels[split_train_val(many, one)[1]])) == 12
    assert len(set(many.labels[split_train_val(many, replace(one, val_fraction=0.5))[1]])) == 20
    with pytest.raises(DatasetError, match="too few to hold out"):
        split_train_val(ds, TrainConfig(val_fraction=0.8, val_split="class"))


def test_calibration_folds_hold_out_every_class_once():
    many = Dataset(np.zeros((400, 4, 4, 1), np.uint8), np.repeat(np.arange(40), 10),
                   [str(i) for i in range(40)], name="forty", kind="folder")
    config = TrainConfig().resolve(many)  # small classes, class split: three folds
    assert config.calibration_folds == 3
    held_out = [set(many.labels[split_train_val(many, config, fold=k)[1]]) for k in range(3)]
    assert sorted(map(len, held_out)) == [13, 13, 14]
    assert set().union(*held_out) == set(range(40)) and sum(map(len, held_out)) == 40
    for k in range(3):
        train_idx, val_idx = split_train_val(many, config, fold=k)
        assert not set(many.labels[train_idx]) & set(many.labels[val_idx])
    # The first fold is the saved model's: the same for a seed, another for another seed.
    assert held_out[0] == set(many.labels[split_train_val(many, config)[1]])
    assert held_out[0] != set(many.labels[split_train_val(many, replace(config, seed=1))[1]])
    # One fold where the split is not by class, or the classes are few or large.
    assert TrainConfig(val_split="image").resolve(many).calibration_folds == 1
    five = many.subset(np.nonzero(many.labels < 5)[0])
    assert TrainConfig().resolve(five).calibration_folds == 1
    large = Dataset(np.zeros((600, 4, 4, 1), np.uint8), np.repeat(np.arange(6), 100),
                    [str(i) for i in range(6)], name="six", kind="folder")
    assert TrainConfig().resolve(large).calibration_folds == 1
    with pytest.raises(ConfigError, match="calibration folds hold out whole classes"):
        TrainConfig(val_split="image", calibration_folds=3).resolve(many)
    with pytest.raises(DatasetError, match="too few for 3 calibration folds"):
        split_train_val(five, TrainConfig(calibration_folds=3).resolve(five), fold=2)
    with pytest.raises(ConfigError, match="calibration_folds must be an integer in 1..10, not 0"):
        TrainConfig(calibration_folds=0)
    # The saved encoder is the first fold's, calibrated on classes it never saw, unless told to
    # train on every class at the end.
    assert config.refit is False and TrainConfig(refit=True).resolve(many).refit is True


def test_config_values_are_checked():
    with pytest.raises(ConfigError, match="epochs must be at least 1, not 0"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="sampler must be one of"):
        TrainConfig(sampler="triplets")
    assert TrainConfig(arch="tutorial").sampler == "pairs"
    with pytest.raises(ConfigError, match="class_weight must be at least 0, not -1"):
        TrainConfig(class_weight=-1)


@pytest.mark.slow
def test_class_loss_trains_the_same_encoder_and_is_recorded(small_folder, tiny_model, tmp_path):
    """The auxiliary class head changes the weights, learns, and leaves no trace in the model."""
    ds = load_image_folder(small_folder)
    config = TrainConfig(epochs=10, seed=3, classes_per_batch=4, images_per_class=8,
                         val_fraction=0.2, val_split="image", augment="none",
                         min_steps_per_epoch=1, class_weight=0.5, domain=False)
    card = train(ds, config, tmp_path / "head", report=lambda s: None)
    plain = Embedder.load(tiny_model)
    assert card.model_id != plain.model_id and card.validation["roc_auc"] > 0.9
    assert card.training["settings"]["class_weight"] == 0.5
    with_head = Embedder.load(tmp_path / "head")
    assert with_head.model.count_params() == plain.model.count_params()


@pytest.mark.slow
def test_training_learns_and_is_deterministic(small_folder, tiny_model, tmp_path):
    ds = load_image_folder(small_folder)
    config = TrainConfig(epochs=10, seed=3, classes_per_batch=4, images_per_class=8,
                         val_fraction=0.2, val_split="image", augment="none",
                         min_steps_per_epoch=1, domain=False)
    card = train(ds, config, tmp_path / "again", report=lambda s: None)
    assert card.model_id == Embedder.load(tiny_model).model_id  # same seed, same weights
    # Four visually distinct classes: a few dozen steps separate them.
    assert card.validation["roc_auc"] > 0.9
    history = json.loads((tmp_path / "again" / "card.json").read_text())["training"]["history"]
    assert len(history) == card.training["epochs_run"] and history[0]["val_loss"] > 0


@pytest.mark.slow
def test_tutorial_recipe_trains_with_pairs_and_a_time_budget(small_folder, tmp_path):
    lines = []
    ds = load_image_folder(small_folder)
    card = train(ds, TrainConfig(arch="tutorial", epochs=50, time_budget=0.5, val_fraction=0.2,
                                 domain=False),
                 tmp_path / "tut", report=lines.append)
    assert card.training["stopped_by"] == "time_budget" and card.training["epochs_run"] == 1
    assert card.architecture == "tutorial" and card.embedding_dim == 48
    assert any(line.startswith("epoch 1/50") and "img/s" in line and "ETA" in line for line in lines)


def test_learning_rate_anneals_over_steps_or_time_budget():
    from encoder.fitting import cosine_rate

    assert cosine_rate(1e-3, 0.0) == pytest.approx(1e-3)
    assert cosine_rate(1e-3, 0.5) == pytest.approx(0.525e-3)
    assert cosine_rate(1e-3, 1.0) == pytest.approx(0.05e-3)
    assert cosine_rate(1e-3, 7.0) == pytest.approx(0.05e-3)  # past the budget: stays at the floor


def test_auto_settings_follow_the_data(small_folder, fashion_test, omniglot_dir):
    from encoder.datasets import load_omniglot

    folder = TrainConfig().resolve(load_image_folder(small_folder))
    assert (folder.val_split, folder.augment) == ("class", "affine")  # 30 images a class: small
    fashion = TrainConfig().resolve(fashion_test)
    assert (fashion.val_split, fashion.augment) == ("image", "none")  # 1,000 a class, ten fixed classes
    omniglot = load_omniglot([omniglot_dir / "images_background_small1.zip"], side=28)
    assert TrainConfig().resolve(omniglot).val_split == "group"
    assert TrainConfig(val_split="image", augment="flip").resolve(omniglot).augment == "flip"
    with pytest.raises(ConfigError, match="has no groups"):
        TrainConfig(val_split="group").resolve(fashion_test)
    with pytest.raises(ConfigError, match="group batches: fashion-mnist:test has no groups"):
        TrainConfig(group_batches=True).resolve(fashion_test)
    with pytest.raises(ConfigError, match="val_split must be one of"):
        TrainConfig(val_split="alphabet")


def test_group_split_holds_out_whole_alphabets(omniglot_dir):
    from encoder.datasets import load_omniglot

    ds = load_omniglot([omniglot_dir / "images_background_small1.zip"], side=28)
    train_idx, val_idx = split_train_val(ds, TrainConfig(seed=1))
    held_out = ds.groups_present(val_idx)
    assert len(held_out) == 2 and not set(held_out) & set(ds.groups_present(train_idx))
    assert len(train_idx) + len(val_idx) == len(ds)
    with pytest.raises(DatasetError, match="5 groups are too few to hold out 4"):
        split_train_val(ds, TrainConfig(val_fraction=0.8))


def test_rotated_classes_are_new_classes():
    from encoder.augment import with_rotated_classes

    x = np.arange(2 * 3 * 3).reshape(2, 3, 3, 1).astype(np.uint8)
    images, labels, groups = with_rotated_classes(x, np.array([0, 2]), np.array([1, 1]))
    assert images.shape == (8, 3, 3, 1) and labels.tolist() == [0, 2, 3, 5, 6, 8, 9, 11]
    assert groups.tolist() == [1, 1, 3, 3, 5, 5, 7, 7]
    np.testing.assert_array_equal(images[2, :, :, 0], np.rot90(x[0, :, :, 0]))
    np.testing.assert_array_equal(images[6, :, :, 0], np.rot90(x[0, :, :, 0], 3))
    with pytest.raises(ConfigError, match="square"):
        with_rotated_classes(np.zeros((1, 3, 4, 1), np.uint8), np.array([0]), np.array([0]))


def test_affine_distortions_are_small_seeded_and_keep_the_background(omniglot_dir):
    from encoder.datasets import load_omniglot
    from encoder.augment import Augmenter

    x = load_omniglot([omniglot_dir / "images_background_small1.zip"], side=28).images[:64]
    out = Augmenter("affine", seed=4)(x).numpy()
    again = Augmenter("affine", seed=4)(x).numpy()
    assert out.dtype == np.uint8 and out.shape == x.shape
    np.testing.assert_array_equal(out, again)
    changed = np.mean(out != x, axis=(1, 2, 3))
    assert (changed > 0.01).all()  # every image moved
    # White paper stays white: the edges are extended, never filled with black.
    assert (out[:, 0, :] > 200).mean() > 0.95 and (out[:, :, -1] > 200).mean() > 0.95
    # Ink is moved, not lost or multiplied: the amount of dark pixels stays about the same.
    ink_before, ink_after = (x < 128).mean(axis=(1, 2, 3)), (out < 128).mean(axis=(1, 2, 3))
    assert np.median(ink_after / ink_before) == pytest.approx(1.0, abs=0.25)
    assert Augmenter("none", seed=4)(x) is x


def test_flip_shift_moves_whole_pixels_within_eight_percent():
    from encoder.augment import Augmenter

    x = np.zeros((32, 28, 28, 1), np.uint8)
    x[:, 10:18, 5:9] = 200  # a bar off the centre, so a mirror shows
    out = Augmenter("flip-shift", seed=3)(x).numpy()
    assert out.dtype == np.uint8 and out.shape == x.shape
    assert set(np.unique(out)) == {0, 200}  # copied, never blurred
    rows, cols = [], []
    for image in out[:, :, :, 0]:
        r, c = np.nonzero(image)
        assert (r.max() - r.min(), c.max() - c.min()) == (7, 3)  # the bar is whole
        rows.append(r.min() - 10)
        cols.append(c.min())
    assert max(abs(d) for d in rows) <= 2 and len(set(rows)) > 1  # up to 8% of 28: two pixels
    mirrored = [c for c in cols if c > 14]
    assert 0 < len(mirrored) < len(cols)  # about half mirrored (28 - 9 = 19, +-2)
    assert all(abs(c - 5) <= 2 for c in cols if c <= 14) and all(abs(c - 19) <= 2 for c in mirrored)


def test_default_encoder_depth():
    assert [l.name for l in build_encoder("default", GREY28).layers if l.name.endswith("_conv")] == [
        "block0_conv", "block1_conv", "block2_conv"]
    deeper = build_encoder("default", GREY28, depth=4)
    assert deeper.get_layer("block3_conv").output.shape[1:3] == (3, 3)
    with pytest.raises(ConfigError, match="depth 6 does not fit 28-pixel input"):
        build_encoder("default", GREY28, depth=6)
    with pytest.raises(ConfigError, match="--depth applies to --arch default only"):
        build_encoder("tutorial", GREY28, depth=3)


def test_oneshot_summary_weighs_every_held_out_group_once():
    folds = [{"Greek": {"20-way": 0.9, "5-way": 1.0}, "Tagalog": {"5-way": 0.8}},
             {"Balinese": {"20-way": 0.5, "5-way": 0.7}}]
    summary = oneshot_summary(folds, grouped=True)
    assert summary["20-way"] == 0.7 and summary["5-way"] == round((1.0 + 0.8 + 0.7) / 3, 4)
    assert list(summary["by_group"]) == ["Balinese", "Greek", "Tagalog"]
    assert list(summary)[:4] == ["episode_classes", "episodes", "20-way", "5-way"]
    plain = oneshot_summary([{"all": {"5-way": 0.6}}, {"all": {"5-way": 0.8}}], grouped=False)
    assert plain == {"episode_classes": "any", "episodes": 1000, "5-way": 0.7}


@pytest.mark.slow
def test_card_records_oneshot_accuracy_of_held_out_classes(fashion_test, tmp_path):
    pick = np.concatenate([np.nonzero(fashion_test.labels == c)[0][:10] for c in range(10)])
    ds = fashion_test.subset(pick)  # 10 classes of 10 images; 5 classes held out
    lines = []
    card = train(ds, TrainConfig(epochs=1, val_split="class", val_fraction=0.5,
                                 calibration_folds=1, min_steps_per_epoch=5, domain=False),
                 tmp_path / "m",
                 report=lines.append)
    oneshot = card.validation["oneshot"]
    assert oneshot["episode_classes"] == "any" and set(oneshot) == {"episode_classes", "episodes", "5-way"}
    assert 0.2 <= oneshot["5-way"] <= 1.0
    assert f"one-shot on held-out classes: all 5-way {oneshot['5-way']:.3f}" in lines


def test_resolve_decides_every_auto_setting_as_the_network_would(small_folder):
    """The card holds the values used, not null: the embedding size and depth that
    build_encoder would choose for the data's image size, so the same network is built."""
    from dataclasses import asdict

    ds = load_image_folder(small_folder)  # 28x28
    config = TrainConfig().resolve(ds)
    assert (config.embedding_dim, config.depth) == (64, 3)
    assert [k for k, v in asdict(config).items() if v is None] == ["time_budget"]  # no budget
    big = Dataset(np.zeros((8, 64, 64, 1), np.uint8), np.repeat(np.arange(4), 2),
                  list("abcd"), name="big", kind="folder")
    assert TrainConfig().resolve(big).depth == 4
    tutorial = TrainConfig(arch="tutorial").resolve(ds)
    assert (tutorial.embedding_dim, tutorial.depth) == (48, None)  # no depth to choose
    assert TrainConfig(embedding_dim=16, depth=2).resolve(ds).depth == 2
    assert TrainConfig(embedding_dim=16).resolve(ds).embedding_dim == 16

    def layout(model):
        return [(type(l).__name__, l.output.shape, l.count_params()) for l in model.layers]

    for data, arch in ((ds, "default"), (big, "default"), (ds, "tutorial")):
        pre = Preprocessing(*data.images.shape[1:])
        resolved = TrainConfig(arch=arch).resolve(data)
        built = build_encoder(arch, pre, resolved.embedding_dim, depth=resolved.depth)
        assert layout(built) == layout(build_encoder(arch, pre))  # the same network as "auto"


@pytest.mark.slow
def test_thin_validation_is_a_warning_on_screen_and_in_the_card(small_folder, tmp_path):
    """Four classes: auto would use three calibration folds but cannot, the threshold is
    calibrated on the two held-out classes (one pair of different classes), and the domain check
    learns from two classes: all said before training starts, and recorded."""
    ds = load_image_folder(small_folder)
    lines = []
    card = train(ds, TrainConfig(epochs=1, width=8, min_steps_per_epoch=2, domain_epochs=1,
                                 domain_leave_out=False),
                 tmp_path / "m", report=lines.append)
    warnings = card.training["warnings"]
    assert len(warnings) == 3
    assert warnings[0].startswith("calibration folds: 3 folds (the default for small classes) "
                                  "need 6 classes or more, this data has 4")
    assert warnings[1].startswith("thin validation: the threshold is calibrated on 2 held-out "
                                  "class(es), 1 pair(s) of different classes")
    assert "--val-split image" in warnings[1]
    assert warnings[2].startswith("thin domain check: it learns from 2 classes and sets its "
                                  "threshold on 60 held-out images of 2 other classes")
    shown = [line for line in lines if line.startswith("warning: ")]
    assert shown[:3] == [f"warning: {w}" for w in warnings]
    assert lines.index(shown[2]) < min(i for i, l in enumerate(lines) if l.startswith("epoch 1/1"))
    assert "3 warning(s) above" in lines[-1]
    settings = json.loads((tmp_path / "m" / "card.json").read_text())["training"]["settings"]
    assert (settings["embedding_dim"], settings["depth"]) == (64, 3)


def test_enough_held_out_classes_give_no_warning():
    def data(classes):
        return Dataset(np.zeros((10 * classes, 4, 4, 1), np.uint8),
                       np.repeat(np.arange(classes), 10), [str(i) for i in range(classes)],
                       name=f"{classes}", kind="folder")

    def warnings(ds, config):
        resolved = config.resolve(ds)
        splits = [split_train_val(ds, resolved, fold=k) for k in range(resolved.calibration_folds)]
        return validation_warnings(ds, config, splits)

    assert warnings(data(40), TrainConfig()) == []  # 3 folds of 13-14 classes
    assert warnings(data(40), TrainConfig(calibration_folds=1)) == []  # 12 held out: 66 pairs
    assert warnings(data(4), TrainConfig(val_split="image", val_fraction=0.2)) == []  # held-out
    # images of every class: the threshold is for these classes, on many pairs
    ten = warnings(data(10), TrainConfig())  # 3 folds of 4, 3 and 3 classes: 12 pairs
    assert len(ten) == 1 and "10 held-out class(es) over 3 folds, 12 pair(s)" in ten[0]
    # Asked for one fold: no fallback to report, but still thin.
    four = warnings(data(4), TrainConfig(calibration_folds=1))
    assert len(four) == 1 and four[0].startswith("thin validation")
