"""Stage 1: two CAM classifiers, a CNN (a ResNet in the style of IRN) and a vision transformer,
each trained from image-level labels only by the one training loop, scored as classifiers on
validation, then turned into class activation maps (multi-scale + flip, max-normalised, kept
for the image's classes) on the train and validation splits. The CAMs are scored by a sweep of
the background score, and the two classifiers' mistakes are compared: an ensemble can only
remove the mistakes the two do not share. The representation limit bounds what any map on a
network's output grid can score: the true masks shrunk to that grid and scaled back.

Artifacts: one checkpoint per classifier (``classifier:<name>``), keyed by its full spec, its
training config, the training and validation data and the seed; one CAM store per classifier
and split (``cams:<name>_<split>``), keyed by the CAM settings, the split and the checkpoint's key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from ..book import plots
from ..core.keys import ArtifactKey
from ..core.metrics import SweepResult, cam_to_mask
from ..data import aux_task
from ..data.fingerprint import dataset_fingerprint
from ..data.voc import VOCDataset
from ..methods import pretrain
from ..methods.cams import CamStore, error_overlap, grid_limits, grid_shape, sweep_store
from ..methods.cam_classifier import (ClassifierRecipe, ClassifierSpec, TrainedClassifier, cam_key, cam_stores,
                                      classifier_key, train_classifier)

STAGE = "01_classifiers_and_cams"
NOT_IN_KEYS = {
    "cam_batch_size": "batching only: CAMs are computed image by image within a batch; the same maps",
    "n_examples": "presentation: training images shown with their CAMs and masks",
}
CLASSIFIERS = ("cnn", "vit")


@dataclass(frozen=True)
class Params:
    seed: int = 0
    train_split: str = "train"  # CAMs are scored on this split
    val_split: str = "val"  # classifier validation and a second CAM evaluation
    fit_split: str = ""  # the split classifiers train on; empty: train_split
    crop_size: int = 96
    cnn_backbone: str = "resnet18"
    cnn_backbone_kwargs: dict[str, Any] = field(default_factory=lambda: {"channels": [32, 64, 128, 256],
                                                                         "layers": [1, 1, 1, 1]})
    cnn_pretrained: str = ""
    cnn_epochs: int = 14
    cnn_batch_size: int = 32
    cnn_optimizer: str = "adamw"
    cnn_lr: float = 0.002
    cnn_weight_decay: float = 0.0001
    cnn_head_lr_mult: float = 1.0
    cnn_warmup_steps: int = 0
    cnn_bf16: bool = False
    vit_backbone: str = "vit_tiny_patch16_224"
    vit_backbone_kwargs: dict[str, Any] = field(default_factory=lambda: {"embed_dim": 96, "depth": 4, "num_heads": 4})
    vit_pretrained: str = ""
    vit_patch_size: int = 1
    vit_stem_widths: tuple[int, ...] = (16, 32, 64)
    vit_stem: str = "conv"  # "conv": from scratch, of vit_stem_widths; "resnet": the CNN's pretrained ResNet, same stride
    vit_pool: str = "avg"
    vit_cam_method: str = "cam"  # "cam" | "gradcam" | "attribution" (the official code's transformer attribution)
    vit_epochs: int = 14
    vit_batch_size: int = 32
    vit_optimizer: str = "adamw"
    vit_lr: float = 0.001
    vit_weight_decay: float = 0.05
    vit_warmup_steps: int = 100
    vit_head_lr_mult: float = 1.0
    cam_scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)  # the paper's scales
    cam_flip: bool = True
    cam_batch_size: int = 32
    n_examples: int = 6

    @property
    def classifier_split(self) -> str:
        """The split the classifiers train on."""
        return self.fit_split or self.train_split


def vit_stem(p: Params) -> dict[str, Any]:
    """The ViT spec's ``stem``: empty for the from-scratch convolutional stem ("conv"); else the
    stem kind with the CNN's backbone and starting point ("resnet": a hybrid ViT on the CNN's
    pretrained ResNet; the ViT checks the kind when it is built)."""
    if p.vit_stem == "conv":
        return {}
    return {"kind": p.vit_stem, "backbone": p.cnn_backbone, "backbone_kwargs": dict(p.cnn_backbone_kwargs),
            "pretrained": p.cnn_pretrained}


def classifier_specs(p: Params) -> dict[str, ClassifierSpec]:
    """The CNN's and the ViT's specs from the stage's parameters."""
    return {
        "cnn": ClassifierSpec.from_dict(dict(
            kind="cnn", backbone=p.cnn_backbone, backbone_kwargs=p.cnn_backbone_kwargs, pretrained=p.cnn_pretrained,
            crop_size=p.crop_size, epochs=p.cnn_epochs, batch_size=p.cnn_batch_size, optimizer=p.cnn_optimizer,
            lr=p.cnn_lr, weight_decay=p.cnn_weight_decay, head_lr_mult=p.cnn_head_lr_mult,
            warmup_steps=p.cnn_warmup_steps, bf16=p.cnn_bf16)),
        "vit": ClassifierSpec.from_dict(dict(
            kind="vit", backbone=p.vit_backbone, backbone_kwargs=p.vit_backbone_kwargs, pretrained=p.vit_pretrained,
            crop_size=p.crop_size, patch_size=p.vit_patch_size, stem_widths=p.vit_stem_widths, stem=vit_stem(p),
            pool=p.vit_pool,
            cam_method=p.vit_cam_method, epochs=p.vit_epochs, batch_size=p.vit_batch_size, optimizer=p.vit_optimizer,
            lr=p.vit_lr, weight_decay=p.vit_weight_decay, warmup_steps=p.vit_warmup_steps,
            head_lr_mult=p.vit_head_lr_mult)),
    }


