"""Stage 6: does pseudo-mask precision predict the final model?

The paper's thesis is in its title: among pseudo-masks of similar quality, the *precise* ones
make the better segmentation model. This stage trains nothing: it puts every pseudo-mask
variant of the run side by side (CAM variants x registered refinements, stage 4), relates the
pseudo-masks stage 5 trained on to the validation mIoU of the models trained on them, fits that
relation with its uncertainty on one point per pseudo-mask set, compares the baseline ->
ORANDNet gain, paired by seed, with the paper's (all in :mod:`orandnet_lib.methods.precision_fit`),
and builds the teaching explorer of masks. Recipe, top to bottom: :func:`load`,
:func:`~orandnet_lib.methods.precision_fit.points_table`, ``fit_relations``, ``comparison``,
:func:`teaching_panels`, :func:`record`, and the facts of the chapter's prose (:func:`fit_notes`,
:func:`against_paper`, :func:`findings`; worded in ``book/prose/06_precision_vs_miou/``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..book import teaching
from ..core import paper
from ..core.keys import ArtifactKey
from ..data.voc import VOCDataset
from ..methods.cams import CamStore
from ..methods.curriculum import difference_verdict
from ..methods.ensemble import Variant, recorded_variants
from ..methods.precision_fit import (Recorded, comparison, comparison_schedule, fit_relations, min_sets, points_table,
                                     slope)
from ..methods.results import headline_pairs, written_pseudo_masks

STAGE = "06_precision_vs_miou"
# Stage 6 writes no artifact (tables, fits and figures are recomputed every run), so every
# parameter is exempt, each with its reason (the key-walk test reads this):
NOT_IN_KEYS = {
    "seed": "writes no artifact: analysis of stages 4 and 5, recomputed every run",
    "train_split": "writes no artifact: the teaching explorer's images, recomputed every run",
    "fit_schedule": "analysis only: which stage-5 models enter the fit, recomputed every run",
    "widget_variants": "presentation: variants in the teaching explorer",
    "widget_images": "presentation: images in the teaching explorer",
    "widget_thresholds": "presentation: background scores in the teaching explorer",
    "widget_refinements": "presentation: refinements in the teaching explorer",
    "crf_iterations": "presentation: CRF iterations of the teaching explorer's masks",
}


@dataclass(frozen=True)
class Params:
    """The notebook's parameters cell (minus profile, data_root, run_dir)."""

    seed: int = 0
    train_split: str = "train"
    fit_schedule: str = "curriculum"
    widget_variants: tuple[str, ...] = ("cnn", "vit", "or", "or+offset", "and", "and+offset", "orandnet")
    widget_images: int = 2
    widget_thresholds: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    widget_refinements: tuple[str, ...] = ()
    crf_iterations: int = 10


def artifact_keys(p: Params, data: Mapping[str, str], upstream: Mapping[str, str]) -> dict[str, ArtifactKey]:
    """Stage 6 writes no artifact."""
    return {}


# ----------------------------------------------------------------------------- what it reads

def load(stage: Any) -> Recorded:
    """Read stages 4 and 5 (a stage-4 run of the earlier layout is read as well)."""
    u4, u5 = stage.upstream("04_refinement"), stage.upstream("05_segmentation_curriculum")
    m4 = u4.metrics
    refinement = m4.get("refinement")
    if refinement is None:  # earlier layout: {variant: {refinement: scores, "rw_fixed": written}}
        refinement = {v: {k: s for k, s in levels.items() if k != "rw_fixed"} for v, levels in m4["pseudo_masks"].items()}
    names = list(u4.params.get("refinements") or dict.fromkeys(k for levels in refinement.values() for k in levels))
    heads = list(u5.params.get("headline_sets", ()))
    baseline, other = headline_pairs(heads)[0] if len(heads) >= 2 else (None, None)
    return Recorded(refinement, written_pseudo_masks(m4), u5.metrics["segmentation"], names, dict(u4.params),
                    baseline, other, u5.params.get("headline_schedule", ""),
                    dict(u5.metrics.get("pseudo_masks_by_replicate", {})), int(u5.metrics.get("replicates", 1)))


