"""Stage 0: the data. Reads the VOC-layout folder every later stage trains and scores on (by
default the embedded benchmark, generated before the stage by the profile's generator config)
and measures what makes weakly supervised segmentation hard on it: several classes per image,
a wide range of object sizes, and the context bias (a class that tends to appear on the same
background, as boats on water in VOC). Its size bins (terciles of the first split's object
areas) are recorded for the segmentation chapter. The stage writes no artifact but its record.
A split without masks (weakly labelled: image-level labels only) is counted by its labels;
the pixel statistics come from the splits that have masks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..book import profiles
from ..core.keys import ArtifactKey
from ..data import stats as datastats
from ..data import synth
from ..data.voc import VOCDataset

STAGE = "00_dataset"
# The stage writes no artifact (the dataset is generated before it, keyed by its generator config).
NOT_IN_KEYS = {
    "seed": "no randomness: the stage only measures the dataset (its generator has its own seed)",
    "splits": "statistics only: the splits measured and shown, recomputed every run",
    "n_examples": "presentation: scenes shown in the sample grid",
}


@dataclass(frozen=True)
class Params:
    seed: int = 0
    splits: tuple[str, ...] = ("train", "val")
    n_examples: int = 8


def artifact_keys(p: Params, data: Mapping[str, str], upstream: Mapping[str, str]) -> dict[str, ArtifactKey]:
    """None: the stage records statistics only."""
    return {}


@dataclass
class Benchmark:
    """The splits of the dataset, and for a generated one its generator config and scenes."""

    datasets: dict[str, VOCDataset]
    generator: dict[str, Any] | None
    scenes: dict[str, Any] | None

    @property
    def first(self) -> VOCDataset:
        return next(iter(self.datasets.values()))

    @property
    def scored(self) -> dict[str, VOCDataset]:
        """The splits with masks (the pixel statistics are theirs)."""
        return {split: ds for split, ds in self.datasets.items() if ds.has_masks}


def open_benchmark(stage: Any, p: Params) -> Benchmark:
    return Benchmark({split: VOCDataset(stage.data_root, split) for split in p.splits},
                     synth.read_config(stage.data_root), synth.read_scenes(stage.data_root))


def overview(stage: Any, data: Benchmark) -> tuple[dict[str, Any], pd.DataFrame | None]:
    """What this run reads (facts for ``00_dataset/overview.md``), and the generator config
    (None for another folder)."""
    first = data.first
    shape = first.load_image(first.ids[0]).shape
    facts = {"profile": stage.profile, "generated": data.generator is not None,
             "root": profiles.display_path(stage.data_root),
             "images": {split: len(ds) for split, ds in data.datasets.items()},
             "classes": list(first.class_names[1:]), "width": shape[1], "height": shape[0],
             "labels_source": first.labels_source,
             "unmasked": [split for split, ds in data.datasets.items() if not ds.has_masks]}
    config = pd.Series(data.generator["config"], name="value").to_frame() if data.generator else None
    return facts, config


@dataclass
class ClassStatistics:
    classes: pd.DataFrame  # (split, class) -> images, image_fraction, pixel_fraction
    objects: pd.DataFrame  # one row per object: split, image, class, pixels, area_fraction (size added later)
    per_image: pd.DataFrame  # split, classes (distinct foreground classes per image)


def class_statistics(data: Benchmark) -> ClassStatistics:
    tables = {split: datastats.dataset_tables(ds) for split, ds in data.scored.items()}
    classes = pd.concat({split: t[0].set_index("class") for split, t in tables.items()}, names=["split"])
    objects = pd.concat({split: t[1] for split, t in tables.items()}, names=["split"]).reset_index(level=0)
    per_image = pd.concat({split: datastats.classes_per_image(ds) for split, ds in data.datasets.items()},
                          names=["split"])
    return ClassStatistics(classes, objects, per_image.reset_index(level=0))


def size_split(data: Benchmark, preferred: str) -> str:
    """The split whose object areas set the size bins: ``preferred`` when it has masks, else the
    first split that does."""
    if preferred in data.scored:
        return preferred
    return next(iter(data.scored))


def size_bins(stats: ClassStatistics, split: str) -> tuple[tuple[float, float], pd.Series]:
    """Small / medium / large edges from the terciles of ``split``'s object areas; adds a
    ``size`` column to ``stats.objects``. Returns (edges, share of all objects per bin)."""
    objects = stats.objects
    edges = datastats.size_edges(objects[objects["split"] == split]["area_fraction"])
    objects["size"] = datastats.size_bins(objects["area_fraction"], edges)
    return edges, objects.groupby("size", observed=False).size() / len(objects)


@dataclass
class Context:
    """For a generated folder: P(background photograph | class) and the per-class rate of the
    preferred photograph (``rates``); otherwise the class co-occurrence matrix (``rates`` None)."""

    matrix: pd.DataFrame
    rates: pd.DataFrame | None
    split: str


def context_bias(data: Benchmark) -> Context:
    split = next(iter(data.datasets))
    ds = data.datasets[split]
    if data.scenes is not None and data.generator is not None:
        matrix, rates = datastats.context_table(ds, data.scenes, data.generator["preferred_backgrounds"],
                                                n_backgrounds=len(synth.PHOTOS))
        return Context(matrix, rates, split)
    labels = np.stack([s.labels for s in ds])
    names = ds.class_names[1:]
    co = pd.DataFrame(labels.T @ labels / np.maximum(labels.sum(0), 1)[:, None], index=names, columns=names)
    return Context(co, None, split)


GRID_STRIDES = (4, 8, 16, 32)  # the relation net's, DeepLab's and the ViT's, the CNN CAM's, a plain ResNet's


def representation_limits(data: Benchmark, strides: tuple[int, ...] = GRID_STRIDES) -> pd.DataFrame:
    """The best mIoU (%) any map on an output grid of each stride can reach on each split: the
    true masks shrunk to the grid and scaled back (:func:`~orandnet_lib.methods.cams.grid_limits`).
    A network whose score is far below its grid's limit is limited by its training, not its grid."""
    from ..methods.cams import grid_limits, grid_shape

    first = next(iter(data.scored.values()))
    h, w = first.load_mask(first.ids[0]).shape
    per_split = {split: grid_limits(ds, [(st, 1.0) for st in strides]) for split, ds in data.scored.items()}
    return pd.DataFrame([{"output stride": st, f"grid at {h}x{w} px": "x".join(map(str, grid_shape(h, w, st, 1.0))),
                          **{f"{split} limit mIoU (%)": lim[(st, 1.0)] for split, lim in per_split.items()}}
                         for st in strides]).set_index("output stride")


