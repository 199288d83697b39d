"""CAM classifiers on timm backbones: a CNN in the IRN style and a ViT with a CAM head.

Both map an image batch (B, 3, H, W), normalised with ImageNet statistics, to class logits
(B, C) for the C foreground classes, and expose ``cam(x)`` -> (B, C, h, w) raw class
activation maps on their feature grid. A network's ``pretrained`` setting is its backbone's
weights (``nets.backbone``): ``""``, ``"timm"`` or a file; a stage resolves an auxiliary
recipe's name to its cached file first (``methods.pretrain.resolve``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError
from ..core.registry import Registry
from .backbone import create_backbone


class CNNCAM(nn.Module):
    """IRN-style CAM network: a timm ResNet at output stride 16 (last stage dilated, not
    strided), a bias-free 1x1 classifier on the last feature map, global average pooling.
    Train with a multilabel soft-margin loss on :meth:`forward`'s logits."""

    def __init__(self, num_classes: int, backbone: str = "resnet50", pretrained: str = "",
                 output_stride: int = 16, backbone_kwargs: dict[str, Any] | None = None):
        super().__init__()
        self.backbone_name = backbone
        self.features = create_backbone(backbone, pretrained, features_only=True, out_indices=(-1,),
                                        output_stride=output_stride, **(backbone_kwargs or {}))
        channels = self.features.feature_info.channels()[-1]
        self.stride = self.features.feature_info.reduction()[-1]
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1, bias=False)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(self.feature_map(x), 1)
        return self.classifier(pooled).flatten(1)

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H/stride, W/stride) class activation maps (before ReLU)."""
        return self.classifier(self.feature_map(x))

    def param_groups(self, head_lr_mult: float = 10.0) -> list[dict[str, Any]]:
        """IRN trains the new classifier at 10x the backbone's learning rate."""
        return [{"params": list(self.features.parameters()), "lr_mult": 1.0},
                {"params": list(self.classifier.parameters()), "lr_mult": head_lr_mult}]


class ConvStem(nn.Sequential):
    """Stride-2 3x3 convolutions, one per width: a small convolutional stem that gives a
    from-scratch ViT the locality a plain patch embedding lacks (stride 2^len(widths))."""

    def __init__(self, widths: tuple[int, ...]):
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in widths:
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True)]
            c_in = c_out
        super().__init__(*layers)
        self.num_features = widths[-1]  # what timm's HybridEmbed reads


class ResNetStem(nn.Sequential):
    """The first stages of a timm ResNet, up to output ``stride``, as a hybrid ViT's patch
    embedding (the ViT-R50 hybrid of Dosovitskiy et al.): the ViT's tokens then start from
    pretrained convolutional features, here the same pretrained ResNet as the CNN's."""

    def __init__(self, backbone: str, backbone_kwargs: Mapping[str, Any] | None = None, pretrained: str = "",
                 stride: int = 8):
        features = create_backbone(backbone, pretrained, features_only=True, **dict(backbone_kwargs or {}))
        reductions = features.feature_info.reduction()
        if stride not in reductions:
            raise ValueError(f"a {backbone} stem has output strides {reductions}, not {stride}")
        level = reductions.index(stride)
        last = features.feature_info.module_name()[level]
        modules: list[nn.Module] = []
        for name, module in features.items():
            modules.append(module)
            if name == last:
                break
        super().__init__(*modules)
        self.stride = stride
        self.num_features = features.feature_info.channels()[level]  # what timm's HybridEmbed reads


