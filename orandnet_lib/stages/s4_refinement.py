"""Stage 4: from CAMs to pseudo-masks, as IRN (Ahn et al. 2019). Confident labels from a source
CAM (foreground where it is high, background where every class is very low, the rest ignored;
through a dense CRF) train a relation network that predicts class boundaries from the image
alone: one per variant under ``boundary_source = "per_variant"`` (the paper's setting, as
ORANDNet's script/irn.sh trains IRN on ORANDNet's labels), or one variant's net for every
variant. Every registered refinement (the CAM itself, a dense CRF, IRN's random walk, ...) of
each CAM variant of stages 1-3 is scored by a sweep of the background score, and the chosen
one's pseudo-masks, at IRN's background score (fixed, or moved to each CAM's operating point by
``threshold_rule``), are written in VOC layout for the segmentation stage, keyed by the CAM
store, the relation net that refined them and their settings. Every score that shapes an
artifact comes from a rule that reads no mask: each CAM's operating point is Otsu's threshold
of its own top scores (``methods.score_rules``); the best-mIoU scores read the train masks and
are shown beside it as oracles, choosing nothing. The confident labels always keep an ignore
band. The procedures on one CAM store are in ``methods.refinement``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.keys import ArtifactKey, spec_dict
from ..core.parallel import default_workers
from ..core.train import config_from, learning_config
from ..data.fingerprint import dataset_fingerprint
from ..data.voc import VOCDataset
from ..methods import pretrain, pseudo, score_rules
from ..methods.cams import CamStore
from ..methods.refine import REFINEMENTS
from ..methods.refinement import (FIXED, CamSweep, Refined, RelationNet, ThresholdRule, Thresholds, refine_variant,
                                  seed_quality_at, sweep_cams, train_relation_net, true_boundary_walk)
from ..nets.boundary import BoundaryNet
from ..nets.backbone import backbone_shape

STAGE = "04_refinement"
NOT_IN_KEYS = {
    "n_examples": "presentation: examples shown",
    "workers": "processes only; results identical",
    "refinements": "evaluation only: each is scored by a sweep every run, nothing of it is stored",
    "crf_iterations": "read by the dense CRF only: scored every run, not stored, unless pseudo_mask_refinement is "
                      "'crf', whose pseudo-mask key then holds it",
}
PER_VARIANT = "per_variant"  # boundary_source: each variant's own relation net (the paper's setting)
# The first variant's net's boundary maps (float16, one array per train image id), for the teaching widget;
# every net's maps are in boundaries_file(source).
BOUNDARIES_FILE = "boundaries.npz"


def boundaries_file(source: str) -> str:
    """The file of the boundary maps of the relation net trained on ``source``'s confident labels."""
    return f"boundaries-{source}.npz"


def _default_backbone_kwargs() -> dict[str, Any]:
    return {"channels": [32, 64, 128, 256], "layers": [1, 1, 1, 1]}


@dataclass(frozen=True)
class Params:
    seed: int = 0
    train_split: str = "train"
    variants: tuple[str, ...] = ("cnn", "and+offset", "orandnet")  # CAM stores of stages 1-3 to refine
    boundary_source: str = PER_VARIANT  # per_variant, or the variant whose relation net refines every variant
    fg_threshold: float = 0.30  # IRN's confident foreground
    bg_threshold: float = 0.05  # IRN's confident background
    threshold_rule: str = FIXED  # "relative": the three thresholds moved to each CAM's operating point (thresholds())
    reference_background: float = 0.15  # IRN's cam_eval_thres: the operating point its thresholds were set around
    operating_point_rule: str = "otsu"  # each CAM's operating point, from its own scores (methods.score_rules)
    min_ignore_band: float = 0.1  # confident fg and bg thresholds stay at least this far apart
    use_crf: bool = True  # CRF on the confident labels (IRN does)
    boundary_backbone: str = "resnet18"
    boundary_backbone_kwargs: dict[str, Any] = field(default_factory=_default_backbone_kwargs)
    boundary_pretrained: str = ""
    boundary_freeze_backbone: bool = False  # IRN's: the pretrained backbone is not trained, BatchNorm frozen
    feature_cache: bool = False  # a frozen backbone's features computed once per image and flip, not every epoch
    image_scale: int = 1  # the relation net sees images enlarged by this; its grid (and the walk's) has stride 4 / scale
    epochs: int = 4
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 0.001
    weight_decay: float = 0.0001
    bf16: bool = False
    radius: int = 5  # affinity radius, in cells of the boundary grid
    beta: float = 10.0  # affinity exponent
    exp_times: int = 8  # IRN's: the transition matrix raised to 2 ** exp_times (256 steps)
    pseudo_mask_background: float = 0.25  # IRN's background score for the written pseudo-masks (fixed)
    crf_iterations: int = 10
    refinements: tuple[str, ...] = ("cam", "crf", "rw")  # each scored on train_split by a sweep
    pseudo_mask_refinement: str = "rw"  # the refinement whose masks are written
    workers: int = 0  # processes for the refinements (0: one per CPU)
    n_examples: int = 4


