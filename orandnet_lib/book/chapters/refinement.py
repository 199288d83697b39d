"""Chapter 4's figures and tables: where the confident-label thresholds fall on each source CAM,
the refinements' scores, the refinement image by image, the random walk step by step, and the
walk along the true boundaries beside the learned one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .. import plots
from ...core.metrics import cam_to_mask
from ...data.voc import VOCDataset
from ...methods.cams import CamStore
from ...methods.refine import REFINEMENTS
from ...methods.refinement import METRICS, Refined, Thresholds, walk_steps


def merged_marks(marks: Sequence[tuple[float, str]], within: float = 0.03) -> list[tuple[float, str]]:
    """Vertical marks with their labels, those closer than ``within`` joined into one label
    (their labels would print over each other)."""
    out: list[tuple[float, str]] = []
    for t, name in sorted(marks):
        if out and t - out[-1][0] < within:
            out[-1] = (out[-1][0], f"{out[-1][1]} = {name}")
        else:
            out.append((t, name))
    return out


def seed_quality_figure(qualities: Mapping[str, Mapping[str, Any]], thresholds: Mapping[str, Thresholds]
                        ) -> plt.Figure:
    """Per boundary source, the shares and precisions of its CAM's confident foreground and
    background against the threshold (``qualities``: :func:`methods.refinement.seed_quality`),
    with the two thresholds that ran, the mask-free operating point they came from and the CAM's
    best-mIoU score (an oracle) marked."""
    fig, axes = plt.subplots(len(qualities), 1, figsize=(plots.COLUMN, 4.4 * len(qualities)), squeeze=False)
    styles = {"foreground threshold": ":", "background threshold": "-.", "operating point": "--",
              "best-mIoU score (oracle)": "-"}
    for ax, (src, quality) in zip(axes[:, 0], qualities.items()):
        table = quality["table"]
        for col, style in (("fg_share", "-"), ("fg_precision", "-"), ("bg_share", "--"), ("bg_precision", "--")):
            ax.plot(table.index, 100 * table[col], style, label=col.replace("_", " "))
        th = thresholds[src]
        marks = ((th.fg, "foreground threshold"), (th.bg, "background threshold"),
                 (th.operating_point, "operating point"),
                 (quality["sweep"].best()["threshold"] / 100, "best-mIoU score (oracle)"))
        # The marks go into the legend (as text above the panel, long labels squeezed the axes).
        for t, name in merged_marks(marks):
            ax.axvline(t, color="black", lw=1.2, ls=styles[name.split(" = ")[0]], label=f"{name}: {t:.2f}")
        ax.set(xlabel=f"{src} CAM score", ylabel="% of pixels", ylim=(0, 100), title=f"{src} CAM")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, fontsize=9, frameon=False)
    fig.tight_layout()
    return fig


def score_table(results: Mapping[str, Refined]) -> pd.DataFrame:
    """A (variant, refinement) table of the scores, the written sets last as
    "<label>, written"."""
    rows = [{"variant": v, "refinement": REFINEMENTS.label(k), **sc} for v, r in results.items()
            for k, sc in r.scores.items()]
    rows += [{"variant": v, "refinement": f"{REFINEMENTS.label(r.pseudo_masks['refinement'])}, written",
              **{m: r.pseudo_masks[m] for m in METRICS}}
             for v, r in results.items() if "miou" in r.pseudo_masks]
    if not rows:
        return pd.DataFrame()
    order = {v: i for i, v in enumerate(results)}
    return (pd.DataFrame(rows).sort_values("variant", key=lambda s: s.map(order), kind="stable")
            .set_index(["variant", "refinement"]))


def walk_limit_table(limit: Mapping[str, Any], scores: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """The variant's CAM, its walk along the relation net's boundaries and along the true ones
    (``limit``), side by side; ``scores``: that variant's refinement scores."""
    rows = {"CAM": scores.get("cam"), "random walk, relation-net boundaries": scores.get("rw"),
            "random walk, true boundaries": limit}
    return pd.DataFrame({k: {m: r[m] for m in METRICS} for k, r in rows.items() if r is not None}).T


def _cells_to_pixels(cells: np.ndarray, stride: int, shape: tuple[int, int]) -> np.ndarray:
    """Labels on a grid of ``stride``-pixel cells at pixel resolution, cropped to ``shape``."""
    return np.kron(cells, np.ones((stride, stride), np.uint8))[: shape[0], : shape[1]]


def example_figure(dataset: VOCDataset, store: CamStore, refined: Refined, *, variant: str, source: str,
                   labels: Mapping[str, np.ndarray], stride: int, boundaries: Mapping[str, np.ndarray],
                   background: float) -> plt.Figure:
    """For ``refined``'s examples of ``variant``: the image, its ground truth, the confident
    labels (``labels``, on the grid of ``stride`` pixels) and the boundary map of the ``source``
    net that refines it, the CAM mask (at the CAM's operating point) and the written pseudo-mask
    (at ``background``)."""
    grid = []
    for image_id, scores, ids in refined.examples:
        sample = dataset.load(image_id)
        cams, cam_ids = store[image_id]
        truth = [plots.overlay(sample.image, sample.mask)] if sample.mask is not None else []
        grid.append([sample.image, *truth,
                     plots.colorize(_cells_to_pixels(labels[image_id], stride, sample.image.shape[:2])),
                     plt.get_cmap("gray_r")(boundaries[image_id])[..., :3],
                     plots.overlay(sample.image, cam_to_mask(cams, cam_ids, refined.cam_background)),
                     plots.overlay(sample.image, cam_to_mask(scores, ids, background))])
    label = REFINEMENTS.label(refined.pseudo_masks["refinement"])
    truth_title = ["ground truth"] if dataset.has_masks else []
    return plots.image_grid(grid, titles=["image", *truth_title, f"confident labels ({source})",
                                          f"boundaries ({source} net)", f"{variant} CAM mask", f"{variant} {label}"],
                            size=1.8, class_names=dataset.class_names)


def walk_figure(dataset: VOCDataset, store: CamStore, boundaries: Mapping[str, np.ndarray], image_id: str, *,
                source: str, exp_times: int, radius: int, beta: float) -> plt.Figure:
    """One image's CAM (its first class) on the boundary grid of the ``source`` net, times
    (1 - boundary), before the walk and after 2 ** e steps for a few exponents up to ``exp_times``."""
    bmap = boundaries[image_id]
    steps, walked = walk_steps(store[image_id][0], bmap, exp_times, radius, beta)
    panels = [dataset.load_image(image_id), plt.get_cmap("gray_r")(bmap)[..., :3]] + [
        plt.get_cmap("jet")(w[0] / max(w[0].max(), 1e-8))[..., :3] for w in walked]
    titles = ["image", f"boundaries ({source} net)", "start"] + [f"{n} steps (2^{int(np.log2(n))})" for n in steps[1:]]
    return plots.image_grid([panels], titles=titles, size=1.6)
