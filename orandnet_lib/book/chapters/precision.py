"""Chapter 6's tables: every pseudo-mask variant after every refinement, and the fitted
relations of the final mIoU to the pseudo-masks' scores."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from ...methods.precision_fit import PREDICTOR_LABELS
from ...methods.refine import REFINEMENTS

SCORES = ("miou", "precision", "recall")


def written_label(entry: Mapping[str, Any]) -> str:
    """The row name of a written pseudo-mask set (what stage 5 trains on)."""
    return f"{REFINEMENTS.label(entry.get('refinement', '?'))} (written score): trained on"


def pseudo_mask_table(refinement: Mapping[str, Mapping[str, Mapping[str, Any]]],
                      pseudo_masks: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Every variant after every refinement (``refinement``: {variant: {refinement: scores}}, at
    its best-mIoU background score), plus the written sets (``pseudo_masks``): columns variant,
    refinement (its registry label), miou, precision, recall (empty for a train split without
    masks: nothing was scored)."""
    rows = [{"variant": v, "refinement": REFINEMENTS.label(k), **{m: s[m] for m in SCORES}}
            for v, levels in refinement.items() for k, s in levels.items()]
    rows += [{"variant": v, "refinement": written_label(s), **{m: s[m] for m in SCORES}}
             for v, s in pseudo_masks.items() if "miou" in s]
    return pd.DataFrame(rows, columns=["variant", "refinement", *SCORES])


def fit_table(fits: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Each fitted model's terms: coefficient, standard error, 95 % interval, p, R² and the
    number of pseudo-mask sets it was fitted on."""
    table = pd.DataFrame([{"model": n, "term": PREDICTOR_LABELS.get(t, t), "coefficient": f["coef"][t],
                           "standard error": f["se"][t], "95 % low": f["low"][t], "95 % high": f["high"][t],
                           "p": f["p"][t], "R²": f["r2"], "sets": f["n"]}
                          for n, f in fits.items() if "coef" in f for t in f["coef"]])
    return table.set_index(["model", "term"]) if len(table) else table
