"""Stage 5's experiment over DeepLab runs: the identity of the masks a run trains on, the runs
and their scores, means over seeds, and the comparisons paired by seed (the headline sets
against each other, each schedule against the constant scale), with their verdicts.

Stage 5 (:mod:`orandnet_lib.stages.s5_segmentation`) trains and evaluates the runs; this module
only reads them, and the records it builds are what the stage writes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core import store
from ..core.keys import read_key
from ..core.stats import format_p, paired_difference
from ..data.fingerprint import dataset_fingerprint
from ..data.voc import VOCDataset
from .results import GROUND_TRUTH, headline_difference, headline_pairs, per_seed_miou
from .segmentation import Evaluation, recall_by_size

SIZE_BINS = ("small", "medium", "large")
METRIC_LABELS = {"miou": "mIoU", "precision": "precision", "recall": "recall",
                 **{f"object_recall_{b}": f"{b}-object recall" for b in SIZE_BINS}}
SCHEDULE_METRICS = ("miou", "object_recall_small")  # what the curriculum should raise, and may cost
REFERENCE_SCHEDULE = "constant"
DIFFERENCE_FIELDS = ("n", "mean", "se", "t", "df", "p", "low", "high")


# ----------------------------------------------------------------------------- the training masks' identity

def _masks_fingerprint(dataset: VOCDataset) -> str:
    """Content hash of a split's masks, for a mask folder that records no identity."""
    return store.hash_obj({"classes": list(dataset.class_names), "split": dataset.split,
                           "masks": [store.hash_file(dataset.mask_path(i)) for i in dataset.ids]})[:16]


def training_data_fingerprint(training_set: str, dataset: VOCDataset) -> str:
    """A training set's identity: the dataset fingerprint of the split (for stage 4's
    pseudo-masks it holds their artifact key, from the folder's identity.json); a pseudo-mask
    folder that records no identity is fingerprinted by its masks' content."""
    if training_set != GROUND_TRUTH and read_key(dataset.root) is None:
        return _masks_fingerprint(dataset)
    return dataset_fingerprint(dataset)


# ----------------------------------------------------------------------------- runs and their scores

def run_name(training_set: str, schedule: str, seed: int) -> str:
    return f"{training_set}/{schedule}/s{seed}"


@dataclass
class SegmentationRun:
    """One DeepLab trained on one training set with one schedule and seed, and its scores."""

    training_set: str
    schedule: str
    seed: int
    history: list[dict[str, float]]
    evaluation: Evaluation
    examples: dict[str, np.ndarray]
    train_seconds: float
    eval_seconds: float
    checkpoint: Path | None = None

    @property
    def name(self) -> str:
        return run_name(self.training_set, self.schedule, self.seed)

    @property
    def scores(self) -> dict[str, float]:
        return self.evaluation.summary()


def at_seed(runs: Sequence[SegmentationRun], seed: int) -> dict[tuple[str, str], SegmentationRun]:
    """The runs at the stage's seed, by (training set, schedule), in run order."""
    return {(r.training_set, r.schedule): r for r in runs if r.seed == seed}


def per_seed_scores(run: SegmentationRun, edges: tuple[float, float] | None) -> dict[str, float]:
    """One model's scores: mIoU, precision, recall and, with stage 0's size bins,
    ``object_recall_<bin>`` (mean object recall % per size bin, NaN for an empty bin)."""
    scores = {k: float(v) for k, v in run.scores.items()}
    if edges is not None:
        scores.update({f"object_recall_{b}": v for b, v in recall_by_size(run.evaluation, edges).items()})
    return scores


def summarise_runs(runs: Sequence[SegmentationRun], edges: tuple[float, float] | None = None
                   ) -> dict[str, dict[str, dict[str, Any]]]:
    """``{training set: {schedule: {miou, precision, recall, <each>_std, seeds, per_seed}}}``:
    means over seeds, with the sample standard deviation where there are two or more; each
    ``per_seed`` entry holds :func:`per_seed_scores` (object recall by size with ``edges``)."""
    grouped: dict[tuple[str, str], list[SegmentationRun]] = {}
    for run in runs:
        grouped.setdefault((run.training_set, run.schedule), []).append(run)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (tset, sched), group in grouped.items():
        group = sorted(group, key=lambda r: r.seed)
        entry: dict[str, Any] = {"seeds": [r.seed for r in group],
                                 "per_seed": [per_seed_scores(r, edges) for r in group]}
        for key in ("miou", "precision", "recall"):
            values = np.array([r.scores[key] for r in group])
            entry[key] = float(values.mean())
            if len(values) > 1:
                entry[f"{key}_std"] = float(values.std(ddof=1))
        out.setdefault(tset, {})[sched] = entry
    return out