def recipes(p: Params) -> dict[str, ClassifierRecipe]:
    """Each classifier as a later stage repeats it (stage 3's third classifier): recorded in
    the stage's metrics as ``recipes``."""
    return {name: ClassifierRecipe(spec, p.classifier_split, p.val_split, tuple(p.cam_scales), p.cam_flip,
                                   p.cam_batch_size) for name, spec in classifier_specs(p).items()}


def artifact_keys(p: Params, data: Mapping[str, str], upstream: Mapping[str, str]) -> dict[str, ArtifactKey]:
    """``classifier:<name>`` and ``cams:<name>_<split>`` for the CNN and the ViT, on the train
    and validation splits. ``data[split]``: a split's fingerprint; no upstream artifact."""
    keys: dict[str, ArtifactKey] = {}
    for name, spec in classifier_specs(p).items():
        clf = keys[f"classifier:{name}"] = classifier_key(spec, p.seed, data[p.classifier_split], data[p.val_split])
        for split in (p.train_split, p.val_split):
            keys[f"cams:{name}_{split}"] = cam_key(spec.cam_method, p.cam_scales, p.cam_flip, data[split], clf.digest)
    return keys


@dataclass
class Splits:
    train: VOCDataset  # CAMs are scored here
    val: VOCDataset  # classifier validation, second CAM evaluation
    fit: VOCDataset  # the classifiers train here

    def fingerprints(self) -> dict[str, str]:
        return {ds.split: dataset_fingerprint(ds) for ds in (self.train, self.val, self.fit)}

    def cammed(self) -> dict[str, VOCDataset]:
        """The splits CAMs are computed on, train first."""
        return {self.train.split: self.train, self.val.split: self.val}

    def scored(self) -> dict[str, VOCDataset]:
        """The splits with masks, on which CAMs are scored (a weakly labelled train split has none)."""
        return {split: ds for split, ds in self.cammed().items() if ds.has_masks}


def load_splits(stage: Any, p: Params) -> Splits:
    train = VOCDataset(stage.data_root, p.train_split)
    return Splits(train, VOCDataset(stage.data_root, p.val_split),
                  VOCDataset(stage.data_root, p.fit_split) if p.fit_split else train)


def keys_for(p: Params, splits: Splits) -> dict[str, ArtifactKey]:
    """:func:`artifact_keys` with the fingerprints of the splits on disk."""
    return artifact_keys(p, splits.fingerprints(), {})


# -- the starting point ----------------------------------------------------------------------------

