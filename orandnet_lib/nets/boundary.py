"""IRN's inter-pixel relation network, the semantic part: a class-boundary map predicted
from multi-level features, trained from the affinities between pairs of confident labels.

Pairs (i, j) within a radius, on the boundary grid: positive when both are background or
both the same foreground class, negative when their classes differ, ignored when either is
255. The predicted affinity is 1 - (the strongest boundary on the segment i -> j), so the
network learns boundaries exactly where a wall separates differently labelled pixels.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.neighbours import neighbour_offsets, segments
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
        """The boundary map from :meth:`backbone_features` (all that trains when the backbone is frozen).
        The 1x1 head over the concatenated levels is applied to each level before it is upsampled:
        both are linear, so the map is the same, and only one channel per level is upsampled and
        nothing concatenated (a 1x1 convolution to one channel was most of the step on CPU)."""
        size = feats[0].shape[-2:]
        weights = self.head.weight[:, :, 0, 0].split([s[0].out_channels for s in self.squeeze], dim=1)
        logits = self.head.bias.view(1, -1, 1, 1)
        for squeeze, f, w in zip(self.squeeze, feats, weights):
            part = (squeeze(f) * w.view(1, -1, 1, 1)).sum(1, keepdim=True)
            if part.shape[-2:] != size:
                part = F.interpolate(part, size=size, mode="bilinear", align_corners=False)
            logits = logits + part
        return torch.sigmoid(logits)


def _running_max(padded: torch.Tensor, r: int, seg: Sequence[tuple[int, int]]) -> Iterator[torch.Tensor]:
    """The running maximum along one segment of a map padded by ``r``: the pixel itself, then
    up to each cell of ``seg`` in turn."""
    h, w = padded.shape[-2] - 2 * r, padded.shape[-1] - 2 * r
    m = padded[..., r : r + h, r : r + w]
    yield m
    for dy, dx in seg:
        m = torch.maximum(m, padded[..., r + dy : r + dy + h, r + dx : r + dx + w])
        yield m


class _PathMax(torch.autograd.Function):
    """:func:`path_max` with its gradient written out: autograd's chain of ``torch.maximum``
    (its masks and ties) cost ten times the forward pass. The gradient of each segment's
    maximum goes to the nearest cell that holds it: a valid subgradient at ties, where the
    chain split it."""

    @staticmethod
    def forward(ctx: Any, boundary: torch.Tensor, cells: list[list[tuple[int, int]]]) -> torch.Tensor:
        r = max((max(abs(dy), abs(dx)) for seg in cells for dy, dx in seg), default=0)
        padded = F.pad(boundary, (r, r, r, r), value=1.0)
        out = boundary.new_empty((boundary.shape[0], len(cells), *boundary.shape[-2:]))
        for k, seg in enumerate(cells):
            *_, out[:, k] = _running_max(padded, r, seg)  # the maximum over the whole segment
        ctx.save_for_backward(padded, out)
        ctx.cells, ctx.radius = cells, r
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        padded, out = ctx.saved_tensors
        r, (h, w) = ctx.radius, grad.shape[-2:]
        acc = torch.zeros_like(padded)
        for k, seg in enumerate(ctx.cells):
            g, top = grad[:, k], out[:, k]
            before = torch.ones_like(g)  # 1 where the maximum is not reached before this cell
            for (dy, dx), m in zip([(0, 0), *seg], _running_max(padded, r, seg)):
                below = torch.sign(top - m)  # 1 where m < top, else 0 (top >= m); a comparison's bools cost more
                acc[..., r + dy : r + dy + h, r + dx : r + dx + w] += g * (before - below)  # 1 where first reached
                before = below
        return acc[..., r : r + h, r : r + w].contiguous(), None  # the fill outside gets no gradient


def path_max(boundary: torch.Tensor, offsets: Sequence[tuple[int, int]]) -> torch.Tensor:
    """(B, H, W) boundary -> (B, len(offsets), H, W): the strongest boundary on the segment
    from each pixel to its neighbour at each offset (1 where the neighbour is outside)."""
    return _PathMax.apply(boundary, segments(offsets))


def pair_labels(labels: torch.Tensor, offsets: Sequence[tuple[int, int]]) -> dict[str, torch.Tensor]:
    """Masks (B, len(offsets), H, W) of the pair kinds for a (B, H, W) confident-label map:
    ``bg`` (both background), ``fg`` (same foreground class), ``neg`` (different classes).
    Labels outside 0..255 (no byte holds them) raise ValueError."""
    if labels.dtype != torch.uint8:  # compared as bytes: an eighth of int64's memory traffic
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > IGNORE_INDEX):
            raise ValueError(f"confident labels must lie in 0..{IGNORE_INDEX}, got {int(labels.min())}..{int(labels.max())}")
        labels = labels.to(torch.uint8)
    r = max((max(abs(dy), abs(dx)) for dy, dx in offsets), default=0)
    (h, w), padded = labels.shape[-2:], F.pad(labels, (r, r, r, r), value=IGNORE_INDEX)
    here = labels.unsqueeze(1)
    there = torch.stack([padded[..., r + dy : r + dy + h, r + dx : r + dx + w] for dy, dx in offsets], dim=1)
    valid = (here != IGNORE_INDEX) & (there != IGNORE_INDEX)
    same = valid & (here == there)
    return {"bg": same & (here == 0), "fg": same & (here > 0), "neg": valid & (here != there)}


def affinity_loss(boundary: torch.Tensor, labels: torch.Tensor, radius: int = 5, eps: float = 1e-5) -> tuple[torch.Tensor, dict[str, float]]:
    """IRN's loss on a predicted (B, 1, h, w) boundary and (B, h, w) confident labels:
    half the background-pair and half the foreground-pair terms -log(a), plus the
    negative-pair term -log(1 - a), each averaged over its pairs."""
    offsets = neighbour_offsets(radius)
    strongest = path_max(boundary[:, 0], offsets)  # 1 - a
    with torch.no_grad():  # each pair's share of the loss: one weighted sum, not three masked means (calibration record)
        kinds = pair_labels(labels, offsets)
        counts = {kind: int(mask.count_nonzero()) for kind, mask in kinds.items()}
        weight = torch.zeros_like(strongest)
        for kind, share in (("bg", 0.5), ("fg", 0.5), ("neg", 1.0)):
            if counts[kind]:
                weight.masked_fill_(kinds[kind], share / counts[kind])
    # log(a) for positive pairs, log(1 - a) for negative ones
    log_term = torch.log(torch.where(kinds["neg"], strongest, 1.0 - strongest) + eps)
    loss = -(log_term * weight).sum()
    with torch.no_grad():
        terms = {kind: -float((log_term * mask).sum()) / counts[kind] if counts[kind] else 0.0
                 for kind, mask in kinds.items()}
    return loss, {f"{k}_loss": v for k, v in terms.items()}


def downsample_labels(labels: np.ndarray, stride: int) -> np.ndarray:
    """(H, W) labels -> (ceil(H/stride), ceil(W/stride)) by nearest sampling at cell centres."""
    h, w = labels.shape
    ys = np.minimum(np.arange(stride // 2, h + stride - 1, stride)[: -(-h // stride)], h - 1)
    xs = np.minimum(np.arange(stride // 2, w + stride - 1, stride)[: -(-w // stride)], w - 1)
    return labels[np.ix_(ys, xs)]
