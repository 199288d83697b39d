"""The classes of the auxiliary pretraining task, and how one item of each is drawn.

ImageNet holds VOC's 20 classes among 1000 others; the broad catalogue here is its embedded
analogue: glyphs of several scripts and symbol sets, procedural shapes, texture classes cut
from the bundled photographs and Fashion-MNIST's ten garments, so the benchmark's six classes
are a small share of it. Every source is offline: the glyphs are rendered from the DejaVu fonts
that matplotlib ships, the photographs are scikit-image's (:data:`synth.PHOTOS`).

An item is an (h, w, 3) float RGB patch with its exact mask, ready to paste. Fashion-MNIST items,
glyphs and shapes are intensity maps tinted and textured as the benchmark's objects
(``synth.render_item``); a texture item is a blob filled with a crop of its photograph, untinted,
since its colours and grain are the class.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from . import fashion_mnist, synth

ITEM_SIZE = 32  # side of a glyph's or a shape's intensity map before it is scaled into a scene

# Glyphs chosen to look unlike one another (no Latin O beside digit 0 or Greek Omicron, no Cyrillic
# letters that are Latin or Greek ones), and unlike the held-out domain's objects (no gears, flowers,
# spirals or leaves: data/heldout.py).
GLYPHS: tuple[str, ...] = (
    *"ABCDEFGHJKLMNPQRTUVWXYZ",  # Latin capitals without I, O, S (1, 0, 5 look alike)
    *"23456789",
    *"ΓΔΘΛΞΠΣΦΨΩ",  # Greek capitals that are not Latin letters
    *"БДЖИЦЧШЩЫЭЮЯ",  # Cyrillic capitals that are neither
    *"אבגדהשלמ",  # Hebrew
    *"ԱԲԳԴՖՊ",  # Armenian
    *"აბგდ",  # Georgian
    *"♠♣♥♦☂☎✈✂♪⚓☯❄⌘∞§¶@&?%#$€£¥",  # symbols
)
FONTS: tuple[str, ...] = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
                          "DejaVuSansMono.ttf")

SHAPES: tuple[str, ...] = ("triangle", "square", "pentagon", "hexagon", "octagon", "star5", "star8", "ring",
                           "cross", "crescent", "arrow", "ell", "tee", "semicircle", "ellipse", "diamond",
                           "trapezoid", "chevron")

# Photographs whose grain makes a texture class; every one is also a background, as in the benchmark.
TEXTURES: tuple[str, ...] = ("grass", "gravel", "brick", "coffee", "hubble_deep_field", "moon", "coins", "retina",
                             "ihc", "chelsea")

SOURCES = ("fashion-mnist", "glyph", "shape", "texture")


@dataclass(frozen=True)
class AuxClass:
    """One class of the task: its source and what it is there (a Fashion-MNIST class index, a
    character, a shape name or a photograph's name)."""

    source: str
    ref: str

    @property
    def name(self) -> str:
        if self.source == "fashion-mnist":
            return fashion_mnist.CLASS_NAMES[int(self.ref)]
        if self.source == "glyph":
            return f"glyph {self.ref}"
        return f"{self.source} {self.ref}"


def catalogue(name: str, exclude: tuple[str, ...] = ()) -> tuple[AuxClass, ...]:
    """The classes of catalogue ``name``: "fashion-mnist" (the ten garments) or "broad" (every
    source); ``exclude`` drops Fashion-MNIST classes by name (e.g. the benchmark's own)."""
    unknown = [c for c in exclude if c not in fashion_mnist.CLASS_NAMES]
    if unknown:
        raise ValueError(f"exclude: {unknown} are not Fashion-MNIST classes {fashion_mnist.CLASS_NAMES}")
    garments = tuple(AuxClass("fashion-mnist", str(i)) for i, c in enumerate(fashion_mnist.CLASS_NAMES)
                     if c not in exclude)
    if name == "fashion-mnist":
        return garments
    if name == "broad":
        return (garments + tuple(AuxClass("glyph", g) for g in GLYPHS) + tuple(AuxClass("shape", s) for s in SHAPES)
                + tuple(AuxClass("texture", t) for t in TEXTURES))
    raise ValueError(f"unknown auxiliary catalogue {name!r}: 'fashion-mnist' or 'broad'")


def source_counts(classes: tuple[AuxClass, ...]) -> dict[str, int]:
    """How many classes each source contributes."""
    return {s: sum(c.source == s for c in classes) for s in SOURCES if any(c.source == s for c in classes)}


# ----------------------------------------------------------------------------- intensity maps

@functools.lru_cache(maxsize=None)
def _font(file: str, size: int) -> ImageFont.FreeTypeFont:
    import matplotlib

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / file), size)


