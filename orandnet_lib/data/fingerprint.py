"""What identifies a dataset's content, cheaply: the key part of every artifact made from data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core import store
from ..core.keys import read_key
from . import synth


def data_fingerprint(path: Path) -> str:
    """What identifies a dataset's content cheaply: its generator fingerprint when it was
    generated here, its artifact key when a stage wrote it, else the hash of its split lists
    and labels.txt."""
    config = synth.read_config(path)
    if config is not None and "fingerprint" in config:
        return f"embedded:{config['fingerprint']}"
    identity = read_key(path)  # a folder this project wrote (pseudo-masks): its artifact key
    if identity is not None:
        return f"artifact:{identity['digest']}"
    parts: dict[str, str] = {}
    for sub in ("ImageSets/Segmentation", "ImageSets/SegmentationAug"):
        for f in sorted((path / sub).glob("*.txt")):
            parts[f"{sub}/{f.name}"] = store.hash_file(f)
    for name in ("labels.txt", "labels.csv"):  # class names; image-level labels
        if (path / name).exists():
            parts[name] = store.hash_file(path / name)
    return f"voc:{store.hash_obj(parts)}"


def dataset_fingerprint(dataset: Any) -> str:
    """What a split of a VOC-layout dataset holds: the folder's content fingerprint (its
    generator config, its recorded identity for a folder this project wrote, else its split
    lists and labels), the split, the image ids and the class names."""
    return store.hash_obj({"data": data_fingerprint(dataset.root), "split": dataset.split,
                           "ids": store.hash_obj(list(dataset.ids)), "classes": list(dataset.class_names)})[:16]
