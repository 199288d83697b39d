"""Segmentation on pseudo-masks: the scale-scheduling curriculum, the training data, the
loss, one keyed training run, and the evaluation (scores and per-object recall).

The network is :class:`orandnet_lib.nets.deeplab.DeepLab` (heads in ``SEG_HEADS``). Training
goes through the one training loop; a ``ScaleSchedule`` sets, per epoch, the scale at which
images and masks are seen, so that small (often noisy) pseudo-mask regions vanish early in
training and come back as the scale grows. Stage 5's recipe is
:mod:`orandnet_lib.stages.s5_segmentation`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn
from torch.utils.data import Dataset

from ..core import store
from ..core.keys import ArtifactKey
from ..core.metrics import ConfusionMatrix
from ..core.progress import bar as progress_bar
from ..core.train import TrainConfig, fit
from ..data.voc import IGNORE_INDEX, SampleCache, VOCDataset
from ..nets.backbone import backbone_shape
from ..nets.deeplab import SEG_HEADS, DeepLab
from . import pretrain
from .cams import to_tensor
from .refine import crf_probabilities

__all__ = ["ScaleSchedule", "SegmentationSet", "SegmenterSpec", "DeepLab", "SEG_HEADS", "downsample_mask",
           "resize_image", "segmentation_loss", "predict_probs", "segment", "component_recall", "Evaluation",
           "evaluate", "recall_by_size", "TrainedSegmenter", "train_segmenter"]


# ----------------------------------------------------------------------------- schedule

@dataclass(frozen=True)
class ScaleSchedule:
    """Piecewise-constant input scale over training: ``points`` are (start, scale) pairs,
    ``start`` the fraction of training from which ``scale`` holds (the first must be 0)."""

    points: tuple[tuple[float, float], ...] = ((0.0, 1.0),)

    def __post_init__(self) -> None:
        pts = tuple((float(a), float(s)) for a, s in self.points)
        starts = [a for a, _ in pts]
        if not pts or starts[0] != 0.0:
            raise ValueError(f"scale schedule {list(self.points)}: the first point must start at fraction 0.0")
        if starts != sorted(starts) or len(set(starts)) != len(starts) or starts[-1] >= 1.0:
            raise ValueError(f"scale schedule {list(self.points)}: start fractions must rise strictly within [0, 1)")
        if any(not 0.0 < s <= 4.0 for _, s in pts):
            raise ValueError(f"scale schedule {list(self.points)}: scales must lie in (0, 4]")
        object.__setattr__(self, "points", pts)

    @classmethod
    def parse(cls, value: "ScaleSchedule | Sequence[Sequence[float]] | str | None") -> "ScaleSchedule":
        """A schedule from parameters: ``"constant"`` / ``None`` / ``[]`` (scale 1.0 throughout)
        or a list of [start fraction, scale] pairs, e.g. ``[[0, 0.5], [0.5, 0.75], [0.75, 1]]``."""
        if isinstance(value, ScaleSchedule):
            return value
        if value is None or value == "constant" or (not isinstance(value, str) and len(value) == 0):
            return cls()
        if isinstance(value, str):
            raise ValueError(f"scale schedule {value!r}: give 'constant' or a list of [fraction, scale] pairs")
        try:
            return cls(tuple((a, s) for a, s in value))
        except (TypeError, ValueError) as e:
            if isinstance(e, ValueError) and "scale schedule" in str(e):
                raise
            raise ValueError(f"scale schedule {value!r}: give a list of [fraction, scale] pairs") from e

    def scale_at(self, progress: float) -> float:
        """The scale at a fraction of training in [0, 1]."""
        scale = self.points[0][1]
        for start, s in self.points:
            if progress >= start:
                scale = s
        return scale

    @property
    def constant(self) -> bool:
        return all(s == 1.0 for _, s in self.points)


def downsample_mask(mask: np.ndarray, size: tuple[int, int], num_classes: int, mode: str = "majority") -> np.ndarray:
    """(H, W) labels in {0..C-1, 255} -> (h, w). ``"nearest"`` samples one pixel per cell;
    ``"majority"`` keeps the label covering most of each cell's footprint (ignore counts as a
    label), so a region smaller than a cell vanishes and a large one keeps its shape."""
    if mode not in ("nearest", "majority"):
        raise ValueError(f"mask downsampling must be 'nearest' or 'majority', got {mode!r}")
    if tuple(mask.shape) == tuple(size):
        return mask.copy()
    t = torch.from_numpy(mask.astype(np.int64))
    if mode == "nearest":
        return F.interpolate(t[None, None].float(), size=size, mode="nearest")[0, 0].numpy().astype(mask.dtype)
    labels = torch.where(t == IGNORE_INDEX, torch.tensor(num_classes), t)
    if int(labels.max()) > num_classes:
        raise ValueError(f"mask values must be below {num_classes} or {IGNORE_INDEX}, found {int(t.max())}")
    onehot = F.one_hot(labels, num_classes + 1).permute(2, 0, 1)[None].float()
    votes = F.interpolate(onehot, size=size, mode="area")[0]
    out = votes.argmax(dim=0).numpy()  # ties go to the lower label (background first)
    out[out == num_classes] = IGNORE_INDEX
    return out.astype(mask.dtype)


def resize_image(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(3, H, W) -> (3, h, w), bilinear with antialiasing when shrinking."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


class SegmentationSet(Dataset):
    """(image (3, S, S), mask (S, S) int64) pairs for training: optional random rescale, a
    random crop padded with ignore, a random flip, then the schedule's scale for the epoch
    (the image resized bilinearly, the mask downsampled by ``mask_mode``). Augmentation is
    drawn from (seed, epoch, index), so epochs are reproducible and resumable."""

    def __init__(self, dataset: VOCDataset, crop_size: int = 0, schedule: ScaleSchedule | None = None,
                 epochs: int = 1, scale_range: tuple[float, float] = (1.0, 1.0), flip: bool = True,
                 mask_mode: str = "majority", seed: int = 0):
        self.dataset, self.crop_size, self.epochs = dataset, crop_size, max(1, epochs)
        self.schedule = schedule or ScaleSchedule()
        self.scale_range, self.flip, self.mask_mode, self.seed = tuple(scale_range), flip, mask_mode, seed
        self.epoch = 0
        self.samples = SampleCache(dataset)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def scale(self) -> float:
        return self.schedule.scale_at(self.epoch / self.epochs)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        x, y = to_tensor(sample.image)[0], torch.from_numpy(sample.mask.astype(np.int64))
        lo, hi = self.scale_range
        if (lo, hi) != (1.0, 1.0):
            r = float(rng.uniform(lo, hi))
            size = (max(1, round(y.shape[0] * r)), max(1, round(y.shape[1] * r)))
            x = resize_image(x, size)
            y = F.interpolate(y[None, None].float(), size=size, mode="nearest")[0, 0].long()
        if self.crop_size:
            x, y = _random_crop(x, y, self.crop_size, rng)
        if self.flip and rng.random() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        s = self.scale
        if s != 1.0:
            size = (max(1, round(y.shape[0] * s)), max(1, round(y.shape[1] * s)))
            x = resize_image(x, size)
            y = torch.from_numpy(downsample_mask(y.numpy(), size, self.dataset.num_classes, self.mask_mode))
        return x.contiguous(), y.contiguous()


def _random_crop(x: torch.Tensor, y: torch.Tensor, size: int, rng: np.random.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = y.shape
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:  # pad: image with 0 (the mean after normalisation), mask with ignore
        x = F.pad(x, (0, pw, 0, ph))
        y = F.pad(y, (0, pw, 0, ph), value=IGNORE_INDEX)
    top = int(rng.integers(0, y.shape[0] - size + 1))
    left = int(rng.integers(0, y.shape[1] - size + 1))
    return x[:, top : top + size, left : left + size], y[top : top + size, left : left + size]


# ----------------------------------------------------------------------------- loss

def segmentation_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Pixel cross-entropy; label 255 carries no gradient."""
    images, masks = batch
    logits = model(images)
    loss = F.cross_entropy(logits.float(), masks, ignore_index=IGNORE_INDEX)
    return loss, {}


