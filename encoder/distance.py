"""Euclidean distance, the one distance of siamese-search (NumPy side).

The Siamese head (`losses.euclidean_distance`), calibration, evaluation, the FAISS gallery and the
API all speak this distance. FAISS returns squared L2: `from_squared` is where it becomes a distance.
"""
from __future__ import annotations

import numpy as np

EPSILON = 1e-7  # keras.backend.epsilon(), as in the tutorial's sqrt(max(sum((a-b)^2), eps))


def from_squared(squared: np.ndarray) -> np.ndarray:
    """Euclidean distance from squared L2 (FAISS output, Gram-matrix arithmetic)."""
    return np.sqrt(np.maximum(np.asarray(squared, np.float32), 0.0))


def euclidean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise distance between embeddings `a` and `b`, shape (N, D) or (D,), broadcasting."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    return np.sqrt(np.sum(np.square(a - b), axis=-1))


def pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All distances between rows of `a` (N, D) and rows of `b` (M, D): (N, M)."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    sq = np.sum(a * a, 1)[:, None] + np.sum(b * b, 1)[None, :] - 2.0 * (a @ b.T)
    return from_squared(sq)