class ViTCAM(nn.Module):
    """A timm VisionTransformer whose patch tokens feed a bias-free linear CAM head.

    ``pool="avg"``: logits are the head applied to the mean patch token, so the CAM head on
    each token is the exact CAM (as the CNN's). ``pool="token"``: logits come from the class
    token (as DeiT); CAMs then need a gradient method (``cam_method="gradcam"`` or
    ``"attribution"``, the official code's transformer attribution).
    ``stem_widths`` non-empty: a convolutional stem of stride 2^len replaces the patch
    embedding (then ``patch_size`` is the stride of the projection on the stem's output).
    ``stem`` non-empty (``{"kind": "resnet", "backbone", "backbone_kwargs", "pretrained"}``):
    instead, a :class:`ResNetStem` of the same stride (a hybrid ViT on a pretrained ResNet).
    """

    def __init__(self, num_classes: int, backbone: str = "vit_base_patch16_224", pretrained: str = "",
                 img_size: int = 224, patch_size: int | None = None, pool: str = "avg",
                 stem_widths: tuple[int, ...] = (), backbone_kwargs: dict[str, Any] | None = None,
                 stem: Mapping[str, Any] | None = None):
        super().__init__()
        if pool not in ("avg", "token"):
            raise ValueError(f"pool must be 'avg' or 'token', got {pool!r}")
        kwargs: dict[str, Any] = {"num_classes": 0, "img_size": img_size, "dynamic_img_size": True,
                                  **(backbone_kwargs or {})}
        if patch_size is not None:
            kwargs["patch_size"] = patch_size
        self.stem_stride = 1
        stem = dict(stem or {})
        kind = stem.pop("kind", None)  # decided by the kind, not by what settings are left beside it
        if kind is None and stem:
            raise ConfigError(f"ViT stem settings {sorted(stem)} without a kind: give kind 'resnet'")
        if kind not in (None, "resnet"):
            raise ConfigError(f"unknown ViT stem kind {kind!r}: the stems are 'conv' (no stem settings) and 'resnet'")
        resnet_stem = kind == "resnet"
        if resnet_stem and "backbone" not in stem:
            raise ConfigError("a ResNet stem needs its backbone (and backbone_kwargs, pretrained): the CNN's")
        if resnet_stem and not stem_widths:
            raise ValueError("a ResNet stem takes its stride from stem_widths (2^len); give stem_widths")
        if resnet_stem and pretrained:
            raise ValueError("a ViT on a pretrained ResNet stem trains its transformer from scratch: "
                             f"pretrained must be empty, got {pretrained!r}")
        if stem_widths:
            import timm  # as nets.backbone: imported where a network is built
            from timm.layers import HybridEmbed

            embed_dim = kwargs.get("embed_dim") or timm.create_model(backbone, pretrained=False).embed_dim
            self.stem_stride = 2 ** len(stem_widths)
            module: nn.Module = (ResNetStem(stride=self.stem_stride, **stem) if resnet_stem else
                                 ConvStem(tuple(stem_widths)))
            kwargs["embed_layer"] = partial(HybridEmbed, backbone=module,
                                            feature_size=img_size // self.stem_stride)
            kwargs["embed_dim"] = embed_dim
        self.vit = create_backbone(backbone, pretrained, **kwargs)
        self.pool = pool
        self.num_prefix = self.vit.num_prefix_tokens
        ps = self.vit.patch_embed.patch_size
        self.stride = self.stem_stride * (ps[0] if isinstance(ps, tuple) else ps)
        self.head = nn.Linear(self.vit.embed_dim, num_classes, bias=False)

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Final normalised tokens (B, prefix + N, D) and the patch grid (h, w). A side that
        is not a multiple of the stride (VOC photos: 500 x 375) is resized to the nearest
        multiple first, so the grid still covers the whole image."""
        h, w = x.shape[-2:]
        gh, gw = max(1, round(h / self.stride)), max(1, round(w / self.stride))
        if (gh * self.stride, gw * self.stride) != (h, w):
            x = F.interpolate(x, size=(gh * self.stride, gw * self.stride), mode="bilinear", align_corners=False)
        # under CPU bf16 autocast, scaled_dot_product_attention's backward runs about 3x slower than
        # in fp32 (torch 2.14, avx512_bf16; the calibration record): timm's explicit path is taken where a
        # backward may run through the attention; its forward is about 2x slower, so only there
        backward = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.vit.parameters()))
        with self.explicit_attention(backward and x.device.type == "cpu" and torch.is_autocast_enabled("cpu")):
            return self.vit.forward_features(x), (gh, gw)

    @contextlib.contextmanager
    def explicit_attention(self, enabled: bool = True) -> Iterator[None]:
        """timm's explicit attention (softmax(q k^T) v, probabilities through ``attn_drop``) in
        place of the fused kernel while the block runs; the same function, restored after."""
        blocks = list(self.vit.blocks)
        fused = [blk.attn.fused_attn for blk in blocks]
        if enabled:
            for blk in blocks:
                blk.attn.fused_attn = False
        try:
            yield
        finally:
            for blk, f in zip(blocks, fused):
                blk.attn.fused_attn = f

    def _logits(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.pool == "token":
            return self.head(tokens[:, 0])
        return self.head(tokens[:, self.num_prefix :].mean(dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._logits(self.tokens(x)[0])

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """CAM head on the patch tokens: (B, C, h, w)."""
        tokens, (h, w) = self.tokens(x)
        patch = self.head(tokens[:, self.num_prefix :])  # (B, N, C)
        return patch.transpose(1, 2).reshape(x.shape[0], -1, h, w)

    def gradcam(self, x: torch.Tensor) -> torch.Tensor:
        """Grad-CAM on the output of the last transformer block: for each class, the patch
        tokens weighted by the mean gradient of the class logit. (B, C, h, w)."""
        if self.pool == "token":
            raise ValueError("Grad-CAM at the last block's output is zero on every patch with class-token pooling "
                             "(no token mixes after the last block): use attribution, or pool='avg'")
        feats: list[torch.Tensor] = []
        hook = self.vit.blocks[-1].register_forward_hook(lambda m, i, o: feats.append(o))
        try:
            with torch.no_grad():  # no gradient flows back past the last block's output: no graph up to it
                tokens, (h, w) = self.tokens(x)
        finally:
            hook.remove()
        with torch.enable_grad():
            block_out = feats[0].detach().requires_grad_(True)
            tail = self.vit.norm(block_out)  # timm's forward_features ends with its norm after the blocks
            if not torch.equal(tail.detach(), tokens):
                raise RuntimeError("this timm ViT does not end with norm(last block): Grad-CAM needs its tail")
            logits = self._logits(tail)
            maps = []
            for c in range(logits.shape[1]):
                (grad,) = torch.autograd.grad(logits[:, c].sum(), block_out, retain_graph=True)
                patch, g = block_out[:, self.num_prefix :], grad[:, self.num_prefix :]
                weights = g.mean(dim=1, keepdim=True)  # (B, 1, D)
                maps.append((patch * weights).sum(-1))  # (B, N)
        return torch.stack(maps, dim=1).reshape(x.shape[0], -1, h, w).detach()

    def attribution(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Gradient-weighted attention rollout (Chefer et al., 2021), the transformer attribution
        of the official ORANDNet code (module/vit_cam.py, lrp/baselines/ViT/ViT_LRP.py) with the
        attention probabilities A_l in place of their LRP relevance. Per class c, from R = I over
        all tokens, each block l updates R <- R + mean_heads(relu(dy_c/dA_l * A_l)) @ R; the patch
        tokens' relevance is R's row of the token the classifier pools (class token for
        pool="token", the mean of the patch rows for pool="avg"), ReLU'd. Only that row is
        needed, so it is propagated as a row vector from the last block down (v <- v + v @ Ā_l,
        the same product by associativity, O(N^2) instead of O(N^3) per block).

        classes: (B, C) multi-hot; only the classes an image has are computed (one backward pass
        per class present in the batch), the others are zero. Returns (B, C, h, w) >= 0.
        With pool="avg" the identity gives every patch a floor of 1 / N (its own residual path).
        """
        attns: list[torch.Tensor] = []
        # fused attention never materialises the probabilities; the explicit path does, in attn_drop
        hooks = [blk.attn.attn_drop.register_forward_hook(lambda m, i, o: attns.append(o)) for blk in self.vit.blocks]
        try:
            with torch.enable_grad(), self.explicit_attention():
                tokens, (h, w) = self.tokens(x.detach())
                logits = self._logits(tokens)
                b, n, k = tokens.shape[0], tokens.shape[1], logits.shape[1]
                wanted = (torch.ones_like(logits) if classes is None else classes.to(logits)) > 0
                start = torch.zeros(b, n, device=x.device)  # the rollout in fp32, also under bf16 autocast
                if self.pool == "token":
                    start[:, 0] = 1.0
                else:
                    start[:, self.num_prefix :] = 1.0 / (n - self.num_prefix)
                out = torch.zeros(b, k, n - self.num_prefix, device=x.device)
                for c in torch.nonzero(wanted.any(dim=0)).flatten().tolist():
                    target = (logits[:, c] * wanted[:, c]).sum()  # images without class c: no gradient
                    grads = torch.autograd.grad(target, attns, retain_graph=True)
                    v = start
                    with torch.autocast(x.device.type, enabled=False):
                        for a, g in zip(reversed(attns), reversed(grads)):
                            weighted = (g.float() * a.float()).clamp(min=0).mean(dim=1)  # (B, N, N)
                            v = v + torch.bmm(v.unsqueeze(1), weighted).squeeze(1)
                    out[:, c] = v[:, self.num_prefix :].clamp(min=0) * wanted[:, c, None]
        finally:
            for hook in hooks:
                hook.remove()
        return out.reshape(b, k, h, w).detach()

    def param_groups(self, head_lr_mult: float = 10.0) -> list[dict[str, Any]]:
        return [{"params": list(self.vit.parameters()), "lr_mult": 1.0},
                {"params": list(self.head.parameters()), "lr_mult": head_lr_mult}]


ClassifierFactory = Callable[..., nn.Module]  # (num_classes, **kwargs) -> a CAM classifier

# The classifier kinds a spec can name. ``spec_kwargs`` lists the constructor arguments beyond
# backbone / pretrained / backbone_kwargs that the kind takes from a classifier spec (the stage
# passes only those).
CLASSIFIER_KINDS: Registry[ClassifierFactory] = Registry("classifier kind")
CLASSIFIER_KINDS.add("cnn", CNNCAM, label="CNN (ResNet, IRN style)")


@CLASSIFIER_KINDS.register("vit", label="ViT with a CAM head",
                           spec_kwargs=("img_size", "patch_size", "stem_widths", "pool", "stem"))
def vit_classifier(num_classes: int, **kwargs: Any) -> nn.Module:
    if "stem_widths" in kwargs:
        kwargs["stem_widths"] = tuple(kwargs["stem_widths"])
    return ViTCAM(num_classes, **kwargs)


def create_classifier(kind: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Factory: ``kind`` names a registered classifier kind ("cnn", "vit"); keyword arguments
    go to its constructor. An unknown kind is a ConfigError listing the known ones."""
    return CLASSIFIER_KINDS.get(kind)(num_classes, **kwargs)
