"""IRN's inter-pixel relation network, the semantic part: a class-boundary map predicted
from multi-level features, trained from the affinities between pairs of confident labels.

Pairs (i, j) within a radius, on the boundary grid: positive when both are background or
both the same foreground class, negative when their classes differ, ignored when either is
255. The predicted affinity is 1 - (the strongest boundary on the segment i -> j), so the
network learns boundaries exactly where a wall separates differently labelled pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.neighbours import neighbour_offsets
from .backbone import create_backbone
from ..data.voc import IGNORE_INDEX


class BoundaryNet(nn.Module):
    """Multi-level features of a timm backbone, each squeezed by a 1x1 convolution,
    upsampled to stride 4, concatenated and mapped to a (B, 1, H/4, W/4) boundary map in [0, 1].
    ``input_scale`` (an integer): the image is enlarged by it first, so the map's grid has stride
    ``4 / input_scale`` on the original image (IRN's stride-4 grid was set for ~500-pixel VOC
    images; on small images its boundary cells eat a large share of every object).
    ``freeze_backbone`` (IRN's setting): the backbone's weights are not trained and it stays in
    eval mode (BatchNorm statistics frozen) also when the net trains; only the new layers learn."""

    def __init__(self, backbone: str = "resnet50", pretrained: str = "", width: int = 32,
                 backbone_kwargs: dict[str, Any] | None = None, freeze_backbone: bool = False,
                 input_scale: int = 1):
        super().__init__()
        self.features = create_backbone(backbone, pretrained, features_only=True, out_indices=(1, 2, 3, 4),
                                        **(backbone_kwargs or {}))
        self.freeze_backbone = freeze_backbone
        self.features.requires_grad_(not freeze_backbone)
        self.squeeze = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
            for c in self.features.feature_info.channels())
        self.head = nn.Conv2d(width * 4, 1, 1)
        reduction = self.features.feature_info.reduction()[0]
        if input_scale < 1 or reduction % input_scale:
            raise ValueError(f"input_scale must be a positive divisor of the boundary grid's stride {reduction}, "
                             f"got {input_scale}")
        self.input_scale = int(input_scale)
        self.stride = reduction // self.input_scale  # of the map's grid, on the original image

    def train(self, mode: bool = True) -> "BoundaryNet":
        super().train(mode)
        if self.freeze_backbone:
            self.features.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_from(self.backbone_features(x))

    def backbone_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's four feature levels of an image batch (enlarged by ``input_scale``)."""
        if self.input_scale != 1:
            x = F.interpolate(x, scale_factor=self.input_scale, mode="bilinear", align_corners=False)
        return self.features(x)

    def head_from(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """The boundary map from :meth:`backbone_features` (all that trains when the backbone is frozen)."""
        size = feats[0].shape[-2:]
        fused = [F.interpolate(s(f), size=size, mode="bilinear", align_corners=False) if f.shape[-2:] != size else s(f)
                 for s, f in zip(self.squeeze, feats)]
        return torch.sigmoid(self.head(torch.cat(fused, dim=1)))


def _shift(t: torch.Tensor, dy: int, dx: int, fill: float) -> torch.Tensor:
    """out[..., y, x] = t[..., y + dy, x + dx], ``fill`` outside."""
    h, w = t.shape[-2:]
    padded = F.pad(t, (abs(dx), abs(dx), abs(dy), abs(dy)), value=fill)
    return padded[..., abs(dy) + dy : abs(dy) + dy + h, abs(dx) + dx : abs(dx) + dx + w]


def path_max(boundary: torch.Tensor, offsets: Sequence[tuple[int, int]]) -> torch.Tensor:
    """(B, H, W) boundary -> (B, len(offsets), H, W): the strongest boundary on the segment
    from each pixel to its neighbour at each offset (1 where the neighbour is outside)."""
    out = []
    for dy, dx in offsets:
        steps = max(abs(dy), abs(dx))
        m = boundary
        for s in range(1, steps + 1):
            t = s / steps
            m = torch.maximum(m, _shift(boundary, round(t * dy), round(t * dx), 1.0))
        out.append(m)
    return torch.stack(out, dim=1)


def pair_labels(labels: torch.Tensor, offsets: Sequence[tuple[int, int]]) -> dict[str, torch.Tensor]:
    """Masks (B, len(offsets), H, W) of the pair kinds for a (B, H, W) confident-label map:
    ``bg`` (both background), ``fg`` (same foreground class), ``neg`` (different classes)."""
    labels = labels.long()
    here = labels.unsqueeze(1).expand(-1, len(offsets), -1, -1)
    there = torch.stack([_shift(labels, dy, dx, IGNORE_INDEX) for dy, dx in offsets], dim=1)
    valid = (here != IGNORE_INDEX) & (there != IGNORE_INDEX)
    same = valid & (here == there)
    return {"bg": same & (here == 0), "fg": same & (here > 0), "neg": valid & (here != there)}


def affinity_loss(boundary: torch.Tensor, labels: torch.Tensor, radius: int = 5, eps: float = 1e-5) -> tuple[torch.Tensor, dict[str, float]]:
    """IRN's loss on a predicted (B, 1, h, w) boundary and (B, h, w) confident labels:
    half the background-pair and half the foreground-pair terms -log(a), plus the
    negative-pair term -log(1 - a), each averaged over its pairs."""
    offsets = neighbour_offsets(radius)
    affinity = 1.0 - path_max(boundary[:, 0], offsets)
    kinds = pair_labels(labels, offsets)
    terms = {}
    for kind, mask in kinds.items():
        values = -torch.log(affinity[mask] + eps) if kind != "neg" else -torch.log(1.0 - affinity[mask] + eps)
        terms[kind] = values.mean() if values.numel() else boundary.sum() * 0.0
    loss = terms["bg"] / 2 + terms["fg"] / 2 + terms["neg"]
    return loss, {f"{k}_loss": float(v.detach()) for k, v in terms.items()}


def downsample_labels(labels: np.ndarray, stride: int) -> np.ndarray:
    """(H, W) labels -> (ceil(H/stride), ceil(W/stride)) by nearest sampling at cell centres."""
    h, w = labels.shape
    ys = np.minimum(np.arange(stride // 2, h + stride - 1, stride)[: -(-h // stride)], h - 1)
    xs = np.minimum(np.arange(stride // 2, w + stride - 1, stride)[: -(-w // stride)], w - 1)
    return labels[np.ix_(ys, xs)]
