"""Class activation maps: multi-scale + flip inference, and the CAM store.

A CAM of an image is (K, H, W) float in [0, 1]: one map per ground-truth class of the image
(K of them, class ids 1-based), at the image's resolution, each max-normalised. A split's
CAMs live in one store folder: ``cams.f16`` (all maps, float16, back to back), ``index.npz``
(ids, offsets, shapes, class ids; read without pickle) and ``meta.json``. Writing streams
image by image into a temporary folder that is renamed into place when complete.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core import store
from ..core.progress import bar as progress_bar
from ..core.errors import ConfigError, DataError
from ..core.registry import Registry
from ..nets.inputs import IMAGENET_MEAN, IMAGENET_STD
from ..data.fingerprint import data_fingerprint
from ..data.voc import VOCDataset

if TYPE_CHECKING:
    from ..core.metrics import ErrorOverlap, SweepResult

DATA_FILE = "cams.f16"
INDEX_FILE = "index.npz"
META_FILE = "meta.json"


def to_tensor(images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """(B, H, W, 3) or (H, W, 3) uint8 -> (B, 3, H, W) float32, ImageNet-normalised."""
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    x = torch.from_numpy(np.array(arr, dtype=np.float32)).permute(0, 3, 1, 2).div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


CamFunction = Callable[[torch.Tensor], torch.Tensor]  # (B, 3, H, W) -> raw CAMs (B, C, h, w)
CamMethod = Callable[[nn.Module], CamFunction]  # a classifier -> its raw-CAM function

# The CAM methods a classifier spec can name (``cam_method``). A method is one function from a
# classifier to its raw-CAM function plus one registration; ``gradient=True`` runs it with
# autograd enabled (the others run under inference mode); ``classes=True`` passes the images'
# labels (B, C) as the function's second argument, so it computes only the images' classes.
CAM_METHODS: Registry[CamMethod] = Registry("CAM method")


@CAM_METHODS.register("cam", label="CAM")
def cam_head(model: nn.Module) -> CamFunction:
    """The classifier's CAM head on its feature map (exact for average-pooled logits)."""
    return model.cam  # type: ignore[return-value]


@CAM_METHODS.register("gradcam", label="Grad-CAM", gradient=True)
def grad_cam(model: nn.Module) -> CamFunction:
    """Grad-CAM on the classifier's last block (average-pooled ViTs: with class-token pooling it is zero)."""
    if not hasattr(model, "gradcam"):
        raise ConfigError(f"{type(model).__name__} has no Grad-CAM; use CAM method 'cam'")
    return model.gradcam  # type: ignore[return-value]


@CAM_METHODS.register("attribution", label="attention attribution", gradient=True, classes=True)
def attention_attribution(model: nn.Module) -> CamFunction:
    """Gradient-weighted attention rollout on a ViT (the official code's transformer attribution);
    its function takes the images' classes as a second argument and computes only those."""
    if not hasattr(model, "attribution"):
        raise ConfigError(f"{type(model).__name__} has no attention attribution; use CAM method 'cam'")
    return model.attribution  # type: ignore[return-value]


def cam_function(model: nn.Module, method: str = "cam") -> CamFunction:
    """The raw-CAM function of a classifier for a registered CAM method ("cam", "gradcam", ...)."""
    return CAM_METHODS.get(method)(model)


