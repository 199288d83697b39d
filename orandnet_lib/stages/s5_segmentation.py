"""Stage 5: DeepLab trained on each set of masks, with the scale-scheduling curriculum.

The point of a pseudo-mask is the segmentation model trained on it. DeepLab is trained on the
ground truth (the fully supervised bound) and on stage 4's pseudo-masks of each CAM variant,
and scored on the validation split against the ground truth. ORANDNet's curriculum, *scale
scheduling*, trains first on downsampled images and masks (small, often spurious regions
vanish), then on larger ones; the schedule is not published, so it is a parameter and is
compared with a constant scale. The headline (``headline_sets[0]`` against
``headline_sets[1]`` with the headline schedule) is repeated over seeds and compared paired by
seed. Recipe, top to bottom: :func:`setup`, :func:`train_and_evaluate_all` (each run:
:func:`train_and_evaluate`), :func:`summarise_runs`, :func:`headline_difference`,
:func:`object_recall`, :func:`record`, :func:`findings`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..core import store
from ..core import paper
from ..core.identity import ArtifactKey, dataset_fingerprint, read_identity, spec_dict
from ..core.stats import describe_difference, paired_difference
from ..data.voc import VOCDataset
from ..methods.segmentation import (Evaluation, ScaleSchedule, SegmenterSpec, evaluate, recall_by_size,
                                    train_segmenter)

STAGE = "05_segmentation_curriculum"
GROUND_TRUTH = "gt"  # the training set of ground-truth masks (the fully supervised bound)

# Parameters that change no stored artifact, each with the reason (the key-walk test reads this):
NOT_IN_KEYS = {
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
    headline_sets: tuple[str, ...] = ("cnn", "orandnet")
    headline_schedule: str = "curriculum"
    seeds: tuple[int, ...] = (0, 1, 2)
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
    eval_scales: tuple[float, ...] = (1.0,)
    eval_flip: bool = False
    eval_crf_iterations: int = 0
    n_examples: int = 4


# ----------------------------------------------------------------------------- what runs, and its keys

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


def segmenter_spec(p: Params, schedule: str) -> SegmenterSpec:
    """The full DeepLab spec of one schedule (an unknown schedule name: constant scale)."""
    return SegmenterSpec.from_dict(dict(
        backbone=p.backbone, backbone_kwargs=dict(p.backbone_kwargs), pretrained=p.pretrained, head=p.head,
        rates=p.rates, head_channels=p.head_channels, dropout=p.dropout, crop_size=p.crop_size,
        scale_range=p.scale_range, mask_mode=p.mask_mode, epochs=p.epochs, batch_size=p.batch_size,
        optimizer=p.optimizer, lr=p.lr, weight_decay=p.weight_decay, head_lr_mult=p.head_lr_mult,
        schedule=p.schedules.get(schedule)))


def plan(p: Params) -> list[tuple[str, str, int]]:
    """The runs (training set, schedule, seed), in order: every training set at the stage's
    seed (with every schedule for the sets in ``schedule_sets``, the headline schedule for the
    others), then the headline sets over ``seeds``."""
    sets = list(dict.fromkeys([*p.training_sets, *p.schedule_sets, *p.headline_sets]))
    runs = [(s, name, p.seed) for s in sets for name in (p.schedules if s in p.schedule_sets else [p.headline_schedule])]
    runs += [(s, p.headline_schedule, sd) for s in p.headline_sets for sd in p.seeds
             if (s, p.headline_schedule, sd) not in runs]
    return runs


def run_name(training_set: str, schedule: str, seed: int) -> str:
    return f"{training_set}/{schedule}/s{seed}"


def training_data_name(training_set: str, split: str) -> str:
    """The name under which ``artifact_keys`` reads a training set's fingerprint: the split
    itself for the ground truth, ``pseudo_masks/<set>/<split>`` for stage 4's masks."""
    return split if training_set == GROUND_TRUTH else f"pseudo_masks/{training_set}/{split}"


