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

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..book import plots, profiles
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


def overview(stage: Any, data: Benchmark) -> tuple[str, pd.DataFrame | None]:
    """A sentence on what this run reads, and the generator config (None for another folder)."""
    first = data.first
    sizes = ", ".join(f"{len(ds)} {split}" for split, ds in data.datasets.items())
    shape = first.load_image(first.ids[0]).shape
    source = ("the embedded benchmark, generated from the config below" if data.generator
              else "an existing VOC-layout folder")
    unmasked = [split for split, ds in data.datasets.items() if not ds.has_masks]
    weak = (f" The {', '.join(unmasked)} split{'s have' if len(unmasked) > 1 else ' has'} no masks (image-level labels "
            "only, as a weakly supervised method is given); its pixel statistics are left out." if unmasked else "")
    text = (f"This run (profile `{stage.profile}`) reads **{source}** at `{profiles.display_path(stage.data_root)}`: {sizes} images, "
            f"{first.num_classes} classes with background ({', '.join(first.class_names[1:])}). "
            f"The first image is {shape[1]} x {shape[0]} pixels. Image-level labels come from "
            f"{'the masks' if first.labels_source == 'masks' else '`' + first.labels_source + '`'}.{weak}")
    config = pd.Series(data.generator["config"], name="value").to_frame() if data.generator else None
    return text, config


def sample_figure(data: Benchmark, n_examples: int) -> plt.Figure:
    """Evenly spaced scenes of the first split: the image, then its mask over it (when the split
    has masks), titled with the image-level labels."""
    first = data.first
    examples = [first[i] for i in np.linspace(0, len(first) - 1, min(n_examples, len(first))).astype(int)]
    rows = [[s.image for s in examples]]
    if first.has_masks:
        rows.append([plots.overlay(s.image, s.mask) for s in examples])
    fig = plots.image_grid(
        rows, titles=[", ".join(first.class_names[k + 1] for k in np.flatnonzero(s.labels)) for s in examples],
        row_labels=["image", "ground truth"][: len(rows)], class_names=first.class_names,
    )
    return fig


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


def class_figure(stats: ClassStatistics) -> plt.Figure:
    """Images containing each class, labelled pixels per class, classes per image."""
    fig, axes = plt.subplots(3, 1, figsize=(plots.COLUMN, 9.0))
    fg = stats.classes.reset_index().query("`class` != 'background'")
    sns.barplot(fg, x="class", y="image_fraction", hue="split", ax=axes[0])
    axes[0].set(title="images containing the class", ylabel="fraction of images", xlabel="")
    sns.barplot(stats.classes.reset_index(), x="class", y="pixel_fraction", hue="split", ax=axes[1])
    axes[1].set(title="labelled pixels", ylabel="fraction of pixels", xlabel="", yscale="log")
    counts = stats.per_image.groupby("split")["classes"].value_counts(normalize=True).rename("fraction").reset_index()
    sns.barplot(counts, x="classes", y="fraction", hue="split", ax=axes[2])
    axes[2].set(title="classes per image", xlabel="distinct foreground classes", ylabel="fraction of images")
    for ax in axes[:2]:
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


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


def size_figure(stats: ClassStatistics, edges: tuple[float, float]) -> plt.Figure:
    objects = stats.objects
    fig, axes = plt.subplots(2, 1, figsize=(plots.COLUMN, 7.0), gridspec_kw={"height_ratios": [3, 2]})
    sns.histplot(objects, x="area_fraction", hue="class", log_scale=True, element="step", fill=False, bins=30, ax=axes[0])
    axes[0].set(xlabel="object area / image area", ylabel="objects", title="object sizes by class (all splits)")
    for edge in edges:
        axes[0].axvline(edge, color="grey", linestyle="--")
    size_counts = objects.groupby("split")["size"].value_counts(normalize=True).rename("fraction").reset_index()
    sns.barplot(size_counts, x="size", y="fraction", hue="split", ax=axes[1], order=["small", "medium", "large"])
    axes[1].set(title="objects per size bin", ylabel="fraction of objects", xlabel="")
    fig.tight_layout()
    return fig


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