# ----------------------------------------------------------------------------- inference and evaluation

@torch.no_grad()
def predict_probs(model: nn.Module, images: np.ndarray, scales: Sequence[float] = (1.0,), flip: bool = False,
                  device: torch.device | None = None) -> np.ndarray:
    """(B, H, W, 3) uint8 images of one size -> (B, C, H, W) class probabilities, averaged
    over the test scales (and horizontal flips)."""
    model.eval()
    device = device or next(model.parameters()).device
    x = to_tensor(images).to(device)
    h, w = x.shape[-2:]
    total = torch.zeros(0)
    for s in scales:
        xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        views = [xs, xs.flip(-1)] if flip else [xs]
        for i, v in enumerate(views):
            p = F.interpolate(model(v), size=(h, w), mode="bilinear", align_corners=False).softmax(dim=1)
            p = p.flip(-1) if i == 1 else p
            total = p if total.numel() == 0 else total + p
    return (total / (len(scales) * (2 if flip else 1))).float().cpu().numpy()


def segment(model: nn.Module, dataset: VOCDataset, scales: Sequence[float] = (1.0,), flip: bool = False,
            crf_iterations: int = 0, batch_size: int = 32, progress: bool = True, desc: str = "segmenting"
            ) -> Iterator[tuple[str, np.ndarray]]:
    """(image id, predicted mask (H, W) uint8) for every image of the split; consecutive
    images of one size go through the network together. ``crf_iterations`` > 0 refines each
    prediction with a dense CRF (DeepLab's post-processing)."""
    device = next(model.parameters()).device
    ids = list(dataset.ids)
    bar = progress_bar(total=len(ids), desc=desc, disable=not progress)
    i = 0
    while i < len(ids):
        first = dataset.load_image(ids[i])
        batch_ids, images = [ids[i]], [first]
        while i + len(batch_ids) < len(ids) and len(batch_ids) < batch_size:
            nxt = dataset.load_image(ids[i + len(batch_ids)])
            if nxt.shape != first.shape:
                break
            batch_ids.append(ids[i + len(batch_ids)])
            images.append(nxt)
        probs = predict_probs(model, np.stack(images), scales, flip, device)
        for image_id, image, p in zip(batch_ids, images, probs):
            if crf_iterations > 0:
                p = crf_probabilities(image, p, crf_iterations)
            yield image_id, p.argmax(axis=0).astype(np.uint8)
        i += len(batch_ids)
        bar.update(len(batch_ids))
    bar.close()


