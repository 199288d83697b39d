"""The one data path: datasets in PASCAL VOC layout, read and written.

Layout (relative to the data root)::

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png          palette PNG, class index per pixel, 255 = ignore
    SegmentationClassAug/<id>.png       (VOC 2012 + SBD) grey-level PNG, same meaning
    ImageSets/Segmentation/<split>.txt  one image id per line
    labels.txt                          optional: class names, background first
    labels.csv                          optional: image-level labels, "image_id,classes" (names, space-separated)
    Annotations/<id>.xml                optional: VOC's object annotations (their <name>s are the image's labels)

Image-level labels, what a weakly supervised method trains on, come from ``labels.csv``, else
from ``Annotations/*.xml`` (as IRN's ``make_cls_labels.py`` reads them), else, for a folder
with neither, from the masks (every class that a mask holds). Masks are read for scoring only,
and a split may have none (a weakly labelled train split): ``has_masks`` says so.

The embedded benchmark is generated into this layout, so PASCAL VOC 2012 itself and the
embedded data go through the same reader.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.errors import DataError

from ..core.metrics import IGNORE_INDEX  # noqa: F401  (re-exported: the reader's masks use it)

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

    image: (H, W, 3) uint8 RGB; mask: (H, W) uint8 class index, 255 = ignore, or None for a
    split without masks; labels: (C - 1,) float32 multi-hot over the foreground classes, from
    the dataset's labels source (:attr:`VOCDataset.labels_source`).
    """

    id: str
    image: np.ndarray
    mask: np.ndarray | None
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


LABELS_CSV = "labels.csv"
ANNOTATIONS = "Annotations"


def multi_hot(names: Sequence[str], class_names: Sequence[str], where: str) -> np.ndarray:
    """(C - 1,) float32 multi-hot of foreground class names; an unknown name or background is a
    DataError naming ``where`` and the known classes."""
    out = np.zeros(len(class_names) - 1, np.float32)
    index = {n: i for i, n in enumerate(class_names)}
    for name in names:
        if index.get(name, 0) == 0:
            raise DataError(f"{where}: {name!r} is not a foreground class; known: {', '.join(class_names[1:])}")
        out[index[name] - 1] = 1.0
    return out


def read_labels_csv(path: Path, class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """``labels.csv``: a header ``image_id,classes``, then one row per image, its foreground class
    names separated by spaces (an empty field: no foreground class)."""
    out: dict[str, np.ndarray] = {}
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0][:2]] != ["image_id", "classes"]:
        raise DataError(f"{path}: the first line must be the header 'image_id,classes'")
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 2 or not row[0].strip():
            raise DataError(f"{path}, line {line}: expected 'image_id,classes', got {','.join(row)!r}")
        image_id = row[0].strip()
        if image_id in out:
            raise DataError(f"{path}, line {line}: image {image_id!r} is listed twice")
        out[image_id] = multi_hot(row[1].split(), class_names, f"{path}, line {line}")
    return out


