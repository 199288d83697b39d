"""The embedded profiles' starting point: backbones pretrained on an auxiliary image-level task.

The paper's networks start from ImageNet weights; none can be had offline, so the embedded
profiles make their own: every network's backbone first learns an image classification of
single items pasted on crops of the bundled photographs or on procedural textures. The classes
come from a catalogue (``data/aux_task.py``): "fashion-mnist" (the first recipe, "aux": the ten
garments, six of them the benchmark's own classes) or "broad" ("aux-broad": glyphs, shapes,
photo textures and the garments, over 100 classes, as ImageNet holds VOC's classes among many).
It uses no masks and none of the validation scenes' objects (those come from Fashion-MNIST's
test set; this task draws from its training set only), and the WSSS classifiers still learn
their task from image labels.

A recipe (``AUX_RECIPES``) names the task and its training; ``weights_file`` returns the
cached weights of one backbone shape under one recipe, training them on first use. The cache
is keyed by recipe and shape, so a machine pays for each shape once, whatever run asks.
"""

from __future__ import annotations

import colorsys
import dataclasses
import functools
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..core import store
from ..core.keys import ArtifactKey, spec_dict
from ..core.parallel import imap
from ..core.paths import project_root
from ..core.precision import native_bf16
from ..core.progress import bar as progress_bar
from ..core.registry import Registry
from ..core.train import TrainConfig, fit, learning_config
from ..data import aux_task, fashion_mnist, synth
from ..nets.classifiers import create_classifier
from .cams import to_tensor

RECIPE_VERSION = 1  # bump when the task's generator changes in a way the recipe fields do not show
HOLD_OUT_EVERY = 10  # every 10th Fashion-MNIST training item is the task's "val" item
CACHE_ENV = "ORANDNET_CACHE"  # where pretrained weights are kept; default <project>/data/cache


@dataclass(frozen=True)
class AuxRecipe:
    """The auxiliary task (its images) and how a backbone is trained on it."""

    n_train: int = 12000
    n_val: int = 1000  # held-out Fashion-MNIST training items (every 10th) and fresh renders, to report accuracy
    catalogue: str = "fashion-mnist"  # the classes: "fashion-mnist" or "broad" (data/aux_task.py)
    exclude: tuple[str, ...] = ()  # Fashion-MNIST classes left out (e.g. the benchmark's own)
    image_size: int = 48  # a quarter of the pixels of a 96 px scene: 4x the images per second (pilots)
    object_size: tuple[float, float] = (0.3, 0.9)  # longer side, fraction of the image side
    texture_background: float = 0.4  # share of images on a procedural texture instead of a photo
    epochs: int = 14
    batch_size: int = 64
    lr: float = 0.003
    weight_decay: float = 0.05
    warmup_steps: int = 50
    label_smoothing: float = 0.1
    bf16_kinds: tuple[str, ...] = ("cnn",)  # chosen when the ViT was slower in bf16 (fused attention); kept, so cached weights stay valid
    seed: int = 0

    @property
    def bf16_kinds_here(self) -> tuple[str, ...]:
        """The kinds that train in bf16 on this machine: ``bf16_kinds`` where the CPU has bfloat16
        units (:func:`core.precision.native_bf16`), none where torch would emulate it far slower."""
        return self.bf16_kinds if native_bf16() else ()

    def to_dict(self) -> dict[str, Any]:
        """The recipe as its weights' key holds it, with the precision that trains here."""
        out = {**dataclasses.asdict(self), "bf16_kinds": list(self.bf16_kinds_here), "version": RECIPE_VERSION}
        if self.catalogue == "fashion-mnist" and not self.exclude:  # the first recipe's keys stay what they were
            del out["catalogue"], out["exclude"]
        return out

    @property
    def classes(self) -> tuple[aux_task.AuxClass, ...]:
        return aux_task.catalogue(self.catalogue, self.exclude)

    def train_config(self, kind: str = "cnn") -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, optimizer="adamw",
                           weight_decay=self.weight_decay, warmup_steps=self.warmup_steps, seed=self.seed,
                           bf16=kind in self.bf16_kinds_here)


AUX_RECIPES: Registry[AuxRecipe] = Registry("auxiliary pretraining recipe")
AUX_RECIPES.add("aux", AuxRecipe(), label="auxiliary task, default size")
AUX_RECIPES.add("aux-smoke", AuxRecipe(n_train=256, n_val=64, image_size=48, epochs=1, batch_size=32,
                                       warmup_steps=2), label="auxiliary task, smoke size")
# The broad task (issue 24): over 100 classes, so more images and epochs for the same images per class.
BROAD = AuxRecipe(catalogue="broad", n_train=36000, n_val=2000, epochs=12)
AUX_RECIPES.add("aux-broad", BROAD, label="broad auxiliary task (glyphs, shapes, textures, garments)")
AUX_RECIPES.add("aux-broad-minus", dataclasses.replace(BROAD, exclude=synth.SceneConfig().classes),
                label="broad auxiliary task without the default benchmark's six garment classes")