def artifact_keys(p: Params, data: Mapping[str, str], upstream: Mapping[str, str]) -> dict[str, ArtifactKey]:
    """Pure: one DeepLab checkpoint per planned run, keyed by the full spec (schedule included),
    the training masks' identity, the validation split its training curve is logged on, and
    the seed. ``data`` holds the fingerprints named by :func:`training_data_name` and the
    validation split's (see :func:`key_inputs`); stage 5 reads no upstream store directly:
    the pseudo-masks' identity is their artifact key, inside their fingerprint."""
    keys = {}
    for tset, sched, sd in plan(p):
        spec = {**spec_dict(segmenter_spec(p, sched)), "curve_split": data[p.val_split]}
        keys[f"deeplab:{run_name(tset, sched, sd)}"] = ArtifactKey(
            "deeplab", spec, data=data[training_data_name(tset, p.train_split)], seed=sd)
    return keys


def _masks_fingerprint(dataset: VOCDataset) -> str:
    """Content hash of a split's masks, for a mask folder that records no identity."""
    return store.hash_obj({"classes": list(dataset.class_names), "split": dataset.split,
                           "masks": [store.hash_file(dataset.mask_path(i)) for i in dataset.ids]})[:16]


def training_data_fingerprint(training_set: str, dataset: VOCDataset) -> str:
    """A training set's identity: the dataset fingerprint of the split (for stage 4's
    pseudo-masks it holds their artifact key, from the folder's identity.json); a pseudo-mask
    folder that records no identity is fingerprinted by its masks' content."""
    if training_set != GROUND_TRUTH and read_identity(dataset.root) is None:
        return _masks_fingerprint(dataset)
    return dataset_fingerprint(dataset)


@dataclass
class Setup:
    """What the stage reads: the validation split, each training set's masks, the DeepLab
    spec of each schedule, the checkpoint keys, stage 0's object-size bins and stage 4's
    scores of the written pseudo-masks."""

    val: VOCDataset
    train_sets: dict[str, VOCDataset]
    specs: dict[str, SegmenterSpec]
    keys: dict[str, ArtifactKey]
    size_edges: tuple[float, float]
    pseudo_mask_scores: dict[str, dict[str, Any]]
    checkpoints: Path

    @property
    def schedules(self) -> dict[str, ScaleSchedule]:
        return {name: ScaleSchedule(spec.schedule) for name, spec in self.specs.items()}

    @property
    def scales(self) -> list[float]:
        """Every scale any schedule trains at, ascending."""
        return sorted({s for sch in self.schedules.values() for _, s in sch.points})

    @property
    def example_set(self) -> str:
        """The training set the curriculum figure shows: the first pseudo-mask set."""
        return next((t for t in self.train_sets if t != GROUND_TRUTH), next(iter(self.train_sets)))


def key_inputs(p: Params, val: VOCDataset, train_sets: Mapping[str, VOCDataset]) -> tuple[dict[str, str], dict[str, str]]:
    """The real ``data`` and ``upstream`` arguments of :func:`artifact_keys`."""
    data = {p.val_split: dataset_fingerprint(val)}
    for tset, ds in train_sets.items():
        data[training_data_name(tset, p.train_split)] = training_data_fingerprint(tset, ds)
    return data, {}


