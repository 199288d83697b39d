"""ORANDNet: an encoder-decoder that maps the OR CAM of a class to its AND CAM.

The network sees one class channel at a time, as a one-channel image (optionally with the
RGB image as three more channels), and predicts a one-channel map at the same resolution.
Trained to turn OR (what either classifier found) into AND (what both found), it learns to
remove the activations the two classifiers do not share.

A loss is registered together with its read-out (``LOSSES``): what the loss trains the
output to mean decides how a map is read from it.

- ``softmax`` (the official ``module/encdec_train.py``): cross-entropy with a softmax over the
  class channels of an image, the AND CAM as soft target. Read out as the official
  ``module/encdec_pred.py``: ReLU, each class map divided by its own maximum. With a single
  class the softmax is constant, so single-class images give exactly zero gradient, and the
  loss cannot see a shift common to all channels of a pixel.
- ``bce``: per-pixel binary cross-entropy with the AND CAM as soft target; every image counts.
  Its outputs are logits of the AND map, so it is read out by the sigmoid, each class map
  divided by its own maximum (a ReLU would keep only where the predicted AND exceeds 0.5).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.registry import Registry
from .backbone import create_backbone



class SmallEncoder(nn.Module):
    """Three stages of two 3x3 convolutions, each ending in a stride-2 max-pool: features at
    strides 2, 4 and 8 (the embedded profiles' images are small)."""

    def __init__(self, in_channels: int, widths: Sequence[int] = (16, 32, 64)):
        super().__init__()
        stages, c_in = [], in_channels
        for c_out in widths:
            stages.append(nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                nn.MaxPool2d(2)))
            c_in = c_out
        self.stages = nn.ModuleList(stages)
        self.channels = list(widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class TimmEncoder(nn.Module):
    """The last three feature levels of a timm backbone (``vgg16``: strides 8, 16, 32 as in FCN-8s)."""

    def __init__(self, name: str, in_channels: int, pretrained: str = ""):
        super().__init__()
        # pretrained: "" | "timm" | a weights file, as the classifiers'. timm adapts the first
        # convolution to ``in_channels`` (summing the RGB filters for one channel); the official
        # network/encdec.py instead leaves its one-channel first convolution at random.
        self.body = create_backbone(name, pretrained, features_only=True, in_chans=in_channels)
        self.levels = list(range(len(self.body.feature_info)))[-3:]
        self.channels = [self.body.feature_info.channels()[i] for i in self.levels]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.body(x)
        return [feats[i] for i in self.levels]


class ORANDNet(nn.Module):
    """FCN-8s-shaped encoder-decoder: a 1x1 score on each of three feature levels, fused
    coarse to fine by upsampling and adding, then upsampled to the input size.

    x: (M, 1 [+ 3], H, W), one row per (image, class) channel -> logits (M, 1, H, W).
    """

    def __init__(self, encoder: str = "small", use_image: bool = False, widths: Sequence[int] = (16, 32, 64),
                 pretrained: str = ""):
        super().__init__()
        if encoder == "small" and pretrained:
            raise ValueError(f"the 'small' encoder has no pretrained weights (pretrained={pretrained!r}); "
                             "use a timm encoder such as 'vgg16'")
        self.use_image = use_image
        in_channels = 4 if use_image else 1
        self.encoder: nn.Module = (SmallEncoder(in_channels, widths) if encoder == "small"
                                   else TimmEncoder(encoder, in_channels, pretrained))
        self.scores = nn.ModuleList(nn.Conv2d(c, 1, 1) for c in self.encoder.channels)  # type: ignore[attr-defined]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(x)
        out = self.scores[-1](feats[-1])
        for level in range(len(feats) - 2, -1, -1):
            skip = self.scores[level](feats[level])
            out = F.interpolate(out, size=skip.shape[-2:], mode="bilinear", align_corners=False) + skip
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


def make_inputs(or_cams: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
    """(K, H, W) OR maps of one image [+ its (3, H, W) normalised image] -> (K, C, H, W)."""
    x = or_cams.unsqueeze(1)
    if image is not None:
        x = torch.cat([x, image.unsqueeze(0).expand(x.shape[0], -1, -1, -1)], dim=1)
    return x


def softmax_loss(logits: torch.Tensor, target: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """Per image, cross-entropy of the softmax over its class channels against the AND maps
    (mean over pixels, then over images). logits, target: (M, 1, H, W); owner: (M,)."""
    losses = []
    for image in torch.unique(owner):
        rows = owner == image
        log_p = F.log_softmax(logits[rows, 0], dim=0)  # (K, H, W), softmax over the image's classes
        losses.append(-(target[rows, 0] * log_p).sum(dim=0).mean())
    return torch.stack(losses).mean()


def bce_loss(logits: torch.Tensor, target: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """Per-pixel binary cross-entropy against the AND maps (mean over pixels and channels)."""
    return F.binary_cross_entropy_with_logits(logits, target)


def _over_max(maps: torch.Tensor) -> torch.Tensor:
    """(K, H, W) non-negative maps, each divided by its own maximum; a map with no positive
    value stays 0 (the official code adds 1e-5 to the maximum instead)."""
    peak = maps.amax(dim=(-2, -1), keepdim=True)
    return torch.where(peak > 0, maps / peak.clamp_min(torch.finfo(maps.dtype).tiny), torch.zeros_like(maps))


def relu_max(out: torch.Tensor) -> torch.Tensor:
    """The official read-out (``module/encdec_pred.py``): ReLU, each class map over its maximum."""
    return _over_max(F.relu(out))


def sigmoid_max(out: torch.Tensor) -> torch.Tensor:
    """The binary cross-entropy's read-out: the sigmoid (the predicted AND), each class map over
    its maximum, as every CAM of the book is max-normalised."""
    return _over_max(torch.sigmoid(out))


Readout = Callable[[torch.Tensor], torch.Tensor]  # (K, H, W) outputs of one image -> maps in [0, 1]
READOUTS: Registry[Readout] = Registry("ORANDNet read-out")
READOUTS.add("relu_max", relu_max, label="ReLU / max")
READOUTS.add("sigmoid_max", sigmoid_max, label="sigmoid / max")

Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, target, owner) -> loss
# A loss and the read-out its outputs are meant for (``readout``: a name in READOUTS), registered together.
LOSSES: Registry[Loss] = Registry("ORANDNet loss")
LOSSES.add("softmax", softmax_loss, label="softmax (official)", readout="relu_max")
LOSSES.add("bce", bce_loss, label="binary cross-entropy", readout="sigmoid_max")


def readout_of(loss: str) -> str:
    """The name of the read-out that belongs to ``loss``."""
    return str(LOSSES.entry(loss).attrs["readout"])


def orand_loss(logits: torch.Tensor, target: torch.Tensor, owner: torch.Tensor, kind: str) -> torch.Tensor:
    """The registered loss ``kind`` over a batch of class channels.

    logits, target: (M, 1, H, W); owner: (M,) index of the image each channel belongs to.
    """
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {tuple(LOSSES)}, got {kind!r}")
    return LOSSES.get(kind)(logits, target, owner)


def normalise(out: torch.Tensor) -> torch.Tensor:
    """The official read-out (:func:`relu_max`)."""
    return relu_max(out)


@torch.no_grad()
def outputs(model: ORANDNet, or_cams: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
    """The network's raw outputs (K, H, W) for one image's OR maps (each class channel alone)."""
    model.eval()
    out = model(make_inputs(or_cams, image if model.use_image else None))[:, 0]
    return out if out.dtype in (torch.float32, torch.float64) else out.float()


@torch.no_grad()
def predict(model: ORANDNet, or_cams: torch.Tensor, image: torch.Tensor | None, readout: str = "relu_max"
            ) -> torch.Tensor:
    """The ORANDNet map of one image, (K, H, W) in [0, 1]: each class channel through the
    network, then the named read-out (:data:`READOUTS`; :func:`readout_of` gives a loss's)."""
    return READOUTS.get(readout)(outputs(model, or_cams, image))


def collate(items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Batch of images -> one batch of class channels, with ``owner`` telling whose they are.
    Images of different sizes (VOC) are zero-padded at the right and bottom to the largest:
    no activation in the OR input and none in the AND target there."""
    h = max(item["or"].shape[-2] for item in items)
    w = max(item["or"].shape[-1] for item in items)
    xs, targets, owners = [], [], []
    for i, item in enumerate(items):
        x = make_inputs(item["or"], item.get("image"))
        target = item["and"].unsqueeze(1)
        pad = (0, w - x.shape[-1], 0, h - x.shape[-2])
        if any(pad):
            x, target = F.pad(x, pad), F.pad(target, pad)
        xs.append(x)
        targets.append(target)
        owners.append(torch.full((x.shape[0],), i, dtype=torch.long))
    return {"x": torch.cat(xs), "target": torch.cat(targets), "owner": torch.cat(owners)}


def loss_fn(kind: str) -> Callable[[nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]:
    """The training loop's loss for ORANDNet with the given loss ``kind``."""
    def compute(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        return orand_loss(model(batch["x"]), batch["target"], batch["owner"], kind), {}
    return compute