AUX_RECIPES.add("aux-broad-smoke", dataclasses.replace(BROAD, n_train=256, n_val=64, epochs=1, batch_size=32,
                                                       warmup_steps=2), label="broad auxiliary task, smoke size")


def is_recipe(pretrained: str) -> bool:
    """True when a network's ``pretrained`` setting names an auxiliary recipe."""
    return pretrained in AUX_RECIPES


def setting_kind(pretrained: str) -> str:
    """What a network's ``pretrained`` setting names: "recipe" (an auxiliary recipe), "timm"
    (ImageNet weights through timm), "file" (a weights file) or "scratch" (random weights)."""
    return "recipe" if is_recipe(pretrained) else "timm" if pretrained == "timm" else "file" if pretrained else "scratch"


def recipe_facts(name: str) -> dict[str, Any]:
    """Recipe ``name``'s task as plain values (for the book's prose): its classes and how many
    each source gives, what it leaves out, its images and epochs."""
    r = AUX_RECIPES.get(name)
    return {"name": name, "catalogue": r.catalogue, "classes": [c.name for c in r.classes],
            "sources": aux_task.source_counts(r.classes), "exclude": list(r.exclude), "n_train": r.n_train,
            "n_val": r.n_val, "image_size": r.image_size, "texture_background": r.texture_background,
            "epochs": r.epochs, "hold_out_every": HOLD_OUT_EVERY}


# ----------------------------------------------------------------------------- the task's images

def _procedural(size: int, rng: np.random.Generator) -> np.ndarray:
    """(S, S, 3) float background: two random colours mixed by stripes, checks, speckle or a
    smooth gradient."""
    a, b = (np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0, 0.9), rng.uniform(0.2, 1.0)),
                     dtype=np.float32) * 255 for _ in range(2))
    kind = int(rng.integers(0, 4))
    if kind < 3:
        # synth's object textures, at a coarser period, as a mixing weight in [0, 1]
        weight = (synth.texture((size, size), rng, 1.0) - 0.6) / 0.4
    else:
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        angle = rng.uniform(0, 2 * np.pi)
        weight = np.clip(0.5 + (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle), 0, 1)
    return weight[..., None] * a + (1 - weight[..., None]) * b


def aux_sample(index: int, split: str, recipe: AuxRecipe, photos: Mapping[str, np.ndarray],
               items: np.ndarray, by_class: Mapping[int, np.ndarray]) -> tuple[np.ndarray, int]:
    """One image of the task: (S, S, 3) uint8 and its class (an index into ``recipe.classes``)."""
    rng = np.random.default_rng([recipe.seed, 104729, synth.SPLIT_CODES[split], index])
    classes = recipe.classes
    label = int(rng.integers(0, len(classes)))
    cfg = synth.SceneConfig(image_size=recipe.image_size, max_overlap=1.0)
    if rng.random() < recipe.texture_background:
        canvas = _procedural(recipe.image_size, rng)
    else:
        canvas = synth.background(synth.Sources(photos=dict(photos), items={}),
                                   synth.PHOTOS[int(rng.integers(0, len(synth.PHOTOS)))], cfg, rng)
    item = aux_task.draw_item(classes[label], rng, items, by_class)
    lo, hi = np.log(recipe.object_size[0]), np.log(recipe.object_size[1])
    side = max(4, round(recipe.image_size * float(np.exp(rng.uniform(lo, hi)))))
    patch, mask = aux_task.render(classes[label], item, side, cfg, rng, photos)
    occupied = np.zeros(canvas.shape[:2], dtype=bool)
    synth.paste(canvas, occupied, patch, mask, cfg, rng)
    canvas = canvas + rng.normal(0, cfg.noise_std, size=canvas.shape)  # the benchmark's sensor noise
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), label


def item_pools(labels: np.ndarray, split: str) -> dict[int, np.ndarray]:
    """Per Fashion-MNIST class, the indices of the training-set items ``split`` may paste: every
    10th item is held out for "val", the others are "train"'s."""
    held_out = np.arange(len(labels)) % HOLD_OUT_EVERY == 0
    keep = held_out if split == "val" else ~held_out
    return {c: np.flatnonzero(keep & (labels == c)) for c in range(len(fashion_mnist.CLASS_NAMES))}


