"""One CAM classifier as a recipe: its spec (architecture, starting point, training), the keys
of its checkpoint and CAM stores, its training by the one training loop and its CAM stores.

Stage 1 trains the CNN and the ViT from these; stage 3 repeats stage 1's CNN with another seed
from the :class:`ClassifierRecipe` stage 1 records, so neither stage imports the other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import pretrain
from .cams import compute_store, grid_limits, grid_shape
from .classification import ClassificationSet, classification_scores, multilabel_loss, predict
from ..core import store
from ..core.errors import ConfigError
from ..core.keys import ArtifactKey, spec_dict
from ..core.train import TrainConfig, fit, learning_config, resolve_device
from ..data.fingerprint import dataset_fingerprint
from ..data.voc import VOCDataset
from ..nets.backbone import backbone_shape
from ..nets.classifiers import CLASSIFIER_KINDS, create_classifier


@dataclass(frozen=True)
class ClassifierSpec:
    """Everything that defines one trained CAM classifier."""

    kind: str  # a registered classifier kind: "cnn" | "vit"
    backbone: str
    pretrained: str = ""  # "" from scratch, "timm" from the hub, an auxiliary recipe ("aux-broad"), or a weights file
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    crop_size: int = 96
    patch_size: int | None = None  # ViT only
    stem_widths: tuple[int, ...] = ()  # ViT only: convolutional stem
    stem: dict[str, Any] = field(default_factory=dict)  # ViT only: a ResNet stem (backbone, backbone_kwargs, pretrained)
    pool: str = "avg"  # ViT only
    cam_method: str = "cam"  # a registered CAM method: "cam" (CAM head) | "gradcam" | "attribution"
    epochs: int = 8
    batch_size: int = 32
    lr: float = 0.05
    weight_decay: float = 1e-4
    optimizer: str = "sgd"
    warmup_steps: int = 0
    head_lr_mult: float = 1.0
    bf16: bool = False  # CPU bfloat16 autocast
    scale_range: tuple[float, float] = (0.75, 1.25)

    def __post_init__(self) -> None:
        if self.kind == "vit" and self.pool == "token" and self.cam_method == "gradcam":
            raise ConfigError("Grad-CAM on a ViT with class-token pooling is zero on every patch (after the last "
                              "block no token mixes with another, so no patch moves the class token's logit): "
                              "use cam_method 'attribution', or pool 'avg'")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ClassifierSpec":
        return store.dataclass_from_dict(cls, values, "classifier settings")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                           optimizer=self.optimizer, warmup_steps=self.warmup_steps, seed=seed, bf16=self.bf16)

    def shape(self) -> dict[str, Any]:
        """What shapes the backbone's weights (the key of its auxiliary pretraining)."""
        return backbone_shape(self.kind, self.backbone_kwargs, self.patch_size, self.stem_widths)


@dataclass(frozen=True)
class ClassifierRecipe:
    """A trained classifier as another stage repeats it: the spec, the splits it trained and
    was validated on, and the CAM settings of its stores. Stage 1 records one per classifier
    (``metrics["recipes"]``); the defaults are a spec's own, for tests of a key's shape."""

    spec: ClassifierSpec = field(default_factory=lambda: ClassifierSpec(kind="cnn", backbone="resnet18"))
    fit_split: str = "train"
    val_split: str = "val"
    cam_scales: tuple[float, ...] = (1.0,)
    cam_flip: bool = True
    cam_batch_size: int = 32

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], what: str = "classifier recipe") -> "ClassifierRecipe":
        values = dict(values)
        if not isinstance(values.get("spec"), Mapping):
            raise ValueError(f"{what}: no classifier spec in {sorted(values)}")
        values["spec"] = ClassifierSpec.from_dict(dict(values["spec"]))
        return store.dataclass_from_dict(cls, values, what)


