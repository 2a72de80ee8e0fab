"""Distance and contrastive loss in TensorFlow (the training side of `encoder.distance`)."""
from __future__ import annotations

import keras
import tensorflow as tf

from .distance import EPSILON


def euclidean_distance(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """The tutorial's distance: sqrt(max(sum((a - b)^2), eps)), row-wise."""
    return tf.sqrt(tf.maximum(tf.reduce_sum(tf.square(a - b), axis=-1), EPSILON))


def pairwise_distances(e: tf.Tensor) -> tf.Tensor:
    """All distances between the rows of one batch of embeddings, (B, B)."""
    sq = tf.reduce_sum(tf.square(e), axis=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * tf.matmul(e, e, transpose_b=True)
    return tf.sqrt(tf.maximum(d2, EPSILON))


def contrastive_loss(same: tf.Tensor, distance: tf.Tensor, margin: float = 1.0) -> tf.Tensor:
    """mean(y * d^2 + (1 - y) * max(margin - d, 0)^2): pull same-class pairs together and push
    other pairs at least `margin` apart."""
    same = tf.cast(same, distance.dtype)
    return tf.reduce_mean(same * tf.square(distance)
                          + (1.0 - same) * tf.square(tf.maximum(margin - distance, 0.0)))


def batch_contrastive_loss(embeddings: tf.Tensor, labels: tf.Tensor, margin: float = 1.0,
                           hard_fraction: float = 1.0) -> tf.Tensor:
    """The contrastive loss over every pair inside a class-balanced batch.

    Positive and negative pairs are weighted equally, as in the tutorial's protocol (one positive
    and one negative pair per image), so this is an unbiased estimate of the loss evaluation
    measures, from B*(B-1)/2 pairs for the price of B embeddings. With `hard_fraction` < 1 only
    the hardest share of each kind of pair (largest loss) counts: hard-pair mining.
    """
    d = pairwise_distances(embeddings)
    same = tf.equal(labels[:, None], labels[None, :])
    upper = tf.linalg.band_part(tf.ones_like(d, tf.bool), 0, -1) & ~tf.eye(tf.shape(d)[0], dtype=tf.bool)
    pos = tf.boolean_mask(tf.square(d), same & upper)
    neg = tf.boolean_mask(tf.square(tf.maximum(margin - d, 0.0)), ~same & upper)
    if hard_fraction < 1.0:
        pos = _hardest(pos, hard_fraction)
        neg = _hardest(neg, hard_fraction)
    return 0.5 * _mean(pos) + 0.5 * _mean(neg)


def _hardest(losses: tf.Tensor, fraction: float) -> tf.Tensor:
    k = tf.maximum(1, tf.cast(tf.cast(tf.size(losses), tf.float32) * fraction, tf.int32))
    return tf.math.top_k(losses, k=tf.minimum(k, tf.size(losses))).values


def _mean(x: tf.Tensor) -> tf.Tensor:
    return tf.math.divide_no_nan(tf.reduce_sum(x), tf.cast(tf.size(x), x.dtype))


class ClassHead(keras.layers.Layer):
    """An auxiliary loss for training only: a normalised softmax over the training classes
    (cosine between the unit-length embedding and one learned unit vector per class, times a
    fixed scale). It spreads the classes over the sphere while the contrastive loss shapes the
    pairs; the head is dropped after training, so the model is the same encoder."""

    scale = 16.0

    def __init__(self, classes: int, dim: int, seed: int):
        super().__init__(name="class_head")
        init = tf.random.stateless_normal((dim, classes), seed=(seed, 7))
        self.directions = self.add_weight(shape=(dim, classes), initializer=lambda *_, **__: init,
                                          name="directions")

    def call(self, embeddings: tf.Tensor, classes: tf.Tensor) -> tf.Tensor:
        logits = self.scale * tf.matmul(tf.math.l2_normalize(embeddings, 1),
                                        tf.math.l2_normalize(self.directions, 0))
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(classes, logits))
