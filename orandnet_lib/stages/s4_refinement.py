"""Stage 4: from CAMs to pseudo-masks, as IRN (Ahn et al. 2019). (1) Confident labels from a
source CAM: foreground where it is high, background where every class is very low, the rest
ignored (refined by a dense CRF); (2) a relation network trained on pairs of those labels to
predict class boundaries from the image alone, one per source (``boundary_source``:
"per_variant", the paper's setting, trains each variant's own net on its own confident
labels, as ORANDNet's script/irn.sh trains IRN on ORANDNet's labels; a variant's name lets
that variant's net refine every variant); (3) every registered refinement (the CAM itself, a
dense CRF, IRN's random walk along the boundary affinities, ...) applied to each CAM variant
of stages 1-3 and scored by a sweep of the background score; (4) the pseudo-masks of the
chosen refinement at IRN's background score (fixed, or moved to each CAM's operating point by
``threshold_rule``), written in VOC layout for the
segmentation stage, each set keyed by its CAM store, the relation network that refined it
and its settings. Every score that shapes an artifact comes from a rule that reads no mask:
each CAM's operating point is Otsu's threshold of its own top scores
(``methods.score_rules``); the best-mIoU scores, which read the train masks, are shown beside
it as oracle rows and choose nothing. The confident labels always keep an ignore band.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core import store
from ..core.keys import ArtifactKey, spec_dict
from ..core.metrics import ConfusionMatrix, SweepResult, cam_to_mask
from ..core.parallel import default_workers
from ..core.train import config_from, fit, learning_config
from ..data.fingerprint import dataset_fingerprint
from ..data.voc import VOCDataset
from ..methods import pretrain, pseudo, score_rules
from ..methods.cams import CamStore, sweep_store, sweep_stream
from ..methods.refine import REFINEMENTS, random_walk_steps, transition_matrix, true_boundary, walk_input
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
# threshold_rule: IRN's thresholds as numbers ("fixed"), or re-expressed relative to each CAM's operating point
FIXED, RELATIVE = "fixed", "relative"
THRESHOLD_RULES = (FIXED, RELATIVE)
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


def check_rule(p: Params) -> None:
    """A clear error for a rule or reference the stage cannot use (the key walk of the tests
    builds Params with perturbed values, so this is not done on construction)."""
    if p.threshold_rule not in THRESHOLD_RULES:
        raise ValueError(f"threshold_rule must be one of {THRESHOLD_RULES}, got {p.threshold_rule!r}")
    if not 0 < p.reference_background < 1:
        raise ValueError(f"reference_background must lie in (0, 1), got {p.reference_background}")
    if not 0 < p.min_ignore_band < 1:
        raise ValueError(f"min_ignore_band must lie in (0, 1), got {p.min_ignore_band}")


@dataclass(frozen=True)
class Thresholds:
    """The three scores one CAM variant is cut at: its confident foreground and background
    (the relation network's labels) and the background of its written pseudo-masks."""

    fg: float
    bg: float
    pseudo_mask_background: float
    operating_point: float  # the CAM's background score by the mask-free operating_point_rule

    def as_dict(self) -> dict[str, float]:
        return {"fg_threshold": self.fg, "bg_threshold": self.bg, "pseudo_mask_background": self.pseudo_mask_background,
                "operating_point": self.operating_point}


def moved(score: float, reference: float, point: float) -> float:
    """A score set around the operating point ``reference`` moved to the operating point
    ``point``, keeping its relative place: below it as a fraction of [0, reference], above it
    as a fraction of [reference, 1]. ``moved(s, r, r) == s``."""
    if score >= reference:
        return point + (1.0 - point) * (score - reference) / (1.0 - reference)
    return score * point / reference


def thresholds(p: Params, operating_point: float) -> Thresholds:
    """IRN's thresholds (confident fg 0.30, bg 0.05, walk background 0.25) were set on VOC
    around CAMs whose best background score is about 0.15 (``reference_background``). CAMs
    that peak wider put their best background score elsewhere (0.48 for the embedded CNN's),
    where fixed numbers call half the image confident foreground. ``threshold_rule =
    "relative"`` moves each threshold to the CAM's own operating point (:func:`moved`);
    on a CAM whose operating point is the reference it gives IRN's numbers. Either way the
    confident thresholds keep an ignore band of at least ``min_ignore_band`` (:func:`with_band`)."""
    check_rule(p)
    if p.threshold_rule == FIXED:
        fg, bg = with_band(p.fg_threshold, p.bg_threshold, p.min_ignore_band)
        return Thresholds(fg, bg, p.pseudo_mask_background, operating_point)
    r = p.reference_background
    fg, bg = with_band(moved(p.fg_threshold, r, operating_point), moved(p.bg_threshold, r, operating_point),
                       p.min_ignore_band)
    return Thresholds(fg, bg, moved(p.pseudo_mask_background, r, operating_point), operating_point)


def with_band(fg: float, bg: float, band: float) -> tuple[float, float]:
    """(fg, bg) at least ``band`` apart inside [0, 1]: the background threshold moves down
    first (never below 0), then the foreground one up."""
    if fg - bg >= band:
        return fg, bg
    bg = max(0.0, fg - band)
    return max(fg, bg + band), bg


def backbone_kwargs(p: Params) -> dict[str, Any]:
    """timm wants tuples where TOML and papermill give lists."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in dict(p.boundary_backbone_kwargs).items()}


def refinement_settings(p: Params) -> dict[str, Any]:
    """Every refinement's settings (``RefineInputs.settings``)."""
    return {"beta": p.beta, "exp_times": p.exp_times, "radius": p.radius, "crf_iterations": p.crf_iterations}


def boundary_sources(p: Params) -> tuple[str, ...]:
    """The variants whose confident labels train a relation network, one net each."""
    return tuple(p.variants) if p.boundary_source == PER_VARIANT else (p.boundary_source,)


def source_of(p: Params, variant: str) -> str:
    """The variant whose relation network refines ``variant``."""
    return variant if p.boundary_source == PER_VARIANT else p.boundary_source


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
class CamSweep:
    """One CAM store swept once over the split: the refinements' baseline, the seed-quality
    table, and the operating point the thresholds and the CRF's unary use."""

    sweep: SweepResult
    seconds: float

    @property
    def best_score(self) -> float:
        """The CAM's best-mIoU background score, found with the train masks (as IRN's CAM
        evaluation finds ``cam_eval_thres``): an oracle, shown for description, choosing nothing."""
        return self.sweep.best()["threshold"] / 100


def sweep_cams(store: CamStore, dataset: VOCDataset) -> CamSweep:
    start = time.perf_counter()
    sweep = sweep_store(store, dataset)
    return CamSweep(sweep, time.perf_counter() - start)


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
    REFINEMENTS.check([*p.refinements, p.pseudo_mask_refinement])
    train = VOCDataset(stage.data_root, p.train_split)
    stores = {v: CamStore(stage.cam_store(v, p.train_split)) for v in dict.fromkeys([*boundary_sources(p), *p.variants])}
    upstream = {f"cams:{v}_{p.train_split}": s.digest for v, s in stores.items()}
    keys = artifact_keys(p, {p.train_split: dataset_fingerprint(train)}, upstream)
    sweeps = {v: sweep_cams(s, train) for v, s in stores.items()} if train.has_masks else {}
    return Inputs(train, stores, keys, sweeps, {v: thresholds(p, operating_point(p, s)) for v, s in stores.items()})


def operating_point(p: Params, store: CamStore) -> float:
    """A CAM store's operating point by ``p.operating_point_rule``, from its scores alone."""
    return score_rules.operating_point(((cams, ids) for _, cams, ids in store), p.operating_point_rule)


# ----------------------------------------------------------------------------- the relation network

@dataclass
class RelationNet:
    source: str  # the variant whose confident labels trained it
    net: BoundaryNet
    history: list[dict[str, float]]
    labels: pseudo.BoundarySet  # the confident labels it was trained on
    label_seconds: float
    checkpoint: Path


def uses_feature_cache(p: Params) -> bool:
    """Frozen backbone features are cached only where they are frozen (IRN's setting)."""
    return p.feature_cache and p.boundary_freeze_backbone


def train_boundary_net(p: Params, inputs: Inputs, source: str, out_dir: Path, progress: bool = True) -> RelationNet:
    """Confident labels of ``source``'s CAMs, then a relation network trained on them with
    the one training loop. Its checkpoint is named and checked by the ``boundary_net:<source>``
    key (backbone, thresholds, CRF, radius, training config, data, source store, seed), so a
    changed setting trains a new network instead of resuming another."""
    key = inputs.keys[f"boundary_net:{source}"]
    weights = pretrain.resolve(p.boundary_pretrained, "cnn", p.boundary_backbone, backbone_shape("cnn", backbone_kwargs(p)),
                               progress=progress)
    torch.manual_seed(p.seed)
    net = BoundaryNet(p.boundary_backbone, weights, backbone_kwargs=backbone_kwargs(p),
                      freeze_backbone=p.boundary_freeze_backbone, input_scale=p.image_scale)
    start = time.perf_counter()
    th = inputs.thresholds[source]
    labels = pseudo.BoundarySet(inputs.stores[source], inputs.train, net.stride, th.fg,
                                th.bg, p.use_crf, p.seed, progress=progress, workers=p.workers)
    label_seconds = time.perf_counter() - start
    checkpoint = key.path(out_dir, "boundary")
    data: Any = labels
    loss = pseudo.boundary_loss(p.radius)
    if uses_feature_cache(p):
        data = pseudo.FrozenFeatures(labels, net, bf16=p.bf16, batch_size=p.batch_size, progress=progress)
        loss = pseudo.boundary_loss_from_features(p.radius)
    history = fit(net, data, loss, config_from(p), checkpoint=checkpoint, key=key,
                  desc=f"training the relation network ({source})", progress=progress)
    return RelationNet(source, net, history, labels, label_seconds, checkpoint)


def train_boundary_nets(p: Params, inputs: Inputs, out_dir: Path, progress: bool = True) -> dict[str, RelationNet]:
    """One relation network per boundary source (:func:`boundary_sources`), each from the same seed."""
    return {src: train_boundary_net(p, inputs, src, out_dir, progress) for src in boundary_sources(p)}


@dataclass
class Boundaries:
    maps: dict[str, dict[str, np.ndarray]]  # source -> image id -> (h, w) float32 map on the boundary grid
    source_of: dict[str, str]  # variant -> the source whose net refines it
    ms_per_image: dict[str, float]  # source -> ms per image
    paths: dict[str, Path]  # source -> boundaries-<source>.npz

    def of(self, variant: str) -> dict[str, np.ndarray]:
        """The boundary maps that refine ``variant``."""
        return self.maps[self.source_of[variant]]


def _save_maps(path: Path, maps: Mapping[str, np.ndarray]) -> None:
    with store.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **{i: m.astype(np.float16) for i, m in maps.items()})


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
        _save_maps(paths[src], maps[src])
    source_of_v = {v: source_of(p, v) for v in p.variants}
    _save_maps(Path(out_dir) / BOUNDARIES_FILE, maps[source_of_v[p.variants[0]]])
    return Boundaries(maps, source_of_v, ms, paths)


