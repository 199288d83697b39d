"""Reading recorded results: the per-seed scores of a segmentation summary, the paired
comparisons of its headline training sets, and the scores of the pseudo-masks stage 4 wrote.
Stage 5 writes these records and stage 6 reads them; both read them through here."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..core.stats import paired_difference

GROUND_TRUTH = "gt"  # the training set of ground-truth masks (the fully supervised bound)


def per_seed_miou(entry: Mapping[str, Any], key: str = "miou") -> dict[int, float]:
    """``{seed: score}`` of one summary entry; seeds whose score is missing or NaN (an empty
    size bin) are left out, so they drop out of a pairing."""
    values = {int(sd): float(s.get(key, math.nan)) for sd, s in zip(entry["seeds"], entry["per_seed"])}
    return {sd: v for sd, v in values.items() if not math.isnan(v)}


def headline_difference(summary: Mapping[str, Mapping[str, Any]], baseline: str, other: str, schedule: str,
                        confidence: float = 0.95) -> dict[str, float] | None:
    """``other`` minus ``baseline`` in validation mIoU, paired by seed
    (:func:`orandnet_lib.core.stats.paired_difference`), or None when either was not trained
    with ``schedule``."""
    a, b = summary.get(baseline, {}).get(schedule), summary.get(other, {}).get(schedule)
    if a is None or b is None:
        return None
    return paired_difference(per_seed_miou(a), per_seed_miou(b), confidence)


def headline_pairs(sets: Sequence[str]) -> list[tuple[str, str]]:
    """Every pair (baseline, other) among the headline sets, each compared as other - baseline:
    the headline (last set against the first: ORANDNet against the single CNN) first, then each
    later set against each earlier one (the control against the baseline, ORANDNet against the
    control)."""
    if len(sets) < 2:
        return []
    head = (sets[0], sets[-1])
    return [head, *(q for q in itertools.combinations(sets, 2) if q != head)]


def written_pseudo_masks(stage4_metrics: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Stage 4's scores of the pseudo-masks it wrote: ``{variant: {miou, precision, recall,
    threshold, refinement}}`` (a run of the earlier layout kept them under ``rw_fixed``)."""
    out = {}
    for variant, entry in stage4_metrics.get("pseudo_masks", {}).items():
        if "miou" not in entry and "rw_fixed" in entry:
            entry = {**entry["rw_fixed"], "refinement": "rw"}
        out[variant] = dict(entry)
    return out
