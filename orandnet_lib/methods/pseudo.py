"""From CAM stores to pseudo-masks: the relation network's training set (confident labels),
its boundary maps, any registered refinement over a store, and pseudo-masks written in VOC
layout for the segmentation stage. Stage 4 (:mod:`orandnet_lib.stages.s4_refinement`)
composes these."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from .cams import CamStore, to_tensor
from ..core.parallel import imap
from ..core.progress import bar as progress_bar
from ..core.keys import ArtifactKey, write_key
from ..core.store import atomic_path
from .refine import REFINEMENTS, RefineInputs, confident_labels
from ..nets.boundary import BoundaryNet, affinity_loss, downsample_labels
from ..data.voc import VOCDataset, VOCWriter


class BoundarySet(Dataset):
    """(image (3, H, W), confident labels (H/stride, W/stride)) pairs, flipped at random.
    The labels of every image are computed once from the CAM store (with a dense CRF), in
    ``workers`` processes (0: one per CPU)."""

    def __init__(self, store: CamStore, dataset: VOCDataset, stride: int, fg_threshold: float = 0.30,
                 bg_threshold: float = 0.05, use_crf: bool = True, seed: int = 0, progress: bool = True,
                 workers: int = 0):
        self.dataset, self.seed, self.epoch = dataset, seed, 0
        items = ((cams, ids, fg_threshold, bg_threshold, dataset.load_image(i) if use_crf else None, stride)
                 for i in dataset.ids for cams, ids in [store[i]])
        labels = imap(_confident_cells, items, workers)
        self.labels = dict(zip(dataset.ids, progress_bar(labels, total=len(dataset), desc="confident labels",
                                                         disable=not progress)))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_id = self.dataset.ids[index]
        x = to_tensor(self.dataset.load_image(image_id))[0]
        y = torch.from_numpy(self.labels[image_id].astype(np.int64))
        if np.random.default_rng([self.seed, self.epoch, index]).random() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        return x, y

    @staticmethod
    def collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack a batch; images of different sizes (VOC) are padded at the right and bottom,
        with 0 (the mean) in the image and ignore in the labels. (The training loop uses a
        dataset's own ``collate`` when it has one.)"""
        h = max(x.shape[-2] for x, _ in items)
        w = max(x.shape[-1] for x, _ in items)
        lh = max(y.shape[-2] for _, y in items)
        lw = max(y.shape[-1] for _, y in items)
        xs = [F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2])) for x, _ in items]
        ys = [F.pad(y, (0, lw - y.shape[-1], 0, lh - y.shape[-2]), value=255) for _, y in items]
        return torch.stack(xs), torch.stack(ys)

    def label_statistics(self) -> dict[str, float]:
        """Shares of confident foreground, background and ignored cells."""
        flat = np.concatenate([v.ravel() for v in self.labels.values()])
        return {"foreground": float(((flat > 0) & (flat < 255)).mean()), "background": float((flat == 0).mean()),
                "ignored": float((flat == 255).mean())}


def backbone_digest(net: BoundaryNet) -> str:
    """What a frozen backbone's features depend on: its weights and buffers, and the input scale."""
    h = hashlib.sha256(f"input_scale={net.input_scale}".encode())
    for name, t in net.features.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class FeatureCache:
    """A frozen backbone's features of every image of a dataset, unflipped and flipped, computed
    on first use and given again to each net whose frozen backbone is the same
    (:func:`backbone_digest`): stage 4's relation nets, one per variant, start from one
    pretrained backbone, so the features are computed once per stage, not once per net. Kept
    in memory in the dtype the forward pass gives (bfloat16 under ``bf16``); images must share
    one size, as a batch of features cannot be padded the way images are."""

    def __init__(self, dataset: VOCDataset, bf16: bool = False, batch_size: int = 32, progress: bool = True):
        self.dataset, self.bf16, self.batch_size, self.progress = dataset, bf16, batch_size, progress
        self.backbone: str | None = None
        self.levels: dict[bool, list[torch.Tensor]] = {}
        self.computed = 0  # times the features were computed (a test reads it)

    def of(self, net: BoundaryNet) -> dict[bool, list[torch.Tensor]]:
        """flip -> the feature levels of every image, in the dataset's order, from ``net``'s backbone."""
        digest = backbone_digest(net)
        if digest != self.backbone:
            self.levels, self.backbone = {}, None  # freed before the new ones are made
            self.levels, self.backbone = self._compute(net), digest
            self.computed += 1
        return self.levels

    def _compute(self, net: BoundaryNet) -> dict[bool, list[torch.Tensor]]:
        """Each batch's features are written into tensors allocated for the whole split after the
        first batch, so the cache never exists twice (the batches and their concatenation; chapter 0's
        calibration record has the peaks measured at the default profile's scale)."""
        ids = self.dataset.ids
        shapes: set[tuple[int, ...]] = set()
        out: dict[bool, list[torch.Tensor]] = {}
        was_training = net.training
        net.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            for start in progress_bar(range(0, len(ids), self.batch_size), desc="relation-net features",
                                      disable=not self.progress, leave=False):
                images = [self.dataset.load_image(i) for i in ids[start : start + self.batch_size]]  # decoded once
                shapes |= {im.shape for im in images}
                if len(shapes) > 1:
                    raise ValueError(f"{self.dataset.split_file}: images of several sizes {sorted(shapes)[:3]}; "
                                     "cached features need one size (set feature_cache = false)")
                x = to_tensor(np.stack(images))
                for flip in (False, True):
                    levels = net.backbone_features(x.flip(-1) if flip else x)
                    if flip not in out:
                        out[flip] = [_empty_like_batch(level, len(ids)) for level in levels]
                    for whole, level in zip(out[flip], levels):
                        whole[start : start + len(level)] = level
        net.train(was_training)
        return out