def thresholds(p: Params, operating_point: float) -> Thresholds:
    """IRN's thresholds on a CAM whose operating point is ``operating_point``, by ``threshold_rule``
    (:class:`~orandnet_lib.methods.refinement.ThresholdRule`); a ValueError for a rule it cannot use."""
    return ThresholdRule(p.threshold_rule, p.fg_threshold, p.bg_threshold, p.pseudo_mask_background,
                         p.reference_background, p.min_ignore_band).at(operating_point)


def backbone_kwargs(p: Params) -> dict[str, Any]:
    """timm wants tuples where TOML and papermill give lists."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in dict(p.boundary_backbone_kwargs).items()}


def refinement_settings(p: Params) -> dict[str, Any]:
    """Every refinement's settings (``RefineInputs.settings``)."""
    return {"beta": p.beta, "exp_times": p.exp_times, "radius": p.radius, "crf_iterations": p.crf_iterations}


def check(p: Params) -> None:
    """The refinements named are registered (the runner calls this before any stage starts)."""
    REFINEMENTS.check([*p.refinements, p.pseudo_mask_refinement])


def boundary_sources(p: Params) -> tuple[str, ...]:
    """The variants whose confident labels train a relation network, one net each."""
    return tuple(p.variants) if p.boundary_source == PER_VARIANT else (p.boundary_source,)


def source_of(p: Params, variant: str) -> str:
    """The variant whose relation network refines ``variant``."""
    return variant if p.boundary_source == PER_VARIANT else p.boundary_source


def uses_feature_cache(p: Params) -> bool:
    """Frozen backbone features are cached only where they are frozen (IRN's setting)."""
    return p.feature_cache and p.boundary_freeze_backbone


def _attrs(name: str) -> dict[str, Any]:
    # An unknown name is not validated here (the key walk perturbs names): it is keyed by
    # everything a refinement could read.
    if name in REFINEMENTS:
        return REFINEMENTS.entry(name).attrs
    return {"settings": tuple(refinement_settings(Params())), "needs_boundary": True}


def _rule_spec(p: Params) -> dict[str, Any]:
    # The thresholds follow from the rules and the CAM store (in the keys); the store's operating
    # point also sets the CRF's background score.
    return {"threshold_rule": p.threshold_rule, "reference_background": p.reference_background,
            "operating_point_rule": p.operating_point_rule, "min_ignore_band": p.min_ignore_band}