def written_pseudo_masks(stage4_metrics: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Stage 4's scores of the pseudo-masks it wrote: ``{variant: {miou, precision, recall,
    threshold, refinement}}`` (a run of the earlier layout kept them under ``rw_fixed``)."""
    out = {}
    for variant, entry in stage4_metrics.get("pseudo_masks", {}).items():
        if "miou" not in entry and "rw_fixed" in entry:
            entry = {**entry["rw_fixed"], "refinement": "rw"}
        out[variant] = dict(entry)
    return out


def setup(stage: Any, p: Params) -> Setup:
    """Open the datasets and read stages 0 and 4."""
    check(p)
    val = VOCDataset(stage.data_root, p.val_split)
    sets = list(dict.fromkeys(t for t, _, _ in plan(p)))
    train_sets = {s: VOCDataset(stage.data_root if s == GROUND_TRUTH else stage.pseudo_masks(s), p.train_split)
                  for s in sets}
    data, upstream = key_inputs(p, val, train_sets)
    edges = stage.upstream("00_dataset").summary["dataset"]["size_edges"]
    return Setup(val, train_sets, {name: segmenter_spec(p, name) for name in p.schedules},
                 artifact_keys(p, data, upstream), (float(edges[0]), float(edges[1])),
                 written_pseudo_masks(stage.upstream("04_refinement").metrics), stage.dir / "checkpoints")


# ----------------------------------------------------------------------------- training and evaluation

@dataclass
class SegmentationRun:
    """One DeepLab trained on one training set with one schedule and seed, and its scores."""

    training_set: str
    schedule: str
    seed: int
    history: list[dict[str, float]]
    evaluation: Evaluation
    examples: dict[str, np.ndarray]
    train_seconds: float
    eval_seconds: float
    checkpoint: Path | None = None

    @property
    def name(self) -> str:
        return run_name(self.training_set, self.schedule, self.seed)

    @property
    def scores(self) -> dict[str, float]:
        return self.evaluation.summary()


def train_and_evaluate(s: Setup, p: Params, training_set: str, schedule: str, seed: int, *,
                       keep: Sequence[str] = (), progress: bool = True) -> SegmentationRun:
    """Train (or reload) one DeepLab into the checkpoint its artifact key names, then score it
    on the validation split with the test-time options (scales, flip, CRF)."""
    key = s.keys[f"deeplab:{run_name(training_set, schedule, seed)}"]
    checkpoint = key.path(s.checkpoints, f"deeplab-{training_set}-{schedule}-s{seed}")
    trained = train_segmenter(s.specs[schedule], s.train_sets[training_set], checkpoint, seed, identity=key,
                              val=s.val, progress=progress,
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


def at_seed(runs: Sequence[SegmentationRun], seed: int) -> dict[tuple[str, str], SegmentationRun]:
    """The runs at the stage's seed, by (training set, schedule), in run order."""
    return {(r.training_set, r.schedule): r for r in runs if r.seed == seed}


