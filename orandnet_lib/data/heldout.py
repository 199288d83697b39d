"""A held-out domain: a VOC-layout folder the project never tuned on (issue 24).

Other objects, other photographs, another way of painting: five classes of parametric objects
(gears, roses, spirals, leaves, clouds) that neither the benchmark (Fashion-MNIST garments) nor
the auxiliary pretraining (garments, glyphs, polygons, photo textures: ``aux_task``) contains,
filled with a two-colour gradient and outlined, on crops of photographs that neither uses
(matplotlib's sample images, scikit-image's microscopy, document and clock images, and two
elevation maps rendered as terrain). It is written as a user's own folder would be: images,
masks, split lists and labels.csv, with no generator metadata the stages could lean on.

    python -m orandnet_lib.data.heldout data/heldout-shapes            # 2000 train / 300 val, 96 px
    orandnet run --profile default --data-root data/heldout-shapes --run-dir runs/heldout
"""

from __future__ import annotations

import argparse
import colorsys
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..core.progress import bar as progress_bar
from . import synth
from .voc import VOCWriter

CLASSES: tuple[str, ...] = ("gear", "rose", "spiral", "leaf", "cloud")
INFO_FILE = "heldout.json"  # how the folder was made (the stages do not read it)
MASK_SIDE = 64  # objects are drawn at this resolution, then scaled


@dataclass(frozen=True)
class HeldoutConfig:
    image_size: int = 96
    n_train: int = 2000
    n_val: int = 300
    objects_per_scene: tuple[int, int] = (1, 3)
    object_size: tuple[float, float] = (0.25, 0.8)
    max_overlap: float = 0.3
    seed: int = 0


# ----------------------------------------------------------------------------- backgrounds

def _terrain(z: np.ndarray) -> np.ndarray:
    """An elevation map coloured as a relief map (matplotlib's "terrain" colour map)."""
    import matplotlib

    z = (z - np.nanmin(z)) / max(1e-6, float(np.nanmax(z) - np.nanmin(z)))
    rgb = matplotlib.colormaps["terrain"](np.nan_to_num(z))[..., :3] * 255
    return _upsample(rgb.astype(np.float32), 256)