def _empty_like_batch(level: torch.Tensor, n: int) -> torch.Tensor:
    """An uninitialised (n, ...) tensor of a batch's dtype and memory layout (channels-last stays
    channels-last, as concatenating the batches kept it)."""
    channels_last = level.dim() == 4 and level.is_contiguous(memory_format=torch.channels_last) \
        and not level.is_contiguous()
    return torch.empty((n, *level.shape[1:]), dtype=level.dtype,
                       memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class FrozenFeatures(Dataset):
    """A :class:`BoundarySet` whose images are replaced by the frozen backbone's features (the
    flip each epoch draws, as the set's): the relation net's backbone is frozen and in eval
    mode, so every epoch would compute the same features again (issue 15: 0.17 s of a 0.45 s
    step). The features come from ``cache`` (a new one when None) when an item is first read,
    so a net whose checkpoint has finished training computes none."""

    def __init__(self, base: BoundarySet, net: BoundaryNet, bf16: bool = False, batch_size: int = 32,
                 progress: bool = True, cache: FeatureCache | None = None):
        self.base, self.net = base, net
        self.cache = cache or FeatureCache(base.dataset, bf16, batch_size, progress)
        if self.cache.dataset.ids != base.dataset.ids:
            raise ValueError(f"{base.dataset.split_file}: the feature cache holds another split's images")
        if self.cache.bf16 != bf16:
            raise ValueError(f"the feature cache computes in {'bfloat16' if self.cache.bf16 else 'float32'}, "
                             f"this training in {'bfloat16' if bf16 else 'float32'}")
        self._levels: dict[bool, list[torch.Tensor]] | None = None

    @property
    def levels(self) -> dict[bool, list[torch.Tensor]]:
        if self._levels is None:  # the backbone is frozen: its features, once read, stay its features
            self._levels = self.cache.of(self.net)
        return self._levels

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for levels in self.levels.values() for t in levels)

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        image_id = self.base.dataset.ids[index]
        y = torch.from_numpy(self.base.labels[image_id].astype(np.int64))
        flip = bool(np.random.default_rng([self.base.seed, self.base.epoch, index]).random() < 0.5)  # BoundarySet's draw
        return tuple(level[index] for level in self.levels[flip]), (y.flip(-1) if flip else y)