def seed_quality(p: Params, inputs: Inputs) -> dict[str, dict[str, Any]]:
    """How IRN's thresholds fall on each boundary source's CAM (described with the ground
    truth, never tuned on it): per source, the CAM's sweep, its per-threshold shares and
    precisions, and the rows at the two thresholds; {} without masks."""
    if not inputs.sweeps:
        return {}
    return {src: _seed_quality(inputs.thresholds[src], inputs.sweeps[src].sweep) for src in boundary_sources(p)}


def _seed_quality(th: Thresholds, sweep: SweepResult) -> dict[str, Any]:
    import pandas as pd

    quality = pd.DataFrame(sweep.seed_quality()).set_index("threshold")
    at = {name: quality.iloc[int(np.abs(quality.index - t).argmin())]
          for name, t in (("fg", th.fg), ("bg", th.bg))}
    return {"sweep": sweep, "table": quality, "at": {k: {m: float(x) for m, x in row.items()} for k, row in at.items()}}


# ----------------------------------------------------------------------------- the refinements

@dataclass
class Refined:
    """One CAM variant through stage 4."""

    scores: dict[str, dict[str, float]]  # refinement -> best-mIoU {miou, precision, recall, threshold}
    pseudo_masks: dict[str, Any]  # the written set: {miou, precision, recall, threshold, refinement}
    timings: dict[str, float]  # <refinement>_ms_per_image (refinement and sweep)
    examples: list[tuple[str, np.ndarray, np.ndarray]]  # the first written set's refined scores
    cam_background: float  # the CAM's mask-free operating point (what the CRF's unary gets)