def _upsample(rgb: np.ndarray, min_side: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    if min(h, w) >= min_side:
        return rgb
    scale = min_side / min(h, w)
    return synth.resize(rgb, (round(h * scale), round(w * scale)), Image.Resampling.BICUBIC)


def load_backgrounds() -> dict[str, np.ndarray]:
    """(H, W, 3) float32 photographs and renders that the benchmark and the pretraining never show."""
    import matplotlib
    import skimage.data

    mpl = Path(matplotlib.get_data_path()) / "sample_data"
    ski = Path(skimage.data.__file__).parent
    files = {"grace_hopper": mpl / "grace_hopper.jpg", "present": mpl / "Minduka_Present_Blue_Pack.png",
             "color": ski / "color.png", "cell": ski / "cell.png", "page": ski / "page.png",
             "clock_motion": ski / "clock_motion.png", "microaneurysms": ski / "microaneurysms.png",
             "text": ski / "text.png"}
    out = {}
    for name, path in files.items():
        if not path.exists():
            raise FileNotFoundError(f"held-out background {name!r}: {path} is missing (matplotlib and scikit-image "
                                    "ship it in their wheels)")
        with Image.open(path) as im:
            out[name] = _upsample(np.asarray(im.convert("RGB"), dtype=np.float32), 128)
    assert not set(out) & set(synth.PHOTOS)
    with np.load(mpl / "topobathy.npz") as z:
        out["topobathy"] = _terrain(z["topo"].astype(np.float32))
    with np.load(mpl / "jacksboro_fault_dem.npz") as z:
        out["jacksboro"] = _terrain(z["elevation"].astype(np.float32))
    return out


# ----------------------------------------------------------------------------- objects

def _gear(draw: ImageDraw.ImageDraw, c: float, r: float, rng: np.random.Generator) -> None:
    teeth = int(rng.integers(7, 13))
    points = []
    for k in range(teeth * 4):
        a = 2 * math.pi * k / (teeth * 4)
        rr = r if (k % 4) in (1, 2) else r * 0.78
        points.append((c + rr * math.cos(a), c + rr * math.sin(a)))
    draw.polygon(points, fill=255)
    hole = r * rng.uniform(0.2, 0.35)
    draw.ellipse((c - hole, c - hole, c + hole, c + hole), fill=0)


def _rose(draw: ImageDraw.ImageDraw, c: float, r: float, rng: np.random.Generator) -> None:
    petals = int(rng.integers(5, 9))  # from 5: three lobes would be the club glyph of the pretraining
    t = np.linspace(0, 2 * math.pi, 720)
    rr = r * (0.25 + 0.75 * np.abs(np.cos(petals * t / 2)))
    draw.polygon(list(zip(c + rr * np.cos(t), c + rr * np.sin(t))), fill=255)


def _spiral(draw: ImageDraw.ImageDraw, c: float, r: float, rng: np.random.Generator) -> None:
    turns = rng.uniform(2.0, 3.0)
    t = np.linspace(0, 2 * math.pi * turns, 400)
    rr = r * (0.12 + 0.88 * t / t[-1])
    width = max(3, round(r * 0.22))
    draw.line(list(zip(c + rr * np.cos(t), c + rr * np.sin(t))), fill=255, width=width, joint="curve")


def _leaf(draw: ImageDraw.ImageDraw, c: float, r: float, rng: np.random.Generator) -> None:
    t = np.linspace(0, math.pi, 200)
    width = r * rng.uniform(0.35, 0.55)
    x = c - r * 0.8 + 1.6 * r * t / math.pi
    half = width * np.sin(t) ** 0.8 * (1 + 0.05 * np.sin(9 * t))  # a slightly serrated edge
    draw.polygon(list(zip(x, c - half)) + list(zip(x[::-1], c + half[::-1])), fill=255)
    draw.line([(c - r * 0.8, c), (c - r, c + r * 0.1)], fill=255, width=max(2, round(r * 0.08)))  # the stalk


def _cloud(draw: ImageDraw.ImageDraw, c: float, r: float, rng: np.random.Generator) -> None:
    n = int(rng.integers(3, 6))
    xs = np.linspace(c - r * 0.6, c + r * 0.6, n)
    for x in xs:
        rad = r * rng.uniform(0.3, 0.45)
        y = c - rad * rng.uniform(0.2, 0.8)
        draw.ellipse((x - rad, y - rad, x + rad, y + rad), fill=255)
    draw.rounded_rectangle((c - r * 0.9, c - r * 0.1, c + r * 0.9, c + r * 0.35), radius=r * 0.2, fill=255)


DRAWERS: dict[str, Callable[[ImageDraw.ImageDraw, float, float, np.random.Generator], None]] = {
    "gear": _gear, "rose": _rose, "spiral": _spiral, "leaf": _leaf, "cloud": _cloud}


def object_mask(name: str, rng: np.random.Generator) -> np.ndarray:
    """(h, w) bool silhouette of one object of class ``name``, rotated at random and cropped to it."""
    image = Image.new("L", (MASK_SIDE, MASK_SIDE))
    DRAWERS[name](ImageDraw.Draw(image), MASK_SIDE / 2, MASK_SIDE * 0.46, rng)
    image = image.rotate(float(rng.uniform(0, 360)), resample=Image.Resampling.BILINEAR)
    mask = np.asarray(image) > 127
    ys, xs = np.nonzero(mask)
    return mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def paint(mask: np.ndarray, side: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Scale a silhouette so its longer side is ``side`` and paint it: a two-colour linear gradient
    with a darker outline. Returns (h, w, 3) float RGB and the (h, w) bool mask."""
    scale = side / max(mask.shape)
    h, w = max(2, round(mask.shape[0] * scale)), max(2, round(mask.shape[1] * scale))
    mask = synth.resize(mask.astype(np.float32), (h, w), Image.Resampling.BILINEAR) > 0.5
    a, b = (np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.3, 1.0), rng.uniform(0.5, 1.0)),
                     dtype=np.float32) * 255 for _ in range(2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    t = (xx * math.cos(angle) + yy * math.sin(angle))
    t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
    rgb = t[..., None] * a + (1 - t[..., None]) * b
    eroded = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MinFilter(3))) > 127
    rgb[mask & ~eroded] *= 0.45
    return rgb, mask


# ----------------------------------------------------------------------------- scenes and the folder

def make_scene(index: int, split: str, cfg: HeldoutConfig, backgrounds: dict[str, np.ndarray]
               ) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (S, S, 3) uint8 image and (S, S) uint8 mask (0 background, k + 1 for CLASSES[k])."""
    rng = np.random.default_rng([cfg.seed, 7919, synth.SPLIT_CODES[split], index])
    size = cfg.image_size
    scene_cfg = synth.SceneConfig(image_size=size, max_overlap=cfg.max_overlap, background_blur=1.0)
    names = sorted(backgrounds)
    canvas = synth.background(synth.Sources(photos=backgrounds, items={}),
                               names[int(rng.integers(0, len(names)))], scene_cfg, rng)
    mask = np.zeros((size, size), dtype=np.uint8)
    occupied = np.zeros((size, size), dtype=bool)
    lo, hi = np.log(cfg.object_size[0]), np.log(cfg.object_size[1])
    for _ in range(int(rng.integers(cfg.objects_per_scene[0], cfg.objects_per_scene[1] + 1))):
        c = int(rng.integers(0, len(CLASSES)))
        side = max(6, round(size * float(np.exp(rng.uniform(lo, hi)))))
        patch, item_mask = paint(object_mask(CLASSES[c], rng), side, rng)
        placed = synth.paste(canvas, occupied, patch, item_mask, scene_cfg, rng)
        if placed is not None:
            y, x, visible = placed
            h, w = visible.shape
            mask[y : y + h, x : x + w][visible] = c + 1
            occupied[y : y + h, x : x + w] |= visible
    canvas = canvas + rng.normal(0, 3.0, size=canvas.shape)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), mask


def generate(root: str | Path, cfg: HeldoutConfig = HeldoutConfig(), progress: bool = True,
             log: Callable[[str], None] = print) -> Path:
    """Write the held-out folder into ``root`` (VOC layout, labels.csv), all at once or not at all."""
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"{root} exists: remove it or choose another folder")
    start = time.perf_counter()
    backgrounds = load_backgrounds()
    with VOCWriter(root, ("background", *CLASSES)) as writer:
        for split, count in (("train", cfg.n_train), ("val", cfg.n_val)):
            for i in progress_bar(range(count), desc=f"held-out {split}", disable=not progress, leave=False):
                image, mask = make_scene(i, split, cfg, backgrounds)
                writer.add(split, f"{split}_{i:05d}", image, mask)
        info: dict[str, Any] = {"generator": __name__, "config": asdict(cfg), "classes": list(CLASSES),
                                "backgrounds": sorted(backgrounds)}
        (writer.staging_dir / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    log(f"held-out domain: {cfg.n_train} train + {cfg.n_val} val scenes in {root} "
        f"({time.perf_counter() - start:.1f} s)")
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="write the held-out domain's VOC-layout folder (issue 24)")
    parser.add_argument("root", help="the folder to create (must not exist)")
    parser.add_argument("--n-train", type=int, default=HeldoutConfig.n_train)
    parser.add_argument("--n-val", type=int, default=HeldoutConfig.n_val)
    parser.add_argument("--image-size", type=int, default=HeldoutConfig.image_size)
    parser.add_argument("--seed", type=int, default=HeldoutConfig.seed)
    args = parser.parse_args(argv)
    generate(args.root, HeldoutConfig(image_size=args.image_size, n_train=args.n_train, n_val=args.n_val,
                                      seed=args.seed))


if __name__ == "__main__":
    main()
