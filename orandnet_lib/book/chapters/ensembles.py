"""Chapter 2's figures and tables: every single CAM and ensemble at two background scores, their
precision-recall curves, precision per class, and the masks they give."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .. import plots
from ...core.metrics import SweepResult, cam_to_mask
from ...data.voc import VOCDataset
from ...methods.cams import CamStore
from ...methods.ensemble import Variant


def variant_table(sweeps: Mapping[str, SweepResult]) -> pd.DataFrame:
    """Scores of each variant at its best-mIoU and its precision = recall background score, with
    what its mean precision leaves out: the classes it never predicts there (``unpredicted``) and
    its empty class maps (percent)."""
    rows = []
    for name, s in sweeps.items():
        for rule, scores in (("best mIoU", s.best()), ("precision = recall", s.crossover())):
            rows.append({"variant": name, "threshold rule": rule, **scores, "empty maps %": s.empty_share})
    return pd.DataFrame(rows).set_index(["threshold rule", "variant"]).sort_index(level=0, sort_remaining=False)


def curves_figure(sweeps: Mapping[str, SweepResult]) -> plt.Figure:
    """Precision against recall, and mIoU over the background score (offset variants dashed)."""
    fig, axes = plt.subplots(2, 1, figsize=(plots.COLUMN, 9.0), gridspec_kw={"height_ratios": [3, 2]})
    offset_names = [n for n in sweeps if "+offset" in n]
    plots.precision_recall_curves(dict(sweeps), axes[0], dashed=offset_names)
    for i, (name, s) in enumerate(sweeps.items()):
        curve = s.curve()
        axes[1].plot(curve["threshold"], curve["miou"], "--" if name in offset_names else "-", color=f"C{i % 10}",
                     label=name)
    axes[1].set(xlabel="background score (%)", ylabel="mIoU (%)", title="mIoU over the background score")
    fig.tight_layout()
    return fig


def per_class_precision(sweeps: Mapping[str, SweepResult], class_names: Sequence[str]) -> pd.DataFrame:
    """(variant, class) precision in percent at each variant's best-mIoU background score."""
    return pd.DataFrame({name: 100 * s.scores(s.best_index).precision for name, s in sweeps.items()},
                        index=class_names).T


def example_figure(train: VOCDataset, stores: Mapping[str, CamStore], sources: Sequence[str],
                   variants: Mapping[str, Variant], sweeps: Mapping[str, SweepResult], n_examples: int) -> plt.Figure:
    """Masks of the single CAMs (``sources``) and of the first two of OR / AND (with the offset
    when there is one), each at its own best-mIoU background score; without sweeps (a split
    without masks) the maps themselves (the largest score over the image's classes)."""
    shown = list(sources) + [v for v in ("or+offset", "and+offset", "or", "and") if v in variants][:2]
    best_t = {name: sweeps[name].best()["threshold"] / 100 for name in shown} if sweeps else {}
    picks = np.linspace(0, len(train) - 1, min(n_examples, len(train))).astype(int)
    grid = []
    for i in picks:
        sample = train[i]
        maps = {name: stores[name][sample.id][0] for name in sources}
        class_ids = stores[sources[0]][sample.id][1]
        fused = {n: variants[n].compute(maps) for n in shown}
        if sweeps:
            row = [sample.image, plots.overlay(sample.image, sample.mask)]
            row += [plots.overlay(sample.image, cam_to_mask(fused[n], class_ids, best_t[n])) for n in shown]
        else:
            row = [sample.image] + [plots.heatmap_overlay(sample.image, fused[n].max(axis=0) if len(class_ids)
                                                          else np.zeros(sample.image.shape[:2])) for n in shown]
        grid.append(row)
    titles = ["image", "ground truth", *shown] if sweeps else ["image", *shown]
    return plots.image_grid(grid, titles=titles, size=1.8, class_names=train.class_names)