def artifact_keys(p: Params, data: Mapping[str, str], upstream: Mapping[str, str]) -> dict[str, ArtifactKey]:
    """Each relation network's checkpoint (``boundary_net:<source>``, keyed by its source's CAM
    store) and each variant's pseudo-mask set (``pseudo_masks:<variant>``, keyed by the digest
    of the net that refined it). ``data[train_split]``: the split's fingerprint;
    ``upstream["cams:<variant>_<split>"]``: the CAM stores' digests."""
    spec = {"backbone": p.boundary_backbone, "backbone_kwargs": dict(p.boundary_backbone_kwargs),
            "pretrained": pretrain.keyed_setting(p.boundary_pretrained, "cnn", p.boundary_backbone,
                                            backbone_shape("cnn", p.boundary_backbone_kwargs)),
            "freeze_backbone": p.boundary_freeze_backbone, "image_scale": p.image_scale, "fg_threshold": p.fg_threshold,
            "bg_threshold": p.bg_threshold, **_rule_spec(p),
            "use_crf": p.use_crf, "radius": p.radius, "train": spec_dict(learning_config(config_from(p)))}
    if uses_feature_cache(p):  # the features come from other batches: the same values to rounding, a new key
        spec["feature_cache"] = True
    keys = {f"boundary_net:{src}": ArtifactKey("boundary_net", spec, data=data[p.train_split],
                                               upstream={"cams": upstream[f"cams:{src}_{p.train_split}"]}, seed=p.seed)
            for src in boundary_sources(p)}
    attrs = _attrs(p.pseudo_mask_refinement)
    settings = refinement_settings(p)
    spec = {"refinement": p.pseudo_mask_refinement, "background": p.pseudo_mask_background, **_rule_spec(p),
            **{k: settings[k] for k in attrs.get("settings", ())}}
    for v in p.variants:
        inputs = {"cams": upstream[f"cams:{v}_{p.train_split}"]}
        if attrs.get("needs_boundary"):
            inputs["boundary_net"] = keys[f"boundary_net:{source_of(p, v)}"].digest
        keys[f"pseudo_masks:{v}"] = ArtifactKey("pseudo_masks", spec, data=data[p.train_split], upstream=inputs)
    return keys


@dataclass
class Inputs:
    """The scored split, the CAM stores (boundary sources and variants), each store's sweep and
    thresholds, and the keys of what the stage writes."""

    train: VOCDataset
    stores: dict[str, CamStore]
    keys: dict[str, ArtifactKey]
    sweeps: dict[str, CamSweep]  # per store; {} for a train split without masks
    thresholds: dict[str, Thresholds]  # per store


def open_inputs(stage: Any, p: Params) -> Inputs:
    check(p)
    train = VOCDataset(stage.data_root, p.train_split)
    stores = {v: CamStore(stage.cam_store(v, p.train_split)) for v in dict.fromkeys([*boundary_sources(p), *p.variants])}
    upstream = {f"cams:{v}_{p.train_split}": s.digest for v, s in stores.items()}
    keys = artifact_keys(p, {p.train_split: dataset_fingerprint(train)}, upstream)
    sweeps = {v: sweep_cams(s, train) for v, s in stores.items()} if train.has_masks else {}
    return Inputs(train, stores, keys, sweeps, {v: thresholds(p, operating_point(p, s)) for v, s in stores.items()})


def operating_point(p: Params, store: CamStore) -> float:
    """A CAM store's operating point by ``p.operating_point_rule``, from its scores alone."""
    return score_rules.operating_point(((cams, ids) for _, cams, ids in store), p.operating_point_rule)


# ----------------------------------------------------------------------------- the relation networks

def train_boundary_net(p: Params, inputs: Inputs, source: str, out_dir: Path, progress: bool = True,
                       features: pseudo.FeatureCache | None = None) -> RelationNet:
    """A relation network on ``source``'s confident labels (:func:`methods.refinement.train_relation_net`).
    Its checkpoint is named and checked by the ``boundary_net:<source>`` key (backbone,
    thresholds, CRF, radius, training config, data, source store, seed), so a changed setting
    trains a new network instead of resuming another."""
    key = inputs.keys[f"boundary_net:{source}"]
    weights = pretrain.resolve(p.boundary_pretrained, "cnn", p.boundary_backbone, backbone_shape("cnn", backbone_kwargs(p)),
                               progress=progress)
    torch.manual_seed(p.seed)
    net = BoundaryNet(p.boundary_backbone, weights, backbone_kwargs=backbone_kwargs(p),
                      freeze_backbone=p.boundary_freeze_backbone, input_scale=p.image_scale)
    return train_relation_net(net, inputs.stores[source], inputs.train, inputs.thresholds[source], config_from(p),
                              key.path(out_dir, "boundary"), key, source=source, use_crf=p.use_crf, radius=p.radius,
                              feature_cache=uses_feature_cache(p), features=features, workers=p.workers,
                              progress=progress)