def boundary_loss_from_features(radius: int):
    """:func:`boundary_loss` on :class:`FrozenFeatures` batches: only the net's head runs."""
    def compute(model: nn.Module, batch: tuple[tuple[torch.Tensor, ...], torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        feats, labels = batch
        boundary = model.head_from(list(feats))
        labels = labels[:, : boundary.shape[-2], : boundary.shape[-1]]
        return affinity_loss(boundary, labels, radius)
    return compute


def boundary_loss(radius: int):
    def compute(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        images, labels = batch
        boundary = model(images)
        labels = labels[:, : boundary.shape[-2], : boundary.shape[-1]]
        return affinity_loss(boundary, labels, radius)
    return compute


@torch.no_grad()
def boundary_map(model: BoundaryNet, image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w) boundary map on the model's grid (stride ``model.stride`` on the image)."""
    model.eval()
    device = next(model.parameters()).device
    return model(to_tensor(image).to(device))[0, 0].float().cpu().numpy()


@torch.no_grad()
def boundary_maps(model: BoundaryNet, dataset: VOCDataset, batch_size: int = 64, progress: bool = True
                  ) -> dict[str, np.ndarray]:
    """Every image's boundary map (on the model's grid), computed once and shared by the variants;
    images of one size go through the network together."""
    model.eval()
    device = next(model.parameters()).device
    out: dict[str, np.ndarray] = {}
    ids = list(dataset.ids)
    for start in progress_bar(range(0, len(ids), batch_size), desc="boundary maps", disable=not progress):
        chunk = ids[start : start + batch_size]
        images = [dataset.load_image(i) for i in chunk]
        if len({im.shape for im in images}) == 1:
            maps = model(to_tensor(np.stack(images)).to(device))[:, 0].float().cpu().numpy()
        else:
            maps = [boundary_map(model, im) for im in images]
        out.update(zip(chunk, maps))
    return out


def save_boundary_maps(path: str | os.PathLike[str], maps: Mapping[str, np.ndarray]) -> None:
    """Boundary maps saved atomically to one ``.npz`` (float16, one array per image id)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **{i: m.astype(np.float16) for i, m in maps.items()})


def refined_cams(refinement: str, store: CamStore, dataset: VOCDataset, *, background: float,
                 settings: Mapping[str, Any], boundaries: Mapping[str, np.ndarray] | None = None,
                 workers: int = 0, progress: bool = True) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """One registered refinement (:data:`~orandnet_lib.methods.refine.REFINEMENTS`) over every
    image of ``dataset``: yields (image id, refined scores (K, H, W) in [0, 1], class ids) in
    order. ``boundaries`` (from :func:`boundary_maps`) for a refinement that needs them;
    the images are refined in ``workers`` processes (0: one per CPU)."""
    entry = REFINEMENTS.entry(refinement)
    needs_boundary = bool(entry.attrs.get("needs_boundary"))
    if needs_boundary and boundaries is None:
        raise ValueError(f"refinement {refinement!r} needs the relation network's boundary maps")
    settings = dict(settings)
    items = ((refinement, RefineInputs(dataset.load_image(i), cams, ids, background,
                                       boundaries[i] if needs_boundary and boundaries is not None else None, settings))
             for i in dataset.ids for cams, ids in [store[i]])
    refined = imap(refine_one, items, 1 if entry.attrs.get("unrefined") else workers)
    for image_id, (cams, ids) in progress_bar(zip(dataset.ids, refined), total=len(dataset), desc=entry.label,
                                              disable=not progress):
        yield image_id, cams, ids


def refine_one(item: tuple[str, RefineInputs]) -> tuple[np.ndarray, np.ndarray]:
    """A worker's task: the named refinement of one image (an image without a class is
    returned as it is)."""
    name, x = item
    if len(x.class_ids) == 0:
        return x.cams, x.class_ids
    return REFINEMENTS.get(name)(x), x.class_ids


def _crf_one(item: tuple[np.ndarray, np.ndarray, np.ndarray, float, int]) -> tuple[np.ndarray, np.ndarray]:
    """The dense CRF of one (image, cams, ids, background, iterations) item (``make bench``)."""
    image, cams, ids, background_score, iterations = item
    return refine_one(("crf", RefineInputs(image, cams, ids, background_score, None, {"crf_iterations": iterations})))


def _confident_cells(item: tuple[np.ndarray, np.ndarray, float, float, np.ndarray | None, int]) -> np.ndarray:
    cams, ids, fg, bg, image, stride = item
    return downsample_labels(confident_labels(cams, ids, fg, bg, image), stride)


def write_pseudo_masks(root: str | os.PathLike[str], dataset: VOCDataset,
                       masks: Iterable[tuple[str, np.ndarray]], split: str | None = None,
                       key: ArtifactKey | None = None) -> Path:
    """A VOC-layout folder of pseudo-masks (palette PNGs, 255 = ignore) whose images link to
    the originals, so the segmentation stage reads it through the one data path. ``key``
    (the set's artifact key) is written beside them in the same atomic move, so the folder's
    data fingerprint is its identity."""
    split = split or dataset.split
    with VOCWriter(root, dataset.class_names) as writer:
        for image_id, mask in masks:
            writer.add_mask(split, image_id, mask, dataset.image_path(image_id))
        if key is not None:
            write_key(writer.staging_dir, key)
    return Path(root)