@dataclass
class Pretrained:
    """A classifier's backbone pretrained on an auxiliary task (``methods.pretrain``)."""

    recipe: str
    kind: str
    backbone: str
    path: Path  # the cached weights
    summary: dict[str, Any]  # pretrain.summary: history, val_accuracy, seconds, ...


def pretrained_backbones(p: Params, progress: bool = True) -> dict[str, Pretrained]:
    """The weights of each classifier whose ``pretrained`` names an auxiliary recipe, trained on
    the recipe's task on first use and cached (the classifiers then load them when built)."""
    out = {}
    for name, spec in classifier_specs(p).items():
        if pretrain.is_recipe(spec.pretrained):
            path = pretrain.weights_file(spec.pretrained, spec.kind, spec.backbone, spec.shape(), progress=progress,
                                         log=lambda message: None)  # the table below says it
            out[name] = Pretrained(spec.pretrained, spec.kind, spec.backbone, path, pretrain.summary(path))
    return out


def pretraining_table(pretrained: Mapping[str, Pretrained]) -> pd.DataFrame:
    """One row per pretrained backbone: kind, timm backbone, recipe, held-out accuracy, the
    seconds its pretraining took (when it ran, on whichever run first asked) and the cached file."""
    return pd.DataFrame({name: {"kind": t.kind, "backbone": t.backbone, "recipe": t.recipe,
                                "val accuracy (%)": t.summary["val_accuracy"], "seconds": t.summary["seconds"],
                                "cached file": t.path.name}
                         for name, t in pretrained.items()}).T


def pretraining_curves(pretrained: Mapping[str, Pretrained]) -> plt.Figure:
    """The training loss and held-out accuracy after each epoch of every pretraining."""
    return plots.training_curves({f"{name} ({t.recipe})": t.summary["history"] for name, t in pretrained.items()},
                                 keys=("loss", "val_accuracy"))


def pretraining_examples(pretrained: Mapping[str, Pretrained], n: int = 12) -> plt.Figure:
    """Training images of the (first) auxiliary task, each titled with its class."""
    name = next(iter(pretrained.values())).recipe
    recipe = pretrain.AUX_RECIPES.get(name)
    images, labels = pretrain.aux_images(recipe, "train", progress=False, n=n)
    return plots.labelled_grid(list(images), [recipe.classes[int(c)].name for c in labels], columns=6)


def _start(setting: str) -> str:
    if pretrain.is_recipe(setting):
        return f"the backbone pretrained on the auxiliary task (recipe `{setting}`)"
    if setting == "timm":
        return "ImageNet weights loaded through timm, as in the paper"
    return f"the weights in `{setting}`" if setting else "random weights (trained from scratch)"


def _task_classes(r: pretrain.AuxRecipe) -> str:
    classes = r.classes
    if r.catalogue == "fashion-mnist":
        return (f"{len(classes)}-way classification of single Fashion-MNIST items "
                f"({', '.join(c.name for c in classes)}), tinted and textured as in the benchmark")
    counts = aux_task.source_counts(classes)
    parts = ", ".join(f"{n} {SOURCE_WORDS[s]}" for s, n in counts.items())
    left_out = f" (left out: the benchmark's {', '.join(r.exclude)})" if r.exclude else ""
    return (f"{len(classes)}-way classification, the embedded analogue of ImageNet's breadth: {parts}{left_out}; "
            f"garments, glyphs and shapes tinted and textured as the benchmark's objects, textures in their own colours")


SOURCE_WORDS = {"fashion-mnist": "Fashion-MNIST garment classes", "glyph": "glyphs (Latin, Greek, Cyrillic, Hebrew, "
                "Armenian and Georgian letters, digits and symbols, in five DejaVu faces)",
                "shape": "procedural shapes", "texture": "texture classes cut from the bundled photographs"}


def pretraining_classes(pretrained: Mapping[str, Pretrained]) -> pd.DataFrame:
    """The classes of each recipe used: per source, how many and which."""
    rows = []
    for recipe_name in dict.fromkeys(t.recipe for t in pretrained.values()):
        classes = pretrain.AUX_RECIPES.get(recipe_name).classes
        for source, n in aux_task.source_counts(classes).items():
            names = [c.name.removeprefix(f"{source} ").removeprefix("glyph ") for c in classes if c.source == source]
            rows.append({"recipe": recipe_name, "source": source, "classes": n,
                         "share (%)": 100 * n / len(classes), "which": " ".join(names) if source == "glyph"
                         else ", ".join(names)})
    return pd.DataFrame(rows).set_index(["recipe", "source"])