def read_xml_labels(path: Path, class_names: Sequence[str]) -> np.ndarray:
    """The image-level labels of a VOC annotation file: the names of its objects."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise DataError(f"{path}: cannot read the annotation ({e})") from e
    names = [(obj.findtext("name") or "").strip() for obj in root.iter("object")]
    return multi_hot(names, class_names, str(path))


def labels_from_mask(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """(C - 1,) float32 multi-hot: which foreground classes appear in the mask."""
    present = np.bincount(mask[mask != IGNORE_INDEX].ravel(), minlength=num_classes)
    return (present[1:] > 0).astype(np.float32)


def write_labels_csv(path: Path, labels: Sequence[tuple[str, Sequence[str]]]) -> None:
    """Write ``labels.csv`` from (image id, foreground class names) pairs."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "classes"])
        for image_id, names in labels:
            w.writerow([image_id, " ".join(names)])


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
    """A split of a VOC-layout folder. Validates the layout, the split and its labels at
    construction; each mask is validated (size, value range) when its sample is read.

    ``labels_source``: where the image-level labels come from ("labels.csv", "Annotations" or
    "masks", in that order of preference); ``has_masks``: whether the split has masks (a
    weakly labelled split has none; every mask read then fails with a DataError)."""

    def __init__(self, root: str | os.PathLike[str], split: str = "train", mask_dir: str | None = None):
        self.root = Path(root)
        self.split = split
        check_layout(self.root)
        if mask_dir is None:
            mask_dir = "SegmentationClassAug" if "aug" in split else "SegmentationClass"
        self.mask_dir = self.root / mask_dir
        self.class_names = read_class_names(self.root)
        self.split_file = _split_file(self.root, split)
        ids = [_parse_id(l) for l in self.split_file.read_text().splitlines() if l.strip()]
        if not ids:
            raise DataError(f"{self.split_file}: the split lists no images")
        for image_id in ids:
            if not self.image_path(image_id).exists():
                raise DataError(f"{self.split_file}: lists {image_id!r} but {self.image_path(image_id)} does not exist")
        self.ids: tuple[str, ...] = tuple(ids)
        with_mask = [self.mask_path(i).exists() for i in ids] if self.mask_dir.is_dir() else [False] * len(ids)
        self.has_masks = all(with_mask)
        if any(with_mask) and not self.has_masks:
            missing = ids[with_mask.index(False)]
            raise DataError(f"{self.split_file}: lists {missing!r} but {self.mask_path(missing)} does not exist "
                            f"({sum(with_mask)} of the split's {len(ids)} images have masks: all or none)")
        self._labels = self._read_labels()

    def _read_labels(self) -> dict[str, np.ndarray] | None:
        """The split's labels from labels.csv or Annotations/, checked to cover every image;
        None when they come from the masks."""
        csv_path = self.root / LABELS_CSV
        if csv_path.exists():
            self.labels_source = LABELS_CSV
            table = read_labels_csv(csv_path, self.class_names)
            missing = [i for i in self.ids if i not in table]
            if missing:
                raise DataError(f"{csv_path}: no labels for {len(missing)} image(s) of split {self.split!r}, "
                                f"first {missing[0]!r}")
            return {i: table[i] for i in self.ids}
        if (self.root / ANNOTATIONS).is_dir():
            self.labels_source = ANNOTATIONS
            return {i: read_xml_labels(self.root / ANNOTATIONS / f"{i}.xml", self.class_names) for i in self.ids}
        if not self.has_masks:
            raise DataError(f"{self.root}: split {self.split!r} has neither masks nor image-level labels; give "
                            f"{LABELS_CSV} (image_id,classes) or {ANNOTATIONS}/<id>.xml")
        self.labels_source = "masks"
        return None

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
        if not self.has_masks:
            raise DataError(f"{self.split_file}: split {self.split!r} has no masks in {self.mask_dir} (a weakly "
                            "labelled split); masks are read for scoring only")
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
        return labels_from_mask(mask, self.num_classes)

    def load_labels(self, image_id: str) -> np.ndarray:
        """(C - 1,) float32 multi-hot image-level labels, from the labels source."""
        if self._labels is not None:
            return self._labels[image_id].copy()
        return self.labels_from_mask(self.load_mask(image_id))

    def load(self, image_id: str) -> Sample:
        image = self.load_image(image_id)
        if not self.has_masks:
            return Sample(image_id, image, None, self.load_labels(image_id))
        mask = self.load_mask(image_id)
        if image.shape[:2] != mask.shape:
            raise DataError(
                f"{self.mask_path(image_id)}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                f"{self.image_path(image_id)} is {image.shape[1]}x{image.shape[0]} (width x height)"
            )
        labels = self._labels[image_id].copy() if self._labels is not None else self.labels_from_mask(mask)
        return Sample(image_id, image, mask, labels)

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
        size = sample.image.nbytes + (sample.mask.nbytes if sample.mask is not None else 0) + sample.labels.nbytes
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
        self.labels: dict[str, list[str]] = {}  # image id -> foreground class names (written as labels.csv)

    @property
    def staging_dir(self) -> Path:
        """Where files land before commit (for extra files such as metadata)."""
        return self.tmp

    def add(self, split: str, image_id: str, image: np.ndarray, mask: np.ndarray | None,
            labels: Sequence[str] | None = None) -> None:
        """image: (H, W, 3) uint8; mask: (H, W) uint8 class indices or 255, or None (a weakly
        labelled image); labels: its foreground class names (default: the classes in the mask)."""
        if mask is not None and image.shape[:2] != mask.shape:
            raise ValueError(f"{image_id}: image {image.shape[:2]} and mask {mask.shape} differ in size")
        if mask is None and labels is None:
            raise ValueError(f"{image_id}: an image without a mask needs its labels")
        Image.fromarray(image).save(self.tmp / "JPEGImages" / f"{image_id}.jpg", quality=self.jpeg_quality)
        if mask is not None:
            save_mask_png(self.tmp / "SegmentationClass" / f"{image_id}.png", mask)
        if labels is None:
            assert mask is not None
            labels = [self.class_names[k + 1] for k in np.flatnonzero(labels_from_mask(mask, len(self.class_names)))]
        self.labels[image_id] = list(labels)
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
        if self.labels and all(i in self.labels for ids in self.splits.values() for i in ids):
            write_labels_csv(self.tmp / LABELS_CSV, [(i, self.labels[i]) for ids in self.splits.values() for i in ids])
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