def _scores(values: Mapping[str, Any]) -> dict[str, float]:
    return {m: float(values[m]) for m in ("miou", "precision", "recall", "threshold")}


def refine_variant(store: CamStore, dataset: VOCDataset, out_dir: str | Path, key: ArtifactKey, *,
                   refinements: Sequence[str], pseudo_mask_refinement: str, background: float,
                   operating_point: float, settings: Mapping[str, Any],
                   boundaries: Mapping[str, np.ndarray] | None = None, keep: int = 0,
                   workers: int = 0, progress: bool = True, cam_sweep: CamSweep | None = None) -> Refined:
    """One CAM variant: each refinement swept over the background score (a refinement that
    reads the background score gets the CAM's ``operating_point``, set without masks), then the
    pseudo-masks of ``pseudo_mask_refinement`` at ``background``, written to ``out_dir`` (VOC
    layout) with ``key`` as identity. ``cam_sweep``: the store's sweep when the caller has it
    (else it is swept here). A split without masks is refined and written, and not scored."""
    store.check_matches(dataset)
    if not dataset.has_masks:
        return _write_unscored(store, dataset, out_dir, key, pseudo_mask_refinement, background, operating_point,
                               settings, boundaries, keep, workers, progress)
    cam_sweep = cam_sweep or sweep_cams(store, dataset)
    reference, reference_seconds = cam_sweep.sweep, cam_sweep.seconds
    cam_background = operating_point
    scores, timings, kept = {}, {}, None
    for name in refinements:
        attrs = REFINEMENTS.entry(name).attrs
        start = time.perf_counter()
        if attrs.get("unrefined"):
            sweep = reference
        else:
            items = pseudo.refined_cams(name, store, dataset, background=cam_background, settings=settings,
                                        boundaries=boundaries, workers=workers, progress=progress)
            if name == pseudo_mask_refinement and not attrs.get("uses_background"):
                items = kept = list(items)  # the written masks are these, at the fixed background
            sweep = sweep_stream(items, dataset)
        scores[name] = _scores(sweep.best())
        seconds = reference_seconds if attrs.get("unrefined") else time.perf_counter() - start
        timings[f"{name}_ms_per_image"] = 1000 * seconds / len(dataset)
    if kept is None:
        kept = list(pseudo.refined_cams(pseudo_mask_refinement, store, dataset, background=background,
                                        settings=settings, boundaries=boundaries, workers=workers, progress=progress))
    fixed = ConfusionMatrix(dataset.num_classes)
    masks = {}
    for image_id, cams, ids in kept:
        masks[image_id] = cam_to_mask(cams, ids, background)
        fixed.update(masks[image_id], dataset.load_mask(image_id))
    pseudo.write_pseudo_masks(out_dir, dataset, masks.items(), key=key)
    written = {**_scores({**fixed.scores().summary(), "threshold": 100 * background}),
               "refinement": pseudo_mask_refinement}
    return Refined(scores, written, timings, kept[:keep], cam_background)


