"""The embedded benchmark: seeded composite scenes written into PASCAL VOC layout.

Each scene pastes Fashion-MNIST items onto a crop of one of scikit-image's bundled
photographs. The pasted pixels are exactly the mask, so ground truth is exact. What makes
it a weakly supervised problem rather than a toy:

- several objects per scene over a log-uniform range of sizes (small ones included);
- every object gets a random tint and texture, so colour never identifies a class;
- a context bias: each class has a preferred photograph, used with probability
  ``context_bias`` when that class anchors the scene (as boats prefer water in VOC);
- distractors: items of Fashion-MNIST classes that are not in the label set, pasted as
  background, so "any garment-shaped thing" is not a shortcut either.

Every scene draws from its own generator seeded by (seed, split, index): the same config
gives byte-identical files, whatever order scenes are made in.
"""

from __future__ import annotations

import colorsys
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from . import fashion_mnist
from ..core import store
from ..core.progress import bar as progress_bar
from .voc import LABELS_CSV, VOCWriter

GENERATOR_VERSION = 1
CONFIG_FILE = "dataset.json"
SCENES_FILE = "scenes.json"

# Photographs bundled in scikit-image's wheel (no download). The first len(classes) are the
# classes' preferred contexts, in class order; all of them serve as neutral backgrounds.
PHOTOS: tuple[str, ...] = (
    "grass", "gravel", "brick", "coffee", "hubble_deep_field", "motorcycle_left",
    "astronaut", "chelsea", "rocket", "retina", "ihc", "moon", "camera", "coins",
)
SPLIT_CODES = {"train": 0, "val": 1}
FMNIST_SPLIT = {"train": "train", "val": "test"}  # val objects come from Fashion-MNIST's test set


@dataclass(frozen=True)
class SceneConfig:
    """Knobs of the embedded benchmark. Sizes are fractions of the image side."""

    image_size: int = 128
    n_train: int = 3000
    n_val: int = 300
    classes: tuple[str, ...] = ("tshirt", "trouser", "dress", "sandal", "bag", "ankle_boot")
    objects_per_scene: tuple[int, int] = (1, 3)
    object_size: tuple[float, float] = (0.25, 0.8)
    max_overlap: float = 0.3
    distractors_per_scene: tuple[int, int] = (0, 0)
    context_bias: float = 0.5
    background_blur: float = 1.2
    texture_probability: float = 0.5
    noise_std: float = 4.0
    jpeg_quality: int = 95
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [c for c in self.classes if c not in fashion_mnist.CLASS_NAMES]
        if unknown or not self.classes:
            raise ValueError(f"classes {unknown or '[]'} not in Fashion-MNIST's {fashion_mnist.CLASS_NAMES}")
        if len(self.classes) > len(PHOTOS):
            raise ValueError(f"at most {len(PHOTOS)} classes (one preferred photograph each)")
        lo, hi = self.object_size
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"object_size must satisfy 0 < low <= high <= 1, got {self.object_size}")
        if not 1 <= self.objects_per_scene[0] <= self.objects_per_scene[1]:
            raise ValueError(f"objects_per_scene must be (low >= 1, high >= low), got {self.objects_per_scene}")
        if not 0 <= self.context_bias <= 1:
            raise ValueError(f"context_bias is a probability, got {self.context_bias}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {self.image_size}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SceneConfig":
        return store.dataclass_from_dict(cls, values, "generator parameters")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def class_names(self) -> tuple[str, ...]:
        return ("background", *self.classes)

    def fingerprint(self) -> str:
        return store.hash_obj({"generator_version": GENERATOR_VERSION, "config": self.to_dict()})


@dataclass
class Sources:
    photos: dict[str, np.ndarray]  # name -> (H, W, 3) float32 in [0, 255]
    items: dict[str, np.ndarray]  # split -> (N, 28, 28) uint8
    by_class: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)  # split -> fm class -> indices


def load_photos() -> dict[str, np.ndarray]:
    """The bundled photographs as (H, W, 3) float32 RGB arrays, read straight from
    scikit-image's data folder (no download, no pooch)."""
    import skimage.data

    folder = Path(skimage.data.__file__).parent
    photos = {}
    for name in PHOTOS:
        path = next((folder / f"{name}{ext}" for ext in (".png", ".jpg") if (folder / f"{name}{ext}").exists()), None)
        if path is None:
            raise FileNotFoundError(f"photograph {name!r} is not bundled with scikit-image in {folder}")
        with Image.open(path) as im:
            photos[name] = np.asarray(im.convert("RGB"), dtype=np.float32)
    return photos


