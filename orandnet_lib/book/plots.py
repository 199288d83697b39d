"""Figure helpers shared by the notebooks (masks in VOC colours, image grids)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from ..data.voc import IGNORE_INDEX, voc_palette


def colorize(mask: np.ndarray) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 in the VOC palette (255 shows as cream)."""
    return voc_palette()[mask]


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Blend the mask's colours over the image where the mask is foreground."""
    colours = colorize(mask).astype(np.float32)
    fg = ((mask > 0) & (mask != IGNORE_INDEX))[..., None]
    out = np.where(fg, (1 - alpha) * image.astype(np.float32) + alpha * colours, image.astype(np.float32))
    return out.astype(np.uint8)


def legend_handles(class_names: Sequence[str], include_background: bool = False) -> list[Patch]:
    palette = voc_palette()
    start = 0 if include_background else 1
    return [Patch(color=palette[i] / 255.0, label=name) for i, name in enumerate(class_names) if i >= start]


def image_grid(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str] | None = None,
               row_labels: Sequence[str] | None = None, size: float = 1.8) -> plt.Figure:
    """A grid of images, rows[i][j]; titles label columns of the first row."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(size * n_cols, size * n_rows), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(row):
                ax.imshow(row[j], interpolation="nearest")
            if i == 0 and titles is not None and j < len(titles):
                ax.set_title(titles[j], fontsize=8)
        if row_labels is not None:
            axes[i][0].axis("on")
            axes[i][0].set_xticks([])
            axes[i][0].set_yticks([])
            axes[i][0].set_ylabel(row_labels[i], fontsize=8)
    fig.tight_layout()
    return fig


def heatmap_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend a (H, W) map in [0, 1] over an RGB image (for CAMs)."""
    colours = plt.get_cmap(cmap)(np.clip(heat, 0, 1))[..., :3] * 255.0
    return ((1 - alpha) * image.astype(np.float32) + alpha * colours).astype(np.uint8)


def training_curves(histories: dict[str, list[dict[str, float]]], keys: Sequence[str] = ("loss", "val_map")) -> plt.Figure:
    """One panel per logged key, one line per model, against the epoch."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, history in histories.items():
            epochs = [h["epoch"] for h in history if key in h]
            ax.plot(epochs, [h[key] for h in history if key in h], marker="o", label=name)
        ax.set(xlabel="epoch", title=key.replace("_", " "))
        ax.legend()
    fig.tight_layout()
    return fig


def sweep_curves(sweeps: dict[str, "object"], title: str = "") -> plt.Figure:
    """mIoU, mean precision and mean recall against the background score, one colour per
    source; dots mark the best-mIoU score, crosses the precision/recall crossover."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.4), sharex=True)
    for i, (name, sweep) in enumerate(sweeps.items()):
        curve = sweep.curve()  # type: ignore[attr-defined]
        colour = f"C{i}"
        for ax, key in zip(axes, ("miou", "precision", "recall")):
            ax.plot(curve["threshold"], curve[key], color=colour, label=name)
            ax.plot(curve["threshold"][sweep.best_index], curve[key][sweep.best_index], "o", color=colour)  # type: ignore[attr-defined]
            ax.plot(curve["threshold"][sweep.crossover_index], curve[key][sweep.crossover_index], "x", color=colour,  # type: ignore[attr-defined]
                    markersize=8)
    for ax, key in zip(axes, ("mIoU", "mean precision", "mean recall")):
        ax.set(xlabel="background score (%)", ylabel=f"{key} (%)", title=key)
    axes[0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def precision_recall_curves(sweeps: dict[str, "object"], ax: plt.Axes | None = None,
                            dashed: Sequence[str] = ()) -> plt.Axes:
    """Mean precision against mean recall as the background score moves, one line per
    variant (``dashed`` names get dashed lines), a dot at each variant's best-mIoU score."""
    if ax is None:
        ax = plt.subplots(figsize=(7, 4.6))[1]
    for i, (name, sweep) in enumerate(sweeps.items()):
        curve = sweep.curve()  # type: ignore[attr-defined]
        best = sweep.best_index  # type: ignore[attr-defined]
        ax.plot(curve["recall"], curve["precision"], "--" if name in dashed else "-", color=f"C{i % 10}", label=name)
        ax.plot(curve["recall"][best], curve["precision"][best], "o", color=f"C{i % 10}")
    ax.set(xlabel="mean recall (%)", ylabel="mean precision (%)", title="precision-recall over the background score")
    ax.legend(fontsize=8)
    return ax
