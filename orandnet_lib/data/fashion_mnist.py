"""Fashion-MNIST IDX files: the object source of the embedded benchmark."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from ..core.errors import DataError

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "ORANDNET_FASHION_MNIST"
CLASS_NAMES: tuple[str, ...] = (
    "tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
HOW_TO_GET = (
    "Install Debian's package (apt-get update && apt-get install -y dataset-fashion-mnist), "
    f"or set {ENV_VAR} to a folder holding the four IDX files "
    "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
    "t10k-labels-idx1-ubyte.gz) downloaded from the Fashion-MNIST project."
)


def data_dir() -> Path:
    """The folder holding the IDX files: $ORANDNET_FASHION_MNIST, else Debian's location."""
    return Path(os.environ.get(ENV_VAR, DEFAULT_DIR))


def _find(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (folder / name).exists():
            return folder / name
    raise DataError(f"Fashion-MNIST file {stem}[.gz] not found in {folder}. {HOW_TO_GET}")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a uint8 array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    if len(data) < 4:
        raise DataError(f"{path}: too short to be an IDX file")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: header says {shape} ({int(np.prod(shape))} bytes) but holds {body.size}")
    return body.reshape(shape)


def load(split: str, folder: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) uint8 of the 'train' or 'test' split."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = data_dir() if folder is None else Path(folder)
    if not folder.is_dir():
        raise DataError(f"Fashion-MNIST folder {folder} does not exist. {HOW_TO_GET}")
    images = read_idx(_find(folder, _FILES[split][0]))
    labels = read_idx(_find(folder, _FILES[split][1]))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{folder}: {split} images {images.shape} and labels {labels.shape} do not match")
    return images, labels