def _outline(file: str, char: str) -> bytes:
    mask = _font(file, 24).getmask(char)
    return bytes(mask) + bytes(str(mask.size), "ascii")


@functools.lru_cache(maxsize=None)
def fonts_for(char: str) -> tuple[str, ...]:
    """The DejaVu faces that draw ``char`` (a face without it draws its .notdef box, as for the private-use U+E000)."""
    have = tuple(f for f in FONTS if _outline(f, char) != _outline(f, "\uE000"))
    if not have:
        raise ValueError(f"no DejaVu face draws {char!r} (U+{ord(char):04X})")
    return have


def glyph_item(char: str, rng: np.random.Generator) -> np.ndarray:
    """(ITEM_SIZE, ITEM_SIZE) uint8: ``char`` in one of the DejaVu faces that have it, slightly
    rotated and sheared."""
    faces = fonts_for(char)
    font = _font(faces[int(rng.integers(0, len(faces)))], int(rng.integers(20, 27)))
    image = Image.new("L", (ITEM_SIZE, ITEM_SIZE))
    ImageDraw.Draw(image).text((ITEM_SIZE / 2, ITEM_SIZE / 2), char, fill=255, font=font, anchor="mm")
    shear = float(rng.uniform(-0.2, 0.2))
    image = image.transform(image.size, Image.Transform.AFFINE, (1, shear, -shear * ITEM_SIZE / 2, 0, 1, 0),
                            resample=Image.Resampling.BILINEAR)
    return np.asarray(image.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BILINEAR))


def _polygon(n: int, radius: float, rotation: float, inner: float | None = None) -> list[tuple[float, float]]:
    """A regular polygon (or, with ``inner``, an n-pointed star) centred in the item."""
    points, c = [], ITEM_SIZE / 2
    steps = 2 * n if inner else n
    for k in range(steps):
        r = radius * (inner if inner and k % 2 else 1.0)
        a = rotation + 2 * math.pi * k / steps
        points.append((c + r * math.cos(a), c + r * math.sin(a)))
    return points