def aux_images(recipe: AuxRecipe, split: str, progress: bool = True, n: int | None = None, workers: int = 0
               ) -> tuple[np.ndarray, np.ndarray]:
    """The task's ``split`` ("train" or "val") as (N, S, S, 3) uint8 images and (N,) labels
    (the first ``n`` only, when given). Both draw items from Fashion-MNIST's training set:
    every 10th item is held out for "val" (:func:`item_pools`). ``workers``: processes that
    render (0: one per CPU, :func:`core.parallel.imap`)."""
    images, labels = fashion_mnist.load("train")
    by_class = item_pools(labels, split)
    photos = synth.load_photos()
    n = (recipe.n_val if split == "val" else recipe.n_train) if n is None else n
    out = np.empty((n, recipe.image_size, recipe.image_size, 3), dtype=np.uint8)
    targets = np.empty(n, dtype=np.int64)
    # Each image is seeded by its index, so the workers' images are the one process's, bit for bit.
    _GENERATOR[:] = [(split, recipe, photos, images, by_class)]  # forked workers inherit it
    chunks = [range(i, min(n, i + _CHUNK)) for i in range(0, n, _CHUNK)]
    try:
        with progress_bar(total=n, desc=f"auxiliary task: {split} images", disable=not progress, leave=False) as bar:
            for chunk, (imgs, labels) in zip(chunks, imap(_sample_chunk, chunks, 1 if len(chunks) == 1 else workers,
                                                          chunksize=1)):
                out[chunk.start : chunk.stop], targets[chunk.start : chunk.stop] = imgs, labels
                bar.update(len(chunk))
    finally:
        _GENERATOR.clear()
    return out, targets


_CHUNK = 250
_GENERATOR: list[tuple[Any, ...]] = []  # aux_images' arguments while it runs


def _sample_chunk(indices: range) -> tuple[np.ndarray, np.ndarray]:
    split, recipe, photos, images, by_class = _GENERATOR[0]
    pairs = [aux_sample(i, split, recipe, photos, images, by_class) for i in indices]
    return np.stack([p[0] for p in pairs]), np.array([p[1] for p in pairs], dtype=np.int64)


@functools.lru_cache(maxsize=2)
def _task_images(recipe: AuxRecipe, split: str, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """:func:`aux_images`, made once per process: the CNN and the ViT pretrain on the same images."""
    return aux_images(recipe, split, progress=progress)


class AuxSet(Dataset):
    """Normalised (3, S, S) tensors with a random horizontal flip when ``augment``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, augment: bool, seed: int = 0):
        self.x = torch.cat([to_tensor(images[i : i + 256]) for i in range(0, len(images), 256)]) if len(images) \
            else torch.empty(0, 3, 1, 1)
        self.y = torch.from_numpy(labels)
        self.augment, self.seed, self.epoch = augment, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[index]
        if self.augment and np.random.default_rng([self.seed, self.epoch, index]).random() < 0.5:
            x = x.flip(-1)
        return x, self.y[index]


# ----------------------------------------------------------------------------- training and the cache

def cache_dir() -> Path:
    """$ORANDNET_CACHE, else ``data/cache`` in the project (beside the generated data)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return project_root() / "data" / "cache"


def weights_key(recipe_name: str, kind: str, backbone: str, shape: Mapping[str, Any]) -> ArtifactKey:
    """The identity of one backbone's pretrained weights: the recipe (its full settings), the
    network kind, the timm backbone and every constructor argument that shapes its weights."""
    recipe = AUX_RECIPES.get(recipe_name)
    return ArtifactKey("pretrained", {"recipe": recipe.to_dict(), "kind": kind, "backbone": backbone,
                                      "shape": spec_dict(shape)})


def keyed_setting(pretrained: str, kind: str, backbone: str, shape: Mapping[str, Any]) -> str:
    """What a network's ``pretrained`` setting means, for the key of an artifact trained from it:
    the setting itself, unless it names a recipe: then ``"<recipe>:<weights key digest>"``, so a
    changed recipe setting changes the key. Pure: no file is read or trained."""
    if not is_recipe(pretrained):
        return pretrained
    return f"{pretrained}:{weights_key(pretrained, kind, backbone, shape).digest}"


def cached_path(recipe_name: str, kind: str, backbone: str, shape: Mapping[str, Any]) -> Path:
    """Where the weights of a backbone under a recipe are (or will be) cached."""
    return weights_key(recipe_name, kind, backbone, shape).path(cache_dir() / "pretrained", f"{kind}-{backbone}")


def _network(kind: str, backbone: str, shape: Mapping[str, Any], image_size: int, n_classes: int) -> nn.Module:
    """The network pretrained on the task: the CAM classifier of ``kind`` with an ``n_classes``-way head."""
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in shape.items()}
    if kind == "vit":  # shape: the ViT's backbone kwargs plus its patch size and stem
        extra = {"patch_size": kwargs.pop("patch_size", None), "stem_widths": kwargs.pop("stem_widths", ()),
                 "img_size": image_size}
        kwargs = {"backbone_kwargs": kwargs, **extra}
    else:  # output stride 32 as ImageNet training; the CAM networks dilate the last stage later
        kwargs = {"backbone_kwargs": kwargs, "output_stride": 32}
    return create_classifier(kind, n_classes, backbone=backbone, pretrained="", **kwargs)