def multiscale_cam(cam_fn: Callable[..., torch.Tensor], x: torch.Tensor,
                   scales: Sequence[float] = (1.0,), flip: bool = True,
                   classes: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over scales (and horizontal flips) of ReLU'd CAMs, each resized to the input.

    x: (B, 3, H, W) -> (B, C, H, W) float32, not normalised. As in IRN, each scale's map is
    ReLU'd, its flipped twin flipped back and added, then upsampled bilinearly and summed.
    classes: (B, C) labels passed on as ``cam_fn(batch, classes)`` (methods registered with
    ``classes=True``); None calls ``cam_fn(batch)``.
    """
    h, w = x.shape[-2:]
    total: torch.Tensor | None = None
    for s in scales:
        xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        batch = torch.cat([xs, xs.flip(-1)]) if flip else xs
        if classes is None:
            raw = cam_fn(batch)
        else:
            raw = cam_fn(batch, torch.cat([classes, classes]) if flip else classes)
        cams = F.relu(raw.float())
        if flip:
            cams = cams[: x.shape[0]] + cams[x.shape[0] :].flip(-1)
        cams = F.interpolate(cams, size=(h, w), mode="bilinear", align_corners=False)
        total = cams if total is None else total + cams
    assert total is not None, "scales must not be empty"
    return total


def normalise(cams: np.ndarray | torch.Tensor, labels: np.ndarray, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """Keep the image's ground-truth classes and max-normalise each map.

    cams: (C, H, W) for all C foreground classes; labels: (C,) multi-hot.
    Returns (K, H, W) float32 in [0, 1] and the K class ids (1-based).
    """
    arr = cams.detach().cpu().numpy() if isinstance(cams, torch.Tensor) else np.asarray(cams)
    keep = np.flatnonzero(np.asarray(labels) > 0)
    kept = np.maximum(arr[keep].astype(np.float32), 0)
    peak = kept.reshape(len(keep), -1).max(axis=1) if len(keep) else np.zeros(0, np.float32)
    return kept / (peak[:, None, None] + eps), (keep + 1).astype(np.int64)


class CamStoreWriter:
    """Streams CAMs of one split into a store folder; :meth:`close` moves it into place."""

    def __init__(self, path: str | os.PathLike[str], meta: dict[str, Any] | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-", dir=self.path.parent))
        self.data = open(self.tmp / DATA_FILE, "wb")
        self.meta = dict(meta or {})
        self.ids: list[str] = []
        self.offsets: list[int] = []
        self.shapes: list[tuple[int, int, int]] = []
        self.class_ids: list[np.ndarray] = []
        self.offset = 0

    def add(self, image_id: str, cams: np.ndarray, class_ids: np.ndarray) -> None:
        """cams: (K, H, W) in [0, 1]; class_ids: (K,)."""
        cams = np.asarray(cams)
        if cams.ndim != 3 or cams.shape[0] != len(class_ids):
            raise ValueError(f"{image_id}: cams {cams.shape} do not match class ids {list(class_ids)}")
        if not np.isfinite(cams).all():
            raise ValueError(f"{image_id}: CAM holds NaN or Inf")
        blob = cams.astype(np.float16).tobytes()
        self.data.write(blob)
        self.ids.append(image_id)
        self.offsets.append(self.offset)
        self.shapes.append(tuple(int(s) for s in cams.shape))  # type: ignore[arg-type]
        self.class_ids.append(np.asarray(class_ids, dtype=np.int16))
        self.offset += len(blob)

    def close(self) -> Path:
        self.data.close()
        counts = np.array([len(c) for c in self.class_ids], dtype=np.int64)
        np.savez(self.tmp / INDEX_FILE, ids=np.array(self.ids, dtype=str), offsets=np.array(self.offsets, np.int64),
                 shapes=np.array(self.shapes, np.int64).reshape(-1, 3),
                 class_ids=np.concatenate(self.class_ids) if self.class_ids else np.zeros(0, np.int16),
                 class_counts=counts)
        (self.tmp / META_FILE).write_text(json.dumps({**store._jsonable(self.meta), "images": len(self.ids)},
                                                     indent=2, sort_keys=True) + "\n")
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        self.data.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "CamStoreWriter":
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class CamStore:
    """Reads a CAM store. ``store[image_id]`` -> (cams (K, H, W) float32, class_ids (K,))."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        for name in (DATA_FILE, INDEX_FILE, META_FILE):
            if not (self.path / name).exists():
                raise DataError(f"{self.path} is not a complete CAM store: {name} is missing")
        with np.load(self.path / INDEX_FILE, allow_pickle=False) as index:
            self.ids: tuple[str, ...] = tuple(str(i) for i in index["ids"])
            self.offsets = index["offsets"]
            self.shapes = index["shapes"]
            counts = index["class_counts"]
            flat = index["class_ids"].astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)])
        self._class_ids = [flat[starts[i] : starts[i + 1]] for i in range(len(self.ids))]
        self._row = {image_id: i for i, image_id in enumerate(self.ids)}
        self.meta: dict[str, Any] = store.read_json(self.path / META_FILE)
        self._data = np.memmap(self.path / DATA_FILE, dtype=np.float16, mode="r") if self.offsets.size and \
            (self.path / DATA_FILE).stat().st_size else np.zeros(0, np.float16)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def digest(self) -> str:
        """The store's artifact key digest (its ``identity`` in meta.json), which downstream
        artifacts put in their own keys; a store written without one is keyed by its meta."""
        identity = self.meta.get("identity")
        if identity is not None:
            from ..core.keys import ArtifactKey

            return ArtifactKey.from_dict(identity).digest
        return store.hash_obj(self.meta)[:16]

    def check_matches(self, dataset: VOCDataset) -> None:
        """Refuse a store computed on another dataset or split than ``dataset`` (its meta
        records both): image ids such as ``train_00000`` repeat across datasets."""
        split = self.meta.get("split")
        if split is not None and split != dataset.split:
            raise DataError(f"CAM store {self.path} was computed on split {split!r}, not {dataset.split!r}")
        data = self.meta.get("data")
        if data is not None and data != data_fingerprint(dataset.root):
            raise DataError(f"CAM store {self.path} was computed on another dataset ({data}) than {dataset.root} "
                            f"({data_fingerprint(dataset.root)}); re-run the stage that wrote it")

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._row

    def __getitem__(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            i = self._row[image_id]
        except KeyError:
            raise KeyError(f"{image_id!r} is not in the CAM store {self.path}") from None
        k, h, w = (int(v) for v in self.shapes[i])
        start = int(self.offsets[i]) // 2
        cams = np.asarray(self._data[start : start + k * h * w], dtype=np.float32).reshape(k, h, w)
        return cams, self._class_ids[i]

    def __iter__(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        for image_id in self.ids:
            yield (image_id, *self[image_id])


@torch.inference_mode()
def _forward_cams(cam_fn: Callable[..., torch.Tensor], x: torch.Tensor, scales: Sequence[float],
                  flip: bool, classes: torch.Tensor | None = None) -> torch.Tensor:
    return multiscale_cam(cam_fn, x, scales, flip, classes)


def compute_store(model: nn.Module, dataset: VOCDataset, path: str | os.PathLike[str], *,
                  scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0), flip: bool = True, method: str = "cam",
                  batch_size: int = 16, device: str | torch.device = "cpu", meta: dict[str, Any] | None = None,
                  progress: bool = True, desc: str = "CAMs", bf16: bool = False) -> Path:
    """CAMs of every image of ``dataset`` into a store at ``path``; ``bf16``: under bfloat16 autocast
    on a CPU (paired on seed 0's classifiers: CAM mIoU within 0.01 of fp32, the calibration record).

    Images of equal size are batched; memory stays bounded by one batch whatever the split size.
    Gradient methods (``gradcam``, ``attribution``) run with autograd enabled; the others under
    inference mode.
    ``meta`` should hold ``"identity"``: the store's :class:`~orandnet_lib.core.keys.ArtifactKey`
    as a dict (its :attr:`CamStore.digest` keys what is made from the store).
    """
    model.eval().to(device)
    cam_fn = cam_function(model, method)
    gradient = bool(CAM_METHODS.entry(method).attrs.get("gradient"))
    per_class = bool(CAM_METHODS.entry(method).attrs.get("classes"))
    meta = {"split": dataset.split, "data": data_fingerprint(dataset.root), "num_classes": dataset.num_classes,
            "class_names": list(dataset.class_names),
            "scales": list(scales), "flip": flip, "method": method, "bf16": bf16, **(meta or {})}
    autocast = bf16 and torch.device(device).type == "cpu"
    with CamStoreWriter(path, meta) as writer, progress_bar(total=len(dataset), desc=desc, disable=not progress) as bar:
        pending: list[tuple[str, np.ndarray, np.ndarray]] = []

        def flush() -> None:
            x = to_tensor([p[1] for p in pending]).to(device)
            classes = torch.from_numpy(np.stack([p[2] for p in pending])).to(device) if per_class else None
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                if gradient:
                    cams = multiscale_cam(cam_fn, x, scales, flip, classes)
                else:
                    cams = _forward_cams(cam_fn, x, scales, flip, classes)
            for (image_id, _, labels), c in zip(pending, cams.cpu()):
                writer.add(image_id, *normalise(c, labels))
            bar.update(len(pending))
            pending.clear()

        for image_id in dataset.ids:
            sample = dataset.load(image_id)
            if pending and (len(pending) == batch_size or pending[0][1].shape != sample.image.shape):
                flush()
            pending.append((image_id, sample.image, sample.labels))
        if pending:
            flush()
    return Path(path)


def sweep_stream(items: Iterable[tuple[str, np.ndarray, np.ndarray]], dataset: VOCDataset,
                 thresholds: Sequence[float] | None = None) -> "SweepResult":
    """Threshold sweep of (image id, cams (K, H, W), class ids) items against the dataset's masks."""
    from ..core.metrics import ThresholdSweep

    sweep = ThresholdSweep(dataset.num_classes, thresholds)
    for image_id, cams, class_ids in items:
        sweep.update(cams, class_ids, dataset.load_mask(image_id))
    return sweep.result()


def sweep_store(cams: CamStore, dataset: VOCDataset, thresholds: Sequence[float] | None = None) -> "SweepResult":
    """Threshold sweep of a CAM store over every image of the dataset's split (one pass)."""
    cams.check_matches(dataset)
    missing = [i for i in dataset.ids if i not in cams]
    if missing:
        raise DataError(f"CAM store {cams.path} lacks {len(missing)} image(s) of split {dataset.split!r} "
                        f"(first: {missing[0]}); was it computed on another split or dataset?")
    return sweep_stream(((i, *cams[i]) for i in dataset.ids), dataset, thresholds)


def error_overlap(store_a: CamStore, store_b: CamStore, dataset: VOCDataset, background_a: float,
                  background_b: float) -> "ErrorOverlap":
    """How many false positives / negatives two CAM sources share, each masked at its own
    background score, over every image of the dataset's split."""
    from ..core.metrics import ErrorOverlap, cam_to_mask

    overlap = ErrorOverlap(dataset.num_classes)
    for image_id in dataset.ids:
        overlap.update(cam_to_mask(*store_a[image_id], background_a), cam_to_mask(*store_b[image_id], background_b),
                       dataset.load_mask(image_id))
    return overlap


# -- the representation limit of a CAM grid ------------------------------------------------------

def grid_shape(height: int, width: int, stride: int, scale: float) -> tuple[int, int]:
    """The output grid of a network of output stride ``stride`` on an image of height x width
    resized by ``scale``: ceil(H s / stride) x ceil(W s / stride)."""
    return math.ceil(height * scale / stride - 1e-9), math.ceil(width * scale / stride - 1e-9)


def _area_weights(size: int, cells: int) -> np.ndarray:
    """(cells, size): the share of each pixel [p, p + 1) in cell i's span [i size/cells,
    (i + 1) size/cells), rows summing to 1 (a cell's area-weighted average)."""
    edges = np.arange(cells + 1) * size / cells
    pixels = np.arange(size)
    overlap = np.minimum(edges[1:, None], pixels[None] + 1) - np.maximum(edges[:-1, None], pixels[None])
    weights = np.clip(overlap, 0, None)
    return weights / weights.sum(axis=1, keepdims=True)


@functools.lru_cache(maxsize=512)
def _line_operators(size: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """For a line of ``size`` pixels and ``cells`` cells: the area-weighted pooling (cells, size)
    and the linear upsampling back as F.interpolate does it, align_corners=False (size, cells);
    bilinear upsampling is linear upsampling along each axis."""
    basis = torch.eye(cells, dtype=torch.float64)[None]  # (1, cells, cells): cell i as channel i
    up = F.interpolate(basis, size=size, mode="linear", align_corners=False)[0].T.numpy()
    return _area_weights(size, cells), np.ascontiguousarray(up)


def grid_roundtrip(mask: np.ndarray, grid: tuple[int, int], num_classes: int) -> np.ndarray:
    """The best mask a score map on ``grid`` can give back: each class's one-hot map averaged
    over each cell's area, upsampled bilinearly to the mask's size as CAMs are (align_corners
    False), arg-max (ties to the lower class id, background first). Ignored pixels (255) count
    for no class. (H, W) uint8 -> (H, W) uint8."""
    from ..data.voc import IGNORE_INDEX

    height, width = mask.shape
    (pool_y, up_y), (pool_x, up_x) = _line_operators(height, grid[0]), _line_operators(width, grid[1])
    onehot = (mask[None] == np.arange(num_classes)[:, None, None]) & (mask != IGNORE_INDEX)[None]
    pooled = pool_y @ onehot.astype(np.float64) @ pool_x.T  # (C, gh, gw); small products, no BLAS threads
    return (up_y @ pooled @ up_x.T).argmax(axis=0).astype(np.uint8)


def grid_limits(dataset: VOCDataset, grids: Sequence[tuple[int, float]]) -> dict[tuple[int, float], float]:
    """The representation limit of each (stride, scale): the mIoU (percent) of the true masks
    shrunk to that output grid and scaled back (:func:`grid_roundtrip`), scored against the
    masks over the whole split. No map on that grid, however good, can score higher."""
    from ..core.metrics import ConfusionMatrix

    unique = list(dict.fromkeys((int(st), float(sc)) for st, sc in grids))
    matrices = {g: ConfusionMatrix(dataset.num_classes) for g in unique}
    for _, mask in dataset.iter_masks():
        for stride, scale in unique:
            grid = grid_shape(*mask.shape, stride, scale)
            matrices[(stride, scale)].update(grid_roundtrip(mask, grid, dataset.num_classes), mask)
    return {g: 100 * m.scores().miou for g, m in matrices.items()}


def grid_limit(dataset: VOCDataset, stride: int, scales: Sequence[float]) -> dict[str, float]:
    """{"stride <stride> @ scale <s>": limit mIoU (percent)} for each scale (:func:`grid_limits`).
    The finest grid (the largest scale) is what a multi-scale sum of such maps can resolve."""
    limits = grid_limits(dataset, [(stride, s) for s in scales])
    return {f"stride {st} @ scale {sc:g}": v for (st, sc), v in limits.items()}