def load_sources(splits: Sequence[str]) -> Sources:
    src = Sources(photos=load_photos(), items={})
    for split in splits:
        images, labels = fashion_mnist.load(FMNIST_SPLIT[split])
        src.items[split] = images
        src.by_class[split] = {c: np.flatnonzero(labels == c) for c in range(len(fashion_mnist.CLASS_NAMES))}
    return src


def resize(array: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """Resize an (H, W) or (H, W, 3) float array to size=(height, width) with PIL."""
    h, w = size
    if array.ndim == 2:
        return np.asarray(Image.fromarray(array.astype(np.float32), mode="F").resize((w, h), resample))
    channels = [np.asarray(Image.fromarray(array[..., c], mode="F").resize((w, h), resample)) for c in range(3)]
    return np.stack(channels, axis=-1)


def background(src: Sources, photo: str, cfg: SceneConfig, rng: np.random.Generator) -> np.ndarray:
    image = src.photos[photo]
    side = int(min(image.shape[:2]) * rng.uniform(0.35, 1.0))
    y = int(rng.integers(0, image.shape[0] - side + 1))
    x = int(rng.integers(0, image.shape[1] - side + 1))
    crop = image[y : y + side, x : x + side]
    out = resize(crop, (cfg.image_size, cfg.image_size), Image.Resampling.BILINEAR)
    if cfg.background_blur > 0:
        pil = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
        out = np.asarray(pil.filter(ImageFilter.GaussianBlur(cfg.background_blur)), dtype=np.float32)
    return out


def texture(shape: tuple[int, int], rng: np.random.Generator, probability: float) -> np.ndarray:
    """(H, W) multiplicative texture in [0.6, 1]: stripes, checks or speckle, or flat."""
    h, w = shape
    if rng.random() >= probability:
        return np.ones(shape, dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = int(rng.integers(0, 3))
    period = float(rng.uniform(3.0, 8.0))
    if kind == 0:
        angle = rng.uniform(0, np.pi)
        wave = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    elif kind == 1:
        wave = np.sign(np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period))
    else:
        wave = rng.uniform(-1, 1, size=shape)
    return (0.8 + 0.2 * wave).astype(np.float32)


def render_item(item: np.ndarray, side: int, cfg: SceneConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A Fashion-MNIST item scaled so its longer side is ``side`` pixels, tinted and textured.

    Returns the RGB patch (h, w, 3) float32 and its exact mask (h, w) bool.
    """
    ys, xs = np.nonzero(item > 10)
    item = item[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.float32)
    scale = side / max(item.shape)
    h, w = max(2, round(item.shape[0] * scale)), max(2, round(item.shape[1] * scale))
    intensity = np.clip(resize(item, (h, w), Image.Resampling.BILINEAR), 0, 255) / 255.0
    mask = intensity > 0.08
    hue, sat, val = rng.random(), rng.uniform(0.25, 1.0), rng.uniform(0.55, 1.0)
    tint = np.array(colorsys.hsv_to_rgb(hue, sat, val), dtype=np.float32) * 255.0
    shade = (0.35 + 0.65 * intensity) * texture((h, w), rng, cfg.texture_probability)
    return shade[..., None] * tint[None, None, :], mask


def paste(canvas: np.ndarray, occupied: np.ndarray, patch: np.ndarray, mask: np.ndarray,
           cfg: SceneConfig, rng: np.random.Generator, attempts: int = 12) -> tuple[int, int, np.ndarray] | None:
    """Paste the patch *behind* the objects already placed, at a spot where at most
    ``max_overlap`` of it is hidden; so every labelled object stays mostly visible.

    Returns the top-left corner and the visible part of the mask, or None if no spot fits.
    """
    size = cfg.image_size
    h, w = mask.shape
    for _ in range(attempts):
        y, x = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
        visible = mask & ~occupied[y : y + h, x : x + w]
        if 1.0 - visible.sum() / max(1, mask.sum()) <= cfg.max_overlap:
            region = canvas[y : y + h, x : x + w]
            region[visible] = patch[visible]
            return y, x, visible
    return None


def make_scene(index: int, split: str, cfg: SceneConfig, src: Sources) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One scene: image (S, S, 3) uint8, mask (S, S) uint8 and its metadata."""
    rng = np.random.default_rng([cfg.seed, SPLIT_CODES[split], index])
    size = cfg.image_size
    n_objects = int(rng.integers(cfg.objects_per_scene[0], cfg.objects_per_scene[1] + 1))
    classes = [int(c) for c in rng.integers(0, len(cfg.classes), size=n_objects)]
    anchor = classes[0]
    preferred = bool(rng.random() < cfg.context_bias)
    photo = PHOTOS[anchor] if preferred else PHOTOS[int(rng.integers(0, len(PHOTOS)))]
    canvas = background(src, photo, cfg, rng)
    mask = np.zeros((size, size), dtype=np.uint8)
    occupied = np.zeros((size, size), dtype=bool)
    fm_index = {name: i for i, name in enumerate(fashion_mnist.CLASS_NAMES)}
    distractor_classes = [i for i, n in enumerate(fashion_mnist.CLASS_NAMES) if n not in cfg.classes]
    n_distractors = int(rng.integers(cfg.distractors_per_scene[0], cfg.distractors_per_scene[1] + 1))
    lo, hi = np.log(cfg.object_size[0]), np.log(cfg.object_size[1])
    objects = []
    # Distractors first and never marked occupied: labelled objects paint over them.
    kinds = [("distractor", c) for c in rng.choice(distractor_classes, size=n_distractors)] if distractor_classes else []
    kinds += [("object", c) for c in classes]
    for kind, c in kinds:
        fm_class = int(c) if kind == "distractor" else fm_index[cfg.classes[c]]
        pool = src.by_class[split][fm_class]
        item = src.items[split][pool[int(rng.integers(0, len(pool)))]]
        side = max(4, round(size * float(np.exp(rng.uniform(lo, hi)))))
        patch, item_mask = render_item(item, side, cfg, rng)
        corner = paste(canvas, occupied, patch, item_mask, cfg, rng)
        if corner is None:
            continue
        y, x, visible = corner
        h, w = visible.shape
        if kind == "object":
            mask[y : y + h, x : x + w][visible] = c + 1
            occupied[y : y + h, x : x + w] |= visible
            name = cfg.classes[c]
        else:
            name = f"distractor:{fashion_mnist.CLASS_NAMES[fm_class]}"
        objects.append({"class": name, "box": [x, y, w, h], "area": int(visible.sum())})
    if cfg.noise_std > 0:
        canvas = canvas + rng.normal(0, cfg.noise_std, size=canvas.shape)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    meta = {"background": photo, "anchor": cfg.classes[anchor], "preferred_background": preferred, "objects": objects}
    return image, mask, meta


def is_cached(root: str | Path, cfg: SceneConfig) -> bool:
    """True when ``root`` holds a complete dataset generated from exactly this config."""
    path = Path(root) / CONFIG_FILE
    if not path.exists() or not (Path(root) / LABELS_CSV).exists():  # folders from before labels.csv: regenerate
        return False
    try:
        return store.read_json(path).get("fingerprint") == cfg.fingerprint()
    except Exception:
        return False


def generate(root: str | Path, cfg: SceneConfig, progress: bool = True,
             log: Callable[[str], None] = print) -> Path:
    """Generate the benchmark into ``root`` (VOC layout), unless it is already there.

    The dataset is built in a temporary folder and renamed into place, so an interrupted
    run leaves either the previous dataset or none, never half of one.
    """
    root = Path(root)
    if is_cached(root, cfg):
        log(f"embedded benchmark up to date in {root} (fingerprint {cfg.fingerprint()[:12]})")
        return root
    start = time.perf_counter()
    splits = {"train": cfg.n_train, "val": cfg.n_val}
    src = load_sources([s for s, n in splits.items() if n > 0])
    scenes: dict[str, dict[str, Any]] = {}
    with VOCWriter(root, cfg.class_names, jpeg_quality=cfg.jpeg_quality) as writer:
        for split, count in splits.items():
            for i in progress_bar(range(count), desc=f"generating {split}", disable=not progress, leave=False):
                image, mask, meta = make_scene(i, split, cfg, src)
                image_id = f"{split}_{i:05d}"
                writer.add(split, image_id, image, mask)
                scenes[image_id] = meta
        (writer.staging_dir / SCENES_FILE).write_text(json.dumps(scenes, sort_keys=True, indent=0) + "\n")
        (writer.staging_dir / CONFIG_FILE).write_text(json.dumps(
            {"generator_version": GENERATOR_VERSION, "fingerprint": cfg.fingerprint(), "config": cfg.to_dict(),
             "preferred_backgrounds": dict(zip(cfg.classes, PHOTOS))}, sort_keys=True, indent=2) + "\n")
    log(f"generated {cfg.n_train} train + {cfg.n_val} val scenes into {root} in {time.perf_counter() - start:.1f} s")
    return root


def read_scenes(root: str | Path) -> dict[str, dict[str, Any]] | None:
    """Per-scene metadata of a generated dataset, or None for other VOC-layout folders."""
    path = Path(root) / SCENES_FILE
    return store.read_json(path) if path.exists() else None


def read_config(root: str | Path) -> dict[str, Any] | None:
    path = Path(root) / CONFIG_FILE
    return store.read_json(path) if path.exists() else None