def classifier_key(spec: ClassifierSpec, seed: int, data: str, val_data: str) -> ArtifactKey:
    """A classifier checkpoint: its spec (all but the CAM method, which is read after training),
    its training config, the training split's fingerprint, the validation split's (the
    checkpoint holds the per-epoch validation history) and the seed."""
    train = spec_dict(learning_config(spec.train_config(seed)))
    architecture = {k: v for k, v in spec_dict(spec).items() if k != "cam_method"}
    architecture["pretrained"] = pretrain.keyed_setting(spec.pretrained, spec.kind, spec.backbone, spec.shape())
    if not spec.stem:
        del architecture["stem"]  # keys from before the field existed stay valid
    else:
        architecture["stem"] = {**spec.stem, "pretrained": pretrain.keyed_setting(
            spec.stem.get("pretrained", ""), "cnn", spec.stem["backbone"],
            backbone_shape("cnn", spec.stem.get("backbone_kwargs")))}
    return ArtifactKey("classifier", {"classifier": architecture, "train": train, "val_data": val_data},
                       data=data, seed=seed)


def cam_key(method: str, scales: Any, flip: bool, data: str, classifier: str, bf16: bool = False) -> ArtifactKey:
    """A CAM store: the CAM method, scales and flip, the precision (``bf16`` only when true, so fp32
    keys stay what they were), the split's fingerprint and the digest of the classifier checkpoint."""
    spec = {"method": method, "scales": [float(s) for s in scales], "flip": bool(flip), **({"bf16": True} if bf16 else {})}
    return ArtifactKey("cams", spec, data=data, upstream={"classifier": classifier})


def build(spec: ClassifierSpec, num_classes: int) -> nn.Module:
    """The classifier a spec names, through the ``CLASSIFIER_KINDS`` registry."""
    optional = {"img_size": spec.crop_size, "patch_size": spec.patch_size, "stem_widths": spec.stem_widths,
                "pool": spec.pool, "stem": dict(spec.stem)}
    wanted = CLASSIFIER_KINDS.entry(spec.kind).attrs.get("spec_kwargs", ())
    # a recipe's name becomes its cached file here (trained once per machine): constructors only load
    kwargs: dict[str, Any] = {"backbone": spec.backbone,
                              "pretrained": pretrain.resolve(spec.pretrained, spec.kind, spec.backbone, spec.shape()),
                              **{k: optional[k] for k in wanted}}
    if kwargs.get("stem"):
        stem = kwargs["stem"]
        stem["pretrained"] = pretrain.resolve(stem.get("pretrained", ""), "cnn", stem["backbone"],
                                              backbone_shape("cnn", stem.get("backbone_kwargs")))
    # timm's constructors want tuples where TOML and papermill give lists (channels, layers)
    kwargs["backbone_kwargs"] = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.backbone_kwargs.items()}
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
    key: ArtifactKey  # the checkpoint's identity


def train_classifier(name: str, spec: ClassifierSpec, train: VOCDataset, val: VOCDataset, out_dir: Path,
                     seed: int = 0, progress: bool = True, key: ArtifactKey | None = None) -> TrainedClassifier:
    """Train (or resume, or reload when already finished) and score on ``val``.

    The checkpoint is ``out_dir/<name>-<key digest>.pt``; ``key`` defaults to
    :func:`classifier_key` of the spec, seed and the two splits' fingerprints, so changing
    any setting starts a new run instead of resuming an incompatible one.
    """
    key = key or classifier_key(spec, seed, dataset_fingerprint(train), dataset_fingerprint(val))
    torch.manual_seed(seed)
    num_classes = train.num_classes - 1
    model = build(spec, num_classes)
    ckpt = key.path(out_dir, name)
    train_set = ClassificationSet(train, spec.crop_size, augment=True, scale_range=spec.scale_range, seed=seed)
    val_set = ClassificationSet(val, spec.crop_size, augment=False)
    device = resolve_device()

    def evaluate(m: nn.Module, epoch: int) -> dict[str, float]:
        scores = classification_scores(*predict(m, val_set, device=device))
        return {"val_map": scores["map"], "val_f1": scores["f1"]}

    history = fit(model, train_set, multilabel_loss, spec.train_config(seed), checkpoint=ckpt, key=key,
                  param_groups=model.param_groups(spec.head_lr_mult), evaluate=evaluate, progress=progress,
                  desc=f"training {name}")
    seconds = sum(h["seconds"] for h in history)  # epochs only, also when resumed from a checkpoint
    val_scores = classification_scores(*predict(model, val_set, device=device))
    return TrainedClassifier(name, spec, model, history, val_scores, seconds, ckpt, key)


