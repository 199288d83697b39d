"""Statistics of a VOC-layout dataset: class frequencies, objects and their sizes, and, for
the embedded benchmark, how strong the context bias it produced actually is."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from .voc import IGNORE_INDEX, VOCDataset


def dataset_tables(ds: VOCDataset) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One pass over the masks of a split.

    Returns (per-class table, per-object table). An object is a connected component
    (8-connectivity) of one class in a mask; its area is a fraction of the image.
    """
    c = ds.num_classes
    images_with = np.zeros(c, dtype=np.int64)
    pixels = np.zeros(c, dtype=np.int64)
    objects: list[dict[str, Any]] = []
    structure = np.ones((3, 3), dtype=bool)
    for image_id, mask in ds.iter_masks():
        counts = np.bincount(mask[mask != IGNORE_INDEX].ravel(), minlength=c)[:c]
        pixels += counts
        images_with += counts > 0
        for k in np.flatnonzero(counts[1:]) + 1:
            labelled, n = ndimage.label(mask == k, structure=structure)
            areas = np.bincount(labelled.ravel())[1:]
            for area in areas:
                objects.append({"image": image_id, "class": ds.class_names[k], "pixels": int(area),
                                "area_fraction": area / mask.size})
    classes = pd.DataFrame({
        "class": ds.class_names,
        "images": images_with,
        "image_fraction": images_with / len(ds),
        "pixel_fraction": pixels / max(1, pixels.sum()),
    })
    return classes, pd.DataFrame(objects, columns=["image", "class", "pixels", "area_fraction"])


def classes_per_image(ds: VOCDataset) -> pd.Series:
    """Number of distinct foreground classes in each image of the split, from its image-level
    labels (a split without masks has them too)."""
    return pd.Series({image_id: int(ds.load_labels(image_id).sum()) for image_id in ds.ids}, name="classes")


def size_edges(area_fraction: pd.Series) -> tuple[float, float]:
    """Edges between small / medium / large objects: the terciles of the areas, so each
    bin holds a third of the objects whatever the dataset's size range."""
    lo, hi = np.quantile(np.asarray(area_fraction, dtype=np.float64), [1 / 3, 2 / 3])
    return float(lo), float(hi)


def size_bins(area_fraction: pd.Series, edges: tuple[float, float]) -> pd.Series:
    """'small' / 'medium' / 'large' by area as a fraction of the image."""
    return pd.cut(area_fraction, [0, edges[0], edges[1], 1.0], labels=["small", "medium", "large"], include_lowest=True)


def context_table(ds: VOCDataset, scenes: Mapping[str, Mapping[str, Any]], preferred: Mapping[str, str],
                  n_backgrounds: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """For generated scenes: P(background photograph | class present) as a class x photo
    table, and per class the measured rate of its preferred photograph beside the rate
    with no bias at all (one in ``n_backgrounds``)."""
    rows = []
    for image_id, mask in ds.iter_masks():
        present = np.unique(mask[(mask != IGNORE_INDEX) & (mask > 0)])
        for k in present:
            rows.append({"class": ds.class_names[k], "background": scenes[image_id]["background"]})
    df = pd.DataFrame(rows, columns=["class", "background"])
    matrix = pd.crosstab(df["class"], df["background"], normalize="index")
    rates = []
    for name in ds.class_names[1:]:
        sub = df[df["class"] == name]
        photo = preferred.get(name)
        rate = float((sub["background"] == photo).mean()) if len(sub) else float("nan")
        rates.append({"class": name, "preferred_background": photo, "images": len(sub),
                      "p_preferred": rate, "p_no_bias": 1.0 / n_backgrounds})
    return matrix, pd.DataFrame(rates)
