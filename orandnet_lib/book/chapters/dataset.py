"""Chapter 0's figures and tables: the scenes, the class and size statistics, the context bias,
and the calibration record of the default profile."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .. import plots
from ...data.voc import VOCDataset


def sample_figure(first: VOCDataset, n_examples: int) -> plt.Figure:
    """Evenly spaced scenes of a split: the image, then its mask over it (when the split has
    masks), titled with the image-level labels."""
    examples = [first[i] for i in np.linspace(0, len(first) - 1, min(n_examples, len(first))).astype(int)]
    rows = [[s.image for s in examples]]
    if first.has_masks:
        rows.append([plots.overlay(s.image, s.mask) for s in examples])
    return plots.image_grid(
        rows, titles=[", ".join(first.class_names[k + 1] for k in np.flatnonzero(s.labels)) for s in examples],
        row_labels=["image", "ground truth"][: len(rows)], class_names=first.class_names,
    )


def class_figure(classes: pd.DataFrame, per_image: pd.DataFrame) -> plt.Figure:
    """Images containing each class, labelled pixels per class, classes per image (``classes``
    indexed by (split, class); ``per_image`` with columns split, classes)."""
    fig, axes = plt.subplots(3, 1, figsize=(plots.COLUMN, 9.0))
    fg = classes.reset_index().query("`class` != 'background'")
    sns.barplot(fg, x="class", y="image_fraction", hue="split", ax=axes[0])
    axes[0].set(title="images containing the class", ylabel="fraction of images", xlabel="")
    sns.barplot(classes.reset_index(), x="class", y="pixel_fraction", hue="split", ax=axes[1])
    axes[1].set(title="labelled pixels", ylabel="fraction of pixels", xlabel="", yscale="log")
    counts = per_image.groupby("split")["classes"].value_counts(normalize=True).rename("fraction").reset_index()
    sns.barplot(counts, x="classes", y="fraction", hue="split", ax=axes[2])
    axes[2].set(title="classes per image", xlabel="distinct foreground classes", ylabel="fraction of images")
    for ax in axes[:2]:
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def size_figure(objects: pd.DataFrame, edges: tuple[float, float]) -> plt.Figure:
    """Object areas by class with the size-bin edges, and the share of objects per bin and split."""
    fig, axes = plt.subplots(2, 1, figsize=(plots.COLUMN, 7.0), gridspec_kw={"height_ratios": [3, 2]})
    sns.histplot(objects, x="area_fraction", hue="class", log_scale=True, element="step", fill=False, bins=30, ax=axes[0])
    axes[0].set(xlabel="object area / image area", ylabel="objects", title="object sizes by class (all splits)")
    for edge in edges:
        axes[0].axvline(edge, color="grey", linestyle="--")
    size_counts = objects.groupby("split")["size"].value_counts(normalize=True).rename("fraction").reset_index()
    sns.barplot(size_counts, x="size", y="fraction", hue="split", ax=axes[1], order=["small", "medium", "large"])
    axes[1].set(title="objects per size bin", ylabel="fraction of objects", xlabel="")
    fig.tight_layout()
    return fig


def context_figure(matrix: pd.DataFrame, backgrounds: bool, split: str) -> plt.Figure:
    """P(background photograph | class) when ``backgrounds`` (a generated folder), else the class
    co-occurrence matrix."""
    if backgrounds:
        fig, ax = plt.subplots(figsize=(min(plots.COLUMN, 1.5 + 0.8 * matrix.shape[1]), 0.8 + 0.45 * matrix.shape[0]))
        sns.heatmap(matrix, annot=True, fmt=".2f", cmap="Blues", cbar=False, ax=ax)
        ax.set(title=f"P(background | class), {split} split", xlabel="background photograph", ylabel="")
    else:
        side = min(plots.COLUMN, 0.5 * len(matrix) + 2)
        fig, ax = plt.subplots(figsize=(side, side * 0.9))
        sns.heatmap(matrix, annot=len(matrix) <= 10, fmt=".2f", cmap="Blues", cbar=False, ax=ax)
        ax.set(title="P(column class present | row class present)")
    return fig


def calibration_record() -> tuple[str, pd.DataFrame]:
    """The pilots that set the default profile's operating point (issue 15), as recorded in
    ``book/calibration.json``: what it says of them, and one row per pilot."""
    record = json.loads(resources.files("orandnet_lib.book").joinpath("calibration.json").read_text())

    def cell(v: Any) -> str:  # numbers as measured (38.0 not 38.000000), text as written, blanks empty
        return "" if v is None else f"{v:g}" if isinstance(v, (int, float)) else str(v)

    table = pd.DataFrame([{k: cell(v) for k, v in row.items()} for row in record["pilots"]])
    return record["about"], table.rename(columns=str.capitalize)
