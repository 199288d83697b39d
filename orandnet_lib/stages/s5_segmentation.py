"""Stage 5: DeepLab trained on each set of masks, with the scale-scheduling curriculum.

The point of a pseudo-mask is the segmentation model trained on it. DeepLab is trained on the
ground truth (the fully supervised bound) and on stage 4's pseudo-masks of each CAM variant,
and scored on the validation split against the ground truth. ORANDNet's curriculum, *scale
scheduling*, trains first on downsampled images and masks (small, often spurious regions
vanish), then on larger ones; the schedule is not published, so it is a parameter and is
compared with a constant scale, paired by seed (``schedule_sets`` over ``schedule_seeds``). The
headline sets (the baseline, the and+offset control, ORANDNet) are repeated over ``seeds`` and
every pair is compared paired by seed (:func:`orandnet_lib.core.stats.paired_difference`). With
``replicates = 1`` the seeds vary DeepLab only: the pseudo-masks are one draw of stages 1-4, so
every comparison holds "for these pseudo-masks". With ``replicates = N`` (the profile's, which the
runner passes in) seed r of a pseudo-mask set is a whole-pipeline replicate: its masks come from
stages 1-4 run again with seed r (``<run>/replicates/r<r>``; r = 0 is this run), and its DeepLab
is seeded r, so a pairing by seed is a pairing by replicate (:func:`seeds_note`). Recipe, top to bottom: :func:`setup`,
:func:`train_and_evaluate_all` (each run: :func:`train_and_evaluate`), :func:`summarise_runs`,
:func:`paired_comparisons`, :func:`schedule_comparisons`, :func:`object_recall`, :func:`record`,
:func:`findings`.
"""

from __future__ import annotations

import dataclasses

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..core import store
from ..core import paper
from ..core.keys import ArtifactKey, read_key, spec_dict
from ..core.stats import describe_difference, paired_difference
from ..data.fingerprint import dataset_fingerprint
from ..data.voc import VOCDataset
from ..methods import pretrain
from ..methods.results import (GROUND_TRUTH, headline_difference, headline_pairs, per_seed_miou,
                               written_pseudo_masks)
from ..methods.segmentation import (Evaluation, ScaleSchedule, SegmenterSpec, evaluate, recall_by_size,
                                    train_segmenter)
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


def run_name(training_set: str, schedule: str, seed: int) -> str:
    return f"{training_set}/{schedule}/s{seed}"


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


def _masks_fingerprint(dataset: VOCDataset) -> str:
    """Content hash of a split's masks, for a mask folder that records no identity."""
    return store.hash_obj({"classes": list(dataset.class_names), "split": dataset.split,
                           "masks": [store.hash_file(dataset.mask_path(i)) for i in dataset.ids]})[:16]


