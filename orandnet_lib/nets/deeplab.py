"""DeepLab for stage 5: a timm backbone at output stride 8 and a segmentation head.

Heads are registered in ``SEG_HEADS`` (name -> builder ``(in_channels, num_classes, rates,
head_channels, dropout) -> nn.Module`` mapping (B, in_channels, h, w) features to
(B, num_classes, h, w) logits): ``largefov`` (DeepLab-v1: one 3x3 convolution dilated by
``rates[0]``, then two 1x1 layers with dropout) and ``aspp`` (DeepLab-v2: one dilated 3x3
classifier per rate, their logits summed). A new head is one builder and one registration.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.registry import Registry
from .backbone import create_backbone

HeadBuilder = Callable[[int, int, Sequence[int], int, float], nn.Module]
SEG_HEADS: Registry[HeadBuilder] = Registry("segmentation head")


@SEG_HEADS.register("largefov", label="DeepLab-v1 LargeFOV")
def largefov_head(channels: int, num_classes: int, rates: Sequence[int], head_channels: int, dropout: float
                  ) -> nn.Module:
    r = int(rates[0])
    return nn.Sequential(
        nn.Conv2d(channels, head_channels, 3, padding=r, dilation=r), nn.ReLU(inplace=True), nn.Dropout2d(dropout),
        nn.Conv2d(head_channels, head_channels, 1), nn.ReLU(inplace=True), nn.Dropout2d(dropout),
        nn.Conv2d(head_channels, num_classes, 1))


class ASPP(nn.ModuleList):
    """DeepLab-v2's atrous spatial pyramid: parallel dilated 3x3 classifiers, logits summed."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.stack([branch(features) for branch in self]).sum(dim=0)


@SEG_HEADS.register("aspp", label="DeepLab-v2 ASPP")
def aspp_head(channels: int, num_classes: int, rates: Sequence[int], head_channels: int, dropout: float
              ) -> nn.Module:
    return ASPP(nn.Conv2d(channels, num_classes, 3, padding=int(r), dilation=int(r)) for r in rates)


class DeepLab(nn.Module):
    """DeepLab on a timm backbone at output stride 8 with a head from ``SEG_HEADS``.
    ``forward`` returns logits upsampled to the input size; ``stride`` is the feature grid's."""

    def __init__(self, num_classes: int, backbone: str = "resnet101", pretrained: str = "", head: str = "aspp",
                 rates: Sequence[int] = (6, 12, 18, 24), head_channels: int = 1024, dropout: float = 0.5,
                 output_stride: int = 8, backbone_kwargs: dict[str, Any] | None = None):
        super().__init__()
        build_head = SEG_HEADS.get(head)  # an unknown head lists the known ones
        if not rates:
            raise ValueError("rates must name at least one dilation rate")
        self.backbone = create_backbone(backbone, pretrained, features_only=True, out_indices=(-1,),
                                        output_stride=output_stride, **(backbone_kwargs or {}))
        channels = self.backbone.feature_info.channels()[-1]
        self.stride = self.backbone.feature_info.reduction()[-1]
        self.head_kind = head
        self.head = build_head(channels, num_classes, tuple(int(r) for r in rates), head_channels, dropout)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H/stride, W/stride) logits on the feature grid."""
        return self.head(self.backbone(x)[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.logits(x), size=x.shape[-2:], mode="bilinear", align_corners=False)

    def param_groups(self, head_lr_mult: float = 10.0) -> list[dict[str, Any]]:
        """The paper's code trains the new head at 10x the backbone's learning rate."""
        return [{"params": list(self.backbone.parameters()), "lr_mult": 1.0},
                {"params": list(self.head.parameters()), "lr_mult": head_lr_mult}]
