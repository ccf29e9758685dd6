"""Report figures (matplotlib, Agg backend): confusion matrix, PR curve, worst-error grid."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from crack_tf.choices import CLASS_NAMES


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def confusion_png(matrix: Any, path: str | os.PathLike, title: str = "") -> None:
    """2x2 confusion matrix [[TN, FP], [FN, TP]] (rows = true class) with counts and row %."""
    plt = _pyplot()
    cm = np.asarray(matrix, np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, f"{v:g}\n{100 * frac[i, j]:.1f}%", ha="center", va="center",
                color="white" if frac[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_xticks([0, 1], [f"pred {c}" for c in CLASS_NAMES])
    ax.set_yticks([0, 1], [f"true {c}" for c in CLASS_NAMES])
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def pr_curve_png(
    recall: Any, precision: Any, path: str | os.PathLike, points: dict[str, tuple[float, float]] | None = None, title: str = ""
) -> None:
    """Precision-recall curve (recall ascending); ``points`` = {label: (recall, precision)} marked on it."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.step(np.r_[0.0, recall], np.r_[precision[:1], precision], where="pre", color="tab:blue")  # area = AP
    for i, (label, (r, p)) in enumerate((points or {}).items()):
        ax.plot([r], [p], "o", color=f"C{i + 1}", label=label)
    ax.set_xlabel("recall (crack)")
    ax.set_ylabel("precision (crack)")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    if points:
        ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title or "precision-recall")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def error_grid_png(
    groups: Sequence[tuple[str, Sequence[tuple[np.ndarray, str]]]], path: str | os.PathLike, cols: int = 8
) -> None:
    """One block of images per group (e.g. worst false positives): [(title, [(uint8 image, caption)])]."""
    plt = _pyplot()
    groups = [(t, list(items)) for t, items in groups]
    rows_per = [max(1, -(-len(items) // cols)) for _, items in groups]
    fig, axes = plt.subplots(sum(rows_per), cols, figsize=(1.7 * cols, 1.9 * sum(rows_per)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    row, headings = 0, []
    for (title, items), n_rows in zip(groups, rows_per):
        # room for the heading above the block's first row; the text itself is placed after the layout,
        # since a heading wider than one axes, as its title, would shrink every image to fit it
        axes[row, 0].set_title(" ", fontsize=10, fontweight="bold", pad=14)
        headings.append((row, f"{title} ({len(items)})" if items else f"{title}: none"))
        for k, (image, caption) in enumerate(items):
            ax = axes[row + k // cols, k % cols]
            ax.imshow(np.asarray(image, np.uint8))
            ax.set_xlabel(caption, fontsize=6)
            ax.xaxis.set_visible(True)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.axis("on")
        row += n_rows
    fig.tight_layout()
    for row, text in headings:
        box = axes[row, 0].get_position()
        fig.text(box.x0, box.y1 + 0.01, text, fontsize=10, fontweight="bold", va="bottom")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