def training_data_fingerprint(training_set: str, dataset: VOCDataset) -> str:
    """A training set's identity: the dataset fingerprint of the split (for stage 4's
    pseudo-masks it holds their artifact key, from the folder's identity.json); a pseudo-mask
    folder that records no identity is fingerprinted by its masks' content."""
    if training_set != GROUND_TRUTH and read_key(dataset.root) is None:
        return _masks_fingerprint(dataset)
    return dataset_fingerprint(dataset)


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
    masks = s.masks(training_set, replicate_of(p, training_set, seed))
    trained = train_segmenter(s.specs[schedule], masks, checkpoint, seed, key=key,
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


SIZE_BINS = ("small", "medium", "large")


def per_seed_scores(run: SegmentationRun, edges: tuple[float, float] | None) -> dict[str, float]:
    """One model's scores: mIoU, precision, recall and, with stage 0's size bins,
    ``object_recall_<bin>`` (mean object recall % per size bin, NaN for an empty bin)."""
    scores = {k: float(v) for k, v in run.scores.items()}
    if edges is not None:
        scores.update({f"object_recall_{b}": v for b, v in recall_by_size(run.evaluation, edges).items()})
    return scores


def summarise_runs(runs: Sequence[SegmentationRun], edges: tuple[float, float] | None = None
                   ) -> dict[str, dict[str, dict[str, Any]]]:
    """``{training set: {schedule: {miou, precision, recall, <each>_std, seeds, per_seed}}}``:
    means over seeds, with the sample standard deviation where there are two or more; each
    ``per_seed`` entry holds :func:`per_seed_scores` (object recall by size with ``edges``)."""
    grouped: dict[tuple[str, str], list[SegmentationRun]] = {}
    for run in runs:
        grouped.setdefault((run.training_set, run.schedule), []).append(run)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (tset, sched), group in grouped.items():
        group = sorted(group, key=lambda r: r.seed)
        entry: dict[str, Any] = {"seeds": [r.seed for r in group],
                                 "per_seed": [per_seed_scores(r, edges) for r in group]}
        for key in ("miou", "precision", "recall"):
            values = np.array([r.scores[key] for r in group])
            entry[key] = float(values.mean())
            if len(values) > 1:
                entry[f"{key}_std"] = float(values.std(ddof=1))
        out.setdefault(tset, {})[sched] = entry
    return out


def paired_comparisons(summary: Mapping[str, Mapping[str, Any]], p: Params) -> list[dict[str, Any]]:
    """Every :func:`headline_pairs` comparison in validation mIoU with the headline schedule,
    paired by seed: ``{baseline, other, schedule, metric, n, mean, se, t, df, p, low, high}``."""
    rows = []
    for a, b in headline_pairs(p.headline_sets):
        diff = headline_difference(summary, a, b, p.headline_schedule)
        if diff is not None:
            rows.append({"comparison": f"{b} − {a}", "baseline": a, "other": b, "schedule": p.headline_schedule,
                         "metric": "miou", "measure": METRIC_LABELS["miou"], **diff})
    return rows


METRIC_LABELS = {"miou": "mIoU", "precision": "precision", "recall": "recall",
                 **{f"object_recall_{b}": f"{b}-object recall" for b in SIZE_BINS}}
SCHEDULE_METRICS = ("miou", "object_recall_small")  # what the curriculum should raise, and may cost
REFERENCE_SCHEDULE = "constant"


def schedule_comparisons(summary: Mapping[str, Mapping[str, Any]], p: Params,
                         metrics: Sequence[str] = SCHEDULE_METRICS) -> list[dict[str, Any]]:
    """Each schedule against the constant scale on each of ``schedule_sets``, paired by seed,
    in each metric: ``{training set, baseline: "constant", other: schedule, metric, n, mean,
    se, t, df, p, low, high}`` (schedule - constant). Seeds with a NaN score (no small object
    in the split) drop out of the pairing."""
    rows = []
    for t in p.schedule_sets:
        by = summary.get(t, {})
        if REFERENCE_SCHEDULE not in by:
            continue
        for sched in (s for s in p.schedules if s != REFERENCE_SCHEDULE and s in by):
            for metric in metrics:
                diff = paired_difference(per_seed_miou(by[REFERENCE_SCHEDULE], metric), per_seed_miou(by[sched], metric))
                rows.append({"comparison": f"{t}: {sched} − {REFERENCE_SCHEDULE}", "training set": t,
                             "baseline": REFERENCE_SCHEDULE, "other": sched, "metric": metric,
                             "measure": METRIC_LABELS.get(metric, metric), **diff})
    return rows


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
                        "pseudo-mask recall": q["recall"]} for t, q in pseudo_mask_scores.items()
                       if t in summary and "miou" in q])  # a train split without masks: the sets are not scored
    if len(pm):
        table = table.merge(pm, on="training set", how="left")
    return table.set_index(["training set", "schedule"])


DIFFERENCE_COLUMNS = {"measure": "measure", "n": "seeds", "mean": "mean difference", "se": "standard error",
                      "t": "t", "df": "df", "p": "p", "low": "95 % low", "high": "95 % high"}


