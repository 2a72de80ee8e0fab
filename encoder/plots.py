"""Evaluation figures as PNG files (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .calibration import roc_points


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def roc_curve(distances: np.ndarray, same: np.ndarray, auc: float, out: Path) -> Path:
    plt = _pyplot()
    far, tar, *_ = roc_points(distances, same)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(far, tar, lw=2, label=f"ROC AUC {auc:.4f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.set(xlabel="false-accept rate", ylabel="true-accept rate", title="Verification ROC",
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def distance_histograms(distances: np.ndarray, same: np.ndarray, threshold: float, out: Path) -> Path:
    plt = _pyplot()
    same = np.asarray(same).astype(bool)
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(0, max(float(np.percentile(distances, 99.5)), threshold * 1.2), 80)
    ax.hist(distances[same], bins=bins, alpha=0.6, label="same class", color="tab:green")
    ax.hist(distances[~same], bins=bins, alpha=0.6, label="different class", color="tab:red")
    ax.axvline(threshold, c="k", ls="--", label=f"threshold {threshold:.3f}")
    ax.set(xlabel="Euclidean distance", ylabel="pairs", title="Pair distances")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def pair_grid(images: np.ndarray, first: np.ndarray, second: np.ndarray, same: np.ndarray,
              distances: np.ndarray, threshold: float, out: Path, count: int = 8,
              seed: int = 0) -> Path:
    """The tutorial's figure done right: random pairs side by side with their distance and verdict.

    `images` are the raw uint8 images, shown as they are (no re-scaling)."""
    plt = _pyplot()
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(first), size=min(count, len(first)), replace=False)
    fig, axes = plt.subplots(2, len(pick), figsize=(1.6 * len(pick), 4))
    axes = np.atleast_2d(axes).reshape(2, -1)
    for col, p in enumerate(pick):
        for row, idx in enumerate((first[p], second[p])):
            img = images[idx]
            axes[row, col].imshow(img.squeeze(-1) if img.shape[-1] == 1 else img,
                                  cmap="gray", vmin=0, vmax=255)
            axes[row, col].axis("off")
        verified = distances[p] <= threshold
        correct = verified == bool(same[p])
        axes[0, col].set_title(f"d={distances[p]:.2f}\n{'match' if verified else 'no match'}",
                               fontsize=9, color="tab:green" if correct else "tab:red")
        axes[1, col].set_title("same" if same[p] else "different", fontsize=8)
    fig.suptitle(f"Random test pairs (threshold {threshold:.3f}; red title = wrong verdict)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