def context_figure(ctx: Context) -> plt.Figure:
    matrix = ctx.matrix
    if ctx.rates is not None:
        fig, ax = plt.subplots(figsize=(min(plots.COLUMN, 1.5 + 0.8 * matrix.shape[1]), 0.8 + 0.45 * matrix.shape[0]))
        sns.heatmap(matrix, annot=True, fmt=".2f", cmap="Blues", cbar=False, ax=ax)
        ax.set(title=f"P(background | class), {ctx.split} split", xlabel="background photograph", ylabel="")
    else:
        side = min(plots.COLUMN, 0.5 * len(matrix) + 2)
        fig, ax = plt.subplots(figsize=(side, side * 0.9))
        sns.heatmap(matrix, annot=len(matrix) <= 10, fmt=".2f", cmap="Blues", cbar=False, ax=ax)
        ax.set(title="P(column class present | row class present)")
    return fig


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


def calibration_record() -> tuple[str, pd.DataFrame]:
    """The pilots that set the default profile's operating point (issue 15), as recorded in
    ``book/calibration.json``: what it says of them, and one row per pilot."""
    import json
    from importlib import resources

    record = json.loads(resources.files("orandnet_lib.book").joinpath("calibration.json").read_text())
    def cell(v: Any) -> str:  # numbers as measured (38.0 not 38.000000), text as written, blanks empty
        return "" if v is None else f"{v:g}" if isinstance(v, (int, float)) else str(v)

    table = pd.DataFrame([{k: cell(v) for k, v in row.items()} for row in record["pilots"]])
    return record["about"], table.rename(columns=str.capitalize)


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


def calibration_notes(data: Benchmark) -> str:
    """How the generator's defaults were set (markdown), for a generated folder."""
    if not data.generator:
        return "This folder was not generated here; its difficulty is whatever the data brings."
    g = data.generator["config"]
    return "\n".join([
        f"- **Image size** ({g['image_size']} px). Training cost grows with the number of pixels; at this size both "
        "classifiers of stage 1 train in minutes on two cores (stage 1 reports the measured times). Larger scenes "
        "left the from-scratch classifiers undertrained within the budget.",
        f"- **Distractors** ({g['distractors_per_scene'][0]} to {g['distractors_per_scene'][1]} per scene). Garments of "
        "the unlabelled Fashion-MNIST classes (shirt, pullover, coat, sneaker) are near-duplicates of the labelled "
        "T-shirts, dresses and shoes at this resolution; with them in the scenes, a from-scratch classifier barely "
        "learned within the budget. The knob stays for harder variants.",
        f"- **Context bias and object size** (bias {g['context_bias']}, objects from {g['object_size'][0]:.0%} to "
        f"{g['object_size'][1]:.0%} of the image side). With a stronger bias and smaller objects, the CNN learned the "
        "backgrounds: its CAMs lit the preferred photographs rather than the garments. Larger objects (VOC's objects "
        "are large too) both weakened that shortcut and let the from-scratch CNN learn within the budget. These "
        "values keep a measurable bias (above) while leaving the objects the stronger cue; small objects remain, "
        "from thin garments at the low end of the size range.",
    ])


def findings(summary: Mapping[str, Any], stats: ClassStatistics, ctx: Context) -> str:
    """The chapter's closing bullets (markdown), from the numbers it computed."""
    d = summary["dataset"]
    objects = stats.objects
    scored = [split for split, has in d.get("masks", {}).items() if has] or list(d["images"])
    lines = [
        f"- {d['objects']} labelled objects over the {sum(d['images'][s] for s in scored)} images with masks "
        f"({', '.join(scored)}), "
        f"{d['mean_classes_per_image']:.2f} distinct classes per image on average.",
        f"- Object areas range from {objects['area_fraction'].min():.2%} to {objects['area_fraction'].max():.1%} of "
        f"the image; a third of the {ctx.split} objects are below {d['size_edges'][0]:.2%} (small) and a third above "
        f"{d['size_edges'][1]:.2%} (large).",
    ]
    if "context_bias_measured" in d and ctx.rates is not None:
        weakest = ctx.rates.loc[ctx.rates["p_preferred"].idxmin()]
        lines.append(
            f"- Context bias: the generator was asked for {d['context_bias_asked']:.2f} and produced a mean "
            f"P(preferred background | class) of {d['context_bias_measured']:.2f} against {1 / len(synth.PHOTOS):.2f} "
            f"without bias. It is weaker than asked because only the scene's first object picks the background; "
            f"the other classes in a multi-object scene get whatever it chose (weakest: {weakest['class']}, "
            f"{weakest['p_preferred']:.2f})."
        )
    return "\n".join(lines)


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