def object_recall(first: Mapping[tuple[str, str], SegmentationRun], edges: tuple[float, float]
                  ) -> dict[str, dict[str, dict[str, float]]]:
    """``{training set: {schedule: {small, medium, large}}}``: mean object recall (%) in
    stage 0's object-size bins, for the runs at the stage's seed."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (t, s), r in first.items():
        out.setdefault(t, {})[s] = recall_by_size(r.evaluation, edges)
    return out


# ----------------------------------------------------------------------------- comparisons paired by seed

def paired_comparisons(summary: Mapping[str, Mapping[str, Any]], headline_sets: Sequence[str], schedule: str
                       ) -> list[dict[str, Any]]:
    """Every :func:`headline_pairs` comparison in validation mIoU with the headline ``schedule``,
    paired by seed: ``{baseline, other, schedule, metric, n, mean, se, t, df, p, low, high}``."""
    rows = []
    for a, b in headline_pairs(headline_sets):
        diff = headline_difference(summary, a, b, schedule)
        if diff is not None:
            rows.append({"comparison": f"{b} − {a}", "baseline": a, "other": b, "schedule": schedule,
                         "metric": "miou", "measure": METRIC_LABELS["miou"], **diff})
    return rows


def schedule_comparisons(summary: Mapping[str, Mapping[str, Any]], schedule_sets: Sequence[str],
                         schedules: Sequence[str], metrics: Sequence[str] = SCHEDULE_METRICS) -> list[dict[str, Any]]:
    """Each of ``schedules`` against the constant scale on each of ``schedule_sets``, paired by
    seed, in each metric: ``{training set, baseline: "constant", other: schedule, metric, n,
    mean, se, t, df, p, low, high}`` (schedule - constant). Seeds with a NaN score (no small
    object in the split) drop out of the pairing."""
    rows = []
    for t in schedule_sets:
        by = summary.get(t, {})
        if REFERENCE_SCHEDULE not in by:
            continue
        for sched in (s for s in schedules if s != REFERENCE_SCHEDULE and s in by):
            for metric in metrics:
                diff = paired_difference(per_seed_miou(by[REFERENCE_SCHEDULE], metric), per_seed_miou(by[sched], metric))
                rows.append({"comparison": f"{t}: {sched} − {REFERENCE_SCHEDULE}", "training set": t,
                             "baseline": REFERENCE_SCHEDULE, "other": sched, "metric": metric,
                             "measure": METRIC_LABELS.get(metric, metric), **diff})
    return rows


def headline_record(pairs: Sequence[Mapping[str, Any]], headline_sets: Sequence[str], schedule: str
                    ) -> dict[str, Any]:
    """The headline (first headline set against the last), as stage 6 and the results page
    read it: ``{baseline, other, schedule, difference}``."""
    head = headline_pairs(headline_sets)[:1]
    row = next((r for r in pairs if head and (r["baseline"], r["other"]) == head[0]), None)
    return {"baseline": head[0][0] if head else None, "other": head[0][1] if head else None,
            "schedule": schedule,
            "difference": {k: row[k] for k in DIFFERENCE_FIELDS} if row else None}


def difference_verdict(diff: Mapping[str, Any]) -> dict[str, Any]:
    """A paired difference with what can be said of it: ``kind`` "none" (no common seed),
    "single" (one seed: no spread), "identical" (no spread over the seeds) or "tested";
    ``separates`` (the t-test's p below 0.05) and ``p_shown`` (p as printed)."""
    if diff["n"] == 0:
        kind = "none"
    elif diff["n"] < 2:
        kind = "single"
    else:
        kind = "identical" if math.isnan(diff["t"]) else "tested"
    return {**{k: diff[k] for k in DIFFERENCE_FIELDS}, "kind": kind, "separates": kind == "tested" and diff["p"] < 0.05,
            "p_shown": format_p(diff["p"])}


def upper_bound(summary: Mapping[str, Mapping[str, Any]], training_sets: Sequence[str], schedule: str
                ) -> dict[str, Any] | None:
    """The ground truth's mIoU (with ``schedule``, else its first schedule; ``also``: its other
    schedules) against the best pseudo-mask set trained with ``schedule``: ``gap`` points
    ``side`` ("below" or "above") it. None without both."""
    gt = summary.get(GROUND_TRUTH)
    if not gt:
        return None
    others = [(t, summary[t][schedule]["miou"]) for t in training_sets
              if t != GROUND_TRUTH and schedule in summary.get(t, {})]
    if not others:
        return None
    g_sched = schedule if schedule in gt else next(iter(gt))
    best_t, best_v = max(others, key=lambda x: x[1])
    g = gt[g_sched]["miou"]
    return {"schedule": g_sched, "miou": g, "also": {name: e["miou"] for name, e in gt.items() if name != g_sched},
            "best_set": best_t, "best_miou": best_v, "gap": abs(g - best_v), "side": "below" if best_v <= g else "above"}