def pretraining_text(p: Params, pretrained: Mapping[str, Pretrained]) -> str:
    """Where each classifier starts and, when one starts from an auxiliary task, why and what that task is."""
    lines = [f"- **{name}** starts from {_start(spec.pretrained)}"
             + (f"; its stem (the patch embedding) is the CNN's {spec.stem['backbone']} up to stride "
                f"{2 ** len(spec.stem_widths)}, starting from {_start(spec.stem.get('pretrained', ''))}, so the "
                f"transformer reads pretrained convolutional features (a hybrid ViT, as ViT-R50)."
                if spec.stem else ".") for name, spec in classifier_specs(p).items()]
    for recipe_name in dict.fromkeys(t.recipe for t in pretrained.values()):
        r = pretrain.AUX_RECIPES.get(recipe_name)
        lines.append(
            f"\nThe paper's networks start from ImageNet-pretrained backbones; none can be had offline, so the "
            f"embedded profiles make their own starting point. Recipe `{recipe_name}`: each backbone first learns a "
            f"{_task_classes(r)}, {r.n_train} images of {r.image_size} px, each one item pasted on a crop of the "
            f"bundled photographs or (a share of {r.texture_background:.0%}) a procedural texture, trained for "
            f"{r.epochs} epoch{'s' * (r.epochs != 1)}. "
            f"The task uses no masks and none of the validation scenes' objects (the embedded benchmark's come from "
            f"Fashion-MNIST's test set; the task draws from its training set only, every "
            f"{pretrain.HOLD_OUT_EVERY}th item held out for the "
            f"accuracy below, {r.n_val} images). The classifiers still learn this chapter's task from image labels "
            f"only. The weights are cached by recipe and backbone shape, so a machine pays for them once; the "
            f"relation net (stage 4) and DeepLab (stage 5) load the same pretrained ResNet when they name the same "
            f"recipe and their backbone has the CNN's shape.")
    return "\n".join(lines)


# -- training ------------------------------------------------------------------------------------

def train_classifiers(stage: Any, p: Params, splits: Splits) -> dict[str, TrainedClassifier]:
    """The CNN, then the ViT, on the fit split (each seeded with ``p.seed``)."""
    keys = keys_for(p, splits)
    torch.manual_seed(p.seed)
    return {name: train_classifier(name, spec, splits.fit, splits.val, stage.dir, seed=p.seed,
                                   key=keys[f"classifier:{name}"])
            for name, spec in classifier_specs(p).items()}


def chance_map(val: VOCDataset) -> float:
    """The mAP of a random ranking, in percent: the share of positive image-class pairs."""
    return 100 * float(np.mean([np.stack([s.labels for s in val]).mean(0)]))


def classifier_table(trained: Mapping[str, TrainedClassifier]) -> pd.DataFrame:
    return pd.DataFrame({
        name: {"val mAP (%)": t.val_scores["map"], "val F1 (%)": t.val_scores["f1"],
               "training time (s)": t.train_seconds, "epochs": len(t.history)}
        for name, t in trained.items()}).T


def per_class_ap(trained: Mapping[str, TrainedClassifier], class_names: Any) -> pd.DataFrame:
    """(classifier, foreground class) validation AP in percent."""
    return pd.DataFrame({name: t.val_scores["ap_per_class"] for name, t in trained.items()}, index=class_names[1:]).T


# -- CAMs ----------------------------------------------------------------------------------------

def compute_cams(stage: Any, p: Params, trained: Mapping[str, TrainedClassifier],
                 splits: Splits) -> dict[str, dict[str, CamStore]]:
    """Every classifier's CAM store on the train and validation splits: {name: {split: store}}."""
    keys = keys_for(p, splits)
    out = {}
    for name, t in trained.items():
        paths = cam_stores(t, splits.cammed(), stage.dir / "cams", p.cam_scales, p.cam_flip, p.cam_batch_size,
                           keys={split: keys[f"cams:{name}_{split}"] for split in splits.cammed()})
        out[name] = {split: CamStore(path) for split, path in paths.items()}
    return out


