"""Figure helpers shared by the notebooks (masks in VOC colours, image grids) and the
figures of the segmentation and precision chapters (stages 5 and 6).

Figures are drawn for the book's column: at most :data:`COLUMN` inches wide at 100 dpi, so
they render near their natural size and their text (:func:`book_style`, 10-11 pt) stays at
least 9 pt on the page. A figure that would be wider stacks its panels instead."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from ..data.voc import IGNORE_INDEX, voc_palette

if TYPE_CHECKING:
    import pandas as pd


COLUMN = 7.2  # inches: the book's text column at 100 dpi (about 720 px)


def book_style() -> None:
    """The book's figure style: seaborn's white grid, fonts sized for the column, 100 dpi."""
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", rc={
        "figure.dpi": 100, "savefig.dpi": 100, "font.size": 11, "axes.titlesize": 11, "axes.labelsize": 11,
        "xtick.labelsize": 10, "ytick.labelsize": 10, "legend.fontsize": 10, "legend.title_fontsize": 10})


def shaded_table(table: "pd.DataFrame", columns: Sequence[str] | None = None, cmap: str = "Greens",
                 digits: int = 1) -> "pd.io.formats.style.Styler":
    """The table with numbers to ``digits`` decimals, ``-`` for a missing value, and each of
    ``columns`` (all by default) shaded by its values. A column without a single value (a class no
    variant predicts) is left plain: pandas would shade it from an all-NaN range and print a
    warning into the page."""
    shade = [c for c in (table.columns if columns is None else columns) if table[c].notna().any()]
    styler = table.style.format(f"{{:.{digits}f}}", na_rep="-")
    if not shade:
        return styler
    # a missing value in a shaded column would take the colour map's "bad" colour (black): left plain
    plain = "background-color: transparent; color: inherit"
    return (styler.background_gradient(subset=shade, axis=0, cmap=cmap)
            .map(lambda v: plain if v != v else "", subset=shade))


def class_legend(fig: plt.Figure, class_names: Sequence[str], include_background: bool = False) -> None:
    """A row of class-colour swatches under a figure of masks (VOC palette, as :func:`overlay`)."""
    handles = legend_handles(class_names, include_background)
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(handles), 7),
               fontsize=10, frameon=False, title="mask colours", title_fontsize=10)


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
               row_labels: Sequence[str] | None = None, size: float = 1.8,
               class_names: Sequence[str] | None = None) -> plt.Figure:
    """A grid of images, rows[i][j]; titles label columns of the first row. Cells shrink so
    the grid fits the column; ``class_names`` adds the legend of mask colours under it."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    size = min(size, COLUMN / n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(size * n_cols, size * n_rows + 0.3), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(row):
                ax.imshow(row[j], interpolation="nearest")
            if i == 0 and titles is not None and j < len(titles):
                ax.set_title(textwrap.fill(titles[j], max(8, int(size * 11)), break_long_words=False),
                             fontsize=9)
        if row_labels is not None:
            axes[i][0].axis("on")
            axes[i][0].set_xticks([])
            axes[i][0].set_yticks([])
            axes[i][0].set_ylabel(row_labels[i], fontsize=9)
    fig.tight_layout()
    if class_names is not None:
        class_legend(fig, class_names)
    return fig


