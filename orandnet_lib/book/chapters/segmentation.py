"""Chapter 5's figures and tables: the scale schedules and a mask shrunk by them; DeepLab's
validation scores per training set and schedule, per seed and per class, the recall of objects
by size, and the paired differences."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from pandas.io.formats.style import Styler

from .. import plots
from ...data.voc import VOCDataset
from ...methods.curriculum import SegmentationRun
from ...methods.results import GROUND_TRUTH
from ...methods.segmentation import ScaleSchedule, SegmenterSpec

DIFFERENCE_COLUMNS = {"measure": "measure", "n": "seeds", "mean": "mean difference", "se": "standard error",
                      "t": "t", "df": "df", "p": "p", "low": "95 % low", "high": "95 % high"}


def schedule_figure(specs: Mapping[str, SegmenterSpec]) -> plt.Figure:
    """The input scale over training, one line per schedule."""
    return plots.scale_schedules({name: ScaleSchedule(spec.schedule) for name, spec in specs.items()})


def schedule_scales(specs: Mapping[str, SegmenterSpec]) -> list[float]:
    """Every scale any schedule trains at, ascending."""
    return sorted({s for spec in specs.values() for _, s in ScaleSchedule(spec.schedule).points})


def example_set(train_sets: Mapping[str, VOCDataset]) -> str:
    """The training set the shrinking-mask figure shows: the first pseudo-mask set (else the first)."""
    return next((t for t in train_sets if t != GROUND_TRUTH), next(iter(train_sets)))


def shrinking_mask_figure(specs: Mapping[str, SegmenterSpec], train_sets: Mapping[str, VOCDataset],
                          mask_mode: str) -> plt.Figure:
    """The first image of :func:`example_set` and its mask at each of :func:`schedule_scales`."""
    shown = example_set(train_sets)
    masks = train_sets[shown]
    return plots.shrinking_masks(masks, masks.ids[0], schedule_scales(specs), mask_mode, shown)


def scores_table(summary: Mapping[str, Mapping[str, Any]], pseudo_mask_scores: Mapping[str, Mapping[str, Any]]
                 ) -> pd.DataFrame:
    """One row per (training set, schedule): seeds, mean mIoU / precision / recall, the mIoU's
    sd over seeds, and the pseudo-masks' own scores from stage 4."""
    table = pd.DataFrame([{"training set": t, "schedule": s, "seeds": len(r["seeds"]),
                           **{k: r[k] for k in ("miou", "precision", "recall")},
                           "miou_std": r.get("miou_std", np.nan)} for t, by in summary.items() for s, r in by.items()])
    pm = pd.DataFrame([{"training set": t, "pseudo-mask miou": q["miou"], "pseudo-mask precision": q["precision"],
                        "pseudo-mask recall": q["recall"]} for t, q in pseudo_mask_scores.items()
                       if t in summary and "miou" in q])  # a train split without masks: the sets are not scored
    if len(pm):
        table = table.merge(pm, on="training set", how="left")
    return table.set_index(["training set", "schedule"])


def differences_table(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per paired comparison (``methods.curriculum.paired_comparisons`` and
    ``schedule_comparisons``): the measure, the number of paired seeds, the mean difference,
    its standard error, the t-test (t, df, p) and the 95 % interval."""
    table = pd.DataFrame([{"comparison": r["comparison"], **{v: r[k] for k, v in DIFFERENCE_COLUMNS.items()}}
                          for r in rows], columns=["comparison", *DIFFERENCE_COLUMNS.values()])
    return table.set_index("comparison")


def styled_differences(rows: Sequence[Mapping[str, Any]]) -> Styler:
    """:func:`differences_table` formatted for the chapter (p with three decimals)."""
    table = differences_table(rows)
    return table.style.format("{:.2f}", na_rep="-", subset=["mean difference", "standard error", "t", "95 % low",
                                                             "95 % high"]) \
        .format("{:.3f}", na_rep="-", subset=["p"]).format("{:.0f}", na_rep="-", subset=["seeds", "df"])


def per_seed_table(summary: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per model: training set, schedule, seed, miou, precision, recall."""
    return pd.DataFrame([{"training set": t, "schedule": s, "seed": r["seeds"][i], **r["per_seed"][i]}
                         for t, by in summary.items() for s, r in by.items() for i in range(len(r["seeds"]))])


def class_iou_table(first: Mapping[tuple[str, str], SegmentationRun], class_names: Sequence[str]) -> pd.DataFrame:
    """IoU (%) of each class (columns) for each model at the stage's seed (rows)."""
    return pd.DataFrame({f"{t} / {s}": 100 * r.evaluation.matrix.scores().iou for (t, s), r in first.items()},
                        index=list(class_names)).T


def object_recall_table(by_size: Mapping[str, Mapping[str, Mapping[str, float]]]) -> pd.DataFrame:
    """One row per (training set, schedule): mean object recall (%) in each size bin."""
    return pd.DataFrame([{"training set": t, "schedule": s, **bins} for t, by in by_size.items() for s, bins in by.items()])