def summarise(stage: Any, data: Benchmark, stats: ClassStatistics, edges: tuple[float, float],
              size_share: pd.Series, ctx: Context, limits: pd.DataFrame | None = None) -> dict[str, Any]:
    """The stage's record: ``{"dataset": {...}}`` (later stages read ``size_edges``)."""
    dataset: dict[str, Any] = {
        "root": profiles.display_path(stage.data_root),
        "classes": list(data.first.class_names),
        "images": {split: len(ds) for split, ds in data.datasets.items()},
        "masks": {split: ds.has_masks for split, ds in data.datasets.items()},
        "labels_source": data.first.labels_source,
        "objects": int(len(stats.objects)),
        "size_share": {k: float(v) for k, v in size_share.items()},
        "size_edges": list(edges),
        "mean_classes_per_image": float(stats.per_image["classes"].mean()),
    }
    if ctx.rates is not None and data.generator is not None:
        dataset["context_bias_asked"] = float(data.generator["config"]["context_bias"])
        dataset["context_bias_measured"] = float(ctx.rates["p_preferred"].mean())
    if limits is not None:
        dataset["grid_limits"] = {str(st): {c.removesuffix(" limit mIoU (%)"): float(v) for c, v in row.items()
                                            if c.endswith(" limit mIoU (%)")} for st, row in limits.iterrows()}
    return {"dataset": dataset}


def findings(summary: Mapping[str, Any], stats: ClassStatistics, ctx: Context) -> dict[str, Any]:
    """Facts for the chapter's closing bullets (``00_dataset/findings.md``)."""
    d = summary["dataset"]
    areas = stats.objects["area_fraction"]
    scored = [split for split, has in d.get("masks", {}).items() if has] or list(d["images"])
    facts: dict[str, Any] = {
        "objects": d["objects"], "scored_splits": scored, "scored_images": sum(d["images"][s] for s in scored),
        "classes_per_image": d["mean_classes_per_image"], "smallest": float(areas.min()), "largest": float(areas.max()),
        "size_split": ctx.split, "small_below": d["size_edges"][0], "large_above": d["size_edges"][1],
        "context": None,
    }
    if "context_bias_measured" in d and ctx.rates is not None:
        weakest = ctx.rates.loc[ctx.rates["p_preferred"].idxmin()]
        facts["context"] = {"asked": d["context_bias_asked"], "measured": d["context_bias_measured"],
                            "no_bias": 1 / len(synth.PHOTOS), "weakest_class": str(weakest["class"]),
                            "weakest": float(weakest["p_preferred"])}
    return facts


def generator_facts(data: Benchmark) -> dict[str, Any]:
    """The generator config that ``00_dataset/calibration.md`` explains (None: not generated here)."""
    return {"generator": data.generator["config"] if data.generator else None}


# -- the stage in order --------------------------------------------------------------------------

def run(stage: Any, p: Params) -> dict[str, Any]:
    """The stage's recipe in the order the notebook runs it, without its tables and figures:
    the benchmark, its statistics, size bins, context bias and representation limits, recorded.
    Returns the record."""
    data = open_benchmark(stage, p)
    stats = class_statistics(data)
    size_edges, size_share = size_bins(stats, size_split(data, p.splits[0]))
    summary = summarise(stage, data, stats, size_edges, size_share, context_bias(data), representation_limits(data))
    return stage.record(metrics=summary["dataset"], summary=summary)