def differences_table(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per paired comparison (:func:`paired_comparisons`, :func:`schedule_comparisons`):
    the measure, the number of paired seeds, the mean difference, its standard error, the
    t-test (t, df, p) and the 95 % interval."""
    table = pd.DataFrame([{"comparison": r["comparison"], **{v: r[k] for k, v in DIFFERENCE_COLUMNS.items()}}
                          for r in rows], columns=["comparison", *DIFFERENCE_COLUMNS.values()])
    return table.set_index("comparison")


def styled_differences(rows: Sequence[Mapping[str, Any]]) -> Any:
    """:func:`differences_table` formatted for the chapter (p with three decimals)."""
    table = differences_table(rows)
    return table.style.format("{:.2f}", na_rep="-", subset=["mean difference", "standard error", "t", "95 % low",
                                                             "95 % high"]) \
        .format("{:.3f}", na_rep="-", subset=["p"]).format("{:.0f}", na_rep="-", subset=["seeds", "df"])


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

def seeds_note(p: Params) -> str:
    """What the seeds vary: with replicates, the whole pipeline (stages 1-4 and DeepLab); else
    DeepLab's randomness only, the pseudo-masks being one draw (one run of stages 1-4), so every
    difference holds for these pseudo-masks."""
    drawn = ["initialisation", "data order", "dropout", "random flips"]
    if tuple(p.scale_range) != (1.0, 1.0):
        drawn.append("random rescaling")
    if p.crop_size:
        drawn.append("random crops")
    if p.replicates > 1:
        return (f"Each seed of a pseudo-mask set is a whole-pipeline replicate ({p.replicates} replicates, seeds "
                f"0-{p.replicates - 1}): seed r ran stages 1-4 again with seed r (the classifiers, the ensembles "
                "built from their CAMs, ORANDNet, the relation networks and so the pseudo-masks) and trained DeepLab "
                f"with seed r (its {', '.join(drawn[:-1])} and {drawn[-1]}); the data and every setting stay the "
                "same. The differences and intervals, paired by seed, are over replicates of the whole method. "
                "The ground-truth set has one draw of masks; its seeds vary DeepLab only.")
    return (f"The seeds ({', '.join(map(str, p.seeds))}) vary DeepLab only: its {', '.join(drawn[:-1])} and "
            f"{drawn[-1]}. The pseudo-masks are one draw, one run of stages 1-4 with one seed, and every seed trains "
            "on the same masks; so the differences and intervals here measure DeepLab's variation on these "
            "pseudo-masks, not the variation of the whole pipeline, and the claims hold for these pseudo-masks.")



def headline_record(p: Params, pairs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The headline (first headline set against the last), as stages 6 and the results page
    read it: ``{baseline, other, schedule, difference}``."""
    head = headline_pairs(p.headline_sets)[:1]
    row = next((r for r in pairs if head and (r["baseline"], r["other"]) == head[0]), None)
    return {"baseline": head[0][0] if head else None, "other": head[0][1] if head else None,
            "schedule": p.headline_schedule,
            "difference": {k: row[k] for k in ("n", "mean", "se", "t", "df", "p", "low", "high")} if row else None}


def record(stage: Any, p: Params, s: Setup, runs: Sequence[SegmentationRun], summary: Mapping[str, Any],
           by_size: Mapping[str, Any], ious: pd.DataFrame, pairs: Sequence[Mapping[str, Any]],
           schedule_rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Write the stage's metrics and its summary sections; returns the record."""
    headline = headline_record(p, pairs)
    return stage.record(
        metrics={"segmentation": summary, "object_recall_by_size": by_size, "size_edges": list(s.size_edges),
                 "replicates": p.replicates,
                 "pseudo_masks_by_replicate": {"0": s.pseudo_mask_scores,
                                               **{str(r): sc for r, sc in s.replica_scores.items()}},
                 "headline": headline, "paired": list(pairs), "schedule_differences": list(schedule_rows),
                 "seeds_note": seeds_note(p),
                 "histories": {r.name: r.history for r in runs},
                 "train_seconds": {r.name: r.train_seconds for r in runs},
                 "eval_seconds": {r.name: r.eval_seconds for r in runs},
                 "per_class_iou": {k: dict(v) for k, v in ious.T.to_dict().items()}},
        summary={"segmentation": summary, "segmentation_object_recall": by_size, "segmentation_headline": headline,
                 "segmentation_replicates": p.replicates,
                 "segmentation_paired": list(pairs), "segmentation_schedules": list(schedule_rows),
                 "segmentation_seeds": seeds_note(p)},
        artifacts={name: key for name, key in s.keys.items()})


def _fmt(entry: Mapping[str, Any]) -> str:
    spread = f" ± {entry['miou_std']:.1f}" if "miou_std" in entry else ""
    return f"{entry['miou']:.1f}{spread} %"


def findings(p: Params, summary: Mapping[str, Mapping[str, Any]], pairs: Sequence[Mapping[str, Any]],
             schedule_rows: Sequence[Mapping[str, Any]], runs: Sequence[SegmentationRun], peak_rss_mb: float) -> str:
    """The "What this chapter found" markdown, from the numbers just computed."""
    lines = [f"- **What the seeds vary.** {seeds_note(p)}"]
    hs = p.headline_schedule
    for i, r in enumerate(pairs):
        a, b = r["baseline"], r["other"]
        ea, eb = summary[a][hs], summary[b][hs]
        over = (f"{len(ea['seeds'])} whole-pipeline replicates" if p.replicates > 1 else
                f"{len(ea['seeds'])} seeds), for these pseudo-masks")
        lead = (f"**Headline ({hs}, {over}{')' if p.replicates > 1 else ''}.** " if i == 0
                else f"**{b} against {a}.** ")
        lines.append(f"- {lead}DeepLab on {b} pseudo-masks scores {_fmt(eb)} mIoU against {_fmt(ea)} on {a} "
                     f"pseudo-masks: a paired difference of {describe_difference(r)}.")
    if len(pairs) > 1:
        lines.append(f"- The {len(pairs)} p-values are per comparison, not adjusted for making {len(pairs)} comparisons; "
                     "the intervals are the honest summary.")
    if pairs:
        lines.append(f"- For comparison, {paper.headline()}.")
    for r in schedule_rows:
        lines.append(f"- **{r['training set']}, {r['other']} − {r['baseline']}** ({r['measure']}, paired by seed): "
                     f"{describe_difference(r)}.")
    if GROUND_TRUTH in summary:
        gt = summary[GROUND_TRUTH]
        g_sched = hs if hs in gt else next(iter(gt))
        g = gt[g_sched]
        others = [(t, summary[t][hs]["miou"]) for t in p.training_sets if t != GROUND_TRUTH and hs in summary.get(t, {})]
        if others:
            best_t, best_v = max(others, key=lambda x: x[1])
            also = "; ".join(f"{name}: {e['miou']:.1f} %" for name, e in gt.items() if name != g_sched)
            lines.append(f"- **Upper bound.** Trained on the ground truth with the {g_sched} schedule, DeepLab scores "
                         f"{g['miou']:.1f} % mIoU{f' ({also})' if also else ''}; the best "
                         f"pseudo-mask set ({best_t}) reaches {best_v:.1f} %, "
                         f"{abs(g['miou'] - best_v):.1f} points {'below' if best_v <= g['miou'] else 'above'} it.")
    total = sum(r.train_seconds for r in runs)
    lines.append(f"- {len(runs)} models, {total / 60:.1f} min of training on this machine; peak resident memory "
                 f"{peak_rss_mb / 1024:.2f} GB.")
    return "\n".join(lines)


# -- the stage in order --------------------------------------------------------------------------

def run(stage: Any, p: Params) -> dict[str, Any]:
    """The stage's recipe in the order the notebook runs it, without its tables and figures:
    every DeepLab of the plan, their summary, the paired comparisons, per-class IoU and recall by
    object size of the first seed, recorded. Returns the record."""
    p = for_data(stage, p)
    setup_ = setup(stage, p)
    runs = train_and_evaluate_all(setup_, p)
    summary = summarise_runs(runs, setup_.size_edges)
    first = at_seed(runs, p.seed)
    pairs = paired_comparisons(summary, p)
    ious = class_iou_table(first, setup_.val.class_names)
    by_size = object_recall(first, setup_.size_edges)
    return record(stage, p, setup_, runs, summary, by_size, ious, pairs, schedule_comparisons(summary, p))