def sweep_cams(stores: Mapping[str, Mapping[str, CamStore]], splits: Splits) -> dict[str, dict[str, SweepResult]]:
    """Background-score sweeps: {split: {classifier: sweep}}."""
    return {split: {name: sweep_store(stores[name][split], ds) for name in stores}
            for split, ds in splits.scored().items()}


def cam_table(sweeps: Mapping[str, Mapping[str, SweepResult]]) -> pd.DataFrame:
    """Scores at the best-mIoU and the precision = recall background score, per split and source."""
    rows = []
    for split, by_source in sweeps.items():
        for name, sweep in by_source.items():
            for rule, scores in (("best mIoU", sweep.best()), ("precision = recall", sweep.crossover())):
                rows.append({"split": split, "source": name, "threshold rule": rule, **scores})
    return pd.DataFrame(rows).set_index(["split", "source", "threshold rule"])


def deeplab_stride() -> int:
    """The output stride of stage 5's DeepLab: its constructor's default, which stage 5 keeps."""
    import inspect

    from ..nets.deeplab import DeepLab

    return int(inspect.signature(DeepLab).parameters["output_stride"].default)


def representation_limits(p: Params, trained: Mapping[str, TrainedClassifier], splits: Splits) -> pd.DataFrame:
    """The best mIoU (%) a map on each output grid can reach on each scored split: the true
    masks shrunk to the grid (area-weighted class shares per cell) and scaled back (bilinear,
    arg-max), as :func:`~orandnet_lib.methods.cams.grid_limits`. One row per classifier (its
    own output stride: the CNN's, the ViT's token stride) and CAM scale, the largest scale being
    the finest grid a multi-scale sum resolves, and one for stage 5's DeepLab at scale 1."""
    outputs = [(name, int(t.model.stride), float(s)) for name, t in trained.items() for s in sorted(p.cam_scales)]
    outputs.append(("deeplab", deeplab_stride(), 1.0))  # stage 5's segmentation network
    per_split = {split: grid_limits(ds, [(st, sc) for _, st, sc in outputs]) for split, ds in splits.scored().items()}
    first = next(iter(splits.scored().values()))
    h, w = first.load_mask(first.ids[0]).shape
    rows = [{"output": name, "stride": st, "scale": sc, f"grid at {h}x{w} px": "x".join(map(str, grid_shape(h, w, st, sc))),
             **{f"{split} limit mIoU (%)": limits[(st, sc)] for split, limits in per_split.items()}}
            for name, st, sc in outputs]
    return pd.DataFrame(rows).set_index(["output", "stride", "scale"])


def limits_summary(limits: pd.DataFrame) -> dict[str, Any]:
    """``cams_limit``: per output its stride, per scale the limit on each split (percent), and
    ``finest``: the limit at its largest scale, the finest grid its multi-scale sum resolves."""
    out: dict[str, Any] = {}
    cols = [c for c in limits.columns if c.endswith(" limit mIoU (%)")]
    for (name, stride, scale), row in limits.iterrows():
        entry = out.setdefault(str(name), {"stride": int(stride), "scales": {}})
        scores = {c.removesuffix(" limit mIoU (%)"): float(row[c]) for c in cols}
        entry["scales"][f"{scale:g}"] = scores
        entry["finest"] = {"scale": float(scale), **scores}  # rows are in increasing scale
    return out


def best_thresholds(p: Params, sweeps: Mapping[str, Mapping[str, SweepResult]]) -> dict[str, float]:
    """Each classifier's best-mIoU background score on the train split, in [0, 1]."""
    return {name: s.best()["threshold"] / 100 for name, s in sweeps[p.train_split].items()}