def labelled_grid(images: Sequence[np.ndarray], captions: Sequence[str], columns: int = 6,
                  size: float = 1.2) -> plt.Figure:
    """Images in rows of ``columns``, each titled with its caption (9 pt), fitting the column."""
    columns = max(1, min(columns, len(images)))
    size = min(size, COLUMN / columns)
    n_rows = -(-len(images) // columns)
    fig, axes = plt.subplots(n_rows, columns, figsize=(size * columns, (size + 0.25) * n_rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(caption, fontsize=9)
    fig.tight_layout()
    return fig


def heatmap_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend a (H, W) map in [0, 1] over an RGB image (for CAMs)."""
    colours = plt.get_cmap(cmap)(np.clip(heat, 0, 1))[..., :3] * 255.0
    return ((1 - alpha) * image.astype(np.float32) + alpha * colours).astype(np.uint8)


def training_curves(histories: dict[str, list[dict[str, float]]], keys: Sequence[str] = ("loss", "val_map")) -> plt.Figure:
    """One panel per logged key, one line per model, against the epoch; one legend below the
    panels (inside a panel it would cover the curves)."""
    cols = min(2, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(COLUMN, 3.0 * rows), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    for ax, key in zip(axes.flat, keys):
        for name, history in histories.items():
            epochs = [h["epoch"] for h in history if key in h]
            ax.plot(epochs, [h[key] for h in history if key in h], marker="o", label=name)
        ax.set(xlabel="epoch", title=key.replace("_", " "))
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.tight_layout()
    if handles:
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(3, len(labels)),
                   frameon=False)
    return fig


def sweep_curves(sweeps: dict[str, "object"], title: str = "") -> plt.Figure:
    """mIoU, mean precision and mean recall against the background score, one colour per
    source; dots mark the best-mIoU score, crosses the precision/recall crossover."""
    fig, axes = plt.subplots(3, 1, figsize=(COLUMN, 7.8), sharex=True)
    for i, (name, sweep) in enumerate(sweeps.items()):
        curve = sweep.curve()  # type: ignore[attr-defined]
        colour = f"C{i}"
        for ax, key in zip(axes, ("miou", "precision", "recall")):
            ax.plot(curve["threshold"], curve[key], color=colour, label=name)
            ax.plot(curve["threshold"][sweep.best_index], curve[key][sweep.best_index], "o", color=colour)  # type: ignore[attr-defined]
            ax.plot(curve["threshold"][sweep.crossover_index], curve[key][sweep.crossover_index], "x", color=colour,  # type: ignore[attr-defined]
                    markersize=8)
    for ax, key in zip(axes, ("mIoU", "mean precision", "mean recall")):
        ax.set(ylabel=f"{key} (%)")
    axes[-1].set_xlabel("background score (%)")
    axes[0].legend(title="dot: best mIoU; cross: precision = recall", ncol=2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def precision_recall_curves(sweeps: dict[str, "object"], ax: plt.Axes | None = None,
                            dashed: Sequence[str] = ()) -> plt.Axes:
    """Mean precision against mean recall as the background score moves, one line per
    variant (``dashed`` names get dashed lines), a dot at each variant's best-mIoU score."""
    if ax is None:
        ax = plt.subplots(figsize=(COLUMN, 4.8))[1]
    for i, (name, sweep) in enumerate(sweeps.items()):
        curve = sweep.curve()  # type: ignore[attr-defined]
        best = sweep.best_index  # type: ignore[attr-defined]
        ax.plot(curve["recall"], curve["precision"], "--" if name in dashed else "-", color=f"C{i % 10}", label=name)
        ax.plot(curve["recall"][best], curve["precision"][best], "o", color=f"C{i % 10}")
    ax.set(xlabel="mean recall (%)", ylabel="mean precision (%)", title="precision-recall over the background score")
    ax.legend(ncol=2)
    return ax


# ----------------------------------------------------------------------------- stage 5: segmentation

def scale_schedules(schedules: Mapping[str, "object"]) -> plt.Figure:
    """The input scale over the fraction of training, one step line per ``ScaleSchedule``."""
    fig, ax = plt.subplots(figsize=(5.5, 3.0))
    grid = np.linspace(0, 1, 201)
    for name, sch in schedules.items():
        ax.step(grid, [sch.scale_at(p) for p in grid], where="post", label=name)  # type: ignore[attr-defined]
    ax.set(xlabel="fraction of training", ylabel="input scale", ylim=(0, 1.1))
    ax.legend()
    fig.tight_layout()
    return fig


def shrinking_masks(dataset: "object", image_id: str, scales: Sequence[float], mask_mode: str, label: str) -> plt.Figure:
    """An image and its mask at each scale, shrunk as the curriculum shrinks it."""
    from ..methods.segmentation import downsample_mask

    sample = dataset.load(image_id)  # type: ignore[attr-defined]
    h, w = sample.mask.shape
    row = [sample.image] + [colorize(downsample_mask(sample.mask, (round(h * s), round(w * s)),
                                                     dataset.num_classes, mask_mode)) for s in scales]  # type: ignore[attr-defined]
    return image_grid([row], titles=["image"] + [f"{label} mask at {s:g}" for s in scales], size=1.8)


def score_bars(table: "pd.DataFrame", x: str = "training set", hue: str = "schedule",
               seeds: bool = True) -> plt.Figure:
    """mIoU, precision and recall (columns ``miou``, ``precision``, ``recall``) per ``x``, one
    bar per ``hue``, stacked for the column. ``seeds``: rows are seeds, so bars are the mean,
    lines one standard deviation and dots the seeds. One legend below the panels (inside a
    panel it covers the tallest bars)."""
    import seaborn as sns

    fig, axes = plt.subplots(3, 1, figsize=(COLUMN, 8.4), sharex=True)
    handles: list[Any] = []
    labels: list[str] = []
    for ax, key in zip(axes, ("miou", "precision", "recall")):
        sns.barplot(table, x=x, y=key, hue=hue, errorbar="sd" if seeds else None, ax=ax, alpha=0.8 if seeds else 1.0)
        if seeds:
            sns.stripplot(table, x=x, y=key, hue=hue, dodge=True, ax=ax, palette="dark:k", size=4, legend=False)
        ax.set(xlabel="", ylabel={"miou": "mIoU %", "precision": "precision %", "recall": "recall %"}[key])
        if key == "miou":
            handles, labels = ax.get_legend_handles_labels()
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    fig.tight_layout()
    if handles:
        fig.legend(handles, labels, title=f"{hue} (bar: mean, line: sd, dots: seeds)" if seeds else hue,
                   loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, len(labels)), frameon=False)
    return fig


def class_iou_heatmap(ious: "pd.DataFrame") -> plt.Figure:
    """IoU % per model (rows) and class (columns)."""
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(min(COLUMN, 1.6 + 0.8 * ious.shape[1]), 0.8 + 0.45 * len(ious)))
    sns.heatmap(ious, annot=True, fmt=".0f", cmap="viridis", vmin=0, vmax=100, ax=ax, cbar_kws={"label": "IoU %"})
    fig.tight_layout()
    return fig


def object_recall_bars(by_size: "pd.DataFrame") -> plt.Figure:
    """Object recall % per size bin, one panel per training set, one bar per schedule."""
    import seaborn as sns

    long = by_size.melt(id_vars=["training set", "schedule"], var_name="object size", value_name="object recall %")
    n_sets = long["training set"].nunique()
    cols = min(3, n_sets)
    g = sns.catplot(long, x="object size", y="object recall %", hue="schedule", col="training set", kind="bar",
                    col_wrap=cols if n_sets > cols else None, height=COLUMN / cols * 0.85, aspect=1.1)
    g.set_titles("{col_name}")
    return g.figure


def prediction_grid(dataset: "object", image_ids: Sequence[str], predictions: Mapping[str, Mapping[str, np.ndarray]]
                    ) -> plt.Figure:
    """Per image: the image, its ground truth and each model's prediction (``{model: {id: mask}}``)."""
    rows = []
    for image_id in image_ids:
        sample = dataset.load(image_id)  # type: ignore[attr-defined]
        rows.append([sample.image, overlay(sample.image, sample.mask)]
                    + [overlay(sample.image, preds[image_id]) for preds in predictions.values()])
    return image_grid(rows, titles=["image", "ground truth", *predictions], size=1.6,
                      class_names=dataset.class_names)  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- stage 6: precision against mIoU

def pseudo_mask_scatter(table: "pd.DataFrame") -> plt.Figure:
    """Precision against recall of every pseudo-mask variant after every refinement (columns
    variant, refinement, miou, precision, recall); the numbers are the mIoU."""
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(COLUMN, 5.6))
    sns.scatterplot(table, x="recall", y="precision", hue="variant", style="refinement", s=90, ax=ax)
    for _, r in table.iterrows():
        ax.annotate(f"{r.miou:.0f}", (r.recall, r.precision), fontsize=9, xytext=(4, 3), textcoords="offset points")
    ax.set(xlabel="pseudo-mask recall %", ylabel="pseudo-mask precision %",
           title="every pseudo-mask variant (numbers: its mIoU %)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)
    fig.tight_layout()
    return fig


def final_against_pseudo(agg: "pd.DataFrame", reference: Sequence[float] = ()) -> plt.Figure:
    """Final validation mIoU (mean, sd over seeds) against the pseudo-masks' precision, recall
    and mIoU, one point per (training set, schedule); dashed lines at ``reference`` (DeepLab
    on the ground truth)."""
    fig = plt.figure(figsize=(COLUMN, 8.2))
    grid = fig.add_gridspec(2, 2, height_ratios=[1.25, 1])
    axes = [fig.add_subplot(grid[0, :])]  # the thesis: precision, full width
    axes += [fig.add_subplot(grid[1, 0], sharey=axes[0]), fig.add_subplot(grid[1, 1], sharey=axes[0])]
    markers = dict(zip(sorted(agg["schedule"].unique()), "os^Dv<>p"))
    for ax, (col, label) in zip(axes, (("precision", "pseudo-mask precision %"), ("recall", "pseudo-mask recall %"),
                                       ("miou", "pseudo-mask mIoU %"))):
        for _, r in agg.iterrows():
            ax.errorbar(r[col], r["final"], yerr=0 if np.isnan(r["final_std"]) else r["final_std"],
                        fmt=markers.get(r["schedule"], "o"), capsize=3,
                        label=f"{r['training set']} / {r['schedule']}" + (f" / r{int(r['replicate'])}"
                                                                          if r.get("replicate", 0) else ""))
            ax.annotate(r["training set"], (r[col], r["final"]), fontsize=9, xytext=(5, 3), textcoords="offset points")
        for value in reference:
            ax.axhline(value, ls="--", lw=0.8, color="grey")
        ax.set(xlabel=label)
    axes[0].set_ylabel("DeepLab val mIoU %")
    axes[1].set_ylabel("DeepLab val mIoU %")
    axes[0].set_title("final model against pseudo-mask precision (error bars: sd over seeds; dashed: ground truth)",
                      fontsize=10)
    axes[0].legend(loc="best", ncol=2, fontsize=9, framealpha=0.8)
    fig.tight_layout()
    return fig


def difference_intervals(rows: Sequence[Mapping[str, "object"]], title: str = "") -> plt.Figure:
    """Paired differences (``comparison``, ``measure``, ``mean``, ``low``, ``high``: rows of
    ``methods.curriculum.paired_comparisons`` / ``schedule_comparisons``), one line each: the mean
    difference and its 95 % interval, with zero marked (an interval across it does not
    separate the two settings)."""
    fig, ax = plt.subplots(figsize=(COLUMN, 0.9 + 0.45 * max(1, len(rows))))
    labels = [f"{r['comparison']} ({r['measure']})" for r in rows]
    for i, r in enumerate(rows):
        mean, low, high = (float(r[k]) for k in ("mean", "low", "high"))  # type: ignore[arg-type]
        if not np.isnan(low):
            ax.plot([low, high], [i, i], color="C0", lw=2)
        ax.plot([mean], [i], "o", color="C0" if not np.isnan(low) else "grey")
    ax.axvline(0, ls="--", lw=0.8, color="grey")
    ax.set_yticks(range(len(rows)), labels, fontsize=10)
    ax.invert_yaxis()
    ax.set(xlabel="paired difference, points (dot: mean; line: 95 % interval)", title=title)
    fig.tight_layout()
    return fig