def _write_unscored(store: CamStore, dataset: VOCDataset, out_dir: str | Path, key: ArtifactKey, refinement: str,
                    background: float, operating_point: float, settings: Mapping[str, Any],
                    boundaries: Mapping[str, np.ndarray] | None, keep: int, workers: int, progress: bool) -> Refined:
    """:func:`refine_variant` on a split without masks: the pseudo-masks written, no score."""
    start = time.perf_counter()
    uses_background = REFINEMENTS.entry(refinement).attrs.get("uses_background")
    kept = list(pseudo.refined_cams(refinement, store, dataset, background=background if uses_background
                                    else operating_point, settings=settings, boundaries=boundaries,
                                    workers=workers, progress=progress))
    masks = {image_id: cam_to_mask(cams, ids, background) for image_id, cams, ids in kept}
    pseudo.write_pseudo_masks(out_dir, dataset, masks.items(), key=key)
    timings = {f"{refinement}_ms_per_image": 1000 * (time.perf_counter() - start) / len(dataset)}
    return Refined({}, {"threshold": 100 * background, "refinement": refinement}, timings, kept[:keep],
                   operating_point)


def refine_variants(p: Params, inputs: Inputs, boundaries: Boundaries, out_dir: Path,
                    progress: bool = True) -> dict[str, Refined]:
    """Every variant through :func:`refine_variant`; pseudo-masks in ``out_dir/pseudo_masks/<variant>``."""
    return {v: refine_variant(inputs.stores[v], inputs.train, Path(out_dir) / "pseudo_masks" / v,
                              inputs.keys[f"pseudo_masks:{v}"], refinements=p.refinements,
                              pseudo_mask_refinement=p.pseudo_mask_refinement,
                              background=inputs.thresholds[v].pseudo_mask_background,
                              operating_point=inputs.thresholds[v].operating_point, settings=refinement_settings(p), boundaries=boundaries.of(v), keep=p.n_examples,
                              workers=p.workers, progress=progress, cam_sweep=inputs.sweeps.get(v))
            for v in p.variants}


