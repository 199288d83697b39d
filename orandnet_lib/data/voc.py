"""The one data path: datasets in PASCAL VOC layout, read and written.

Layout (relative to the data root)::

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png          palette PNG, class index per pixel, 255 = ignore
    SegmentationClassAug/<id>.png       (VOC 2012 + SBD) grey-level PNG, same meaning
    ImageSets/Segmentation/<split>.txt  one image id per line
    labels.txt                          optional: class names, background first

The embedded benchmark is generated into this layout, so PASCAL VOC 2012 itself and the
embedded data go through the same reader.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.errors import DataError

IGNORE_INDEX = 255

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: (n, 3) uint8, colour i from the bits of i spread over RGB."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[i] = (r, g, b)
    return palette


@dataclass(frozen=True)
class Sample:
    """One image of a split.

    image: (H, W, 3) uint8 RGB; mask: (H, W) uint8 class index, 255 = ignore;
    labels: (C - 1,) float32 multi-hot over the foreground classes, derived from the mask.
    """

    id: str
    image: np.ndarray
    mask: np.ndarray
    labels: np.ndarray


def read_class_names(root: Path) -> tuple[str, ...]:
    """Class names from ``labels.txt`` (background first), else the 21 VOC names."""
    path = Path(root) / "labels.txt"
    if not path.exists():
        return VOC_CLASSES
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if len(names) < 2:
        raise DataError(f"{path}: needs at least two class names (background first), found {len(names)}")
    if len(set(names)) != len(names):
        raise DataError(f"{path}: class names repeat: {names}")
    if len(names) > IGNORE_INDEX:
        raise DataError(f"{path}: {len(names)} classes; at most {IGNORE_INDEX} fit a uint8 mask")
    return names


def _split_file(root: Path, split: str) -> Path:
    for sub in ("ImageSets/Segmentation", "ImageSets/SegmentationAug"):
        candidate = root / sub / f"{split}.txt"
        if candidate.exists():
            return candidate
    available = sorted(p.stem for p in (root / "ImageSets" / "Segmentation").glob("*.txt"))
    raise DataError(
        f"{root / 'ImageSets/Segmentation' / (split + '.txt')}: split {split!r} not found; "
        f"splits present: {available or 'none'}"
    )


def _parse_id(line: str) -> str:
    # Plain VOC lists hold ids; DeepLab-style lists hold "/JPEGImages/x.jpg /SegmentationClassAug/x.png".
    token = line.split()[0]
    return Path(token).stem if ("/" in token or token.endswith(".jpg")) else token


def check_layout(root: Path) -> None:
    """Raise a DataError naming what is missing unless ``root`` is a VOC-layout folder."""
    if not root.exists():
        raise DataError(
            f"data root {root} does not exist; pass --data-root with a VOC-layout folder "
            "or let the profile generate the embedded benchmark"
        )
    if not root.is_dir():
        raise DataError(f"data root {root} is a file, not a folder")
    missing = [d for d in ("JPEGImages", "ImageSets") if not (root / d).is_dir()]
    if missing:
        raise DataError(
            f"{root} is not in PASCAL VOC layout: missing {', '.join(d + '/' for d in missing)} "
            "(expected JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/<split>.txt)"
        )


class VOCDataset(Sequence[Sample]):
    """A split of a VOC-layout folder. Validates the layout and the split at construction;
    each mask is validated (size, value range) when its sample is read."""

    def __init__(self, root: str | os.PathLike[str], split: str = "train", mask_dir: str | None = None):
        self.root = Path(root)
        self.split = split
        check_layout(self.root)
        if mask_dir is None:
            mask_dir = "SegmentationClassAug" if "aug" in split else "SegmentationClass"
        self.mask_dir = self.root / mask_dir
        if not self.mask_dir.is_dir():
            raise DataError(f"{self.root} is not in PASCAL VOC layout: missing {mask_dir}/")
        self.class_names = read_class_names(self.root)
        self.split_file = _split_file(self.root, split)
        ids = [_parse_id(l) for l in self.split_file.read_text().splitlines() if l.strip()]
        if not ids:
            raise DataError(f"{self.split_file}: the split lists no images")
        for image_id in ids:
            if not self.image_path(image_id).exists():
                raise DataError(f"{self.split_file}: lists {image_id!r} but {self.image_path(image_id)} does not exist")
            if not self.mask_path(image_id).exists():
                raise DataError(f"{self.split_file}: lists {image_id!r} but {self.mask_path(image_id)} does not exist")
        self.ids: tuple[str, ...] = tuple(ids)

    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return len(self.class_names)

    def image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def mask_path(self, image_id: str) -> Path:
        return self.mask_dir / f"{image_id}.png"

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        if not -len(self.ids) <= index < len(self.ids):
            raise IndexError(index)
        return self.load(self.ids[index])

    def __iter__(self) -> Iterator[Sample]:
        for image_id in self.ids:
            yield self.load(image_id)

    def load_image(self, image_id: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB."""
        path = self.image_path(image_id)
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
        except (OSError, SyntaxError) as e:
            raise DataError(f"{path}: cannot read image ({e})") from e

    def load_mask(self, image_id: str) -> np.ndarray:
        """(H, W) uint8 class indices, 255 = ignore. Palette and grey-level PNGs both work."""
        path = self.mask_path(image_id)
        try:
            with Image.open(path) as im:
                if im.mode not in ("P", "L"):
                    raise DataError(f"{path}: mask mode {im.mode!r}; expected a palette (P) or grey-level (L) PNG")
                mask = np.array(im, dtype=np.uint8)
        except (OSError, SyntaxError) as e:
            raise DataError(f"{path}: cannot read mask ({e})") from e
        bad = (mask >= self.num_classes) & (mask != IGNORE_INDEX)
        if bad.any():
            values = sorted(set(np.unique(mask[bad]).tolist()))
            raise DataError(
                f"{path}: mask values {values} are outside the {self.num_classes} classes "
                f"and are not {IGNORE_INDEX} (ignore)"
            )
        return mask

    def labels_from_mask(self, mask: np.ndarray) -> np.ndarray:
        """(C - 1,) float32 multi-hot: which foreground classes appear in the mask."""
        present = np.bincount(mask[mask != IGNORE_INDEX].ravel(), minlength=self.num_classes)
        return (present[1:] > 0).astype(np.float32)

    def load(self, image_id: str) -> Sample:
        image = self.load_image(image_id)
        mask = self.load_mask(image_id)
        if image.shape[:2] != mask.shape:
            raise DataError(
                f"{self.mask_path(image_id)}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                f"{self.image_path(image_id)} is {image.shape[1]}x{image.shape[0]} (width x height)"
            )
        return Sample(image_id, image, mask, self.labels_from_mask(mask))

    def iter_masks(self) -> Iterator[tuple[str, np.ndarray]]:
        """Masks only (cheaper than full samples), validated for value range."""
        for image_id in self.ids:
            yield image_id, self.load_mask(image_id)