def component_recall(pred: np.ndarray, gt: np.ndarray) -> list[tuple[int, int, float]]:
    """Each connected ground-truth object (a foreground class's 8-connected component):
    (class, area in pixels, fraction of its pixels predicted as that class)."""
    out = []
    for c in np.unique(gt):
        if c == 0 or c == IGNORE_INDEX:
            continue
        components, n = ndimage.label(gt == c, structure=np.ones((3, 3)))
        if n == 0:
            continue
        hit = (pred == c)
        area = np.bincount(components.ravel(), minlength=n + 1)[1:]
        found = np.bincount(components.ravel(), weights=hit.ravel(), minlength=n + 1)[1:]
        out += [(int(c), int(a), float(f / a)) for a, f in zip(area, found)]
    return out


@dataclass
class Evaluation:
    """A model's scores on a split: the confusion matrix and every ground-truth object's recall."""

    matrix: ConfusionMatrix
    objects: list[tuple[int, int, float]]  # (class, area, recall)
    image_size: list[int] = field(default_factory=list)  # pixels per image, for area fractions

    def summary(self) -> dict[str, float]:
        return self.matrix.scores().summary()


def evaluate(model: nn.Module, dataset: VOCDataset, scales: Sequence[float] = (1.0,), flip: bool = False,
             crf_iterations: int = 0, batch_size: int = 32, progress: bool = True, keep: Sequence[str] = ()
             ) -> tuple[Evaluation, dict[str, np.ndarray]]:
    """Scores against the split's masks, plus the predictions of the ids in ``keep``."""
    matrix = ConfusionMatrix(dataset.num_classes)
    objects: list[tuple[int, int, float]] = []
    sizes, kept = [], {}
    for image_id, pred in segment(model, dataset, scales, flip, crf_iterations, batch_size, progress,
                                  desc="evaluating"):
        gt = dataset.load_mask(image_id)
        matrix.update(pred, gt)
        found = component_recall(pred, gt)
        objects += found
        sizes += [gt.size] * len(found)
        if image_id in keep:
            kept[image_id] = pred
    return Evaluation(matrix, objects, sizes), kept


