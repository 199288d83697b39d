"""Stage 4 from top to bottom: CAMs -> confident labels -> boundary network -> random walk
(or dense CRF) -> pseudo-masks written in VOC layout for the segmentation stage."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from .cams import CamStore, to_tensor
from ..core.parallel import imap
from ..core.progress import bar as progress_bar
from .refine import (adaptive_avg_pool, cam_probabilities, confident_labels, crf_probabilities, random_walk,
                     resize_bilinear, transition_matrix)
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


def boundary_loss(radius: int):
    def compute(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        images, labels = batch
        boundary = model(images)
        labels = labels[:, : boundary.shape[-2], : boundary.shape[-1]]
        return affinity_loss(boundary, labels, radius)
    return compute


@torch.no_grad()
def boundary_map(model: BoundaryNet, image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w) boundary map on the model's stride-4 grid."""
    model.eval()
    device = next(model.parameters()).device
    return model(to_tensor(image).to(device))[0, 0].float().cpu().numpy()


@torch.no_grad()
def boundary_maps(model: BoundaryNet, dataset: VOCDataset, batch_size: int = 64, progress: bool = True
                  ) -> dict[str, np.ndarray]:
    """Every image's boundary map (stride-4 grid), computed once and shared by the variants;
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


def random_walk_cams(model: BoundaryNet | None, store: CamStore, dataset: VOCDataset, beta: float = 10.0,
                     iterations: int = 8, radius: int = 5, progress: bool = True,
                     boundaries: dict[str, np.ndarray] | None = None, workers: int = 0
                     ) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """IRN's propagation: each image's CAMs, downsampled to the boundary grid, walk along
    the boundary-derived affinities, are upsampled back and max-normalised per class.
    ``boundaries`` (from :func:`boundary_maps`) saves recomputing the maps; the walks run in
    ``workers`` processes (0: one per CPU). Yields (image id, refined cams (K, H, W) in [0, 1],
    class ids)."""
    if boundaries is None:
        if model is None:
            raise ValueError("random_walk_cams needs the boundary network or precomputed boundary maps")
        boundaries = boundary_maps(model, dataset, progress=progress)
    items = ((*store[i], boundaries[i], beta, iterations, radius) for i in dataset.ids)
    walked = imap(_walk_one, items, workers)
    for image_id, (cams, ids) in progress_bar(zip(dataset.ids, walked), total=len(dataset), desc="random walk",
                                              disable=not progress):
        yield image_id, cams, ids


def _walk_one(item: tuple[np.ndarray, np.ndarray, np.ndarray, float, int, int]) -> tuple[np.ndarray, np.ndarray]:
    cams, ids, boundary, beta, iterations, radius = item
    if len(ids) == 0:
        return cams, ids
    small = adaptive_avg_pool(cams, boundary.shape)  # numpy only: this runs in forked workers
    walked = random_walk(small, transition_matrix(boundary, radius, beta), iterations)
    up = np.maximum(resize_bilinear(walked, cams.shape[1:]), 0).astype(np.float32)
    return up / (up.reshape(len(ids), -1).max(axis=1)[:, None, None] + 1e-5), ids


def crf_cams(store: CamStore, dataset: VOCDataset, background_score: float, iterations: int = 10,
             progress: bool = True, workers: int = 0) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Dense CRF on each image's CAM probabilities (background score stacked first);
    yields the refined class probabilities (K, H, W) so they can be swept like CAMs.
    Images are refined in ``workers`` processes (0: one per CPU), in order."""
    items = ((dataset.load_image(i), *store[i], background_score, iterations) for i in dataset.ids)
    refined = imap(_crf_one, items, workers)
    for image_id, (cams, ids) in progress_bar(zip(dataset.ids, refined), total=len(dataset), desc="dense CRF",
                                              disable=not progress):
        yield image_id, cams, ids


def _crf_one(item: tuple[np.ndarray, np.ndarray, np.ndarray, float, int]) -> tuple[np.ndarray, np.ndarray]:
    image, cams, ids, background_score, iterations = item
    if len(ids) == 0:
        return cams, ids
    q = crf_probabilities(image, cam_probabilities(cams, background_score), iterations)
    return q[1:] / np.maximum(q[1:] + q[:1], 1e-8), ids  # P(class | class or background)


def _confident_cells(item: tuple[np.ndarray, np.ndarray, float, float, np.ndarray | None, int]) -> np.ndarray:
    cams, ids, fg, bg, image, stride = item
    return downsample_labels(confident_labels(cams, ids, fg, bg, image), stride)


def write_pseudo_masks(root: str | os.PathLike[str], dataset: VOCDataset,
                       masks: Iterable[tuple[str, np.ndarray]], split: str | None = None) -> Path:
    """A VOC-layout folder of pseudo-masks (palette PNGs, 255 = ignore) whose images link to
    the originals, so the segmentation stage reads it through the one data path."""
    split = split or dataset.split
    with VOCWriter(root, dataset.class_names) as writer:
        for image_id, mask in masks:
            writer.add_mask(split, image_id, mask, dataset.image_path(image_id))
    return Path(root)


def refine_variant(store: CamStore, dataset: VOCDataset, net: BoundaryNet, out_dir: str | os.PathLike[str], *,
                   beta: float = 10.0, iterations: int = 8, radius: int = 5, rw_background: float = 0.25,
                   crf_iterations: int = 10, keep: int = 0, progress: bool = True,
                   boundaries: dict[str, np.ndarray] | None = None, workers: int = 0) -> dict[str, object]:
    """One CAM variant through stage 4: scores of the CAM, the CAM after a dense CRF and after
    the random walk (best-mIoU sweeps), and of the random walk at a fixed background score,
    whose masks are written as pseudo-masks in ``out_dir`` (VOC layout).

    Returns {"scores": {level: {miou, precision, recall, threshold}}, "timings": {...},
    "examples": the first ``keep`` random-walk results}. ``boundaries``: precomputed boundary
    maps (shared across variants); ``workers``: processes for the CRF and the walk.
    """
    import time

    from .cams import sweep_store, sweep_stream
    from ..core.metrics import ConfusionMatrix, cam_to_mask

    cam_sweep = sweep_store(store, dataset)
    t0 = time.perf_counter()
    crf_sweep = sweep_stream(crf_cams(store, dataset, cam_sweep.best()["threshold"] / 100, crf_iterations,
                                      progress=progress, workers=workers), dataset)
    t1 = time.perf_counter()
    walked = list(random_walk_cams(net, store, dataset, beta, iterations, radius, progress=progress,
                                   boundaries=boundaries, workers=workers))
    t2 = time.perf_counter()
    fixed = ConfusionMatrix(dataset.num_classes)
    masks = {}
    for image_id, cams, ids in walked:
        masks[image_id] = cam_to_mask(cams, ids, rw_background)
        fixed.update(masks[image_id], dataset.load_mask(image_id))
    write_pseudo_masks(out_dir, dataset, masks.items())
    return {
        "scores": {"cam": cam_sweep.best(), "crf": crf_sweep.best(), "rw": sweep_stream(walked, dataset).best(),
                   "rw_fixed": {**fixed.scores().summary(), "threshold": 100 * rw_background}},
        "timings": {"crf_ms_per_image": 1000 * (t1 - t0) / len(dataset),
                    "rw_ms_per_image": 1000 * (t2 - t1) / len(dataset)},
        "examples": walked[:keep],
    }
