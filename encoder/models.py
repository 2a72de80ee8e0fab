"""Encoders (image -> embedding) and the Siamese distance model that wraps one of them.

Every encoder takes uint8 images (N, H, W, C) and starts with `Rescaling(1/255)`, so scaling to
[0, 1] happens exactly once, inside the model.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import layers

from .errors import ConfigError
from .images import Preprocessing

ARCHITECTURES = ("default", "tutorial")
EMBEDDING_DIMS = {"default": 64, "tutorial": 48}  # each network's unless one is given


def default_depth(side: int) -> int:
    """Conv blocks of our default network unless one is given, for input whose shorter side is
    `side` pixels: down to 8 pixels (each block but the last halves the image), so 3 at 28x28
    and 4 at 64x64."""
    return 1 + max(0, int(np.ceil(np.log2(side / 8))))


def _input(pre: Preprocessing) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    inputs = keras.Input(shape=pre.shape, dtype="uint8", name="image")
    return inputs, layers.Rescaling(1.0 / 255, name="scale")(inputs)


def tutorial_encoder(pre: Preprocessing, embedding_dim: int = EMBEDDING_DIMS["tutorial"],
                     fix_defect: bool = False) -> keras.Model:
    """The tutorial's network: Conv2D(128, 2x2, relu) -> MaxPool(2) -> Dropout(0.4), twice,
    -> GlobalAveragePooling2D -> Dense(48).

    Its known defect, kept by default for a faithful baseline: the second Conv2D is applied to
    the *input* instead of the first block's output, so the first block is dead (Keras drops it
    from the graph) and the network is a single conv block. `fix_defect=True` chains the blocks.
    """
    inputs, x = _input(pre)
    first = layers.Conv2D(128, (2, 2), activation="relu")(x)
    first = layers.MaxPooling2D(pool_size=2)(first)
    first = layers.Dropout(0.4)(first)
    second = layers.Conv2D(128, (2, 2), activation="relu")(first if fix_defect else x)
    second = layers.MaxPooling2D(pool_size=2)(second)
    second = layers.Dropout(0.4)(second)
    pooled = layers.GlobalAveragePooling2D()(second)
    outputs = layers.Dense(embedding_dim, name="embedding")(pooled)
    return keras.Model(inputs, outputs, name="tutorial_fixed" if fix_defect else "tutorial")


def _conv_block(x: keras.KerasTensor, filters: int, name: str) -> keras.KerasTensor:
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    # momentum 0.9, not Keras' 0.99: small datasets give few steps, and the moving statistics
    # used at inference must have caught up with the real ones by the end of training.
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def default_encoder(pre: Preprocessing, embedding_dim: int = EMBEDDING_DIMS["default"],
                    width: int = 32, depth: int | None = None) -> keras.Model:
    """Our default: 3x3 conv + batch-norm blocks, halving resolution and doubling width until the
    feature map is at most 8 pixels wide (or for `depth` blocks), then global average pooling, a
    two-layer head, and unit length (embeddings on the unit sphere: distances in [0, 2], margin 1
    means 60 degrees apart).

    On 28x28 input that is 28 -> 14 -> 7 (three conv blocks, ~120k parameters at width 32): small
    enough to embed thousands of images per second on two CPU cores, deep enough to beat the
    tutorial. Unit length kept recall and loss better than a free scale in our runs. Where the
    layout of the whole image matters (characters, signatures), a fourth block (28 -> 3) lets
    every feature see all of it before the averaging.
    """
    side = min(pre.height, pre.width)
    if depth is None:
        depth = default_depth(side)
    if not 1 <= depth or side >> (depth - 1) < 1:
        raise ConfigError(f"depth {depth} does not fit {side}-pixel input (each block but the last "
                          "halves it)")
    inputs, x = _input(pre)
    filters = width
    for stage in range(depth - 1):
        x = _conv_block(x, filters, f"block{stage}")
        x = layers.MaxPooling2D(2, name=f"block{stage}_pool")(x)
        filters = min(filters * 2, 256)
    x = _conv_block(x, filters, f"block{depth - 1}")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dense(2 * embedding_dim, activation="relu", name="head")(x)
    x = layers.Dense(embedding_dim, name="embedding")(x)
    outputs = layers.UnitNormalization(name="unit_length")(x)
    return keras.Model(inputs, outputs, name="default")


def build_encoder(arch: str, pre: Preprocessing, embedding_dim: int | None = None,
                  fix_defect: bool = False, width: int = 32,
                  depth: int | None = None) -> keras.Model:
    if arch == "tutorial":
        if depth is not None:
            raise ConfigError("--depth applies to --arch default only")
        return tutorial_encoder(pre, embedding_dim or EMBEDDING_DIMS["tutorial"], fix_defect)
    if fix_defect:
        raise ConfigError("--fix-defect applies to --arch tutorial only")
    if arch == "default":
        return default_encoder(pre, embedding_dim or EMBEDDING_DIMS["default"], width, depth)
    raise ConfigError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}")


def siamese_model(encoder: keras.Model) -> keras.Model:
    """Two images in, their Euclidean distance out; both go through the same encoder (shared
    weights)."""
    from .losses import euclidean_distance

    shape = encoder.input_shape[1:]
    a = keras.Input(shape=shape, dtype="uint8", name="image_a")
    b = keras.Input(shape=shape, dtype="uint8", name="image_b")
    distance = layers.Lambda(lambda t: euclidean_distance(t[0], t[1]), name="distance")(
        [encoder(a), encoder(b)])
    return keras.Model([a, b], distance, name="siamese")


def featureless_embeddings(model: keras.Model) -> np.ndarray:
    """The embeddings (P, D) the encoder gives every image for which one of its feature vectors
    after the convolutions is all zeros (each ReLU unit silent): the pooled features, or a ReLU
    layer of the head. What follows is then the layers' biases alone, the same point for every
    such image, so two unrelated images land at distance 0. Empty for an encoder that does not
    end in global pooling and a chain of dense layers."""
    chain = model.layers
    pools = [i for i, layer in enumerate(chain) if isinstance(layer, layers.GlobalAveragePooling2D)]
    dim = model.output.shape[-1]
    if not pools:
        return np.empty((0, dim), np.float32)
    tail = chain[pools[-1]:]
    points = []
    for i, layer in enumerate(tail):
        if i and not (isinstance(layer, layers.Dense) and layer.activation is keras.activations.relu):
            continue
        x = np.zeros((1, layer.output.shape[-1]), np.float32)
        for later in tail[i + 1:]:
            x = later(x, training=False)
        points.append(np.asarray(x, np.float32)[0])
    return np.stack(points)
