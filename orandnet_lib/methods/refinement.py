"""From one CAM store to scored and written pseudo-masks, as stage 4
(:mod:`orandnet_lib.stages.s4_refinement`) composes it: where IRN's thresholds fall on the CAM
(fixed, or moved to its mask-free operating point, always with an ignore band), the store swept
once, a relation network trained on the CAM's confident labels, every registered refinement
scored by a sweep of the background score and the chosen one written, and the walk along the
true class boundaries (what the walk itself can gain on a grid).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import pseudo
from .cams import CamStore, sweep_store, sweep_stream
from .refine import REFINEMENTS, random_walk_steps, transition_matrix, true_boundary, walk_input
from ..core.keys import ArtifactKey
from ..core.metrics import ConfusionMatrix, SweepResult, cam_to_mask
from ..core.train import TrainConfig, fit
from ..data.voc import VOCDataset
from ..nets.boundary import BoundaryNet

# threshold_rule: IRN's thresholds as numbers ("fixed"), or re-expressed relative to each CAM's operating point
FIXED, RELATIVE = "fixed", "relative"
THRESHOLD_RULES = (FIXED, RELATIVE)
METRICS = ("miou", "precision", "recall", "threshold")


# ----------------------------------------------------------------------------- the threshold rule

@dataclass(frozen=True)
class Thresholds:
    """The three scores one CAM variant is cut at: its confident foreground and background
    (the relation network's labels) and the background of its written pseudo-masks."""

    fg: float
    bg: float
    pseudo_mask_background: float
    operating_point: float  # the CAM's background score by the mask-free operating point rule

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


def with_band(fg: float, bg: float, band: float) -> tuple[float, float]:
    """(fg, bg) at least ``band`` apart inside [0, 1]: the background threshold moves down
    first (never below 0), then the foreground one up."""
    if fg - bg >= band:
        return fg, bg
    bg = max(0.0, fg - band)
    return max(fg, bg + band), bg


@dataclass(frozen=True)
class ThresholdRule:
    """IRN's thresholds (confident fg 0.30, bg 0.05, walk background 0.25) were set on VOC
    around CAMs whose best background score is about 0.15 (``reference_background``). CAMs
    that peak wider put their best background score elsewhere (0.48 for the embedded CNN's),
    where fixed numbers call half the image confident foreground. ``rule = "relative"`` moves
    each threshold to the CAM's own operating point (:func:`moved`); on a CAM whose operating
    point is the reference it gives IRN's numbers. Either way the confident thresholds keep an
    ignore band of at least ``min_ignore_band`` (:func:`with_band`)."""

    rule: str
    fg: float
    bg: float
    pseudo_mask_background: float
    reference_background: float
    min_ignore_band: float

    def check(self) -> None:
        """A clear error for a rule or reference that cannot be used."""
        if self.rule not in THRESHOLD_RULES:
            raise ValueError(f"threshold_rule must be one of {THRESHOLD_RULES}, got {self.rule!r}")
        if not 0 < self.reference_background < 1:
            raise ValueError(f"reference_background must lie in (0, 1), got {self.reference_background}")
        if not 0 < self.min_ignore_band < 1:
            raise ValueError(f"min_ignore_band must lie in (0, 1), got {self.min_ignore_band}")

    def at(self, operating_point: float) -> Thresholds:
        """The thresholds of a CAM whose mask-free operating point is ``operating_point``."""
        self.check()
        if self.rule == FIXED:
            fg, bg = with_band(self.fg, self.bg, self.min_ignore_band)
            return Thresholds(fg, bg, self.pseudo_mask_background, operating_point)
        r = self.reference_background
        fg, bg = with_band(moved(self.fg, r, operating_point), moved(self.bg, r, operating_point),
                           self.min_ignore_band)
        return Thresholds(fg, bg, moved(self.pseudo_mask_background, r, operating_point), operating_point)


# ----------------------------------------------------------------------------- the CAM's own sweep

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


def seed_quality_at(th: Thresholds, sweep: SweepResult) -> dict[str, Any]:
    """How the confident thresholds fall on a CAM (described with the ground truth, never tuned
    on it): its ``sweep``, the per-threshold shares and precisions (``table``) and the rows
    nearest the two thresholds (``at``: fg, bg)."""
    quality = pd.DataFrame(sweep.seed_quality()).set_index("threshold")
    at = {name: quality.iloc[int(np.abs(quality.index - t).argmin())]
          for name, t in (("fg", th.fg), ("bg", th.bg))}
    return {"sweep": sweep, "table": quality, "at": {k: {m: float(x) for m, x in row.items()} for k, row in at.items()}}


# ----------------------------------------------------------------------------- the relation network

@dataclass
class RelationNet:
    source: str  # the variant whose confident labels trained it
    net: BoundaryNet
    history: list[dict[str, float]]
    labels: pseudo.BoundarySet  # the confident labels it was trained on
    label_seconds: float
    checkpoint: Path


def train_relation_net(net: BoundaryNet, store: CamStore, dataset: VOCDataset, th: Thresholds, config: TrainConfig,
                       checkpoint: Path, key: ArtifactKey, *, source: str, use_crf: bool, radius: int,
                       feature_cache: bool = False, features: pseudo.FeatureCache | None = None, workers: int = 0,
                       progress: bool = True) -> RelationNet:
    """The confident labels of ``store``'s CAMs cut at ``th`` (through a dense CRF under
    ``use_crf``), then ``net`` trained on them by the one training loop, its checkpoint checked
    against ``key``. Under ``feature_cache`` (a frozen backbone) the backbone's features are
    computed once (:class:`pseudo.FrozenFeatures`; from ``features`` when given, which nets with
    the same frozen backbone share) and only the head trains on them."""
    start = time.perf_counter()
    labels = pseudo.BoundarySet(store, dataset, net.stride, th.fg, th.bg, use_crf, config.seed, progress=progress,
                                workers=workers)
    label_seconds = time.perf_counter() - start
    data: Any = labels
    loss = pseudo.boundary_loss(radius)
    if feature_cache:
        data = pseudo.FrozenFeatures(labels, net, bf16=config.bf16, batch_size=config.batch_size, progress=progress,
                                     cache=features)
        loss = pseudo.boundary_loss_from_features(radius)
    history = fit(net, data, loss, config, checkpoint=checkpoint, key=key,
                  desc=f"training the relation network ({source})", progress=progress)
    return RelationNet(source, net, history, labels, label_seconds, checkpoint)


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
    return {m: float(values[m]) for m in METRICS}


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


# ----------------------------------------------------------------------------- the walk's own limit

def true_boundary_walk(store: CamStore, dataset: VOCDataset, stride: int, operating_point: float,
                       settings: Mapping[str, Any], workers: int = 0, progress: bool = True) -> dict[str, Any]:
    """The random walk along the true class boundaries (:func:`true_boundary` of each mask on a
    grid of ``stride`` pixels) in place of a relation net's map, swept like the refinements:
    what the walk itself can gain on this grid. Reads the masks; a diagnostic, nothing written
    comes from it. Returns ``grid_stride``, the best-mIoU scores and ``seconds``."""
    start = time.perf_counter()
    maps = {i: true_boundary(dataset.load_mask(i), stride) for i in dataset.ids}
    items = pseudo.refined_cams("rw", store, dataset, background=operating_point, settings=settings,
                                boundaries=maps, workers=workers, progress=progress)
    best = _scores(sweep_stream(items, dataset).best())
    return {"grid_stride": stride, **best, "seconds": time.perf_counter() - start}


def walk_exponents(exp_times: int) -> list[int]:
    """A few exponents e of the 2 ** e steps the step-by-step figure shows, up to ``exp_times``."""
    return sorted({e for e in (0, exp_times // 4, exp_times // 2, (3 * exp_times) // 4, exp_times)})


def walk_steps(cams: np.ndarray, boundary: np.ndarray, exp_times: int, radius: int, beta: float
               ) -> tuple[list[int], list[np.ndarray]]:
    """One image's (K, H, W) CAMs on the boundary grid, times (1 - boundary), before the walk
    (0 steps) and after 2 ** e steps for the exponents of :func:`walk_exponents` (the last is
    the walk that ran: 2 ** exp_times steps)."""
    steps = [0] + [2 ** e for e in walk_exponents(exp_times)]
    return steps, random_walk_steps(walk_input(cams, boundary), transition_matrix(boundary, radius, beta), steps)
