"""Stage 6: does pseudo-mask precision predict the final model?

The paper's thesis is in its title: among pseudo-masks of similar quality, the *precise* ones
make the better segmentation model. This stage trains nothing: it puts every pseudo-mask
variant of the run side by side (CAM variants x registered refinements, stage 4), relates the
pseudo-masks stage 5 trained on to the validation mIoU of the models trained on them, fits that
relation with its uncertainty (:func:`orandnet_lib.core.stats.ols`) on one point per
pseudo-mask set (the mean over DeepLab seeds: seeds are not independent pseudo-mask sets, so
they are error bars, never points), only as many regressors as the sets support
(:func:`min_sets`), compares the baseline -> ORANDNet gain, paired by seed, with the paper's
beside its context (:mod:`orandnet_lib.core.paper`), and builds the teaching explorer of masks. Recipe, top to
bottom: :func:`load`, :func:`pseudo_mask_table`, :func:`points_table` / :func:`aggregate`,
:func:`fit_relations`, :func:`comparison`, :func:`teaching_panels`, :func:`record`,
:func:`findings`.
"""

from __future__ import annotations

import dataclasses

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..book import teaching
from ..core import paper
from ..core.keys import ArtifactKey
from ..core.stats import describe_difference, ols
from ..data.voc import VOCDataset
from ..methods.cams import CamStore
from ..methods.ensemble import Variant, recorded_variants
from ..methods.refine import REFINEMENTS
from ..methods.results import GROUND_TRUTH, headline_difference, headline_pairs, written_pseudo_masks

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

@dataclass
class Inputs:
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


def load(stage: Any) -> Inputs:
    """Read stages 4 and 5 (a stage-4 run of the earlier layout is read as well)."""
    u4, u5 = stage.upstream("04_refinement"), stage.upstream("05_segmentation_curriculum")
    m4 = u4.metrics
    refinement = m4.get("refinement")
    if refinement is None:  # earlier layout: {variant: {refinement: scores, "rw_fixed": written}}
        refinement = {v: {k: s for k, s in levels.items() if k != "rw_fixed"} for v, levels in m4["pseudo_masks"].items()}
    names = list(u4.params.get("refinements") or dict.fromkeys(k for levels in refinement.values() for k in levels))
    heads = list(u5.params.get("headline_sets", ()))
    baseline, other = headline_pairs(heads)[0] if len(heads) >= 2 else (None, None)
    return Inputs(refinement, written_pseudo_masks(m4), u5.metrics["segmentation"], names, dict(u4.params),
                  baseline, other, u5.params.get("headline_schedule", ""),
                  dict(u5.metrics.get("pseudo_masks_by_replicate", {})), int(u5.metrics.get("replicates", 1)))


# ----------------------------------------------------------------------------- tables

def written_label(entry: Mapping[str, Any]) -> str:
    """The row name of a written pseudo-mask set (what stage 5 trains on)."""
    return f"{REFINEMENTS.label(entry.get('refinement', '?'))} (written score): trained on"


def pseudo_mask_table(inp: Inputs) -> pd.DataFrame:
    """Every variant after every refinement (at its best-mIoU background score), plus the
    written sets: columns variant, refinement (its registry label), miou, precision, recall
    (empty for a train split without masks: nothing was scored)."""
    rows = [{"variant": v, "refinement": REFINEMENTS.label(k), **{m: s[m] for m in ("miou", "precision", "recall")}}
            for v, levels in inp.refinement.items() for k, s in levels.items()]
    rows += [{"variant": v, "refinement": written_label(s), **{m: s[m] for m in ("miou", "precision", "recall")}}
             for v, s in inp.pseudo_masks.items() if "miou" in s]
    return pd.DataFrame(rows, columns=["variant", "refinement", "miou", "precision", "recall"])


def points_table(inp: Inputs) -> pd.DataFrame:
    """One row per stage-5 model: training set, schedule, seed, the replicate of stages 1-4 its
    masks came from (with replicates, a pseudo-mask set's seed is its replicate; else 0), its
    final validation mIoU and its pseudo-masks' precision, recall and mIoU (NaN for the ground
    truth)."""
    rows = []
    for tset, by in inp.segmentation.items():
        for sched, entry in by.items():
            for i, sd in enumerate(entry["seeds"]):
                r = int(sd) if inp.replicates > 1 and tset != GROUND_TRUTH else 0
                q = (inp.by_replicate.get(str(r), {}) if r else inp.pseudo_masks).get(tset)
                q = q if q and "miou" in q else None  # unscored (a train split without masks)
                rows.append({"training set": tset, "schedule": sched, "seed": sd, "replicate": r,
                             "final miou": entry["per_seed"][i]["miou"],
                             "pseudo precision": q["precision"] if q else np.nan,
                             "pseudo recall": q["recall"] if q else np.nan, "pseudo miou": q["miou"] if q else np.nan})
    return pd.DataFrame(rows, columns=["training set", "schedule", "seed", "replicate", "final miou",
                                       "pseudo precision", "pseudo recall", "pseudo miou"])