def walk_limit(p: Params, inputs: Inputs, relations: Mapping[str, RelationNet], progress: bool = True
               ) -> dict[str, Any]:
    """The first variant's random walk along the true class boundaries (:func:`true_boundary`
    of each mask, on its relation net's grid) in place of the net's map, swept like the
    refinements: what the walk itself can gain on this grid. A diagnostic that reads the masks;
    nothing written comes from it. {} for a split without masks."""
    if not inputs.train.has_masks:
        return {}
    v = p.variants[0]
    stride = int(relations[source_of(p, v)].net.stride)
    ds = inputs.train
    start = time.perf_counter()
    maps = {i: true_boundary(ds.load_mask(i), stride) for i in ds.ids}
    items = pseudo.refined_cams("rw", inputs.stores[v], ds, background=inputs.thresholds[v].operating_point,
                                settings=refinement_settings(p), boundaries=maps, workers=p.workers, progress=progress)
    best = _scores(sweep_stream(items, ds).best())
    return {"variant": v, "grid_stride": stride, **best, "seconds": time.perf_counter() - start}


def walk_limit_table(limit: Mapping[str, Any], results: Mapping[str, Refined]) -> "Any":
    """The first variant's CAM, its walk along the relation net's boundaries and along the true
    ones, side by side."""
    import pandas as pd

    scores = results[limit["variant"]].scores
    rows = {"CAM": scores.get("cam"), "random walk, relation-net boundaries": scores.get("rw"),
            "random walk, true boundaries": limit}
    metrics = ("miou", "precision", "recall", "threshold")
    return pd.DataFrame({k: {m: r[m] for m in metrics} for k, r in rows.items() if r is not None}).T


def score_table(results: Mapping[str, Refined]) -> "Any":
    """A (variant, refinement) table of the scores, the written sets last as
    "<label>, written"."""
    import pandas as pd

    rows = [{"variant": v, "refinement": REFINEMENTS.label(k), **sc} for v, r in results.items()
            for k, sc in r.scores.items()]
    rows += [{"variant": v, "refinement": f"{REFINEMENTS.label(r.pseudo_masks['refinement'])}, written",
              **{m: r.pseudo_masks[m] for m in ("miou", "precision", "recall", "threshold")}}
             for v, r in results.items() if "miou" in r.pseudo_masks]
    if not rows:
        return pd.DataFrame()
    order = {v: i for i, v in enumerate(results)}
    return (pd.DataFrame(rows).sort_values("variant", key=lambda s: s.map(order), kind="stable")
            .set_index(["variant", "refinement"]))


