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
from typing import Any

import pandas as pd
import torch

from ..core.keys import ArtifactKey
from ..core.metrics import SweepResult
from ..data.fingerprint import dataset_fingerprint
from ..data.voc import VOCDataset
from ..methods import pretrain
from ..methods.cam_classifier import (ClassifierRecipe, ClassifierSpec, TrainedClassifier, cam_key, cam_stores,
                                      classifier_key, deeplab_stride, limits_summary, limits_table, overlap_summary,
                                      train_classifier)
from ..methods.cams import CamStore, error_overlap, sweep_store

STAGE = "01_classifiers_and_cams"
NOT_IN_KEYS = {
    "cam_batch_size": "batching only: CAMs are computed image by image within a batch; the same maps",
    "n_examples": "presentation: training images shown with their CAMs and masks",
}


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
    vit_bf16: bool = False
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
            head_lr_mult=p.vit_head_lr_mult, bf16=p.vit_bf16)),
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
            keys[f"cams:{name}_{split}"] = cam_key(spec.cam_method, p.cam_scales, p.cam_flip, data[split], clf.digest,
                                                         bf16=spec.bf16)
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

def pretrained_backbones(p: Params, progress: bool = True) -> dict[str, pretrain.Pretrained]:
    """The weights of each classifier whose ``pretrained`` names an auxiliary recipe, trained on
    the recipe's task on first use and cached (the classifiers then load them when built)."""
    out = {}
    for name, spec in classifier_specs(p).items():
        if pretrain.is_recipe(spec.pretrained):
            path = pretrain.weights_file(spec.pretrained, spec.kind, spec.backbone, spec.shape(), progress=progress,
                                         log=lambda message: None)  # the table below says it
            out[name] = pretrain.Pretrained(spec.pretrained, spec.kind, spec.backbone, path, pretrain.summary(path))
    return out


def pretraining_facts(p: Params, pretrained: Mapping[str, pretrain.Pretrained]) -> dict[str, Any]:
    """Facts for ``pretraining.md``: where each classifier starts (a hybrid ViT: also its stem,
    the CNN's backbone up to the stem's stride) and each auxiliary recipe used."""
    def start(setting: str) -> dict[str, str]:
        return {"kind": pretrain.setting_kind(setting), "setting": setting}

    starts = [{"name": name, "start": start(spec.pretrained),
               "stem": {"backbone": spec.stem["backbone"], "stride": 2 ** len(spec.stem_widths),
                        "start": start(spec.stem.get("pretrained", ""))} if spec.stem else None}
              for name, spec in classifier_specs(p).items()]
    used = dict.fromkeys(t.recipe for t in pretrained.values())
    return {"classifiers": starts, "recipes": [pretrain.recipe_facts(r) for r in used]}


# -- training and CAMs -----------------------------------------------------------------------------

def train_classifiers(stage: Any, p: Params, splits: Splits) -> dict[str, TrainedClassifier]:
    """The CNN, then the ViT, on the fit split (each seeded with ``p.seed``)."""
    keys = keys_for(p, splits)
    torch.manual_seed(p.seed)
    return {name: train_classifier(name, spec, splits.fit, splits.val, stage.dir, seed=p.seed,
                                   key=keys[f"classifier:{name}"])
            for name, spec in classifier_specs(p).items()}


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


def representation_limits(p: Params, trained: Mapping[str, TrainedClassifier], splits: Splits) -> pd.DataFrame:
    """The best mIoU (%) a map on each output grid can reach on each scored split
    (:func:`~orandnet_lib.methods.cam_classifier.limits_table`): one row per classifier (its
    own output stride: the CNN's, the ViT's token stride) and CAM scale, the largest scale being
    the finest grid a multi-scale sum resolves, and one for stage 5's DeepLab at scale 1."""
    outputs = [(name, int(t.model.stride), float(s)) for name, t in trained.items() for s in sorted(p.cam_scales)]
    outputs.append(("deeplab", deeplab_stride(), 1.0))  # stage 5's segmentation network
    return limits_table(outputs, splits.scored())