def summarise_runs(runs: Sequence[SegmentationRun]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{training set: {schedule: {miou, precision, recall, <each>_std, seeds, per_seed}}}``:
    means over seeds, with the sample standard deviation where there are two or more."""
    grouped: dict[tuple[str, str], list[SegmentationRun]] = {}
    for run in runs:
        grouped.setdefault((run.training_set, run.schedule), []).append(run)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (tset, sched), group in grouped.items():
        group = sorted(group, key=lambda r: r.seed)
        entry: dict[str, Any] = {"seeds": [r.seed for r in group],
                                 "per_seed": [{k: float(v) for k, v in r.scores.items()} for r in group]}
        for key in ("miou", "precision", "recall"):
            values = np.array([r.scores[key] for r in group])
            entry[key] = float(values.mean())
            if len(values) > 1:
                entry[f"{key}_std"] = float(values.std(ddof=1))
        out.setdefault(tset, {})[sched] = entry
    return out


def per_seed_miou(entry: Mapping[str, Any], key: str = "miou") -> dict[int, float]:
    """``{seed: score}`` of one summary entry."""
    return {int(sd): float(s[key]) for sd, s in zip(entry["seeds"], entry["per_seed"])}


def headline_difference(summary: Mapping[str, Mapping[str, Any]], baseline: str, other: str, schedule: str,
                        confidence: float = 0.95) -> dict[str, float] | None:
    """``other`` minus ``baseline`` in validation mIoU, paired by seed
    (:func:`orandnet_lib.core.stats.paired_difference`), or None when either was not trained
    with ``schedule``."""
    a, b = summary.get(baseline, {}).get(schedule), summary.get(other, {}).get(schedule)
    if a is None or b is None:
        return None
    return paired_difference(per_seed_miou(a), per_seed_miou(b), confidence)


def object_recall(first: Mapping[tuple[str, str], SegmentationRun], edges: tuple[float, float]
                  ) -> dict[str, dict[str, dict[str, float]]]:
    """``{training set: {schedule: {small, medium, large}}}``: mean object recall (%) in
    stage 0's object-size bins, for the runs at the stage's seed."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (t, s), r in first.items():
        out.setdefault(t, {})[s] = recall_by_size(r.evaluation, edges)
    return out


# ----------------------------------------------------------------------------- tables

def scores_table(summary: Mapping[str, Mapping[str, Any]], pseudo_mask_scores: Mapping[str, Mapping[str, Any]]
                 ) -> pd.DataFrame:
    """One row per (training set, schedule): seeds, mean mIoU / precision / recall, the mIoU's
    sd over seeds, and the pseudo-masks' own scores from stage 4."""
    table = pd.DataFrame([{"training set": t, "schedule": s, "seeds": len(r["seeds"]),
                           **{k: r[k] for k in ("miou", "precision", "recall")},
                           "miou_std": r.get("miou_std", np.nan)} for t, by in summary.items() for s, r in by.items()])
    pm = pd.DataFrame([{"training set": t, "pseudo-mask miou": q["miou"], "pseudo-mask precision": q["precision"],
                        "pseudo-mask recall": q["recall"]} for t, q in pseudo_mask_scores.items() if t in summary])
    if len(pm):
        table = table.merge(pm, on="training set", how="left")
    return table.set_index(["training set", "schedule"])


def per_seed_table(summary: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per model: training set, schedule, seed, miou, precision, recall."""
    return pd.DataFrame([{"training set": t, "schedule": s, "seed": r["seeds"][i], **r["per_seed"][i]}
                         for t, by in summary.items() for s, r in by.items() for i in range(len(r["seeds"]))])


def class_iou_table(first: Mapping[tuple[str, str], SegmentationRun], class_names: Sequence[str]) -> pd.DataFrame:
    """IoU (%) of each class (columns) for each model at the stage's seed (rows)."""
    return pd.DataFrame({f"{t} / {s}": 100 * r.evaluation.matrix.scores().iou for (t, s), r in first.items()},
                        index=list(class_names)).T


def object_recall_table(by_size: Mapping[str, Mapping[str, Mapping[str, float]]]) -> pd.DataFrame:
    return pd.DataFrame([{"training set": t, "schedule": s, **bins} for t, by in by_size.items() for s, bins in by.items()])


def size_bins_note(edges: tuple[float, float], first: Mapping[tuple[str, str], SegmentationRun]) -> str:
    """The object-size bins in words, with the number of validation objects binned."""
    n = len(next(iter(first.values())).evaluation.objects) if first else 0
    return (f"Object area bins (fraction of the image, from the dataset chapter): small <= {edges[0]:.3f} < medium "
            f"<= {edges[1]:.3f} < large; {n} validation objects.")


# ----------------------------------------------------------------------------- record and findings

def record(stage: Any, p: Params, s: Setup, runs: Sequence[SegmentationRun], summary: Mapping[str, Any],
           by_size: Mapping[str, Any], ious: pd.DataFrame) -> dict[str, Any]:
    """Write the stage's metrics and its summary sections; returns the record."""
    headline = (headline_difference(summary, p.headline_sets[0], p.headline_sets[1], p.headline_schedule)
                if len(p.headline_sets) >= 2 else None)
    return stage.record(
        metrics={"segmentation": summary, "object_recall_by_size": by_size, "size_edges": list(s.size_edges),
                 "headline": {"baseline": p.headline_sets[0] if p.headline_sets else None,
                              "other": p.headline_sets[1] if len(p.headline_sets) >= 2 else None,
                              "schedule": p.headline_schedule, "difference": headline},
                 "histories": {r.name: r.history for r in runs},
                 "train_seconds": {r.name: r.train_seconds for r in runs},
                 "eval_seconds": {r.name: r.eval_seconds for r in runs},
                 "per_class_iou": {k: dict(v) for k, v in ious.T.to_dict().items()}},
        summary={"segmentation": summary, "segmentation_object_recall": by_size,
                 "segmentation_headline": {"baseline": p.headline_sets[0] if p.headline_sets else None,
                                           "other": p.headline_sets[1] if len(p.headline_sets) >= 2 else None,
                                           "schedule": p.headline_schedule, "difference": headline}},
        artifacts={name: key for name, key in s.keys.items()})


def _fmt(entry: Mapping[str, Any]) -> str:
    spread = f" ± {entry['miou_std']:.1f}" if "miou_std" in entry else ""
    return f"{entry['miou']:.1f}{spread} %"


def findings(p: Params, summary: Mapping[str, Mapping[str, Any]], first: Mapping[tuple[str, str], SegmentationRun],
             by_size: Mapping[str, Mapping[str, Mapping[str, float]]], runs: Sequence[SegmentationRun],
             peak_rss_mb: float) -> str:
    """The "What this chapter found" markdown, from the numbers just computed."""
    lines = []
    hs = p.headline_schedule
    if len(p.headline_sets) >= 2:
        a, b = p.headline_sets[0], p.headline_sets[1]
        diff = headline_difference(summary, a, b, hs)
        if diff is not None:
            ea, eb = summary[a][hs], summary[b][hs]
            lines.append(f"- **Headline ({hs}, {len(ea['seeds'])} seeds).** DeepLab on {b} pseudo-masks scores {_fmt(eb)} "
                         f"mIoU against {_fmt(ea)} on {a} pseudo-masks: a paired difference of "
                         f"{describe_difference(diff)}. For comparison, {paper.headline()}.")
    if "constant" in p.schedules and hs in p.schedules and hs != "constant":
        for t in p.training_sets:
            if (t, "constant") in first and (t, hs) in first:
                c0, c1 = first[(t, "constant")].scores, first[(t, hs)].scores
                s0, s1 = by_size[t]["constant"]["small"], by_size[t][hs]["small"]
                l0, l1 = by_size[t]["constant"]["large"], by_size[t][hs]["large"]
                lines.append(f"- **{t}, {hs} vs constant** (seed {p.seed}): mIoU {c0['miou']:.1f} -> {c1['miou']:.1f} % "
                             f"(precision {c0['precision']:.1f} -> {c1['precision']:.1f}, recall {c0['recall']:.1f} -> "
                             f"{c1['recall']:.1f}); small-object recall {s0:.1f} -> {s1:.1f} %, "
                             f"large {l0:.1f} -> {l1:.1f} %.")
    if GROUND_TRUTH in summary:
        g = summary[GROUND_TRUTH][hs if hs in summary[GROUND_TRUTH] else next(iter(summary[GROUND_TRUTH]))]
        others = [(t, summary[t][hs]["miou"]) for t in p.training_sets if t != GROUND_TRUTH and hs in summary.get(t, {})]
        if others:
            best_t, best_v = max(others, key=lambda x: x[1])
            lines.append(f"- **Upper bound.** Trained on the ground truth, DeepLab scores {g['miou']:.1f} % mIoU; the best "
                         f"pseudo-mask set ({best_t}) reaches {best_v:.1f} %, "
                         f"{abs(g['miou'] - best_v):.1f} points {'below' if best_v <= g['miou'] else 'above'} it.")
    total = sum(r.train_seconds for r in runs)
    lines.append(f"- {len(runs)} models, {total / 60:.1f} min of training on this machine; peak resident memory "
                 f"{peak_rss_mb / 1024:.2f} GB.")
    return "\n".join(lines)