# ----------------------------------------------------------------------------- the teaching explorer

class VariantCams:
    """(variant, image id) -> (cams (K, H, W), class ids (K,)) for the explorer: a stage-2
    variant computed from its source stores, any other name read from its own store."""

    def __init__(self, stage: Any, split: str, variants: Mapping[str, Variant], names: Sequence[str]):
        self.variants = dict(variants)
        sources = list(dict.fromkeys(s for v in self.variants.values() for s in v.sources))
        self.sources = {name: CamStore(stage.cam_store(name, split)) for name in sources}
        self.extra = {v: CamStore(stage.cam_store(v, split)) for v in names if v not in self.variants}
        self.reference = self.sources[sources[0]] if sources else next(iter(self.extra.values()))

    def class_ids(self, image_id: str) -> np.ndarray:
        return self.reference[image_id][1]

    def __call__(self, variant: str, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        if variant in self.extra:
            return self.extra[variant][image_id]
        maps = {name: s[image_id][0] for name, s in self.sources.items()}
        return self.variants[variant].compute(maps), self.class_ids(image_id)


def scored(stage: Any, p: Params) -> bool:
    """Whether the train split has masks: this chapter's pseudo-mask scores and its explorer need them."""
    return VOCDataset(stage.data_root, p.train_split).has_masks


def teaching_panels(stage: Any, p: Params, inp: Recorded) -> teaching.MaskPanels:
    """Every panel of the explorer: the first ``widget_images`` train images with a class,
    each ``widget_variants`` (stage 2's variants rebuilt from its record, others from their
    stores), each refinement (``widget_refinements``, or every one stage 4 scored), each
    background score; the random walk uses stage 4's boundary maps and settings."""
    ds = VOCDataset(stage.data_root, p.train_split)
    cams = VariantCams(stage, p.train_split, recorded_variants(stage.upstream("02_or_and_ensembles").metrics["ensemble"]),
                       p.widget_variants)
    ids = [i for i in ds.ids if len(cams.class_ids(i)) > 0][: p.widget_images]
    boundary_of = relation_net_maps(stage.upstream("04_refinement"))
    names = teaching.usable_refinements(list(p.widget_refinements) or inp.refinements, boundary_of is not None)
    settings = {**inp.stage4_params, "crf_iterations": p.crf_iterations}
    return teaching.mask_panels(ds, cams, ids, p.widget_variants, names, p.widget_thresholds,
                                boundaries=boundary_of, settings=settings)


def relation_net_maps(stage4: Any) -> teaching.BoundaryOf | None:
    """(variant, image id) -> the boundary map of the relation net stage 4 refined that variant
    with (one net per source under ``per_variant``); a variant stage 4 did not refine (e.g.
    the ViT alone) gets the net of its first refined variant (``boundaries.npz``)."""
    nets = stage4.metrics.get("boundary_nets", {})
    shared = teaching.load_boundaries(stage4.dir / nets.get("widget_file", "boundaries.npz"))
    if shared is None:
        return None
    per_source = {source: teaching.load_boundaries(stage4.dir / name) for source, name in nets.get("files", {}).items()}
    refines = nets.get("refines", {})

    def boundary_of(variant: str, image_id: str) -> np.ndarray | None:
        maps = per_source.get(refines.get(variant, ""))
        return (maps if maps is not None else shared)[image_id]
    return boundary_of


# ----------------------------------------------------------------------------- record and prose facts

def record(stage: Any, p: Params, fits: Mapping[str, Any], points: pd.DataFrame, table: pd.DataFrame,
           gain: Mapping[str, float] | None, inp: Recorded) -> dict[str, Any]:
    """The stage's record: the fits, the per-model points, the comparison with the paper and
    the gain (the summary holds the fits and the gain)."""
    ours = float(table.loc["gain in segmentation mIoU", "this run (embedded)"])
    gain_out = {"paper": paper.GAIN, "paper_context": paper.CONTEXT, "ours": ours, "baseline": inp.baseline,
                "other": inp.other, "schedule": comparison_schedule(inp, p.fit_schedule),
                "paired": dict(gain) if gain else None}
    fit_unit = "one point per pseudo-mask set: the mean final mIoU over its DeepLab seeds"
    return stage.record(
        metrics={"fits": dict(fits), "fit_unit": fit_unit, "points": points.to_dict(orient="records"),
                 "comparison": table.to_dict(), "gain": gain_out},
        summary={"precision_vs_miou": {"fits": dict(fits), "fit_schedule": p.fit_schedule, "fit_unit": fit_unit,
                                       "gain": gain_out}})


def fit_notes(fits: Mapping[str, Mapping[str, Any]], fit_rows: pd.DataFrame) -> dict[str, Any]:
    """Facts for ``06_precision_vs_miou/fit_notes.md``: why each model was not fitted (none when all were)."""
    return {"n_sets": len(fit_rows), "unfitted": {n: f["error"] for n, f in fits.items() if "error" in f}}


def against_paper(gain: Mapping[str, float] | None, inp: Recorded) -> dict[str, Any]:
    """Facts for ``06_precision_vs_miou/against_paper.md``: the two gains, each with what it was
    measured on (``gain``: this run's paired difference with its verdict,
    :func:`~orandnet_lib.methods.curriculum.difference_verdict`; None when not measured)."""
    return {"against": {"baseline": inp.baseline, "other": inp.other, "paper_gain": paper.GAIN,
                        "paper_context": paper.CONTEXT, "replicates": inp.replicates,
                        "gain": difference_verdict(gain) if gain else None}}


def findings(p: Params, fits: Mapping[str, Mapping[str, Any]], fit_rows: pd.DataFrame, agg: pd.DataFrame,
             gain: Mapping[str, float] | None, inp: Recorded) -> dict[str, Any]:
    """Facts for "What this chapter found" (``06_precision_vs_miou/findings.md``). ``thesis``:
    "too few" sets for a line, "fitted" (``slope``: :func:`~orandnet_lib.methods.precision_fit.slope`
    of precision) or "failed" (``error``)."""
    f, n_sets = fits.get("precision", {}), len(fit_rows)
    thesis = "too few" if n_sets < min_sets(1) else "fitted" if "coef" in f else "failed"
    two = fits.get("precision + recall", {})
    facts: dict[str, Any] = {
        "fit_schedule": p.fit_schedule, "n_sets": n_sets, "thesis": thesis, "error": f.get("error", "no fit"),
        "slope": slope(f, "precision") if thesis == "fitted" else None, "r2": f.get("r2"),
        "precision_span": float(fit_rows["precision"].max() - fit_rows["precision"].min()) if n_sets else None,
        "replicates": inp.replicates, "two_error": two["error"] if "error" in two and thesis != "too few" else None,
        "best": None, "against": against_paper(gain, inp)["against"] if gain is not None else None}
    if len(agg):
        precise, best = agg.loc[agg["precision"].idxmax()], agg.loc[agg["final"].idxmax()]
        facts["best"] = {"precise_set": precise["training set"], "precision": float(precise["precision"]),
                         "same": bool(precise["training set"] == best["training set"]), "set": best["training set"],
                         "schedule": best["schedule"], "final": float(best["final"]), "seeds": int(best["seeds"])}
    return facts


# -- the stage in order --------------------------------------------------------------------------

def run(stage: Any, p: Params) -> dict[str, Any]:
    """The stage's recipe in the order the notebook runs it, without its tables and figures:
    pseudo-mask against final scores, the fits and the comparison with the paper, recorded.
    Returns the record."""
    inputs = load(stage)
    points = points_table(inputs)
    fits, _ = fit_relations(points, p.fit_schedule)
    comparison_, gain = comparison(inputs, p.fit_schedule)
    return record(stage, p, fits, points, comparison_, gain, inputs)
