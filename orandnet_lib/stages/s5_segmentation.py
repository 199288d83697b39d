"""Stage 5: DeepLab trained on each set of masks, with the scale-scheduling curriculum.

The point of a pseudo-mask is the segmentation model trained on it. DeepLab is trained on the
ground truth (the fully supervised bound) and on stage 4's pseudo-masks of each CAM variant,
and scored on the validation split against the ground truth. ORANDNet's curriculum, *scale
scheduling*, trains first on downsampled images and masks (small, often spurious regions
vanish), then on larger ones; the schedule is not published, so it is a parameter and is
compared with a constant scale, paired by seed (``schedule_sets`` over ``schedule_seeds``). The
headline sets (the baseline, the and+offset control, ORANDNet) are repeated over ``seeds`` and
every pair is compared paired by seed (:mod:`orandnet_lib.methods.curriculum`). With
``replicates = 1`` the seeds vary DeepLab only: the pseudo-masks are one draw of stages 1-4, so
every comparison holds "for these pseudo-masks". With ``replicates = N`` (the profile's, which the
runner passes in) seed r of a pseudo-mask set is a whole-pipeline replicate: its masks come from
stages 1-4 run again with seed r (``<run>/replicates/r<r>``; r = 0 is this run), and its DeepLab
is seeded r, so a pairing by seed is a pairing by replicate (:func:`seeds_facts`). Recipe, top to
bottom: :func:`setup`, :func:`train_and_evaluate_all` (each run: :func:`train_and_evaluate`), the
summary and comparisons of ``methods.curriculum``, :func:`record`, :func:`findings`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..book import prose
from ..book.chapters import segmentation as chapter
from ..core import paper
from ..core.keys import ArtifactKey, spec_dict
from ..data.fingerprint import dataset_fingerprint
from ..data.voc import VOCDataset
from ..methods import curriculum, pretrain
from ..methods.curriculum import SegmentationRun, difference_verdict, run_name, training_data_fingerprint
from ..methods.results import GROUND_TRUTH, written_pseudo_masks
from ..methods.segmentation import ScaleSchedule, SegmenterSpec, evaluate, train_segmenter
from ..nets.backbone import backbone_shape

STAGE = "05_segmentation_curriculum"

# Parameters that change no stored artifact, each with the reason (the key-walk test reads this):
NOT_IN_KEYS = {
    "seed": "enters each DeepLab key as that model's own seed (ArtifactKey.seed), not as the stage's: it only adds "
            "runs (sets outside schedule_sets and headline_sets, or a seed not among seeds) and picks the models the "
            "per-model figures show, so with every set over seeds it changes no key",
    "eval_scales": "evaluation only: test-time scales, recomputed every run, not stored",
    "eval_flip": "evaluation only: test-time flip, recomputed every run, not stored",
    "eval_crf_iterations": "evaluation only: CRF post-processing of predictions, recomputed every run, not stored",
    "n_examples": "presentation: validation predictions shown",
}


@dataclass(frozen=True)
class Params:
    """The notebook's parameters cell (minus profile, data_root, run_dir)."""

    seed: int = 0
    train_split: str = "train"
    val_split: str = "val"
    training_sets: tuple[str, ...] = ("gt", "cnn", "and+offset", "orandnet")
    schedules: Mapping[str, Any] = field(default_factory=lambda: {
        "constant": [[0.0, 1.0]], "curriculum": [[0.0, 0.5], [0.5, 0.75], [0.75, 1.0]]})
    schedule_sets: tuple[str, ...] = ("gt", "cnn", "orandnet")
    headline_sets: tuple[str, ...] = ("cnn", "and+offset", "orandnet")
    headline_schedule: str = "curriculum"
    seeds: tuple[int, ...] = (0, 1, 2)
    replicates: int = 1  # whole-pipeline replicates of stages 1-4 (the profile's `replicates`; seed r = replicate r)
    schedule_seeds: tuple[int, ...] = ()
    backbone: str = "resnet18"
    backbone_kwargs: Mapping[str, Any] = field(default_factory=lambda: {"channels": [16, 32, 64, 128],
                                                                        "layers": [1, 1, 1, 1]})
    pretrained: str = ""
    head: str = "largefov"
    rates: tuple[int, ...] = (4,)
    head_channels: int = 128
    dropout: float = 0.1
    crop_size: int = 0
    scale_range: tuple[float, ...] = (1.0, 1.0)
    mask_mode: str = "majority"
    epochs: int = 8
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 0.004
    weight_decay: float = 0.0005
    head_lr_mult: float = 1.0
    warmup_steps: int = 0
    bf16: bool = False
    eval_scales: tuple[float, ...] = (1.0,)
    eval_flip: bool = False
    eval_crf_iterations: int = 0
    n_examples: int = 4


