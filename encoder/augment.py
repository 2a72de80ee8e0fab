"""Label-preserving distortions of uint8 image batches, for training (the encoder's and the
domain model's)."""
from __future__ import annotations

import numpy as np

from .errors import ConfigError

AUGMENTATIONS = ("auto", "none", "flip", "flip-shift", "affine")


class Augmenter:
    """Label-preserving distortions applied to uint8 batches during training only.

    "flip" mirrors half the images left to right; "flip-shift" also moves each by whole pixels,
    up to 8% of the side (Fashion-MNIST's usual pad-and-crop). "affine" draws one random affine
    map per image, the distortions Koch et al. (2015) found to help one-shot learning on
    Omniglot, kept moderate so they suit photos too: rotation up to
    10 degrees, shear up to 0.2, scale 0.85-1.15 per axis, shift up to 8% of the side. It
    resamples once, and extends the edges by their nearest pixel (no black corners on a white
    background)."""

    def __init__(self, kind: str, seed: int):
        import keras

        self.kind = kind
        self.seed = keras.random.SeedGenerator(seed)

    def __call__(self, x):
        import keras
        import tensorflow as tf

        if self.kind == "none":
            return x
        if self.kind in ("flip", "flip-shift"):
            x = tf.image.random_flip_left_right(x)
        if self.kind == "flip":
            return x
        n, height, width = tf.shape(x)[0], x.shape[1], x.shape[2]

        def uniform(limit, centre=0.0):
            return keras.random.uniform((n,), centre - limit, centre + limit, seed=self.seed)

        if self.kind == "flip-shift":
            # Whole-pixel moves copy pixels exactly: no blur from resampling.
            shift_x, shift_y = tf.round(uniform(0.08 * width)), tf.round(uniform(0.08 * height))
            one, zero = tf.ones_like(shift_x), tf.zeros_like(shift_x)
            transform = tf.stack([one, zero, shift_x, zero, one, shift_y, zero, zero], axis=1)
            return self._resample(x, transform)
        angle = uniform(np.pi * 10 / 180)
        shear_x, shear_y = uniform(0.2), uniform(0.2)
        scale_x, scale_y = uniform(0.15, 1.0), uniform(0.15, 1.0)
        shift_x, shift_y = uniform(0.08 * width), uniform(0.08 * height)
        # Output pixel p samples the input at A (p - c) + c + shift, with
        # A = rotation @ [[1, shear_x], [shear_y, 1]] @ diag(scale_x, scale_y) about the centre c.
        cos, sin = tf.cos(angle), tf.sin(angle)
        a00, a01 = (cos - sin * shear_y) * scale_x, (cos * shear_x - sin) * scale_y
        a10, a11 = (sin + cos * shear_y) * scale_x, (sin * shear_x + cos) * scale_y
        cx, cy = (width - 1) / 2, (height - 1) / 2
        zero = tf.zeros_like(angle)
        transform = tf.stack([a00, a01, cx - a00 * cx - a01 * cy + shift_x,
                              a10, a11, cy - a10 * cx - a11 * cy + shift_y, zero, zero], axis=1)
        return self._resample(x, transform)

    @staticmethod
    def _resample(x, transform):
        import keras
        import tensorflow as tf

        y = keras.ops.image.affine_transform(tf.cast(x, tf.float32), transform, "bilinear",
                                             fill_mode="nearest")
        return tf.cast(tf.clip_by_value(tf.round(y), 0, 255), tf.uint8)


def with_rotated_classes(images: np.ndarray, labels: np.ndarray, groups: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every class also turned by 90, 180 and 270 degrees, each a new class (in a new group):
    four times the classes, a standard trick for Omniglot (a turned character is another one)."""
    if images.shape[1] != images.shape[2]:
        raise ConfigError("rotated classes need square input")
    turned = [np.rot90(images, k, axes=(1, 2)) for k in range(4)]
    labels, groups = (np.concatenate([a + k * (int(a.max()) + 1) for k in range(4)])
                      for a in (labels, groups))
    return np.concatenate(turned), labels, groups