def walk_exponents(p: Params) -> list[int]:
    """A few exponents e of the 2 ** e steps the step-by-step figure shows, up to ``exp_times``."""
    return sorted({e for e in (0, p.exp_times // 4, p.exp_times // 2, (3 * p.exp_times) // 4, p.exp_times)})


def walk_steps(p: Params, store: CamStore, boundary: np.ndarray, image_id: str) -> tuple[list[int], list[np.ndarray]]:
    """One image's CAM on the boundary grid, times (1 - boundary), before the walk (0 steps)
    and after 2 ** e steps for the exponents of :func:`walk_exponents` (the last is the
    walk that ran: 2 ** exp_times steps)."""
    cams, _ = store[image_id]
    steps = [0] + [2 ** e for e in walk_exponents(p)]
    return steps, random_walk_steps(walk_input(cams, boundary), transition_matrix(boundary, p.radius, p.beta), steps)


def upsampled_labels(relation: RelationNet, image_id: str, shape: tuple[int, int]) -> np.ndarray:
    """An image's confident labels (boundary-grid cells) at pixel resolution."""
    s = relation.net.stride
    return np.kron(relation.labels.labels[image_id], np.ones((s, s), np.uint8))[: shape[0], : shape[1]]


# ----------------------------------------------------------------------------- figures

def seed_quality_figure(p: Params, inputs: Inputs, qualities: Mapping[str, Mapping[str, Any]]) -> Any:
    """Per boundary source, the shares and precisions of its CAM's confident foreground and
    background against the threshold, with the two thresholds that ran (:func:`thresholds`), the
    mask-free operating point they came from and the CAM's best-mIoU score (an oracle) marked."""
    import matplotlib.pyplot as plt

    from ..book import plots

    fig, axes = plt.subplots(len(qualities), 1, figsize=(plots.COLUMN, 4.4 * len(qualities)), squeeze=False)
    styles = {"foreground threshold": ":", "background threshold": "-.", "operating point": "--",
              "best-mIoU score (oracle)": "-"}
    for ax, (src, quality) in zip(axes[:, 0], qualities.items()):
        table = quality["table"]
        for col, style in (("fg_share", "-"), ("fg_precision", "-"), ("bg_share", "--"), ("bg_precision", "--")):
            ax.plot(table.index, 100 * table[col], style, label=col.replace("_", " "))
        th = inputs.thresholds[src]
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


def example_figure(p: Params, inputs: Inputs, relations: Mapping[str, RelationNet], boundaries: Boundaries,
                   results: Mapping[str, Refined]) -> Any:
    """For the first variant's first examples: the image, its ground truth, the confident
    labels and the boundary map of the net that refines it, the CAM mask (best-mIoU score) and
    the written pseudo-mask."""
    import matplotlib.pyplot as plt

    from ..book import plots

    v0 = p.variants[0]
    r, src = results[v0], boundaries.source_of[v0]
    grid = []
    for image_id, refined, ids in r.examples:
        sample = inputs.train.load(image_id)
        cams, cam_ids = inputs.stores[v0][image_id]
        truth = [plots.overlay(sample.image, sample.mask)] if sample.mask is not None else []
        grid.append([sample.image, *truth,
                     plots.colorize(upsampled_labels(relations[src], image_id, sample.image.shape[:2])),
                     plt.get_cmap("gray_r")(boundaries.maps[src][image_id])[..., :3],
                     plots.overlay(sample.image, cam_to_mask(cams, cam_ids, r.cam_background)),
                     plots.overlay(sample.image, cam_to_mask(refined, ids, inputs.thresholds[v0].pseudo_mask_background))])
    label = REFINEMENTS.label(p.pseudo_mask_refinement)
    truth_title = ["ground truth"] if inputs.train.has_masks else []
    return plots.image_grid(grid, titles=["image", *truth_title, f"confident labels ({src})",
                                          f"boundaries ({src} net)", f"{v0} CAM mask", f"{v0} {label}"], size=1.8,
                            class_names=inputs.train.class_names)


def walk_figure(p: Params, inputs: Inputs, boundaries: Boundaries, results: Mapping[str, Refined]) -> Any:
    """The first example's CAM (its first class) on the boundary grid, times (1 - boundary),
    before the walk and after 2 ** e steps for a few exponents up to ``exp_times``."""
    import matplotlib.pyplot as plt

    from ..book import plots

    v0 = p.variants[0]
    image_id = results[v0].examples[0][0]
    bmap = boundaries.of(v0)[image_id]
    steps, walked = walk_steps(p, inputs.stores[v0], bmap, image_id)
    panels = [inputs.train.load_image(image_id), plt.get_cmap("gray_r")(bmap)[..., :3]] + [
        plt.get_cmap("jet")(w[0] / max(w[0].max(), 1e-8))[..., :3] for w in walked]
    titles = ["image", f"boundaries ({boundaries.source_of[v0]} net)", "start"] + [
        f"{n} steps (2^{int(np.log2(n))})" for n in steps[1:]]
    return plots.image_grid([panels], titles=titles, size=1.6)


# ----------------------------------------------------------------------------- the text

def source_text(p: Params) -> str:
    """Which relation network refines which variant (the setting that ran), for the chapter."""
    if p.boundary_source == PER_VARIANT:
        return (f"`boundary_source = \"{PER_VARIANT}\"` (the paper's setting): each variant's own confident labels "
                f"train its own relation network, which refines that variant only, as ORANDNet's `script/irn.sh` "
                f"trains IRN on ORANDNet's labels; {len(p.variants)} networks "
                f"({', '.join(p.variants)}), each from seed {p.seed}.")
    return (f"`boundary_source = \"{p.boundary_source}\"`: one relation network, trained on the "
            f"{p.boundary_source} CAM's confident labels, refines every variant ({', '.join(p.variants)}); the "
            f"paper's setting (`\"{PER_VARIANT}\"`) trains one per variant on its own labels.")


def walk_text(p: Params) -> str:
    """The random walk's settings that ran, in words, for the chapter."""
    grid = ("IRN's stride-4 boundary grid" if p.image_scale == 1 else
            f"the boundary grid, of stride {4 // p.image_scale} pixels here (`image_scale = {p.image_scale}`: the relation "
            f"net sees every image enlarged {p.image_scale} times; IRN's stride 4 was set for ~500-pixel VOC images, and "
            f"on these small scenes a ring of boundary cells would cover much of each object)")
    return (f"IRN's random walk as it ran: the CAMs, average-pooled to {grid}, are multiplied by "
            f"(1 - boundary); affinities between cells at most {p.radius} apart are 1 minus the strongest boundary "
            f"on the segment between them, raised to beta = {p.beta:g}; the transition matrix is raised to the power "
            f"2^{p.exp_times} = {2 ** p.exp_times} (exp_times = {p.exp_times}; IRN squares a dense matrix "
            f"{p.exp_times} times, here the sparse matrix takes {2 ** p.exp_times} single steps, the same power); "
            f"the walked maps are upsampled and divided by their maximum over all classes and pixels of the image, "
            f"and the written pseudo-masks put the background at {rule_text(p, 'pseudo_mask_background')}.")


def rule_text(p: Params, name: str) -> str:
    """Where the threshold ``name`` (fg_threshold, bg_threshold, pseudo_mask_background) came from, in words."""
    value = getattr(p, name)
    if p.threshold_rule == FIXED:
        return f"IRN's fixed score {name} = {value:g}"
    return (f"IRN's {name} = {value:g} moved to each CAM's operating point (`threshold_rule = \"{RELATIVE}\"`: "
            f"IRN set it around a best CAM background score of {p.reference_background:g}; the score keeps its "
            f"relative place between that point and 0 or 1; each CAM's point is "
            f"{score_rules.SCORE_RULES.label(p.operating_point_rule)}, read from the CAM alone)")


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


def _confident_line(p: Params, th: Thresholds, src: str, quality: Mapping[str, Any], relation: RelationNet) -> str:
    at, best = quality["at"], quality["sweep"].best()["threshold"] / 100
    whose = "IRN's" if p.threshold_rule == FIXED else "the moved"
    stats = relation.labels.label_statistics()

    def pct(x: float) -> str:  # a precision of no pixels is undefined
        return "n/a" if np.isnan(x) else f"{100 * x:.1f} %"

    point = th.operating_point
    return (f"- **Confident labels ({src}).** On the {src} CAM, {whose} foreground threshold {th.fg:.2f} marks "
            f"{100 * at['fg']['fg_share']:.1f} % of all pixels as foreground, of which {pct(at['fg']['fg_precision'])} "
            f"carry the right class; {whose} background threshold {th.bg:.2f} marks {100 * at['bg']['bg_share']:.1f} % "
            f"as background, {pct(at['bg']['bg_precision'])} rightly. The CAM's operating point, "
            f"{score_rules.SCORE_RULES.label(p.operating_point_rule)} (no mask read), is {point:.2f}; its best-mIoU "
            f"background score, found with the train masks (an oracle that chooses nothing), is {best:.2f}"
            + (" (the lowest score the sweep tries: every pixel this CAM scores above zero is best called foreground)"
               if best <= 0 else "") + ", "
            + ("above the foreground threshold: on this CAM the 'confident' foreground is wider than the mask one "
               "would choose, so the relation network learns from labels that spill over object edges."
               if best > th.fg else
               "below the foreground threshold, as on VOC: the confident foreground is a core inside the mask.")
            + f" After the CRF, {100 * stats['foreground']:.1f} % of cells are confident foreground.")


def findings(p: Params, inputs: Inputs, relations: Mapping[str, RelationNet], qualities: Mapping[str, Mapping[str, Any]],
             boundaries: Boundaries, results: Mapping[str, Refined], peak_rss_mb: float,
             limit: Mapping[str, Any] | None = None) -> str:
    """The chapter's "What this chapter found", from the computed numbers."""
    lines = [f"- **Relation networks.** {source_text(p)}", f"- **Random walk.** {walk_text(p)}"]
    lines += [_confident_line(p, inputs.thresholds[src], src, qualities[src], relations[src]) for src in relations
              if src in qualities]
    for v, r in results.items():
        c = r.scores.get("cam")
        moves = []
        for name, sc in r.scores.items():
            if name == "cam" or c is None:
                continue
            moves.append(f"the {REFINEMENTS.label(name)} moves precision {c['precision']:.1f} -> {sc['precision']:.1f} % "
                         f"and recall {c['recall']:.1f} -> {sc['recall']:.1f} % (mIoU {c['miou']:.1f} -> "
                         f"{sc['miou']:.1f} %)")
        label = REFINEMENTS.label(r.pseudo_masks["refinement"])
        score = (f"score {r.pseudo_masks['miou']:.1f} % mIoU." if "miou" in r.pseudo_masks else
                 f"are written (the `{p.train_split}` split has no masks to score them).")
        lines.append(f"- **{v}** (boundaries of the {boundaries.source_of[v]} net): "
                     + ("; ".join(moves) + ". " if moves else "")
                     + f"At the written background score {inputs.thresholds[v].pseudo_mask_background:.2f} the pseudo-masks "
                       f"({label}) {score}")
    if limit:
        lines.append(_limit_line(limit, results[limit["variant"]].scores))
    n_workers = p.workers or default_workers()
    nets = ", ".join(f"{src} {ms:.1f} ms" for src, ms in boundaries.ms_per_image.items())
    lines.append(f"- Wall time per image with {n_workers} process(es) (boundary maps, once per net: {nets}): "
                 + "; ".join(f"{v}: " + ", ".join(f"{REFINEMENTS.label(k[: -len('_ms_per_image')])} {ms:.1f} ms"
                                                  for k, ms in r.timings.items()) for v, r in results.items())
                 + f". Peak resident memory of the stage: {peak_rss_mb / 1024:.2f} GB.")
    return "\n".join(lines)


def _limit_line(limit: Mapping[str, Any], scores: Mapping[str, Mapping[str, float]]) -> str:
    cam, best = scores["cam"]["miou"], limit["miou"]
    rw = scores["rw"]["miou"] if "rw" in scores else None
    head = (f"- **The walk's own limit ({limit['variant']}).** Along the true class boundaries, on the same "
            f"{limit['grid_stride']}-pixel grid, the walk scores {best:.1f} % mIoU, against {cam:.1f} for the CAM"
            + (f" and {rw:.1f} for the walk along the relation network's boundaries: " if rw is not None else ": "))
    if best <= cam:
        return head + ("even perfect boundaries do not lift this CAM on this grid, so what the walk loses here is "
                       "the walk's and the grid's, not the relation network's.")
    if rw is None:
        return head + f"the walk itself can gain {best - cam:.1f} points on this grid."
    if rw >= best:
        return head + (f"the walk itself can gain {best - cam:.1f} points on this grid, and the relation network's "
                       f"boundaries take all of them (its walk is {rw - best:.1f} above the true boundaries' one).")
    return head + (f"the walk itself can gain {best - cam:.1f} points on this grid, and the relation network's "
                   f"boundaries leave {best - rw:.1f} of them.")


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