# -- what runs, and its keys ---------------------------------------------------------------------

def check(p: Params) -> None:
    """The parameters' cross-references (``artifact_keys`` itself never validates)."""
    if p.headline_schedule not in p.schedules:
        raise ValueError(f"headline_schedule {p.headline_schedule!r} is not one of the schedules {sorted(p.schedules)}")
    for name in p.schedules:
        ScaleSchedule.parse(p.schedules[name])
    for name, sets in (("headline_sets", p.headline_sets), ("schedule_sets", p.schedule_sets)):
        missing = sorted(set(sets) - set(p.training_sets))
        if missing:
            raise ValueError(f"{name} {missing} are not in training_sets {list(p.training_sets)}")
    if p.replicates < 1:
        raise ValueError(f"replicates must be at least 1, got {p.replicates}")
    if p.replicates > 1:
        beyond = sorted({sd for t, _, sd in plan(p) if t != GROUND_TRUTH and sd >= p.replicates})
        if beyond:
            raise ValueError(f"with replicates = {p.replicates}, the seed of a pseudo-mask set is its replicate: "
                             f"seeds {beyond} have none (use seeds below {p.replicates})")


def segmenter_spec(p: Params, schedule: str) -> SegmenterSpec:
    """The full DeepLab spec of one schedule (an unknown schedule name: constant scale)."""
    return SegmenterSpec.from_dict(dict(
        backbone=p.backbone, backbone_kwargs=dict(p.backbone_kwargs), pretrained=p.pretrained, head=p.head,
        rates=p.rates, head_channels=p.head_channels, dropout=p.dropout, crop_size=p.crop_size,
        scale_range=p.scale_range, mask_mode=p.mask_mode, epochs=p.epochs, batch_size=p.batch_size,
        optimizer=p.optimizer, lr=p.lr, weight_decay=p.weight_decay, head_lr_mult=p.head_lr_mult,
        warmup_steps=p.warmup_steps, bf16=p.bf16,
        schedule=p.schedules.get(schedule)))


def schedule_seeds(p: Params) -> tuple[int, ...]:
    """The seeds every schedule is trained with on the ``schedule_sets`` (empty: ``seeds``)."""
    return tuple(p.schedule_seeds) or tuple(p.seeds)


def plan(p: Params) -> list[tuple[str, str, int]]:
    """The runs (training set, schedule, seed), in order, each once: every training set at
    the stage's seed (with every schedule for the sets in ``schedule_sets``, the headline
    schedule for the others), then the ``schedule_sets`` with every schedule over
    :func:`schedule_seeds`, then the headline sets with the headline schedule over ``seeds``."""
    sets = list(dict.fromkeys([*p.training_sets, *p.schedule_sets, *p.headline_sets]))
    runs = [(s, name, p.seed) for s in sets for name in (p.schedules if s in p.schedule_sets else [p.headline_schedule])]
    runs += [(s, name, sd) for s in p.schedule_sets for name in p.schedules for sd in schedule_seeds(p)]
    runs += [(s, p.headline_schedule, sd) for s in p.headline_sets for sd in p.seeds]
    return list(dict.fromkeys(runs))


def replicate_of(p: Params, training_set: str, seed: int) -> int:
    """Which replicate of stages 1-4 a run's masks come from: its seed for a pseudo-mask set
    when there are replicates, else 0 (this run; the ground truth has one draw)."""
    return seed if p.replicates > 1 and training_set != GROUND_TRUTH else 0


