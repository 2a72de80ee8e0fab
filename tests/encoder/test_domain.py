"""The domain check's training (`encoder.domain.fit_domain_model`) on real images: Fashion-MNIST
garments against a few foreign kinds, one of which is Fashion-MNIST itself."""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # trains seven small domain checks


def test_each_kind_is_measured_left_out_and_the_training_kind_is_not_foreign(fashion_test):
    from encoder.domain import DomainModel, fit_domain_model
    from encoder.foreign import foreign_batch
    from encoder.images import Preprocessing, prepare_batch

    pre = Preprocessing(28, 28, 1)
    images = prepare_batch(fashion_test.images, pre)
    # Garments of 6 classes to train on; the other 4 held out, as new classes will come.
    held = np.isin(fashion_test.labels, (0, 2, 5, 9))
    train_images = images[~held][:3000]
    lines: list[str] = []
    model, card = fit_domain_model(
        train_images, images[held][:600], pre, "fashion-mnist", seed=1, epochs=1,
        families=("noise", "photos", "text", "fashion-mnist"), report=lines.append,
        heldout_labels=fashion_test.labels[held][:600], leave_out=True)
    # Each kind measured by a check trained without it, with a progress line each.
    assert set(card.left_out) == {"noise", "photos", "text", "fashion-mnist"}
    assert sum("domain check: trained without" in line for line in lines) == 4
    # The package's own Fashion-MNIST images are the training images' kind: a check trained
    # against them still accepts them, so they are said so and not used as foreign.
    assert set(card.same_kind) == {"fashion-mnist"} and card.same_kind["fashion-mnist"] > 0.2
    assert any("fashion-mnist looks like the training images" in line for line in lines)
    assert card.foreign_families == ["noise", "photos", "text"]
    assert set(card.foreign_accepted) == {"noise", "photos", "text"}
    # Held-out classes pass (each judged at the threshold the other three set), foreign kinds not.
    assert card.heldout_classes == 4 and card.heldout_rejected <= 0.05
    assert max(card.foreign_accepted.values()) <= 0.05
    scores = DomainModel(model).score(foreign_batch(300, pre, seed=5, families=("photos",)))
    assert np.mean(scores >= card.threshold) <= 0.05


def test_a_check_with_too_few_held_out_classes_is_a_warning_before_training():
    from encoder.domain import thin_check_warning

    assert thin_check_warning(None, 4) is None  # an image split: held out of the training classes
    assert thin_check_warning(np.repeat(np.arange(10), 10), 20) is None  # 10 classes, 100 images
    few_classes = thin_check_warning(np.repeat(np.arange(3), 40), 4)
    assert few_classes.startswith("thin domain check: it learns from 4 classes and sets its "
                                  "threshold on 120 held-out images of 3 other classes")
    few_images = thin_check_warning(np.repeat(np.arange(5), 10), 12)
    assert "50 held-out images of 5 other classes" in few_images
    assert "one image is 2%" in few_images and few_images.endswith("Add classes")
