"""ORANDNet's data, in and out: its training pairs (per image, the OR maps in and the AND maps as
the target) read from CAM stores, one model trained and its maps of a whole split written as a
CAM store, and what its maps are worth under each read-out beside a perfect network's."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..core.errors import ConfigError
from ..core.keys import ArtifactKey
from ..core.metrics import SweepResult, ThresholdSweep
from ..core.progress import bar as progress_bar
from ..core.train import TrainConfig, fit
from ..data.voc import VOCDataset
from ..nets.orandnet import READOUTS, ORANDNet, collate, loss_fn, outputs, predict, readout_of
from .cams import CamStore, CamStoreWriter, to_tensor


class OrAndSet(Dataset):
    """Training pairs: per image, its OR maps (input), AND maps (target) and, when
    ``use_image``, the normalised image; horizontally flipped at random when ``augment``."""

    def __init__(self, or_store: CamStore, and_store: CamStore, dataset: VOCDataset, use_image: bool = False,
                 augment: bool = True, seed: int = 0):
        self.or_store, self.and_store, self.dataset = or_store, and_store, dataset
        self.use_image, self.augment, self.seed, self.epoch = use_image, augment, seed, 0
        self.ids = [i for i in dataset.ids if len(or_store[i][1]) > 0]  # images with a foreground class

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image_id = self.ids[index]
        item = {"or": torch.from_numpy(self.or_store[image_id][0]), "and": torch.from_numpy(self.and_store[image_id][0])}
        if self.use_image:
            item["image"] = to_tensor(self.dataset.load_image(image_id))[0]
        if self.augment and np.random.default_rng([self.seed, self.epoch, index]).random() < 0.5:
            item = {k: v.flip(-1) for k, v in item.items()}
        return item


def write_store(model: ORANDNet, or_store: CamStore, dataset: VOCDataset, path: str | Path, kind: str,
                meta: dict[str, Any] | None = None, progress: bool = True, readout: str = "") -> Path:
    """ORANDNet maps of every image of ``dataset`` into a CAM store (the format of stage 1's),
    read out as the training loss ``kind`` asks (:func:`readout_of`) unless ``readout`` names
    another; the loss and the read-out are recorded in the meta. ``meta`` adds to the store's
    meta (its ``identity``: the artifact key, see :func:`train_orandnet`)."""
    readout = readout or readout_of(kind)
    if readout not in READOUTS:
        raise ConfigError(f"unknown ORANDNet read-out {readout!r}; known: {', '.join(READOUTS)}")
    device = next(model.parameters()).device
    inherited = {k: or_store.meta[k] for k in ("split", "data", "num_classes", "class_names") if k in or_store.meta}
    with CamStoreWriter(path, {"source": "orandnet", "loss": kind, "readout": readout, **inherited,
                               **(meta or {})}) as writer:
        for image_id in progress_bar(dataset.ids, desc="ORANDNet maps", disable=not progress):
            or_cams, class_ids = or_store[image_id]
            if len(class_ids) == 0:
                writer.add(image_id, or_cams, class_ids)
                continue
            image = to_tensor(dataset.load_image(image_id))[0].to(device) if model.use_image else None
            out = predict(model, torch.from_numpy(or_cams).to(device), image, readout)
            writer.add(image_id, out.cpu().numpy(), class_ids)
    return Path(path)


@dataclass
class Trained:
    """One trained ORANDNet model: its training history, its maps under its own loss's read-out,
    its checkpoint, the model itself and its loss."""

    history: list[dict[str, float]]
    store: CamStore  # its maps under its own loss's read-out
    checkpoint: Path
    model: ORANDNet | None = None
    loss: str = "bce"


def train_orandnet(name: str, or_store: CamStore, and_store: CamStore, dataset: VOCDataset, cfg: TrainConfig,
                   out_dir: Path, key: ArtifactKey, *, loss: str = "bce", use_image: bool = False,
                   encoder: str = "small", widths: Sequence[int] = (16, 32, 64), pretrained: str = "",
                   progress: bool = True) -> Trained:
    """Train one ORANDNet model with the one training loop (its checkpoint named and checked
    by ``key``, resumed when it exists) and write its maps of ``dataset`` as a CAM store
    ``out_dir/cams/<name>_<split>`` (read out as ``loss`` asks) that carries ``key`` as its identity."""
    torch.manual_seed(cfg.seed)
    model = ORANDNet(encoder, use_image=use_image, widths=widths, pretrained=pretrained)
    data = OrAndSet(or_store, and_store, dataset, use_image=use_image, seed=cfg.seed)
    checkpoint = key.path(out_dir, name)
    history = fit(model, data, loss_fn(loss), cfg, checkpoint=checkpoint, key=key, collate=collate,
                  desc=f"training {name}", progress=progress)
    tag = "".join(c if c.isalnum() else "_" for c in name).strip("_")
    path = write_store(model, or_store, dataset, Path(out_dir) / "cams" / f"{tag}_{dataset.split}", loss,
                       meta={"run": name, "identity": key.to_dict()}, progress=progress)
    return Trained(history, CamStore(path), checkpoint, model, loss)


PERFECT = "perfect network"  # the AND target as binary cross-entropy logits, logit(AND)


@dataclass
class ReadoutScore:
    """One model's maps under one read-out: their sweep against the masks, the share of class
    maps left empty (no positive value, so never foreground) and the per-pixel mean absolute
    error against the AND target."""

    sweep: SweepResult | None  # None for a split without masks
    empty: float  # percent of class maps
    mae: float  # mean |map - AND| over every pixel of every class map

    def describe(self) -> dict[str, Any]:
        """As a record holds it: the best-mIoU scores (none without masks), ``empty_maps`` and ``mae``."""
        return {**(self.sweep.best() if self.sweep is not None else {}), "empty_maps": self.empty, "mae": self.mae}


def perfect_logits(and_maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """logit(AND): what a network that minimises the binary cross-entropy against AND outputs
    (the softmax loss has no unique optimum: any per-pixel shift of the logits is as good).
    In float64, so that the sigmoid gives AND back to float32 precision."""
    a = and_maps.double().clamp(eps, 1 - eps)
    return torch.log(a) - torch.log1p(-a)


def readout_scores(ds: VOCDataset, or_store: CamStore, and_store: CamStore, models: Mapping[str, ORANDNet],
                   progress: bool = True) -> dict[tuple[str, str], ReadoutScore]:
    """Every model under every registered read-out, and the perfect network
    (:func:`perfect_logits`) under each, on ``ds``: ``{(model, read-out): score}``.
    The network runs once per image; the masks score (when the split has them), nothing is
    chosen on them; the empty maps and the error against AND need no mask."""
    names = [*models, PERFECT]
    scored = ds.has_masks
    sweeps = {(n, r): ThresholdSweep(ds.num_classes) for n in names for r in READOUTS}
    empty = {k: 0 for k in sweeps}
    err = {k: 0.0 for k in sweeps}
    maps_seen, pixels = 0, 0
    for image_id in progress_bar(ds.ids, desc="read-outs", disable=not progress):
        or_cams, class_ids = or_store[image_id]
        if len(class_ids) == 0:
            continue
        gt = ds.load_mask(image_id) if scored else None
        target = torch.from_numpy(np.asarray(and_store[image_id][0], np.float32))
        raw = {n: outputs(m, torch.from_numpy(np.asarray(or_cams, np.float32)),
                          to_tensor(ds.load_image(image_id))[0] if m.use_image else None).cpu()
               for n, m in models.items()}
        raw[PERFECT] = perfect_logits(target)
        maps_seen += len(class_ids)
        pixels += target.numel()
        for n, out in raw.items():
            for r in READOUTS:
                maps = READOUTS.get(r)(out)
                if gt is not None:
                    sweeps[n, r].update(maps.float().numpy(), class_ids, gt)
                empty[n, r] += int((maps.amax(dim=(-2, -1)) <= 0).sum())
                err[n, r] += float((maps.float() - target).abs().sum())
    return {k: ReadoutScore(sw.result() if scored else None, 100.0 * empty[k] / max(maps_seen, 1),
                            err[k] / max(pixels, 1)) for k, sw in sweeps.items()}


def single_class_share(or_store: CamStore) -> float:
    """The share (percent) of the images with a foreground class that have exactly one: under
    the softmax loss their gradient is exactly zero."""
    counts = [len(or_store[i][1]) for i in or_store.ids]
    with_class = [c for c in counts if c > 0]
    return 100.0 * sum(c == 1 for c in with_class) / max(len(with_class), 1)


def empty_map_share(trained: Mapping[str, Trained]) -> dict[str, float]:
    """Per model, the share (percent) of class maps with no positive value under its read-out:
    0 everywhere, so that class is never foreground."""
    out = {}
    for name, t in trained.items():
        peaks = [float(m.max()) for i in t.store.ids for m in t.store[i][0]]
        out[name] = 100.0 * sum(v <= 0 for v in peaks) / max(len(peaks), 1)
    return out