def train_boundary_nets(p: Params, inputs: Inputs, out_dir: Path, progress: bool = True) -> dict[str, RelationNet]:
    """One relation network per boundary source (:func:`boundary_sources`), each from the same seed
    and the same pretrained backbone, whose cached features (under ``feature_cache``) they share."""
    config = config_from(p)
    shared = pseudo.FeatureCache(inputs.train, config.bf16, config.batch_size, progress) if uses_feature_cache(p) else None
    return {src: train_boundary_net(p, inputs, src, out_dir, progress, shared) for src in boundary_sources(p)}


def seed_quality(p: Params, inputs: Inputs) -> dict[str, dict[str, Any]]:
    """How the thresholds fall on each boundary source's CAM (:func:`methods.refinement.seed_quality_at`,
    described with the ground truth, never tuned on it); {} without masks."""
    if not inputs.sweeps:
        return {}
    return {src: seed_quality_at(inputs.thresholds[src], inputs.sweeps[src].sweep) for src in boundary_sources(p)}


@dataclass
class Boundaries:
    maps: dict[str, dict[str, np.ndarray]]  # source -> image id -> (h, w) float32 map on the boundary grid
    source_of: dict[str, str]  # variant -> the source whose net refines it
    ms_per_image: dict[str, float]  # source -> ms per image
    paths: dict[str, Path]  # source -> boundaries-<source>.npz

    def of(self, variant: str) -> dict[str, np.ndarray]:
        """The boundary maps that refine ``variant``."""
        return self.maps[self.source_of[variant]]


def boundary_maps(p: Params, relations: Mapping[str, RelationNet], inputs: Inputs, out_dir: Path,
                  progress: bool = True) -> Boundaries:
    """Every train image's boundary map from each relation network, computed once per net and
    saved (float16, one array per image id) to ``out_dir/boundaries-<source>.npz``; the net
    that refines the first variant also to ``out_dir/boundaries.npz`` (the teaching widget's)."""
    maps, ms, paths = {}, {}, {}
    for src, relation in relations.items():
        start = time.perf_counter()
        maps[src] = pseudo.boundary_maps(relation.net, inputs.train, progress=progress)
        ms[src] = 1000 * (time.perf_counter() - start) / len(inputs.train)
        paths[src] = Path(out_dir) / boundaries_file(src)
        pseudo.save_boundary_maps(paths[src], maps[src])
    source_of_v = {v: source_of(p, v) for v in p.variants}
    pseudo.save_boundary_maps(Path(out_dir) / BOUNDARIES_FILE, maps[source_of_v[p.variants[0]]])
    return Boundaries(maps, source_of_v, ms, paths)


# ----------------------------------------------------------------------------- the refinements

def refine_variants(p: Params, inputs: Inputs, boundaries: Boundaries, out_dir: Path,
                    progress: bool = True) -> dict[str, Refined]:
    """Every variant through :func:`methods.refinement.refine_variant`; pseudo-masks in
    ``out_dir/pseudo_masks/<variant>``."""
    return {v: refine_variant(inputs.stores[v], inputs.train, Path(out_dir) / "pseudo_masks" / v,
                              inputs.keys[f"pseudo_masks:{v}"], refinements=p.refinements,
                              pseudo_mask_refinement=p.pseudo_mask_refinement,
                              background=inputs.thresholds[v].pseudo_mask_background,
                              operating_point=inputs.thresholds[v].operating_point, settings=refinement_settings(p),
                              boundaries=boundaries.of(v), keep=p.n_examples, workers=p.workers, progress=progress,
                              cam_sweep=inputs.sweeps.get(v))
            for v in p.variants}