def example_figure(p: Params, train: VOCDataset, stores: Mapping[str, Mapping[str, CamStore]],
                   sweeps: Mapping[str, Mapping[str, SweepResult]]) -> plt.Figure:
    """Training images: ground truth, then per classifier its CAM (max over the image's
    classes) and its mask at its best background score (a split without masks: the CAMs alone)."""
    scored = p.train_split in sweeps
    best_t = best_thresholds(p, sweeps) if scored else {}
    picks = np.linspace(0, len(train) - 1, min(p.n_examples, len(train))).astype(int)
    rows = []
    for i in picks:
        sample = train[i]
        row = [sample.image] + ([plots.overlay(sample.image, sample.mask)] if scored else [])
        for name in stores:
            cams, ids = stores[name][p.train_split][sample.id]
            heat = cams.max(axis=0) if len(cams) else np.zeros(sample.image.shape[:2])
            row.append(plots.heatmap_overlay(sample.image, heat))
            if scored:
                row.append(plots.overlay(sample.image, cam_to_mask(cams, ids, best_t[name])))
        rows.append(row)
    kinds = ("CAM", "mask") if scored else ("CAM",)
    titles = ["image"] + (["ground truth"] if scored else []) + [f"{n} {kind}" for n in stores for kind in kinds]
    return plots.image_grid(rows, titles=titles, size=1.7, class_names=train.class_names)


def shared_errors(p: Params, stores: Mapping[str, Mapping[str, CamStore]], train: VOCDataset,
                  sweeps: Mapping[str, Mapping[str, SweepResult]]) -> pd.DataFrame | None:
    """Per class (rows: every class name), the false positives / negatives of the two
    classifiers at their best background scores, and the share both make (shared / union);
    None for a train split without masks."""
    if p.train_split not in sweeps:
        return None
    best_t = best_thresholds(p, sweeps)
    a, b = list(stores)
    overlap = error_overlap(stores[a][p.train_split], stores[b][p.train_split], train, best_t[a], best_t[b])
    return pd.DataFrame(overlap.table(), index=train.class_names)


def shared_errors_figure(ov: pd.DataFrame, names: list[str]) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(plots.COLUMN, 3.6))
    ov.iloc[1:][["fp_jaccard", "fn_jaccard"]].rename(
        columns={"fp_jaccard": "false positives", "fn_jaccard": "false negatives"}).plot.bar(ax=ax)
    ax.set(ylabel="shared / union", title=f"errors shared by {names[0]} and {names[1]} (train split)", ylim=(0, 1))
    plt.xticks(rotation=30)
    fig.tight_layout()
    return fig


def summarise(p: Params, trained: Mapping[str, TrainedClassifier], sweeps: Mapping[str, Mapping[str, SweepResult]],
              ov: pd.DataFrame | None, limits: pd.DataFrame | None = None,
              pretrained: Mapping[str, Pretrained] | None = None) -> dict[str, Any]:
    """The summary sections: ``classifiers``, ``cams``, ``error_overlap``, given the
    representation limits ``cams_limit`` (:func:`limits_summary`) and, given the pretrained
    backbones, ``pretraining`` (per classifier: recipe, val accuracy, seconds, cached file)."""
    # a train split without masks: the CAMs are scored on val only
    cams = {name: {**(sweeps[p.train_split][name].describe() if p.train_split in sweeps else {}),
                   **({"val": sweeps[p.val_split][name].best()} if p.val_split in sweeps else {})}
            for name in trained}
    classifiers = {name: {"val_map": t.val_scores["map"], "val_f1": t.val_scores["f1"],
                          "train_seconds": t.train_seconds, "spec": t.spec.to_dict()}
                   for name, t in trained.items()}
    out: dict[str, Any] = {"classifiers": classifiers, "cams": cams}
    if ov is not None:
        fg = ov.iloc[1:]
        out["error_overlap"] = {
            "fp_jaccard_mean": float(np.nanmean(fg["fp_jaccard"])), "fn_jaccard_mean": float(np.nanmean(fg["fn_jaccard"])),
            # of each source's foreground false-positive pixels, the share the other source makes too
            "fp_shared_of": {name: float(fg["fp_shared"].sum() / max(1, fg[col].sum()))
                             for name, col in zip(trained, ("fp_a", "fp_b"))}}
    if limits is not None:
        out["cams_limit"] = limits_summary(limits)
    if pretrained:
        out["pretraining"] = {name: {"recipe": t.recipe, "val_accuracy": t.summary["val_accuracy"],
                                     "seconds": t.summary["seconds"], "file": t.path.name}
                              for name, t in pretrained.items()}
    return out