def trained_points(points: pd.DataFrame) -> pd.DataFrame:
    """The models trained on pseudo-masks (not on the ground truth)."""
    return points.dropna(subset=["pseudo precision"])


def aggregate(points: pd.DataFrame) -> pd.DataFrame:
    """Per pseudo-mask set, (training set, schedule, replicate): final mIoU mean and sd over its
    seeds, the number of seeds and the pseudo-masks' precision, recall and mIoU."""
    return trained_points(points).groupby(["training set", "schedule", "replicate"]).agg(
        final=("final miou", "mean"), final_std=("final miou", "std"), seeds=("seed", "count"),
        precision=("pseudo precision", "first"), recall=("pseudo recall", "first"),
        miou=("pseudo miou", "first")).reset_index()


def ground_truth_mious(inp: Inputs) -> list[float]:
    """DeepLab on the ground truth, one mIoU per schedule (the dashed reference lines)."""
    return [e["miou"] for e in inp.segmentation.get(GROUND_TRUTH, {}).values()]


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


def fit_table(fits: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Each fitted model's terms: coefficient, standard error, 95 % interval, p, R² and the
    number of pseudo-mask sets it was fitted on."""
    table = pd.DataFrame([{"model": n, "term": PREDICTOR_LABELS.get(t, t), "coefficient": f["coef"][t],
                           "standard error": f["se"][t], "95 % low": f["low"][t], "95 % high": f["high"][t],
                           "p": f["p"][t], "R²": f["r2"], "sets": f["n"]}
                          for n, f in fits.items() if "coef" in f for t in f["coef"]])
    return table.set_index(["model", "term"]) if len(table) else table


def fit_notes(fits: Mapping[str, Mapping[str, Any]], fit_rows: pd.DataFrame) -> str:
    """Why a fit was not made, one line each (empty when all were)."""
    n_sets = len(fit_rows)
    return "\n\n".join(f"*{n}*: not fitted ({f['error']}); the {n_sets} set(s) are described in the table above."
                        for n, f in fits.items() if "error" in f)


def slope_verdict(fit: Mapping[str, Any], term: str) -> str:
    """The fitted slope in words, following the number of sets and the interval: a slope whose
    interval holds 0 is "not distinguishable from no relation"."""
    b, low, high, n = fit["coef"][term], fit["low"][term], fit["high"][term], fit["n"]
    what = PREDICTOR_LABELS.get(term, term)
    numbers = (f"{b:+.2f} points of final mIoU per point of {what}, {round(100 * fit['confidence'])} % interval "
               f"{low:+.2f} to {high:+.2f}, {fit['dof']} residual degree{'s' if fit['dof'] != 1 else ''} of freedom")
    if math.isnan(low) or low <= 0 <= high:
        return f"not distinguishable from no relation with {n} sets ({numbers})"
    few = f"; with only {n} sets, a description of these sets, not a law" if n < min_sets(2) else ""
    return f"{'rises' if b > 0 else 'falls'} with {what} across these {n} sets ({numbers}){few}"


def comparison_schedule(inp: Inputs, p: Params) -> str:
    """The schedule the paper comparison reads: ``fit_schedule`` where both headline sets have
    it, else stage 5's headline schedule."""
    both = [inp.segmentation.get(t, {}) for t in (inp.baseline, inp.other)]
    return p.fit_schedule if all(p.fit_schedule in b for b in both) else inp.headline_schedule


def comparison(inp: Inputs, p: Params) -> tuple[pd.DataFrame, dict[str, float] | None]:
    """The paper's numbers beside this run's for the same roles (stage 5's ``headline_sets``:
    baseline and ORANDNet), and the gain paired by seed. The spread column is the sd over
    seeds for single settings and the paired standard error for the gain."""
    sched = comparison_schedule(inp, p)

    def seg(tset: str | None) -> tuple[float, float]:
        by = inp.segmentation.get(tset, {}) if tset else {}
        entry = by.get(sched) or next(iter(by.values()), None)
        return (entry["miou"], entry.get("miou_std", math.nan)) if entry else (math.nan, math.nan)

    (base_m, base_s), (orn_m, orn_s) = seg(inp.baseline), seg(inp.other)
    gain = (headline_difference(inp.segmentation, inp.baseline, inp.other, sched)
            if inp.baseline and inp.other else None)
    ours = {"baseline pseudo-mask mIoU (train)": inp.pseudo_masks.get(inp.baseline, {}).get("miou", math.nan),
            "baseline segmentation mIoU (val)": base_m, "ORANDNet segmentation mIoU (val)": orn_m,
            "gain in segmentation mIoU": gain["mean"] if gain else orn_m - base_m}
    spread = {"baseline segmentation mIoU (val)": base_s, "ORANDNet segmentation mIoU (val)": orn_s,
              "gain in segmentation mIoU": gain["se"] if gain else math.nan}
    table = pd.DataFrame({f"paper ({paper.DATASET})": paper.comparison(), "this run (embedded)": ours,
                          "± seeds (sd; gain: paired se)": spread})
    return table, gain


def against_paper(gain: Mapping[str, float] | None, inp: Inputs) -> str:
    """The two gains side by side, each with what it was measured on (printed under the table)."""
    ours = describe_difference(gain) if gain else "not measured (stage 5 ran no paired headline)"
    varied = (f"over {inp.replicates} whole-pipeline replicates, paired by replicate" if inp.replicates > 1 else
              "for these pseudo-masks: one run of stages 1-4, the seeds vary DeepLab only")
    return (f"ORANDNet's gain over the baseline ({inp.other} against {inp.baseline}): {paper.gain_with_context()}. "
            f"This run (the embedded benchmark, small networks without ImageNet weights, {varied}): {ours}.")


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


def teaching_panels(stage: Any, p: Params, inp: Inputs) -> teaching.MaskPanels:
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


# ----------------------------------------------------------------------------- record and findings

def record(stage: Any, p: Params, fits: Mapping[str, Any], points: pd.DataFrame, table: pd.DataFrame,
           gain: Mapping[str, float] | None, inp: Inputs) -> dict[str, Any]:
    ours = float(table.loc["gain in segmentation mIoU", "this run (embedded)"])
    gain_out = {"paper": paper.GAIN, "paper_context": paper.CONTEXT, "ours": ours, "baseline": inp.baseline,
                "other": inp.other, "schedule": comparison_schedule(inp, p), "paired": dict(gain) if gain else None}
    fit_unit = "one point per pseudo-mask set: the mean final mIoU over its DeepLab seeds"
    return stage.record(
        metrics={"fits": dict(fits), "fit_unit": fit_unit, "points": points.to_dict(orient="records"),
                 "comparison": table.to_dict(), "gain": gain_out},
        summary={"precision_vs_miou": {"fits": dict(fits), "fit_schedule": p.fit_schedule, "fit_unit": fit_unit,
                                       "gain": gain_out}})


def findings(p: Params, fits: Mapping[str, Mapping[str, Any]], fit_rows: pd.DataFrame, agg: pd.DataFrame,
             gain: Mapping[str, float] | None, inp: Inputs) -> str:
    """The "What this chapter found" markdown, from the numbers just computed."""
    lines = []
    f = fits.get("precision", {})
    n_sets = len(fit_rows)
    if n_sets < min_sets(1):
        lines.append(f"- **Thesis test.** Only {n_sets} distinct pseudo-mask set(s) trained with the {p.fit_schedule} "
                     "schedule: a line through so few points says nothing about the relation, so none is fitted; "
                     "compare the sets directly in the table above.")
    elif "coef" in f:
        prec_span = fit_rows["precision"].max() - fit_rows["precision"].min()
        lines.append(f"- **Thesis test ({p.fit_schedule}, {n_sets} pseudo-mask sets, one point each: the mean over its "
                     f"seeds; their precision spans {prec_span:.1f} points).** Final mIoU "
                     f"{slope_verdict(f, 'precision')}; R² {f['r2']:.2f}. "
                     + (f"Each of the {inp.replicates} whole-pipeline replicates gives each variant a set of its own."
                        if inp.replicates > 1 else "The fit is of these pseudo-masks (one run of stages 1-4); the "
                        "seeds vary DeepLab only."))
    else:
        lines.append(f"- **Thesis test.** No line could be fitted to the {n_sets} sets: {f.get('error', 'no fit')}.")
    two = fits.get("precision + recall", {})
    if "error" in two and n_sets >= min_sets(1):
        lines.append(f"- Precision and recall together are described, not fitted: {two['error']}.")
    if len(agg):
        best_prec = agg.loc[agg["precision"].idxmax()]
        best_final = agg.loc[agg["final"].idxmax()]
        lines.append(f"- The most precise pseudo-masks ({best_prec['training set']}, precision {best_prec['precision']:.1f} %) "
                     + ("also give" if best_prec["training set"] == best_final["training set"] else "do not give")
                     + f" the best model ({best_final['training set']} / {best_final['schedule']}: "
                       f"{best_final['final']:.1f} % mIoU, mean over {int(best_final['seeds'])} seed(s)).")
    if gain is not None:
        lines.append(f"- **Against the paper.** {against_paper(gain, inp)}")
    return "\n".join(lines)


# -- the stage in order --------------------------------------------------------------------------

def run(stage: Any, p: Params) -> dict[str, Any]:
    """The stage's recipe in the order the notebook runs it, without its tables and figures:
    pseudo-mask against final scores, the fits and the comparison with the paper, recorded.
    Returns the record."""
    inputs = load(stage)
    points = points_table(inputs)
    fits, _ = fit_relations(points, p.fit_schedule)
    comparison_, gain = comparison(inputs, p)
    return record(stage, p, fits, points, comparison_, gain, inputs)