def walk_limit(p: Params, inputs: Inputs, relations: Mapping[str, RelationNet], progress: bool = True
               ) -> dict[str, Any]:
    """The first variant's random walk along the true class boundaries, on its relation net's
    grid (:func:`methods.refinement.true_boundary_walk`): a diagnostic that reads the masks;
    nothing written comes from it. {} for a split without masks."""
    if not inputs.train.has_masks:
        return {}
    v = p.variants[0]
    return {"variant": v, **true_boundary_walk(inputs.stores[v], inputs.train, int(relations[source_of(p, v)].net.stride),
                                               inputs.thresholds[v].operating_point, refinement_settings(p),
                                               workers=p.workers, progress=progress)}


# ----------------------------------------------------------------------------- the record

def record(stage: Any, p: Params, inputs: Inputs, relations: Mapping[str, RelationNet],
           qualities: Mapping[str, Mapping[str, Any]], boundaries: Boundaries,
           results: Mapping[str, Refined], limit: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The stage's metrics (``limit``: :func:`walk_limit`'s, when it ran). ``boundary_nets`` says which net refined which variant
    (``refines``: variant -> source) and where each net's maps are (``files``: source -> file
    name in the stage folder; ``widget_file`` holds the first variant's net's maps)."""
    refinement = {v: r.scores for v, r in results.items()}
    written = {v: r.pseudo_masks for v, r in results.items()}
    timings = {v: r.timings for v, r in results.items()}
    nets = {"boundary_source": p.boundary_source, "refines": dict(boundaries.source_of),
            "files": {src: path.name for src, path in boundaries.paths.items()}, "widget_file": BOUNDARIES_FILE}
    walk = {"exp_times": p.exp_times, "steps": 2 ** p.exp_times, "beta": p.beta, "radius": p.radius,
            "pseudo_mask_background": p.pseudo_mask_background}
    cuts = {"rule": p.threshold_rule, "operating_point_rule": p.operating_point_rule,
            "min_ignore_band": p.min_ignore_band,
            "per_variant": {v: {**th.as_dict(), **({"best_score_oracle": inputs.sweeps[v].best_score}
                                                   if v in inputs.sweeps else {})}
                            for v, th in inputs.thresholds.items()}}
    return stage.record(
        metrics={"refinement": refinement, "pseudo_masks": written, "timings": timings, "boundary_nets": nets,
                 "random_walk": walk, "thresholds": cuts, "walk_true_boundaries": dict(limit or {}),
                 "relation_history": {src: r.history for src, r in relations.items()},
                 "label_seconds": {src: r.label_seconds for src, r in relations.items()},
                 "confident_labels": {src: r.labels.label_statistics() for src, r in relations.items()},
                 "seed_quality": {src: q["at"] for src, q in qualities.items()},
                 "boundary_ms_per_image": boundaries.ms_per_image, "workers": p.workers or default_workers()},
        summary={"refinement": refinement, "pseudo_masks": written, "refinement_timings": timings,
                 "boundary_nets": nets, "thresholds": cuts, "walk_true_boundaries": dict(limit or {})},
        artifacts=inputs.keys)


# ----------------------------------------------------------------------------- the facts the prose states

def source_facts(p: Params) -> dict[str, Any]:
    """Which relation network refines which variant (``04_refinement/source.md``)."""
    return {"per_variant": p.boundary_source == PER_VARIANT, "boundary_source": p.boundary_source,
            "variant_names": list(p.variants), "seed": p.seed}


def walk_facts(p: Params) -> dict[str, Any]:
    """The random walk's settings that ran and the rule of its background score (``04_refinement/walk.md``)."""
    return {"image_scale": p.image_scale, "grid_stride": 4 // p.image_scale, "radius": p.radius, "beta": p.beta,
            "exp_times": p.exp_times, "steps": 2 ** p.exp_times, "threshold_rule": p.threshold_rule,
            "pseudo_mask_background": p.pseudo_mask_background, "reference_background": p.reference_background,
            "operating_point_label": score_rules.SCORE_RULES.label(p.operating_point_rule)}


