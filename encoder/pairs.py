"""Which images to compare: index pairs and class-balanced batches, seeded and vectorised.

Pairs are index arrays into a dataset, never float copies of the images.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .errors import DatasetError


def _class_members(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Images sorted by class, with each class's label, start in that order, and size."""
    order = np.argsort(labels, kind="stable")
    classes, starts, sizes = np.unique(labels[order], return_index=True, return_counts=True)
    return order, classes, starts, sizes


def tutorial_pairs(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tutorial's protocol: for every image one positive pair (label 1) with another image of
    its class and one negative pair (label 0) with an image of another, uniformly drawn class.

    Returns `(first, second, same)` of length 2N, pairs interleaved positive/negative as in the
    tutorial. Unlike the tutorial, a positive pair never pairs an image with itself.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    order, classes, starts, sizes = _class_members(labels)
    if len(classes) < 2 or sizes.min() < 2:
        raise DatasetError("pairs need at least two classes with at least two images each")
    cls = np.searchsorted(classes, labels)  # class position of every image
    rank = np.empty(len(labels), np.int64)
    rank[order] = np.arange(len(labels)) - np.repeat(starts, sizes)
    # Positive: another member of the same class (skip over the image itself).
    r = rng.integers(0, sizes[cls] - 1)
    r = r + (r >= rank)
    positive = order[starts[cls] + r]
    # Negative: a uniformly drawn other class, then a uniformly drawn member of it.
    other = (cls + rng.integers(1, len(classes), size=len(labels))) % len(classes)
    negative = order[starts[other] + rng.integers(0, sizes[other])]
    first = np.repeat(np.arange(len(labels)), 2)
    second = np.stack([positive, negative], 1).reshape(-1)
    same = np.tile(np.array([1, 0], np.float32), len(labels))
    return first, second, same


def repeated_tutorial_pairs(labels: np.ndarray, seed: int, rounds: int):
    """Several independent rounds of the tutorial protocol, for calibration with more pairs."""
    parts = [tutorial_pairs(labels, seed + r) for r in range(rounds)]
    return tuple(np.concatenate(p) for p in zip(*parts))


def class_balanced_batches(labels: np.ndarray, classes_per_batch: int, per_class: int,
                           seed: int, min_batches: int = 1,
                           groups: Optional[np.ndarray] = None) -> np.ndarray:
    """One epoch of batches, (num_batches, classes_per_batch * per_class) image indices.

    Each batch holds `per_class` images of each of `classes_per_batch` distinct classes, so every
    batch yields many positive and negative pairs. Each class is walked in a fresh random order and
    restarted when used up, so every image is seen about once per epoch, or more often when the
    data is too small to fill `min_batches` batches. With `groups` (each image's group, e.g. its
    alphabet) a batch takes its classes from one group, topped up from others if it has too few:
    classes of one group look alike, so the negative pairs are the hard ones.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    order, classes, starts, sizes = _class_members(labels)
    p = min(classes_per_batch, len(classes))
    num_batches = max(min_batches, len(labels) // (p * per_class))
    streams = [rng.permutation(order[s:s + n]) for s, n in zip(starts, sizes)]
    cursor = np.zeros(len(classes), np.int64)
    # Classes are drawn in proportion to their size, so big classes are not under-sampled.
    weights = sizes / sizes.sum()
    class_group = None if groups is None else np.asarray(groups)[order[starts]]
    batches = np.empty((num_batches, p * per_class), np.int64)
    for b in range(num_batches):
        if class_group is None:
            chosen = rng.choice(len(classes), size=p, replace=False, p=weights)
        else:
            group = class_group[rng.choice(len(classes), p=weights)]
            inside = np.nonzero(class_group == group)[0]
            chosen = _draw(rng, inside, min(p, len(inside)), weights)
            if len(chosen) < p:
                outside = np.nonzero(class_group != group)[0]
                chosen = np.r_[chosen, _draw(rng, outside, p - len(chosen), weights)]
        for slot, c in enumerate(chosen):
            if cursor[c] + per_class > sizes[c]:
                streams[c] = rng.permutation(streams[c])
                cursor[c] = 0
            take = np.arange(cursor[c], cursor[c] + per_class) % sizes[c]
            batches[b, slot * per_class:(slot + 1) * per_class] = streams[c][take]
            cursor[c] += per_class
    return batches


def _draw(rng: np.random.Generator, candidates: np.ndarray, k: int, weights: np.ndarray):
    """k distinct candidates, drawn in proportion to their weights."""
    w = weights[candidates]
    return rng.choice(candidates, size=k, replace=False, p=w / w.sum())