def shape_item(name: str, rng: np.random.Generator) -> np.ndarray:
    """(ITEM_SIZE, ITEM_SIZE) uint8 silhouette of a procedural shape, randomly rotated and stretched."""
    s, c = ITEM_SIZE, ITEM_SIZE / 2
    image = Image.new("L", (s, s))
    draw = ImageDraw.Draw(image)
    rot = float(rng.uniform(0, 2 * math.pi))
    r = s * 0.45
    sides = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6, "octagon": 8}
    if name in sides:
        draw.polygon(_polygon(sides[name], r, rot), fill=255)
    elif name == "diamond":  # a rhombus, its diagonals 2:1
        draw.polygon([(c - r, c), (c, c - r * 0.5), (c + r, c), (c, c + r * 0.5)], fill=255)
    elif name in ("star5", "star8"):
        draw.polygon(_polygon(int(name[-1]), r, rot, inner=0.45), fill=255)
    elif name == "ring":
        draw.ellipse((c - r, c - r, c + r, c + r), fill=255)
        draw.ellipse((c - r * 0.55, c - r * 0.55, c + r * 0.55, c + r * 0.55), fill=0)
    elif name == "ellipse":
        draw.ellipse((c - r, c - r * 0.55, c + r, c + r * 0.55), fill=255)
    elif name == "semicircle":
        draw.pieslice((c - r, c - r * 0.7, c + r, c + r * 1.3), 180, 360, fill=255)
    elif name == "crescent":
        draw.ellipse((c - r, c - r, c + r, c + r), fill=255)
        draw.ellipse((c - r * 0.55, c - r * 1.0, c + r * 1.25, c + r * 0.8), fill=0)
    elif name == "cross":
        w = r * 0.35
        draw.rectangle((c - w, c - r, c + w, c + r), fill=255)
        draw.rectangle((c - r, c - w, c + r, c + w), fill=255)
    elif name == "arrow":
        draw.polygon([(c - r, c - r * 0.2), (c + r * 0.1, c - r * 0.2), (c + r * 0.1, c - r * 0.6), (c + r, c),
                      (c + r * 0.1, c + r * 0.6), (c + r * 0.1, c + r * 0.2), (c - r, c + r * 0.2)], fill=255)
    elif name == "ell":
        draw.polygon([(c - r * 0.6, c - r), (c - r * 0.1, c - r), (c - r * 0.1, c + r * 0.5), (c + r * 0.7, c + r * 0.5),
                      (c + r * 0.7, c + r), (c - r * 0.6, c + r)], fill=255)
    elif name == "tee":
        draw.rectangle((c - r, c - r, c + r, c - r * 0.5), fill=255)
        draw.rectangle((c - r * 0.25, c - r, c + r * 0.25, c + r), fill=255)
    elif name == "trapezoid":
        draw.polygon([(c - r * 0.45, c - r * 0.6), (c + r * 0.45, c - r * 0.6), (c + r, c + r * 0.6),
                      (c - r, c + r * 0.6)], fill=255)
    elif name == "chevron":
        draw.polygon([(c - r, c - r * 0.7), (c - r * 0.4, c - r * 0.7), (c + r * 0.3, c), (c - r * 0.4, c + r * 0.7),
                      (c - r, c + r * 0.7), (c - r * 0.3, c)], fill=255)
    else:
        raise ValueError(f"unknown shape {name!r}; shapes: {SHAPES}")
    if name not in ("triangle", "square", "pentagon", "hexagon", "octagon", "star5", "star8"):
        image = image.rotate(math.degrees(rot), resample=Image.Resampling.BILINEAR)
    stretch = float(rng.uniform(0.75, 1.0))  # an anisotropic squeeze along one axis
    squeezed = image.resize((s, max(2, round(s * stretch))), Image.Resampling.BILINEAR)
    out = Image.new("L", (s, s))
    out.paste(squeezed, (0, (s - squeezed.size[1]) // 2))
    return np.asarray(out)


def _blob_mask(side: int, rng: np.random.Generator) -> np.ndarray:
    """(side, side) bool: a smooth random blob (a star-shaped polygon of low-frequency radii)."""
    angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    radius = np.ones_like(angles)
    for k in (2, 3, 4):
        radius += rng.uniform(0, 0.25 / k * 2) * np.cos(k * angles + rng.uniform(0, 2 * np.pi))
    radius = radius / radius.max() * (side / 2 - 0.5)
    points = [(side / 2 + r * math.cos(a), side / 2 + r * math.sin(a)) for r, a in zip(radius, angles)]
    image = Image.new("L", (side, side))
    ImageDraw.Draw(image).polygon(points, fill=255)
    return np.asarray(image) > 127


def texture_patch(photo: np.ndarray, side: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A blob of ``side`` pixels filled with a random crop of ``photo`` at its own scale (an RGB
    patch and its mask), brightness jittered a little."""
    crop = int(min(photo.shape[:2]) * rng.uniform(0.15, 0.5))
    crop = max(crop, 4)
    y = int(rng.integers(0, photo.shape[0] - crop + 1))
    x = int(rng.integers(0, photo.shape[1] - crop + 1))
    patch = synth.resize(photo[y : y + crop, x : x + crop], (side, side), Image.Resampling.BILINEAR)
    patch = np.clip(patch * rng.uniform(0.8, 1.2), 0, 255).astype(np.float32)
    return patch, _blob_mask(side, rng)


def draw_item(cls: AuxClass, rng: np.random.Generator, garments: np.ndarray,
              by_class: Mapping[int, np.ndarray]) -> np.ndarray | None:
    """The intensity map of one item of ``cls`` (Fashion-MNIST items drawn from ``garments`` at the
    indices ``by_class`` allows), or None for a texture class, which has none."""
    if cls.source == "texture":
        return None
    if cls.source == "fashion-mnist":
        pool = by_class[int(cls.ref)]
        return garments[pool[int(rng.integers(0, len(pool)))]]
    item = glyph_item(cls.ref, rng) if cls.source == "glyph" else shape_item(cls.ref, rng)
    if not (item > 10).any():
        raise ValueError(f"{cls.name}: rendered an empty item")
    return item


def render(cls: AuxClass, item: np.ndarray | None, side: int, cfg: synth.SceneConfig, rng: np.random.Generator,
           photos: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """An item of ``cls`` (its intensity map from :func:`draw_item`) whose longer side is ``side``
    pixels: (h, w, 3) float RGB and its exact mask."""
    if cls.source == "texture":
        return texture_patch(photos[cls.ref], side, rng)
    assert item is not None
    return synth.render_item(item, side, cfg, rng)