def backbone_module(net: nn.Module) -> nn.Module:
    """The part of a CAM classifier that other networks take as their backbone (timm's module)."""
    return net.vit if hasattr(net, "vit") else net.features


def _loss(smoothing: float):
    def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = batch
        logits = model(x)
        return F.cross_entropy(logits.float(), y, label_smoothing=smoothing), {
            "accuracy": float((logits.argmax(1) == y).float().mean())}
    return loss


@torch.inference_mode()
def accuracy(model: nn.Module, data: AuxSet, batch_size: int = 256) -> float:
    model.eval()
    hits = sum(int((model(data.x[i : i + batch_size]).argmax(1) == data.y[i : i + batch_size]).sum())
               for i in range(0, len(data), batch_size))
    return 100.0 * hits / max(1, len(data))


def weights_file(recipe_name: str, kind: str, backbone: str, shape: Mapping[str, Any] | None = None,
                 progress: bool = True, log: Any = print) -> Path:
    """The cached pretrained weights of a backbone (``kind`` "cnn" or "vit", timm ``backbone``,
    ``shape``: its constructor arguments, e.g. channels and layers, or the ViT's embed_dim, depth,
    stem_widths, patch_size), trained on the recipe's task when not cached yet."""
    shape = dict(shape or {})
    key = weights_key(recipe_name, kind, backbone, shape)
    path = cached_path(recipe_name, kind, backbone, shape)
    if path.exists():
        return path
    with torch.random.fork_rng(devices=[]):  # the caller's random state is the same whether cached or not
        return _train(recipe_name, kind, backbone, shape, key, path, progress, log)


def resolve(setting: str, kind: str, backbone: str, shape: Mapping[str, Any] | None = None,
            progress: bool = True, log: Any = print) -> str:
    """A network's ``pretrained`` setting as the networks take it (``nets.backbone``): a recipe's
    name becomes its cached weights file (trained on first use: a stage calls this, never a
    network's constructor); "", "timm" and file paths pass through."""
    if not is_recipe(setting):
        return setting
    return str(weights_file(setting, kind, backbone, shape, progress=progress, log=log))


def _train(recipe_name: str, kind: str, backbone: str, shape: dict[str, Any], key: ArtifactKey, path: Path,
           progress: bool, log: Any) -> Path:
    recipe = AUX_RECIPES.get(recipe_name)
    start = time.perf_counter()
    train_x, train_y = _task_images(recipe, "train", progress)
    val_x, val_y = _task_images(recipe, "val", progress)
    train, val = AuxSet(train_x, train_y, augment=True, seed=recipe.seed), AuxSet(val_x, val_y, augment=False)
    torch.manual_seed(recipe.seed)
    model = _network(kind, backbone, shape, recipe.image_size, len(recipe.classes))
    cfg = recipe.train_config(kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.pt")  # fit's own checkpoint: a killed run resumes from it
    history = fit(model, train, _loss(recipe.label_smoothing), cfg, checkpoint=partial, key=key,
                  param_groups=model.param_groups(1.0), evaluate=lambda m, e: {"val_accuracy": accuracy(m, val)},
                  progress=progress, desc=f"pretraining {kind} ({backbone}) on the auxiliary task")
    with store.atomic_path(path) as tmp:
        torch.save({"state_dict": backbone_module(model).state_dict(), "identity": key.to_dict(),
                    "history": history, "val_accuracy": history[-1]["val_accuracy"],
                    "seconds": time.perf_counter() - start, "train_config": learning_config(cfg)}, tmp)
    partial.unlink(missing_ok=True)
    log(f"pretrained {kind} {backbone} on the auxiliary task: val accuracy {history[-1]['val_accuracy']:.1f} % "
        f"in {time.perf_counter() - start:.0f} s -> {path.name}")
    return path


def summary(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a cached weights file says about itself (no tensors)."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    return {k: state[k] for k in ("identity", "history", "val_accuracy", "seconds", "train_config")}


@dataclass
class Pretrained:
    """A network's backbone pretrained on an auxiliary task: the recipe, the network's kind and
    timm backbone, the cached weights and what they say of themselves (:func:`summary`)."""

    recipe: str
    kind: str
    backbone: str
    path: Path
    summary: dict[str, Any]  # history, val_accuracy, seconds, ...

    def record(self) -> dict[str, Any]:
        """What a stage records of it: the recipe, held-out accuracy, seconds and cached file."""
        return {"recipe": self.recipe, "val_accuracy": self.summary["val_accuracy"], "seconds": self.summary["seconds"],
                "file": self.path.name}
