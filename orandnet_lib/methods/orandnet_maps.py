"""ORANDNet's data, in and out: its training pairs (per image, the OR maps in and the AND maps as
the target) read from CAM stores, and its maps of a whole split written as a CAM store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..core.errors import ConfigError
from ..core.progress import bar as progress_bar
from ..data.voc import VOCDataset
from ..nets.orandnet import READOUTS, ORANDNet, predict, readout_of
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
    meta (its ``identity``: the artifact key, see :func:`orandnet_lib.stages.s3_orandnet.train_variant`)."""
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