def best_thresholds(p: Params, sweeps: Mapping[str, Mapping[str, SweepResult]]) -> dict[str, float] | None:
    """Each classifier's best-mIoU background score on the train split, in [0, 1]; None for a
    train split without masks."""
    if p.train_split not in sweeps:
        return None
    return {name: s.best()["threshold"] / 100 for name, s in sweeps[p.train_split].items()}


def shared_errors(p: Params, stores: Mapping[str, Mapping[str, CamStore]], train: VOCDataset,
                  sweeps: Mapping[str, Mapping[str, SweepResult]]) -> pd.DataFrame | None:
    """Per class (rows: every class name), the false positives / negatives of the two
    classifiers at their best background scores, and the share both make (shared / union);
    None for a train split without masks."""
    best_t = best_thresholds(p, sweeps)
    if best_t is None:
        return None
    a, b = list(stores)
    overlap = error_overlap(stores[a][p.train_split], stores[b][p.train_split], train, best_t[a], best_t[b])
    return pd.DataFrame(overlap.table(), index=train.class_names)


# -- the record and the findings -------------------------------------------------------------------

def summarise(p: Params, trained: Mapping[str, TrainedClassifier], sweeps: Mapping[str, Mapping[str, SweepResult]],
              ov: pd.DataFrame | None, limits: pd.DataFrame | None = None,
              pretrained: Mapping[str, pretrain.Pretrained] | None = None) -> dict[str, Any]:
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
        out["error_overlap"] = overlap_summary(ov, list(trained))
    if limits is not None:
        out["cams_limit"] = limits_summary(limits)
    if pretrained:
        out["pretraining"] = {name: t.record() for name, t in pretrained.items()}
    return out


def record(stage: Any, p: Params, splits: Splits, trained: Mapping[str, TrainedClassifier],
           summary: Mapping[str, Any]) -> dict[str, Any]:
    """The stage's record: the summary, the training histories and the artifacts' keys."""
    return stage.record(metrics={**summary, "history": {name: t.history for name, t in trained.items()},
                                 "recipes": {name: r.to_dict() for name, r in recipes(p).items()}},
                        summary=dict(summary), artifacts=keys_for(p, splits))


def findings(p: Params, summary: Mapping[str, Any], chance: float) -> dict[str, Any]:
    """Facts for the chapter's closing bullets (``findings.md``): per classifier its scores and
    failure mode ("over-spread": recall above precision, else "under-covering"), the limits at
    the finest grids (on the train split, else val), the shared errors; ``chance``: the mAP of
    a random ranking (:func:`~orandnet_lib.methods.classification.chance_map`)."""
    limit = summary.get("cams_limit") or {}

    def ceiling(name: str) -> dict[str, Any] | None:
        if name not in limit:
            return None
        f = limit[name]["finest"]
        split = p.train_split if p.train_split in f else p.val_split
        return {"value": f[split], "split": split, "stride": limit[name]["stride"], "scale": f["scale"]}

    classifiers = []
    for name, c in summary["cams"].items():
        t = summary["classifiers"][name]
        cam = None if "miou" not in c else {  # None: a train split without masks
            "miou": c["miou"], "threshold": c["threshold"], "precision": c["precision"], "recall": c["recall"],
            "mode": "over-spread" if c["recall"] > c["precision"] else "under-covering"}
        classifiers.append({"name": name, "val_map": t["val_map"], "train_seconds": t["train_seconds"], "cam": cam,
                            "val_miou": c["val"]["miou"] if "val" in c else None, "ceiling": ceiling(name)})
    shared = summary.get("error_overlap")
    return {"train_split": p.train_split, "val_split": p.val_split, "chance": chance, "classifiers": classifiers,
            "deeplab": ceiling("deeplab"),
            "shared": {"fp": shared["fp_jaccard_mean"], "fn": shared["fn_jaccard_mean"]} if shared else None}


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
