"""Stage 1 from top to bottom: build a CAM classifier from a spec, train it with the one
training loop (resuming from its checkpoint), score it on validation, compute its CAMs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core import store
from ..book.profiles import data_fingerprint
from ..methods.cams import compute_store
from ..methods.classification import ClassificationSet, classification_scores, multilabel_loss, predict
from ..nets.classifiers import create_classifier
from ..core.train import TrainConfig, fit, load_weights, resolve_device
from ..data.voc import VOCDataset


@dataclass(frozen=True)
class ClassifierSpec:
    """Everything that defines one trained CAM classifier."""

    kind: str  # "cnn" | "vit"
    backbone: str
    pretrained: str = ""  # "" from scratch, "timm" from the hub, or a local weights file
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    crop_size: int = 96
    patch_size: int | None = None  # ViT only
    stem_widths: tuple[int, ...] = ()  # ViT only: convolutional stem
    pool: str = "avg"  # ViT only
    cam_method: str = "cam"  # "cam" (CAM head) | "gradcam"
    epochs: int = 8
    batch_size: int = 32
    lr: float = 0.05
    weight_decay: float = 1e-4
    optimizer: str = "sgd"
    warmup_steps: int = 0
    head_lr_mult: float = 1.0
    scale_range: tuple[float, float] = (0.75, 1.25)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ClassifierSpec":
        return store.dataclass_from_dict(cls, values, "classifier settings")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self, seed: int, data: VOCDataset) -> str:
        """Names the checkpoint: the spec, the seed and the training data (its content
        fingerprint and split), so no checkpoint is ever resumed on other data."""
        return store.hash_obj({"spec": self.to_dict(), "seed": seed, "classes": list(data.class_names),
                               "data": data_fingerprint(data.root), "split": data.split, "ids": store.hash_obj(data.ids)})[:12]

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                           optimizer=self.optimizer, warmup_steps=self.warmup_steps, seed=seed)


def build(spec: ClassifierSpec, num_classes: int) -> nn.Module:
    kwargs: dict[str, Any] = {"backbone": spec.backbone, "pretrained": spec.pretrained,
                              "backbone_kwargs": dict(spec.backbone_kwargs)}
    if spec.kind == "vit":
        kwargs.update(img_size=spec.crop_size, patch_size=spec.patch_size, stem_widths=spec.stem_widths, pool=spec.pool)
    # timm's constructors want tuples where TOML and papermill give lists (channels, layers)
    kwargs["backbone_kwargs"] = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs["backbone_kwargs"].items()}
    return create_classifier(spec.kind, num_classes, **kwargs)


@dataclass
class TrainedClassifier:
    name: str
    spec: ClassifierSpec
    model: nn.Module
    history: list[dict[str, float]]
    val_scores: dict[str, Any]
    train_seconds: float  # summed epoch times (includes per-epoch validation)
    checkpoint: Path


def train_classifier(name: str, spec: ClassifierSpec, train: VOCDataset, val: VOCDataset, out_dir: Path,
                     seed: int = 0, progress: bool = True) -> TrainedClassifier:
    """Train (or resume, or reload when already finished) and score on ``val``.

    The checkpoint name carries the spec's fingerprint, so changing any setting starts a
    new run instead of resuming an incompatible one.
    """
    torch.manual_seed(seed)
    num_classes = train.num_classes - 1
    model = build(spec, num_classes)
    ckpt = Path(out_dir) / f"{name}-{spec.fingerprint(seed, train)}.pt"
    train_set = ClassificationSet(train, spec.crop_size, augment=True, scale_range=spec.scale_range, seed=seed)
    val_set = ClassificationSet(val, spec.crop_size, augment=False)
    device = resolve_device()

    def evaluate(m: nn.Module, epoch: int) -> dict[str, float]:
        scores = classification_scores(*predict(m, val_set, device=device))
        return {"val_map": scores["map"], "val_f1": scores["f1"]}

    history = fit(model, train_set, multilabel_loss, spec.train_config(seed), checkpoint=ckpt,
                  param_groups=model.param_groups(spec.head_lr_mult), evaluate=evaluate, progress=progress,
                  desc=f"training {name}")
    seconds = sum(h["seconds"] for h in history)  # epochs only, also when resumed from a checkpoint
    val_scores = classification_scores(*predict(model, val_set, device=device))
    return TrainedClassifier(name, spec, model, history, val_scores, seconds, ckpt)


def cam_stores(trained: TrainedClassifier, splits: dict[str, VOCDataset], out_dir: Path, scales: list[float],
               flip: bool = True, batch_size: int = 32, progress: bool = True) -> dict[str, Path]:
    """One CAM store per split under ``out_dir/<name>_<split>``; returns the paths."""
    paths = {}
    for split, ds in splits.items():
        paths[split] = compute_store(
            trained.model, ds, Path(out_dir) / f"{trained.name}_{split}", scales=scales, flip=flip,
            method=trained.spec.cam_method, batch_size=batch_size, device=resolve_device(), progress=progress,
            meta={"source": trained.name, "checkpoint": trained.checkpoint.name}, desc=f"CAMs {trained.name} {split}")
    return paths