def save_mask_png(path: str | os.PathLike[str], mask: np.ndarray) -> None:
    """Write a (H, W) uint8 class-index mask as a VOC palette PNG."""
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"mask must be (H, W) uint8, got {mask.shape} {mask.dtype}")
    im = Image.fromarray(mask, mode="P")
    im.putpalette(voc_palette().ravel().tolist())
    im.save(path, optimize=False)


class SampleCache:
    """A split's decoded samples, kept in memory while they fit in ``limit_mb`` (0: none kept).
    JPEG/PNG decoding costs as much as a training step on the embedded benchmark; a VOC-sized
    split outgrows the limit and is decoded on every read past it."""

    def __init__(self, dataset: "VOCDataset", limit_mb: int = 1024):
        self.dataset, self.limit = dataset, limit_mb * 2**20
        self._kept: dict[int, Sample] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample:
        if index in self._kept:
            return self._kept[index]
        sample = self.dataset[index]
        size = sample.image.nbytes + sample.mask.nbytes + sample.labels.nbytes
        if self._bytes + size <= self.limit:
            self._kept[index] = sample
            self._bytes += size
        return sample


class VOCWriter:
    """Writes a VOC-layout dataset into a temporary folder and moves it into place on
    :meth:`commit`, so a failed or interrupted write never leaves a half-written dataset."""

    def __init__(self, root: str | os.PathLike[str], class_names: Sequence[str], jpeg_quality: int = 95):
        self.root = Path(root)
        self.class_names = tuple(class_names)
        self.jpeg_quality = jpeg_quality
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.root.name}.tmp-", dir=self.root.parent))
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (self.tmp / sub).mkdir(parents=True)
        self.splits: dict[str, list[str]] = {}

    @property
    def staging_dir(self) -> Path:
        """Where files land before commit (for extra files such as metadata)."""
        return self.tmp

    def add(self, split: str, image_id: str, image: np.ndarray, mask: np.ndarray) -> None:
        """image: (H, W, 3) uint8; mask: (H, W) uint8 class indices or 255."""
        if image.shape[:2] != mask.shape:
            raise ValueError(f"{image_id}: image {image.shape[:2]} and mask {mask.shape} differ in size")
        Image.fromarray(image).save(self.tmp / "JPEGImages" / f"{image_id}.jpg", quality=self.jpeg_quality)
        save_mask_png(self.tmp / "SegmentationClass" / f"{image_id}.png", mask)
        self.splits.setdefault(split, []).append(image_id)

    def add_mask(self, split: str, image_id: str, mask: np.ndarray, image_source: str | os.PathLike[str]) -> None:
        """A mask for an image that already exists elsewhere (pseudo-masks): the image is
        linked, not copied (copied where links are not possible)."""
        target = self.tmp / "JPEGImages" / f"{image_id}.jpg"
        try:
            os.symlink(os.path.abspath(image_source), target)
        except OSError:
            shutil.copyfile(image_source, target)
        save_mask_png(self.tmp / "SegmentationClass" / f"{image_id}.png", mask)
        self.splits.setdefault(split, []).append(image_id)

    def commit(self) -> Path:
        for split, ids in self.splits.items():
            (self.tmp / "ImageSets/Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        (self.tmp / "labels.txt").write_text("".join(f"{n}\n" for n in self.class_names))
        if self.root.exists():
            old = self.root.with_name(f".{self.root.name}.old-{os.getpid()}")
            os.replace(self.root, old)
            os.replace(self.tmp, self.root)
            shutil.rmtree(old)
        else:
            os.replace(self.tmp, self.root)
        return self.root

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "VOCWriter":
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
