"""Figure helpers shared by the notebooks (masks in VOC colours, image grids)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from .voc import IGNORE_INDEX, voc_palette


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