def recall_by_size(evaluation: Evaluation, edges: tuple[float, float]) -> dict[str, float]:
    """Mean object recall (%) in three bins of object area (fraction of the image), as stage 0
    bins its objects: small <= edges[0] < medium <= edges[1] < large."""
    if not evaluation.objects:
        return {"small": float("nan"), "medium": float("nan"), "large": float("nan")}
    area = np.array([a for _, a, _ in evaluation.objects]) / np.array(evaluation.image_size)
    rec = np.array([r for _, _, r in evaluation.objects])
    bins = np.digitize(area, edges, right=True)
    return {name: float(100 * rec[bins == i].mean()) if (bins == i).any() else float("nan")
            for i, name in enumerate(("small", "medium", "large"))}


# ----------------------------------------------------------------------------- one trained model

@dataclass(frozen=True)
class SegmenterSpec:
    """Everything that defines one DeepLab training run (besides its data and seed)."""

    backbone: str = "resnet101"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: str = ""
    head: str = "aspp"
    rates: tuple[int, ...] = (6, 12, 18, 24)
    head_channels: int = 1024
    dropout: float = 0.5
    crop_size: int = 0  # 0: whole images (they must share one size)
    scale_range: tuple[float, float] = (1.0, 1.0)
    flip: bool = True
    schedule: tuple[tuple[float, float], ...] = ((0.0, 1.0),)
    mask_mode: str = "majority"
    epochs: int = 10
    batch_size: int = 10
    optimizer: str = "sgd"
    lr: float = 2.5e-4
    weight_decay: float = 5e-4
    momentum: float = 0.9
    head_lr_mult: float = 10.0
    warmup_steps: int = 0
    bf16: bool = False  # CPU bfloat16 autocast

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SegmenterSpec":
        values = dict(values)
        if "schedule" in values:
            values["schedule"] = ScaleSchedule.parse(values["schedule"]).points
        return store.dataclass_from_dict(cls, values, "segmentation settings")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def build(self, num_classes: int) -> DeepLab:
        weights = pretrain.resolve(self.pretrained, "cnn", self.backbone, backbone_shape("cnn", self.backbone_kwargs))
        return DeepLab(num_classes, self.backbone, weights, self.head, self.rates, self.head_channels,
                       self.dropout, backbone_kwargs=dict(self.backbone_kwargs))

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                           momentum=self.momentum, optimizer=self.optimizer, seed=seed,
                           warmup_steps=self.warmup_steps, bf16=self.bf16)


@dataclass
class TrainedSegmenter:
    model: DeepLab
    history: list[dict[str, float]]
    train_seconds: float
    checkpoint: Path


def train_segmenter(spec: SegmenterSpec, train: VOCDataset, checkpoint: str | Path, seed: int = 0, *,
                    key: ArtifactKey | None = None, val: VOCDataset | None = None, progress: bool = True,
                    desc: str = "training DeepLab") -> TrainedSegmenter:
    """Train DeepLab on ``train``'s masks into ``checkpoint`` (or resume, or reload when
    finished). ``key`` is the checkpoint's artifact key (stage 5 takes it from
    ``s5_segmentation.artifact_keys``): a file of another key is never resumed. With ``val``,
    its mIoU is logged after every epoch (the training curve)."""
    if train.num_classes < 2:
        raise ValueError(f"{train.root}: segmentation needs background and at least one class")
    torch.manual_seed(seed)
    model = spec.build(train.num_classes)
    cfg = spec.train_config(seed)
    data = SegmentationSet(train, spec.crop_size, ScaleSchedule(spec.schedule), spec.epochs, spec.scale_range,
                           flip=spec.flip, mask_mode=spec.mask_mode, seed=seed)

    def per_epoch(m: nn.Module, epoch: int) -> dict[str, float]:
        out: dict[str, float] = {"scale": data.scale}  # the scale this epoch trained at
        if val is not None:
            ev, _ = evaluate(m, val, progress=False)
            out["val_miou"] = ev.summary()["miou"]
        return out

    history = fit(model, data, segmentation_loss, cfg, checkpoint=checkpoint,
                  param_groups=model.param_groups(spec.head_lr_mult), evaluate=per_epoch, progress=progress,
                  desc=desc, key=key)
    return TrainedSegmenter(model, history, sum(h["seconds"] for h in history), Path(checkpoint))