def record(stage: Any, p: Params, splits: Splits, trained: Mapping[str, TrainedClassifier],
           summary: Mapping[str, Any]) -> dict[str, Any]:
    """The stage's record: the summary, the training histories and the artifacts' keys."""
    return stage.record(metrics={**summary, "history": {name: t.history for name, t in trained.items()},
                                 "recipes": {name: r.to_dict() for name, r in recipes(p).items()}},
                        summary=dict(summary), artifacts=keys_for(p, splits))


def findings(p: Params, summary: Mapping[str, Any], chance: float) -> str:
    """The chapter's closing bullets (markdown), from the numbers it computed."""
    limit = summary.get("cams_limit") or {}

    def ceiling(name: str) -> str:
        """The representation limit at a network's finest grid, in words."""
        f = limit[name]["finest"]
        split = p.train_split if p.train_split in f else p.val_split
        return f"{f[split]:.1f} % on {split} (stride {limit[name]['stride']}, scale {f['scale']:g})"

    lines = []
    for name, c in summary["cams"].items():
        t = summary["classifiers"][name]
        if "miou" not in c:  # a train split without masks
            val = f" On {p.val_split} its CAM reaches {c['val']['miou']:.1f} % mIoU." if "val" in c else ""
            lines.append(f"- **{name}**: validation mAP {t['val_map']:.1f} % (chance about {chance:.1f} %), trained in "
                         f"{t['train_seconds']:.0f} s. The {p.train_split} split has no masks, so its CAMs are not "
                         f"scored there.{val}")
            continue
        mode = ("over-spread: it covers more of the objects than it gets right (recall above precision)"
                if c["recall"] > c["precision"] else
                "scattered or under-covering: what it marks is mostly right but it misses object pixels "
                "(precision above recall)")
        bound = (f"a perfect map on its output grid would score {ceiling(name)}, the ground truth itself 100 %"
                 if name in limit else "the ground truth itself would score 100 %")
        lines.append(
            f"- **{name}**: validation mAP {t['val_map']:.1f} % (a random ranking would score about {chance:.1f} %, "
            f"the share of positive image-class pairs), trained in {t['train_seconds']:.0f} s. Its CAM reaches "
            f"{c['miou']:.1f} % mIoU on the {p.train_split} split at background score {c['threshold']:.0f} % "
            f"(precision {c['precision']:.1f} %, recall {c['recall']:.1f} %); {bound}. "
            f"Failure mode: {mode}. On {p.val_split}: {c['val']['miou']:.1f} % mIoU.")
    if "deeplab" in limit:
        lines.append(
            f"- Representation limit (the true masks shrunk to an output grid and scaled back, {p.train_split} "
            f"split): no map on a grid scores more than that grid allows; stage 5's DeepLab at most "
            f"{ceiling('deeplab')}. The CAMs' limits are those of their finest scale, the grid a multi-scale "
            f"sum resolves.")
    shared = summary.get("error_overlap")
    if shared is None:
        return "\n".join(lines)
    lines.append(
        f"- The two classifiers share on average {shared['fp_jaccard_mean']:.0%} of their false-positive pixels "
        f"and {shared['fn_jaccard_mean']:.0%} of their false negatives (per class, shared / union)."
    )
    return "\n".join(lines)


# -- the stage in order --------------------------------------------------------------------------

def run(stage: Any, p: Params) -> dict[str, Any]:
    """The stage's recipe in the order the notebook runs it, without its tables and figures:
    the pretrained starting points, the two classifiers, their CAM stores and sweeps, the
    representation limits and the shared errors, recorded. Returns the record."""
    splits = load_splits(stage, p)
    pretrained = pretrained_backbones(p)
    trained = train_classifiers(stage, p, splits)
    stores = compute_cams(stage, p, trained, splits)
    sweeps = sweep_cams(stores, splits)
    limits = representation_limits(p, trained, splits)
    overlap = shared_errors(p, stores, splits.train, sweeps)
    return record(stage, p, splits, trained, summarise(p, trained, sweeps, overlap, limits, pretrained))