def training_data_name(training_set: str, split: str, replicate: int = 0) -> str:
    """The name under which ``artifact_keys`` reads a training set's fingerprint: the split
    itself for the ground truth, ``pseudo_masks/<set>/<split>`` for stage 4's masks
    (``replicate<r>/pseudo_masks/<set>/<split>`` for replicate r >= 1)."""
    if training_set == GROUND_TRUTH:
        return split
    return f"pseudo_masks/{training_set}/{split}" if not replicate else \
        f"replicate{replicate}/pseudo_masks/{training_set}/{split}"


def artifact_keys(p: Params, data: Mapping[str, str], upstream: Mapping[str, str]) -> dict[str, ArtifactKey]:
    """Pure: one DeepLab checkpoint per planned run, keyed by the full spec (schedule included),
    the training masks' identity, the validation split its training curve is logged on, and
    the seed. ``data`` holds the fingerprints named by :func:`training_data_name` and the
    validation split's (see :func:`key_inputs`); stage 5 reads no upstream store directly:
    the pseudo-masks' identity is their artifact key, inside their fingerprint."""
    keys = {}
    for tset, sched, sd in plan(p):
        spec = {**spec_dict(segmenter_spec(p, sched)), "curve_split": data[p.val_split],
                "pretrained": pretrain.keyed_setting(p.pretrained, "cnn", p.backbone,
                                                backbone_shape("cnn", p.backbone_kwargs))}
        data_name = training_data_name(tset, p.train_split, replicate_of(p, tset, sd))
        keys[f"deeplab:{run_name(tset, sched, sd)}"] = ArtifactKey("deeplab", spec, data=data[data_name], seed=sd)
    return keys


@dataclass
class Setup:
    """What the stage reads: the validation split, each training set's masks, the DeepLab
    spec of each schedule, the checkpoint keys, stage 0's object-size bins and stage 4's
    scores of the written pseudo-masks."""

    val: VOCDataset
    train_sets: dict[str, VOCDataset]  # this run's (replicate 0)
    specs: dict[str, SegmenterSpec]
    keys: dict[str, ArtifactKey]
    size_edges: tuple[float, float]
    pseudo_mask_scores: dict[str, dict[str, Any]]
    checkpoints: Path
    replica_sets: dict[tuple[str, int], VOCDataset] = field(default_factory=dict)  # (set, replicate >= 1) -> masks
    replica_scores: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)  # replicate -> stage 4 scores

    def masks(self, training_set: str, replicate: int) -> VOCDataset:
        """The masks a run trains on: replicate 0's are this run's."""
        return self.train_sets[training_set] if replicate == 0 else self.replica_sets[training_set, replicate]


