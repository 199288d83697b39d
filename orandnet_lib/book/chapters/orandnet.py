"""Chapter 3's tables: every model under every read-out beside the perfect network, and the
N-way OR / AND (ORANDNet against the CAMs and the ensembles is chapter 2's ``variant_table``)."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from ...core.metrics import SweepResult
from ...methods.orandnet_maps import PERFECT, ReadoutScore
from ...nets.orandnet import LOSSES, READOUTS, readout_of


def readout_table(losses: Mapping[str, str], scores: Mapping[tuple[str, str], ReadoutScore]) -> pd.DataFrame:
    """One row per (model, read-out) at the best-mIoU background score (an oracle: the masks
    choose the score), with the empty maps and the error against AND; ``own`` marks the
    read-out of the model's loss (``losses``: model -> loss). The perfect network is AND's own
    logits (binary cross-entropy)."""
    rows = []
    nan = float("nan")
    for (name, r), sc in scores.items():
        loss = losses.get(name, "bce")
        best = sc.sweep.best() if sc.sweep is not None else {"miou": nan, "precision": nan, "recall": nan,
                                                             "threshold": nan}
        rows.append({"model": name, "loss": LOSSES.label(loss), "read-out": READOUTS.label(r),
                     "own read-out": "yes" if r == readout_of(loss) else "no",
                     "mIoU": best["miou"], "precision": best["precision"], "recall": best["recall"],
                     "best score": best["threshold"] / 100, "empty maps %": sc.empty, "MAE vs AND": sc.mae})
    return pd.DataFrame(rows).set_index(["model", "read-out"])


def own_readout_sweeps(losses: Mapping[str, str], scores: Mapping[tuple[str, str], ReadoutScore],
                       and_sweep: SweepResult, and_name: str) -> dict[str, SweepResult]:
    """Each model under its own read-out (``losses``: model -> loss), the perfect network under
    sigmoid / max and the AND target itself, for the side-by-side sweep figure."""
    out = {f"{n} ({READOUTS.label(readout_of(loss))})": scores[n, readout_of(loss)].sweep
           for n, loss in losses.items() if (n, readout_of(loss)) in scores}
    out[f"{PERFECT} ({READOUTS.label('sigmoid_max')})"] = scores[PERFECT, "sigmoid_max"].sweep
    out[f"{and_name} (target)"] = and_sweep
    return {k: v for k, v in out.items() if v is not None}


def n_way_table(n_way: Mapping[str, SweepResult]) -> pd.DataFrame:
    """Each N-way variant at its best-mIoU background score, one row each."""
    return pd.DataFrame({n: s.best() for n, s in n_way.items()}).T
