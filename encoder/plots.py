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


# --- DET curves: error against error, on normal-deviate axes ------------------------------------

DET_TICKS = (1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5, 0.8, 0.95)


def _deviate(p, floor: float) -> np.ndarray:
    """The normal deviate of each rate (a DET axis), rates below `floor` (half a count: no error
    seen) drawn at the floor."""
    from statistics import NormalDist

    inv = NormalDist().inv_cdf
    return np.array([inv(min(max(float(v), floor), 1 - 1e-9)) for v in np.atleast_1d(p)])


def _det_axes(ax, floor_x: float, floor_y: float, xlabel: str, ylabel: str) -> None:
    for axis, floor, label in ((ax.xaxis, floor_x, xlabel), (ax.yaxis, floor_y, ylabel)):
        ticks = [t for t in DET_TICKS if t >= floor * 0.999]
        axis.set_ticks(_deviate(ticks, floor))
        axis.set_ticklabels([f"{t * 100:g}%" for t in ticks])
        axis.set_label_text(label)
    lo_x, lo_y = _deviate([floor_x], floor_x)[0], _deviate([floor_y], floor_y)[0]
    ax.set_xlim(lo_x - 0.1, _deviate([0.95], floor_x)[0] + 0.1)
    ax.set_ylim(lo_y - 0.1, _deviate([0.95], floor_y)[0] + 0.1)
    ax.grid(True, lw=0.5, alpha=0.5)


def det_curve(distances: np.ndarray, same: np.ndarray, points: dict[str, float], out: Path,
              card_points: dict | None = None) -> Path:
    """The verification DET curve: false non-match rate (1 - TAR) against false-accept rate, on
    normal-deviate axes (straight lines for Gaussian-like scores), with the operating points
    (name -> threshold) as measured on these pairs, and where the card has them, what it
    predicted (`card_points`: name -> object with `.tar`, `.far`). Rates of zero (no error
    among the pairs) are drawn at half a count."""
    plt = _pyplot()
    far, tar, _, positives, negatives = roc_points(distances, same)
    floor_x, floor_y = 0.5 / negatives, 0.5 / positives
    d = np.asarray(distances, np.float64)
    y = np.asarray(same).astype(bool)
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.plot(_deviate(far, floor_x), _deviate(1 - tar, floor_y), lw=2, c="tab:blue",
            label=f"test pairs ({positives:,} same, {negatives:,} different)")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"][1:]
    for (name, t), colour in zip(points.items(), colours):
        accepted = d <= t
        x = _deviate([np.mean(accepted[~y])], floor_x)[0]
        fy = _deviate([1 - np.mean(accepted[y])], floor_y)[0]
        ax.plot(x, fy, "o", c=colour, ms=8, label=f"{name} (threshold {t:.3f}): measured")
        card = (card_points or {}).get(name)
        if card is not None:
            ax.plot(_deviate([card.far], floor_x)[0], _deviate([1 - card.tar], floor_y)[0], "o",
                    mfc="none", mec=colour, mew=2, ms=11, label=f"{name}: card's prediction")
    _det_axes(ax, floor_x, floor_y, "false-accept rate (FAR)", "false non-match rate (1 - TAR)")
    ax.set_title("Verification DET")
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def open_set_det(result: dict, out: Path) -> Path:
    """The open-set DET curve of `evaluation.open_set_identification`: FNIR against FPIR
    (averaged over rounds), the card's predicted thresholds marked where they landed."""
    plt = _pyplot()
    fpir = np.asarray(result["curve"]["fpir"])
    fnir = np.asarray(result["curve"]["fnir"])
    mated, nonmated = result["mated_probes"], result["nonmated_probes"]
    floor_x, floor_y = 0.5 / nonmated, 0.5 / mated
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.plot(_deviate(fpir, floor_x), _deviate(fnir, floor_y), lw=2, c="tab:blue",
            label=f"measured (mean of {result['rounds']} rounds)")
    for p, colour in zip(result.get("predicted") or [], ("tab:orange", "tab:green", "tab:red")):
        ax.plot(_deviate([p["measured_fpir"]["mean"]], floor_x)[0],
                _deviate([1 - p["identification_rate"]["mean"]], floor_y)[0], "o", c=colour, ms=8,
                label=f"card's threshold for FPIR {p['fpir']:g} (dotted: the target)")
        ax.axvline(_deviate([p["fpir"]], floor_x)[0], c=colour, ls=":", lw=1)
    if not result.get("predicted"):
        ax.text(0.03, 0.03, "the card has no open-set model: no predicted thresholds",
                transform=ax.transAxes, fontsize=8, color="grey")
    _det_axes(ax, floor_x, floor_y, "false-positive identification rate (FPIR)",
              "false-negative identification rate (FNIR)")
    ax.set_title(f"Open-set 1:N, gallery of {result['gallery_size']:,} "
                 f"({result['enrolled_classes']} classes x {result['shots']})", fontsize=10)
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
