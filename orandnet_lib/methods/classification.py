"""Image-level classification: the data the CAM classifiers train on, their loss and their
validation scores."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from .cams import to_tensor
from ..core.metrics import average_precision, multilabel_f1
from ..data.voc import SampleCache, VOCDataset


class ClassificationSet(Dataset):
    """(image (3, S, S) normalised, labels (C,)) pairs from a VOC split.

    Augmentation (``augment=True``): a random rescale in ``scale_range``, a horizontal flip
    and a random crop (padded with the mean colour) to ``crop_size``; drawn from
    (seed, epoch, index) so that any worker, any resume, gets the same sample.
    Decoded samples are kept in memory when ``cache`` (:class:`~orandnet_lib.data.voc.SampleCache`).
    """

    def __init__(self, dataset: VOCDataset, crop_size: int, augment: bool = True,
                 scale_range: tuple[float, float] = (0.75, 1.25), seed: int = 0, cache: bool = True):
        self.dataset, self.crop_size, self.augment = dataset, crop_size, augment
        self.scale_range, self.seed, self.epoch = tuple(scale_range), seed, 0
        self.samples = SampleCache(dataset) if cache else SampleCache(dataset, limit_mb=0)  # the cache's own limit

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[index]
        image, labels = sample.image, sample.labels
        x = to_tensor(image)  # (1, 3, H, W)
        size = self.crop_size
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            scale = rng.uniform(*self.scale_range) * size / max(x.shape[-2:])
            x = F.interpolate(x, scale_factor=float(scale), mode="bilinear", align_corners=False)
            if rng.random() < 0.5:
                x = x.flip(-1)
            x = _random_crop(x, size, rng)
        elif x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return x[0], torch.from_numpy(labels)


def _random_crop(x: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """Pad (with zeros = the mean colour after normalisation) to at least size, then crop."""
    h, w = x.shape[-2:]
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:
        top, left = int(rng.integers(0, ph + 1)), int(rng.integers(0, pw + 1))
        x = F.pad(x, (left, pw - left, top, ph - top))
    h, w = x.shape[-2:]
    y0, x0 = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    return x[..., y0 : y0 + size, x0 : x0 + size]


def multilabel_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Multilabel soft-margin loss on the logits (IRN's classification loss)."""
    images, labels = batch
    return F.multilabel_soft_margin_loss(model(images), labels), {}


@torch.inference_mode()
def predict(model: nn.Module, data: ClassificationSet, batch_size: int = 64,
            device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid scores (N, C) and targets (N, C) over a (non-augmented) set."""
    model.eval().to(device)
    scores, targets = [], []
    for start in range(0, len(data), batch_size):
        items = [data[i] for i in range(start, min(len(data), start + batch_size))]
        x = torch.stack([i[0] for i in items]).to(device)
        scores.append(torch.sigmoid(model(x)).float().cpu().numpy())
        targets.append(torch.stack([i[1] for i in items]).numpy())
    return np.concatenate(scores), np.concatenate(targets)


def classification_scores(scores: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    """mAP and mean F1 (at 0.5) in percent, with the per-class values."""
    ap, f1 = average_precision(scores, targets), multilabel_f1(scores, targets)
    return {"map": 100 * float(np.nanmean(ap)), "f1": 100 * float(np.nanmean(f1)),
            "ap_per_class": (100 * ap).tolist(), "f1_per_class": (100 * f1).tolist()}


def chance_map(val: VOCDataset) -> float:
    """The mAP of a random ranking, in percent: the share of positive image-class pairs."""
    return 100 * float(np.mean([np.stack([s.labels for s in val]).mean(0)]))