def cam_stores(trained: TrainedClassifier, splits: dict[str, VOCDataset], out_dir: Path, scales: Any,
               flip: bool = True, batch_size: int = 32, progress: bool = True,
               keys: Mapping[str, ArtifactKey] | None = None) -> dict[str, Path]:
    """One CAM store per split under ``out_dir/<name>_<split>``; returns the paths. ``keys``
    (split -> store key) default to :func:`cam_key` of the settings, the split and the
    classifier's key; each is written into its store's meta as ``identity``. The maps are
    computed in the precision the classifier trained in (bf16 autocast on a CPU when it did)."""
    paths = {}
    for split, ds in splits.items():
        key = (keys or {}).get(split) or cam_key(trained.spec.cam_method, scales, flip, dataset_fingerprint(ds),
                                                 trained.key.digest, bf16=trained.spec.bf16)
        paths[split] = compute_store(
            trained.model, ds, Path(out_dir) / f"{trained.name}_{split}", scales=list(scales), flip=flip,
            method=trained.spec.cam_method, batch_size=batch_size, device=resolve_device(), progress=progress,
            bf16=trained.spec.bf16,
            meta={"source": trained.name, "checkpoint": trained.checkpoint.name, "identity": key.to_dict()},
            desc=f"CAMs {trained.name} {split}")
    return paths


# -- what the classifiers' maps can reach, and where they fail together ----------------------------

def deeplab_stride() -> int:
    """The output stride of stage 5's DeepLab: its constructor's default, which stage 5 keeps."""
    import inspect

    from ..nets.deeplab import DeepLab

    return int(inspect.signature(DeepLab).parameters["output_stride"].default)


def limits_table(outputs: Sequence[tuple[str, int, float]], datasets: Mapping[str, VOCDataset]) -> pd.DataFrame:
    """The best mIoU (%) a map on each output grid can reach on each split: the true masks
    shrunk to the grid (area-weighted class shares per cell) and scaled back (bilinear,
    arg-max), as :func:`~orandnet_lib.methods.cams.grid_limits`. ``outputs``: (name, output
    stride, scale) per row, in the order given; ``datasets``: the splits with masks."""
    per_split = {split: grid_limits(ds, [(st, sc) for _, st, sc in outputs]) for split, ds in datasets.items()}
    first = next(iter(datasets.values()))
    h, w = first.load_mask(first.ids[0]).shape
    rows = [{"output": name, "stride": st, "scale": sc, f"grid at {h}x{w} px": "x".join(map(str, grid_shape(h, w, st, sc))),
             **{f"{split} limit mIoU (%)": limits[(st, sc)] for split, limits in per_split.items()}}
            for name, st, sc in outputs]
    return pd.DataFrame(rows).set_index(["output", "stride", "scale"])


def limits_summary(limits: pd.DataFrame) -> dict[str, Any]:
    """Per output of :func:`limits_table`: its stride, per scale the limit on each split
    (percent), and ``finest``: the limit at its largest scale, the finest grid its multi-scale
    sum resolves (the rows of each output in increasing scale)."""
    out: dict[str, Any] = {}
    cols = [c for c in limits.columns if c.endswith(" limit mIoU (%)")]
    for (name, stride, scale), row in limits.iterrows():
        entry = out.setdefault(str(name), {"stride": int(stride), "scales": {}})
        scores = {c.removesuffix(" limit mIoU (%)"): float(row[c]) for c in cols}
        entry["scales"][f"{scale:g}"] = scores
        entry["finest"] = {"scale": float(scale), **scores}  # rows are in increasing scale
    return out


def overlap_summary(overlap: pd.DataFrame, names: Sequence[str]) -> dict[str, Any]:
    """The mean per-class share of false-positive and of false-negative pixels two classifiers
    both make (shared / union, foreground classes), and of each one's foreground false-positive
    pixels the share the other makes too. ``overlap``: ``ErrorOverlap.table()`` per class, the
    background first; ``names``: the two classifiers, in the table's order (a, b)."""
    fg = overlap.iloc[1:]
    return {"fp_jaccard_mean": float(np.nanmean(fg["fp_jaccard"])), "fn_jaccard_mean": float(np.nanmean(fg["fn_jaccard"])),
            "fp_shared_of": {name: float(fg["fp_shared"].sum() / max(1, fg[col].sum()))
                             for name, col in zip(names, ("fp_a", "fp_b"))}}