def confident_facts(source: str, th: Thresholds, quality: Mapping[str, Any], label_stats: Mapping[str, float]
                    ) -> dict[str, Any]:
    """Where one source CAM's confident thresholds fall: shares and precisions at each (None: no
    pixel marked), its operating point, its best-mIoU score (an oracle) and whether that score
    lies above the foreground threshold (the confident foreground spills over object edges)."""
    at, best = quality["at"], quality["sweep"].best()["threshold"] / 100

    def known(x: float) -> float | None:
        return None if np.isnan(x) else x

    return {"source": source, "fg": th.fg, "bg": th.bg, "operating_point": th.operating_point, "best": best,
            "fg_share": at["fg"]["fg_share"], "fg_precision": known(at["fg"]["fg_precision"]),
            "bg_share": at["bg"]["bg_share"], "bg_precision": known(at["bg"]["bg_precision"]),
            "best_is_lowest": best <= 0, "best_above_fg": best > th.fg, "foreground_after_crf": label_stats["foreground"]}


def variant_facts(variant: str, r: Refined, source: str, background: float) -> dict[str, Any]:
    """One variant's refinements against its CAM (``moves``: empty without a CAM row) and its
    written pseudo-masks (``miou`` None where the split has no masks)."""
    cam = r.scores.get("cam")
    moves = [] if cam is None else [{"refinement": REFINEMENTS.label(k), "before": cam, "after": sc}
                                    for k, sc in r.scores.items() if k != "cam"]
    return {"variant": variant, "source": source, "moves": moves, "background": background,
            "written": REFINEMENTS.label(r.pseudo_masks["refinement"]), "miou": r.pseudo_masks.get("miou")}


def limit_facts(limit: Mapping[str, Any], scores: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """The walk along the true boundaries (``walk``) against the CAM and the learned walk (``rw``,
    None when not scored), with the verdict: ``no_gain`` (perfect boundaries do not lift the CAM),
    ``gain`` (no learned walk to compare), ``takes_all`` (the learned walk reaches it) or ``leaves``."""
    cam, walk = scores["cam"]["miou"], limit["miou"]
    rw = scores["rw"]["miou"] if "rw" in scores else None
    verdict = "no_gain" if walk <= cam else "gain" if rw is None else "takes_all" if rw >= walk else "leaves"
    return {"variant": limit["variant"], "grid_stride": limit["grid_stride"], "walk": walk, "cam": cam, "rw": rw,
            "verdict": verdict, "gain": walk - cam, "left": None if rw is None else walk - rw,
            "beyond": None if rw is None else rw - walk}


def findings(p: Params, inputs: Inputs, relations: Mapping[str, RelationNet], qualities: Mapping[str, Mapping[str, Any]],
             boundaries: Boundaries, results: Mapping[str, Refined], peak_rss_mb: float,
             limit: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Facts for the chapter's "What this chapter found" (``04_refinement/findings.md``)."""
    return {**source_facts(p), **walk_facts(p), "train_split": p.train_split,
            "confident": [confident_facts(src, inputs.thresholds[src], qualities[src], r.labels.label_statistics())
                          for src, r in relations.items() if src in qualities],
            "refined": [variant_facts(v, r, boundaries.source_of[v], inputs.thresholds[v].pseudo_mask_background)
                        for v, r in results.items()],
            "limit": limit_facts(limit, results[limit["variant"]].scores) if limit else None,
            "workers": p.workers or default_workers(), "net_ms": dict(boundaries.ms_per_image),
            "timings": {v: {REFINEMENTS.label(k[: -len("_ms_per_image")]): ms for k, ms in r.timings.items()}
                        for v, r in results.items()},
            "peak_rss_gb": peak_rss_mb / 1024}


# -- the stage in order --------------------------------------------------------------------------

def run(stage: Any, p: Params) -> dict[str, Any]:
    """The stage's recipe in the order the notebook runs it, without its tables and figures:
    the relation networks, the confident labels' quality, the boundary maps, each refinement of
    each variant with its pseudo-masks, the walk's limit, recorded. Returns the record."""
    inputs = open_inputs(stage, p)
    relations = train_boundary_nets(p, inputs, stage.dir)
    qualities = seed_quality(p, inputs)
    boundaries = boundary_maps(p, relations, inputs, stage.dir)
    results = refine_variants(p, inputs, boundaries, stage.dir)
    limit = walk_limit(p, inputs, relations)
    return record(stage, p, inputs, relations, qualities, boundaries, results, limit)