def key_inputs(p: Params, val: VOCDataset, train_sets: Mapping[str, VOCDataset],
               replica_sets: Mapping[tuple[str, int], VOCDataset] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """The real ``data`` and ``upstream`` arguments of :func:`artifact_keys`."""
    data = {p.val_split: dataset_fingerprint(val)}
    for tset, ds in train_sets.items():
        data[training_data_name(tset, p.train_split)] = training_data_fingerprint(tset, ds)
    for (tset, r), ds in (replica_sets or {}).items():
        data[training_data_name(tset, p.train_split, r)] = training_data_fingerprint(tset, ds)
    return data, {}


def for_data(stage: Any, p: Params) -> Params:
    """``p`` for the data at hand: a train split without masks (weakly labelled) has no
    ground-truth training set, so the supervised bound ("gt") is left out of every set list."""
    if VOCDataset(stage.data_root, p.train_split).has_masks:
        return p
    drop = lambda sets: tuple(t for t in sets if t != GROUND_TRUTH)  # noqa: E731
    return dataclasses.replace(p, training_sets=drop(p.training_sets), schedule_sets=drop(p.schedule_sets),
                               headline_sets=drop(p.headline_sets))


def setup(stage: Any, p: Params) -> Setup:
    """Open the datasets and read stages 0 and 4."""
    check(p)
    val = VOCDataset(stage.data_root, p.val_split)
    sets = list(dict.fromkeys(t for t, _, _ in plan(p)))
    train_sets = {s: VOCDataset(stage.data_root if s == GROUND_TRUTH else stage.pseudo_masks(s), p.train_split)
                  for s in sets}
    wanted = sorted({(t, replicate_of(p, t, sd)) for t, _, sd in plan(p) if replicate_of(p, t, sd)})
    replica_sets = {(t, r): VOCDataset(stage.pseudo_masks(t, replicate=r), p.train_split) for t, r in wanted}
    replica_scores = {r: written_pseudo_masks(stage.upstream("04_refinement", replicate=r).metrics)
                      for r in sorted({r for _, r in wanted})}
    data, upstream = key_inputs(p, val, train_sets, replica_sets)
    edges = stage.upstream("00_dataset").summary["dataset"]["size_edges"]
    return Setup(val, train_sets, {name: segmenter_spec(p, name) for name in p.schedules},
                 artifact_keys(p, data, upstream), (float(edges[0]), float(edges[1])),
                 written_pseudo_masks(stage.upstream("04_refinement").metrics), stage.dir / "checkpoints",
                 replica_sets, replica_scores)


# -- training and evaluation ---------------------------------------------------------------------

def train_and_evaluate(s: Setup, p: Params, training_set: str, schedule: str, seed: int, *,
                       keep: Sequence[str] = (), progress: bool = True) -> SegmentationRun:
    """Train (or reload) one DeepLab into the checkpoint its artifact key names, then score it
    on the validation split with the test-time options (scales, flip, CRF). The per-epoch val
    mIoU (the training curve) is computed only at the stage's seed, whose curves the chapter
    shows (:func:`methods.curriculum.at_seed`): it draws no randomness, so the weights are the
    same either way."""
    key = s.keys[f"deeplab:{run_name(training_set, schedule, seed)}"]
    checkpoint = key.path(s.checkpoints, f"deeplab-{training_set}-{schedule}-s{seed}")
    masks = s.masks(training_set, replicate_of(p, training_set, seed))
    trained = train_segmenter(s.specs[schedule], masks, checkpoint, seed, key=key,
                              val=s.val if seed == p.seed else None, progress=progress,
                              desc=f"training DeepLab on {run_name(training_set, schedule, seed)}")
    start = time.perf_counter()
    evaluation, examples = evaluate(trained.model, s.val, p.eval_scales, p.eval_flip, p.eval_crf_iterations,
                                    progress=progress, keep=keep)
    return SegmentationRun(training_set, schedule, seed, trained.history, evaluation, examples,
                           trained.train_seconds, time.perf_counter() - start, checkpoint)


def train_and_evaluate_all(s: Setup, p: Params, progress: bool = True) -> list[SegmentationRun]:
    """Every planned run, in :func:`plan`'s order; the first ``n_examples`` validation
    predictions of each are kept for the figures."""
    keep = s.val.ids[: p.n_examples]
    return [train_and_evaluate(s, p, t, sched, sd, keep=keep, progress=progress) for t, sched, sd in plan(p)]


# -- record and the facts the chapter states ------------------------------------------------------

def seeds_facts(p: Params) -> dict[str, Any]:
    """What the seeds vary (``seeds.md``): with replicates, the whole pipeline (stages 1-4 and
    DeepLab); else DeepLab's randomness only, ``drawn``, the pseudo-masks being one draw."""
    drawn = ["initialisation", "data order", "dropout", "random flips"]
    if tuple(p.scale_range) != (1.0, 1.0):
        drawn.append("random rescaling")
    if p.crop_size:
        drawn.append("random crops")
    return {"replicates": p.replicates, "seeds": list(p.seeds), "drawn": drawn}


def size_bins_facts(edges: tuple[float, float], first: Mapping[tuple[str, str], SegmentationRun]) -> dict[str, Any]:
    """The object-size bins (``size_bins.md``), with the number of validation objects binned."""
    objects = len(next(iter(first.values())).evaluation.objects) if first else 0
    return {"small_below": edges[0], "large_above": edges[1], "objects": objects}


def record(stage: Any, p: Params, s: Setup, runs: Sequence[SegmentationRun], summary: Mapping[str, Any],
           by_size: Mapping[str, Any], ious: pd.DataFrame, pairs: Sequence[Mapping[str, Any]],
           schedule_rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Write the stage's metrics and its summary sections; returns the record."""
    headline = curriculum.headline_record(pairs, p.headline_sets, p.headline_schedule)
    seeds_note = prose.render(f"{STAGE}/seeds", seeds_facts(p))  # the results page quotes it
    return stage.record(
        metrics={"segmentation": summary, "object_recall_by_size": by_size, "size_edges": list(s.size_edges),
                 "replicates": p.replicates,
                 "pseudo_masks_by_replicate": {"0": s.pseudo_mask_scores,
                                               **{str(r): sc for r, sc in s.replica_scores.items()}},
                 "headline": headline, "paired": list(pairs), "schedule_differences": list(schedule_rows),
                 "seeds_note": seeds_note,
                 "histories": {r.name: r.history for r in runs},
                 "train_seconds": {r.name: r.train_seconds for r in runs},
                 "eval_seconds": {r.name: r.eval_seconds for r in runs},
                 "per_class_iou": {k: dict(v) for k, v in ious.T.to_dict().items()}},
        summary={"segmentation": summary, "segmentation_object_recall": by_size, "segmentation_headline": headline,
                 "segmentation_replicates": p.replicates,
                 "segmentation_paired": list(pairs), "segmentation_schedules": list(schedule_rows),
                 "segmentation_seeds": seeds_note},
        artifacts={name: key for name, key in s.keys.items()})


def _score(entry: Mapping[str, Any]) -> dict[str, float | None]:
    return {"miou": entry["miou"], "std": entry.get("miou_std")}


def findings(p: Params, summary: Mapping[str, Mapping[str, Any]], pairs: Sequence[Mapping[str, Any]],
             schedule_rows: Sequence[Mapping[str, Any]], runs: Sequence[SegmentationRun], peak_rss_mb: float
             ) -> dict[str, Any]:
    """Facts for "What this chapter found" (``findings.md``), from the numbers just computed."""
    hs = p.headline_schedule
    return {
        **seeds_facts(p), "schedule": hs,
        "pairs": [{"baseline": r["baseline"], "other": r["other"], "n_seeds": len(summary[r["baseline"]][hs]["seeds"]),
                   "baseline_score": _score(summary[r["baseline"]][hs]), "other_score": _score(summary[r["other"]][hs]),
                   "difference": difference_verdict(r)} for r in pairs],
        "paper": paper.headline_facts(),
        "schedule_rows": [{"training_set": r["training set"], "baseline": r["baseline"], "other": r["other"],
                           "measure": r["measure"], "difference": difference_verdict(r)} for r in schedule_rows],
        "upper_bound": curriculum.upper_bound(summary, p.training_sets, hs),
        "models": len(runs), "train_minutes": sum(r.train_seconds for r in runs) / 60, "peak_rss_gb": peak_rss_mb / 1024,
    }


# -- the stage in order --------------------------------------------------------------------------

def run(stage: Any, p: Params) -> dict[str, Any]:
    """The stage's recipe in the order the notebook runs it, without its figures: every DeepLab
    of the plan, their summary, the paired comparisons, per-class IoU and recall by object size
    of the first seed, recorded. Returns the record."""
    p = for_data(stage, p)
    setup_ = setup(stage, p)
    runs = train_and_evaluate_all(setup_, p)
    summary = curriculum.summarise_runs(runs, setup_.size_edges)
    first = curriculum.at_seed(runs, p.seed)
    pairs = curriculum.paired_comparisons(summary, p.headline_sets, p.headline_schedule)
    ious = chapter.class_iou_table(first, setup_.val.class_names)
    by_size = curriculum.object_recall(first, setup_.size_edges)
    schedule_rows = curriculum.schedule_comparisons(summary, p.schedule_sets, list(p.schedules))
    return record(stage, p, setup_, runs, summary, by_size, ious, pairs, schedule_rows)
