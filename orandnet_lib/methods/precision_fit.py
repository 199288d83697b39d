"""Does pseudo-mask precision predict the final model? What stages 4 and 5 recorded, one point
per pseudo-mask set (the mean over its DeepLab seeds: seeds are not independent pseudo-mask
sets, so they are error bars, never points), the least-squares fit of the final mIoU on the
pseudo-masks' scores with only as many regressors as the sets support (:func:`min_sets`), and
the baseline -> ORANDNet gain, paired by seed, beside the paper's (:mod:`orandnet_lib.core.paper`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..core import paper
from ..core.stats import ols
from .results import GROUND_TRUTH, headline_difference


@dataclass
class Recorded:
    """What stages 4 and 5 recorded: ``refinement`` ({variant: {refinement: scores}}, each at
    its best background score), ``pseudo_masks`` ({variant: scores of the written set, with
    its ``refinement``}), ``segmentation`` (stage 5's summary), stage 4's refinement names and
    parameters, and stage 5's headline roles (its first and last headline set)."""

    refinement: dict[str, dict[str, dict[str, Any]]]
    pseudo_masks: dict[str, dict[str, Any]]
    segmentation: dict[str, dict[str, dict[str, Any]]]
    refinements: list[str]
    stage4_params: dict[str, Any]
    baseline: str
    other: str
    headline_schedule: str
    by_replicate: dict[str, dict[str, dict[str, Any]]] = dataclasses.field(default_factory=dict)  # r -> written scores
    replicates: int = 1


def points_table(rec: Recorded) -> pd.DataFrame:
    """One row per stage-5 model: training set, schedule, seed, the replicate of stages 1-4 its
    masks came from (with replicates, a pseudo-mask set's seed is its replicate; else 0), its
    final validation mIoU and its pseudo-masks' precision, recall and mIoU (NaN for the ground
    truth)."""
    rows = []
    for tset, by in rec.segmentation.items():
        for sched, entry in by.items():
            for i, sd in enumerate(entry["seeds"]):
                r = int(sd) if rec.replicates > 1 and tset != GROUND_TRUTH else 0
                q = (rec.by_replicate.get(str(r), {}) if r else rec.pseudo_masks).get(tset)
                q = q if q and "miou" in q else None  # unscored (a train split without masks)
                rows.append({"training set": tset, "schedule": sched, "seed": sd, "replicate": r,
                             "final miou": entry["per_seed"][i]["miou"],
                             "pseudo precision": q["precision"] if q else np.nan,
                             "pseudo recall": q["recall"] if q else np.nan, "pseudo miou": q["miou"] if q else np.nan})
    return pd.DataFrame(rows, columns=["training set", "schedule", "seed", "replicate", "final miou",
                                       "pseudo precision", "pseudo recall", "pseudo miou"])


def aggregate(points: pd.DataFrame) -> pd.DataFrame:
    """Per pseudo-mask set, (training set, schedule, replicate): final mIoU mean and sd over its
    seeds, the number of seeds and the pseudo-masks' precision, recall and mIoU (the models
    trained on the ground truth are left out)."""
    return points.dropna(subset=["pseudo precision"]).groupby(["training set", "schedule", "replicate"]).agg(
        final=("final miou", "mean"), final_std=("final miou", "std"), seeds=("seed", "count"),
        precision=("pseudo precision", "first"), recall=("pseudo recall", "first"),
        miou=("pseudo miou", "first")).reset_index()


def ground_truth_mious(rec: Recorded) -> list[float]:
    """DeepLab on the ground truth, one mIoU per schedule (the dashed reference lines)."""
    return [e["miou"] for e in rec.segmentation.get(GROUND_TRUTH, {}).values()]


FIT_MODELS = {"precision": ["precision"], "mIoU": ["miou"], "precision + recall": ["precision", "recall"]}
PREDICTOR_LABELS = {"precision": "pseudo-mask precision", "recall": "pseudo-mask recall", "miou": "pseudo-mask mIoU"}


def min_sets(regressors: int) -> int:
    """The pseudo-mask sets a fit with ``regressors`` predictors needs: 2k + 1 (three for a
    line, five for precision + recall), so at least k + 1 sets are left over to estimate the
    scatter (with fewer, the sets are described, not fitted)."""
    return 2 * regressors + 1


def fit_relations(points: pd.DataFrame, fit_schedule: str) -> tuple[dict[str, dict[str, Any]], pd.DataFrame]:
    """OLS of the final mIoU on each predictor set of ``FIT_MODELS``, one point per pseudo-mask
    set trained with ``fit_schedule`` (:func:`aggregate`: the mean over its seeds; a seed is
    another DeepLab on the same masks, not another set). A model with more regressors than
    the sets support (:func:`min_sets`), or that cannot be made, holds ``{"error": why,
    "n": sets}``. Returns (fits, the per-set rows)."""
    rows = aggregate(points)
    rows = rows[rows["schedule"] == fit_schedule].reset_index(drop=True)
    n = len(rows)
    fits: dict[str, dict[str, Any]] = {}
    for name, cols in FIT_MODELS.items():
        if n < min_sets(len(cols)):
            fits[name] = {"error": f"{len(cols)} regressor(s) need at least {min_sets(len(cols))} pseudo-mask sets, "
                                   f"this run has {n}", "n": n}
            continue
        try:
            fits[name] = ols(rows["final"], {c: rows[c] for c in cols})
        except ValueError as e:
            fits[name] = {"error": str(e), "n": n}
    return fits, rows


def slope(fit: Mapping[str, Any], term: str) -> dict[str, Any]:
    """A fitted slope and its verdict: ``relation`` is "none" when its interval holds 0 (not
    distinguishable from no relation), else "rises" or "falls"; ``few`` when the sets are too
    few for two regressors (a description of these sets, not a law)."""
    b, low, high, n = fit["coef"][term], fit["low"][term], fit["high"][term], fit["n"]
    relation = "none" if math.isnan(low) or low <= 0 <= high else "rises" if b > 0 else "falls"
    return {"coef": b, "low": low, "high": high, "n": n, "dof": fit["dof"], "what": PREDICTOR_LABELS.get(term, term),
            "confidence": round(100 * fit["confidence"]), "relation": relation, "few": n < min_sets(2)}


def comparison_schedule(rec: Recorded, fit_schedule: str) -> str:
    """The schedule the paper comparison reads: ``fit_schedule`` where both headline sets have
    it, else stage 5's headline schedule."""
    both = [rec.segmentation.get(t, {}) for t in (rec.baseline, rec.other)]
    return fit_schedule if all(fit_schedule in b for b in both) else rec.headline_schedule


def comparison(rec: Recorded, fit_schedule: str) -> tuple[pd.DataFrame, dict[str, float] | None]:
    """The paper's numbers beside this run's for the same roles (stage 5's ``headline_sets``:
    baseline and ORANDNet), and the gain paired by seed. The spread column is the sd over
    seeds for single settings and the paired standard error for the gain."""
    sched = comparison_schedule(rec, fit_schedule)

    def seg(tset: str | None) -> tuple[float, float]:
        by = rec.segmentation.get(tset, {}) if tset else {}
        entry = by.get(sched) or next(iter(by.values()), None)
        return (entry["miou"], entry.get("miou_std", math.nan)) if entry else (math.nan, math.nan)

    (base_m, base_s), (orn_m, orn_s) = seg(rec.baseline), seg(rec.other)
    gain = (headline_difference(rec.segmentation, rec.baseline, rec.other, sched)
            if rec.baseline and rec.other else None)
    ours = {"baseline pseudo-mask mIoU (train)": rec.pseudo_masks.get(rec.baseline, {}).get("miou", math.nan),
            "baseline segmentation mIoU (val)": base_m, "ORANDNet segmentation mIoU (val)": orn_m,
            "gain in segmentation mIoU": gain["mean"] if gain else orn_m - base_m}
    spread = {"baseline segmentation mIoU (val)": base_s, "ORANDNet segmentation mIoU (val)": orn_s,
              "gain in segmentation mIoU": gain["se"] if gain else math.nan}
    table = pd.DataFrame({f"paper ({paper.DATASET})": paper.comparison(), "this run (embedded)": ours,
                          "± seeds (sd; gain: paired se)": spread})
    return table, gain
