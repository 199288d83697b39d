"""One builder for every network's timm backbone, and what its ``weights`` setting may be.

``weights`` is configuration, never a training job: ``""`` starts from random weights,
``"timm"`` downloads ImageNet weights from the hub, and a path names a weights file: either
timm's own format (handed to timm) or a backbone file this project wrote (``methods.pretrain``
caches them: a dict with the backbone's ``state_dict`` and its ``identity``), loaded after the
module is built. An auxiliary recipe's name is resolved to its file by the stage that needs it
(``methods.pretrain.resolve``), which trains it once per machine; constructors only load.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn


def backbone_shape(kind: str, backbone_kwargs: Mapping[str, Any] | None, patch_size: int | None = None,
                   stem_widths: Sequence[int] = ()) -> dict[str, Any]:
    """Every constructor argument that shapes a backbone's weights (what an auxiliary recipe's
    weights are keyed by): the timm kwargs, and for a ViT its patch size and convolutional stem.
    A CNN's output stride (dilation) changes no weight, so the CNN CAM network, DeepLab and the
    relation net share one pretrained ResNet of the same timm kwargs."""
    shape = {k: list(v) if isinstance(v, tuple) else v for k, v in dict(backbone_kwargs or {}).items()}
    if kind == "vit":
        shape.update(patch_size=patch_size, stem_widths=list(stem_widths))
    return shape


@functools.lru_cache(maxsize=16)
def _project_file(path: str, mtime: float) -> bool:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # safetensors, a bare state dict of timm's, ...: timm reads those
        return False
    return isinstance(state, dict) and "state_dict" in state and "identity" in state


def is_project_file(path: str | os.PathLike[str]) -> bool:
    """True for a backbone file this project wrote (``methods.pretrain``'s cache)."""
    return _project_file(str(path), Path(path).stat().st_mtime)


def weights_kwargs(weights: str) -> dict[str, Any]:
    """timm.create_model's arguments for a ``weights`` setting (a project file: none; it is
    loaded by :func:`create_backbone` after the module is built)."""
    if not weights:
        return {"pretrained": False}
    if weights == "timm":
        return {"pretrained": True}
    path = Path(weights)
    if not path.exists():
        raise FileNotFoundError(f"weights file {path} does not exist: weights are '' (from scratch), 'timm' (from "
                                "the hub) or a file; an auxiliary pretraining recipe's name is resolved to its file "
                                "by the stage that builds the network (methods.pretrain.resolve)")
    if is_project_file(path):
        return {"pretrained": False}
    return {"pretrained": True, "pretrained_cfg_overlay": {"file": str(path)}}


def create_backbone(name: str, weights: str = "", **timm_kwargs: Any) -> nn.Module:
    """``timm.create_model(name, **timm_kwargs)`` starting from ``weights`` (see the module's doc)."""
    import timm  # here, not at the top: stages that build no network (2, 6) skip its 2-3 s import

    timm_kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in timm_kwargs.items()}
    module = timm.create_model(name, **weights_kwargs(weights), **timm_kwargs)
    if weights and weights != "timm" and is_project_file(weights):
        load_weights(module, weights)
    return module


def load_weights(module: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load a project backbone file into a timm module (a ``features_only`` ResNet or a
    VisionTransformer): every weight must match but a classification head's, which is dropped.
    A ViT's position embedding is resampled when its token grid differs from the saved one."""
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "head."))}
    own = module.state_dict()
    if "pos_embed" in state and "pos_embed" in own and state["pos_embed"].shape != own["pos_embed"].shape:
        from timm.layers import resample_abs_pos_embed

        prefix = int(getattr(module, "num_prefix_tokens", 1))
        grid = module.patch_embed.grid_size  # type: ignore[union-attr]
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_size=list(grid), num_prefix_tokens=prefix)
    missing = [k for k in own if k not in state and not k.startswith(("fc.", "head."))]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state
             if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        # a ResNet stage as wide as the one before has a projection shortcut only where it is strided,
        # so the same kwargs at another output stride give other weights
        shortcut_only = all(".downsample." in k for k in missing + unexpected) and not wrong
        hint = ("; a dilated ResNet stage as wide as the previous one loses its projection shortcut: give "
                "every stage more channels than the one before" if shortcut_only else "")
        raise ValueError(f"{path}: pretrained weights do not fit this backbone (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, other shapes {wrong[:5]}){hint}")
    module.load_state_dict(state, strict=False)
    return module
