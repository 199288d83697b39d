"""Pixel-wise ensembles of CAMs from N sources.

Every operator works on maps in [0, 1] of identical shape (K, H, W): the CAMs of one image
for its K ground-truth classes, one array per source. An additive offset per source (the
official code adds 0.15 to the ViT CAM, whose maps run lower) is applied first and the result
clipped to [0, 1], so the probabilistic operators stay probabilities.

- ``or``:   1 - prod_i (1 - a_i)   (probabilistic OR: high recall)
- ``and``:  prod_i a_i             (probabilistic AND: high precision)
- ``mean``, ``max``, ``min``       (the naive ensembles)

For maps in [0, 1]: or >= max >= mean >= min >= and, pixel by pixel. The operators live in the
registry ``OPERATORS``; an unknown name is a ConfigError listing the known ones.

Also here: the keys of fused stores, the mask-free choice of the offset (:class:`OffsetChoice`)
and the comparison of AND and OR with the single sources (:func:`compare_to_sources`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import numpy as np

from . import score_rules
from .cams import CamStore, CamStoreWriter
from ..core.errors import ConfigError, DataError
from ..core.keys import ArtifactKey
from ..core.registry import Registry
from ..core.metrics import SweepResult, ThresholdSweep, equal_recall
from ..core.progress import bar as progress_bar
from ..data.voc import VOCDataset

Operator = Callable[[np.ndarray], np.ndarray]  # (N, ...) stacked maps in [0, 1] -> (...) fused map

# The ensemble operators. ``standard=True``: part of the standard variants every chapter compares
# (in registration order); ``offset=True``: also compared with the per-source offset. Adding an
# operator is one function plus one registration; it then appears in stage 2's tables and in the
# variants later stages rebuild from stage 2's record.
OPERATORS: Registry[Operator] = Registry("ensemble operator")


@OPERATORS.register("mean", label="mean", standard=True)
def fuse_mean(stack: np.ndarray) -> np.ndarray:
    return stack.mean(axis=0)


@OPERATORS.register("max", label="max", standard=True)
def fuse_max(stack: np.ndarray) -> np.ndarray:
    return stack.max(axis=0)


@OPERATORS.register("or", label="probabilistic OR", standard=True, offset=True)
def fuse_or(stack: np.ndarray) -> np.ndarray:
    """1 - prod_i (1 - a_i): a pixel is foreground if any source says so (high recall)."""
    return 1.0 - np.prod(1.0 - stack, axis=0)


@OPERATORS.register("and", label="probabilistic AND", standard=True, offset=True)
def fuse_and(stack: np.ndarray) -> np.ndarray:
    """prod_i a_i: a pixel is foreground only if every source says so (high precision)."""
    return np.prod(stack, axis=0)


@OPERATORS.register("min", label="min")
def fuse_min(stack: np.ndarray) -> np.ndarray:
    return stack.min(axis=0)


def standard_operators() -> list[str]:
    """The operators of the standard variants, in registration order (mean, max, or, and)."""
    return [name for name in OPERATORS if OPERATORS.entry(name).attrs.get("standard")]


def fuse(maps: Sequence[np.ndarray], op: str, offsets: Sequence[float] | None = None) -> np.ndarray:
    """Combine N maps of equal shape with the registered operator ``op``; ``offsets[i]`` is
    added to map i first (then clipped to [0, 1])."""
    operator = OPERATORS.get(op)
    if not maps:
        raise ValueError("fuse needs at least one map")
    if offsets is not None and len(offsets) != len(maps):
        raise ValueError(f"{len(offsets)} offsets for {len(maps)} maps")
    shape = maps[0].shape
    if any(m.shape != shape for m in maps):
        raise ValueError(f"maps differ in shape: {[m.shape for m in maps]}")
    stack = np.stack([np.asarray(m, dtype=np.float32) for m in maps])  # (N, ...)
    if offsets is not None:
        stack = np.clip(stack + np.asarray(offsets, np.float32).reshape((-1,) + (1,) * (stack.ndim - 1)), 0.0, 1.0)
    return operator(stack)


def aligned(stores: Mapping[str, CamStore], ids: Sequence[str]) -> Iterator[tuple[str, list[np.ndarray], np.ndarray]]:
    """Per image: the maps of every source (in the mapping's order) and the class ids,
    checked to agree across sources."""
    names = list(stores)
    for image_id in ids:
        maps, class_ids = [], None
        for name in names:
            cams, cids = stores[name][image_id]
            if class_ids is None:
                class_ids = cids
            elif not np.array_equal(cids, class_ids) or cams.shape != maps[0].shape:
                raise DataError(f"{image_id}: CAM store {stores[name].path} has classes {cids.tolist()} "
                                f"{cams.shape}, but {stores[names[0]].path} has {class_ids.tolist()} {maps[0].shape}")
            maps.append(cams)
        assert class_ids is not None
        yield image_id, maps, class_ids


def fused_cams(stores: Mapping[str, CamStore], ids: Sequence[str], op: str,
               offsets: Mapping[str, float] | None = None) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Stream (image id, fused cams (K, H, W), class ids) over ``ids``."""
    off = [float((offsets or {}).get(name, 0.0)) for name in stores]
    use = off if any(off) else None
    for image_id, maps, class_ids in aligned(stores, ids):
        yield image_id, fuse(maps, op, use), class_ids


def write_fused_store(stores: Mapping[str, CamStore], ids: Sequence[str], op: str, path: str | Path,
                      offsets: Mapping[str, float] | None = None, key: ArtifactKey | None = None) -> Path:
    """Write the ensemble of ``stores`` as a CAM store of its own (same format as stage 1's);
    ``key`` (the store's artifact key) goes into its meta."""
    OPERATORS.entry(op)  # an unknown operator fails before anything is written
    meta = {"source": f"{op}({', '.join(stores)})", "operator": op, "inputs": [str(s.path) for s in stores.values()],
            "offsets": dict(offsets or {})}
    if key is not None:
        meta["identity"] = key.to_dict()
    first = next(iter(stores.values()))
    meta.update({k: first.meta[k] for k in ("split", "data", "num_classes", "class_names") if k in first.meta})
    with CamStoreWriter(path, meta) as writer:
        for image_id, cams, class_ids in fused_cams(stores, ids, op, offsets):
            writer.add(image_id, cams, class_ids)
    return Path(path)


@dataclass(frozen=True)
class Variant:
    """A CAM variant: ``op`` over the named sources, with optional per-source offsets.
    A single source with no offset is that source's CAM itself."""

    sources: tuple[str, ...]
    op: str = "max"
    offsets: tuple[tuple[str, float], ...] = ()

    def compute(self, maps: Mapping[str, np.ndarray]) -> np.ndarray:
        chosen = [maps[s] for s in self.sources]
        if len(chosen) == 1 and not self.offsets:
            return chosen[0]
        off = dict(self.offsets)
        return fuse(chosen, self.op, [off.get(s, 0.0) for s in self.sources] if off else None)


def standard_variants(sources: Sequence[str], offset_source: str | None = None, offset: float = 0.0,
                      operators: Sequence[str] | None = None) -> dict[str, Variant]:
    """Each single source, then each operator over all of them (default: the registered
    standard operators: mean, max, OR, AND); with an offset, also each of those operators
    registered with ``offset=True`` (OR and AND) with ``offset`` added to ``offset_source``
    (the official code's +0.15 on the ViT), named ``<op>+offset``."""
    ops = list(standard_operators() if operators is None else operators)
    variants = {s: Variant((s,)) for s in sources}
    names = tuple(sources)
    for op in ops:
        variants[op] = Variant(names, op)
    if offset_source is not None and offset:
        for op in ops:
            if OPERATORS.entry(op).attrs.get("offset"):
                variants[f"{op}+offset"] = Variant(names, op, ((offset_source, offset),))
    return variants


def offset_variants(sources: Sequence[str], offset_source: str | None, offset: float,
                    operators: Sequence[str] | None = None) -> dict[str, Variant]:
    """:func:`standard_variants`, keeping the ``+offset`` variants when the offset is 0 (a
    possible outcome of stage 2's ``align`` rule; later stages still read ``or+offset`` and
    ``and+offset``)."""
    out = standard_variants(sources, offset_source, offset, operators)
    if offset_source is not None and not offset:
        for name, v in standard_variants(sources, offset_source, 1.0, operators).items():
            out.setdefault(name, Variant(v.sources, v.op, ((offset_source, 0.0),)))
    return out


def recorded_variants(record: Mapping[str, Any]) -> dict[str, Variant]:
    """The variants an ensemble stage built, from what it recorded (its ``metrics["ensemble"]``:
    sources, offset source, offset, operators), so later stages rebuild exactly those, not
    what is registered now."""
    return offset_variants(record["sources"], record["offset_source"], record["offset"], record["operators"])


def sweep_variants(stores: Mapping[str, CamStore], dataset: VOCDataset, variants: Mapping[str, Variant],
                   thresholds: Sequence[float] | None = None, progress: bool = True) -> dict[str, SweepResult]:
    """Threshold sweeps of many variants in one pass over the data (each image read once)."""
    sweeps = {name: ThresholdSweep(dataset.num_classes, thresholds) for name in variants}
    ids = dataset.ids
    for image_id, maps, class_ids in progress_bar(aligned(stores, ids), total=len(ids), desc="ensembles",
                                                  disable=not progress):
        gt = dataset.load_mask(image_id)
        by_name = dict(zip(stores, maps))
        for name, variant in variants.items():
            sweeps[name].update(variant.compute(by_name), class_ids, gt)
    return {name: s.result() for name, s in sweeps.items()}


def fused_store_key(name: str, variant: Variant | None, split: str, data: Mapping[str, str],
                    upstream: Mapping[str, str], rule: Mapping[str, Any] | None = None,
                    rule_inputs: Mapping[str, str] | None = None) -> ArtifactKey:
    """A fused CAM store: operator, offsets and sources, the split, and the keys of the source
    stores; for an offset variant under a rule other than ``fixed``, ``rule`` (its name, and
    the offset when known) and ``rule_inputs`` (the digests of what chose the offset)."""
    if variant is None:  # not a standard variant: the recipe refuses it; the key only names it
        return ArtifactKey("cams", {"variant": name}, data=data[split])
    spec: dict[str, Any] = {"operator": variant.op, "offsets": dict(variant.offsets), "sources": list(variant.sources)}
    inputs = {f"cams:{s}_{split}": upstream[f"cams:{s}_{split}"] for s in variant.sources}
    if variant.offsets and rule is not None:
        spec.update(rule)
        inputs.update(rule_inputs or {})
    return ArtifactKey("cams", spec, data=data[split], upstream=inputs)


# -- the offset on one source ---------------------------------------------------------------------

@dataclass(frozen=True)
class OffsetChoice:
    """The offset applied to the offset source, the rule that chose it and, under ``align``,
    each source's mask-free operating point on the train split (fractions)."""

    rule: str
    offset: float
    thresholds: dict[str, float]


def align_offset(thresholds: Mapping[str, float], offset_source: str) -> float:
    """The offset that moves ``offset_source``'s operating point onto the other source's: the
    other's minus its own (rounded to 1e-6, the score grid is 1e-2)."""
    others = [name for name in thresholds if name != offset_source]
    if offset_source not in thresholds or len(others) != 1:
        raise ConfigError(f"offset_rule 'align' needs two sources, one of them the offset source "
                          f"{offset_source!r}; got {list(thresholds)}")
    return round(thresholds[others[0]] - thresholds[offset_source], 6)


def source_points(stores: Mapping[str, CamStore], rule: str = "otsu") -> dict[str, float]:
    """Each source's operating point on its train-split store, by a mask-free score rule."""
    return {name: score_rules.operating_point(((c, i) for _, c, i in store), rule) for name, store in stores.items()}


# -- AND and OR against the single sources ----------------------------------------------------------

def compare_to_sources(sweeps: Mapping[str, SweepResult], sources: Sequence[str]) -> dict[str, Any]:
    """The paper's two claims on these sweeps, as values: is AND (with the offset when there is
    one) more precise than each source at that source's best-mIoU recall, and does an OR have
    the highest recall at the best-mIoU scores; with the best variant and the weaker source
    (the one an AND loses object pixels to). Percent; a precision the AND's curve never
    reaches is None."""
    best = {name: s.best() for name, s in sweeps.items()}
    singles = {name: best[name] for name in sources}
    top_single = max(singles, key=lambda n: singles[n]["miou"])
    weak = min(singles, key=lambda n: singles[n]["miou"])
    and_name = "and+offset" if "and+offset" in best else "and"
    or_name = "or+offset" if "or+offset" in best else "or"
    at = {n: equal_recall(sweeps[and_name], sweeps[n]) for n in sources}
    highest_recall = max(best, key=lambda n: best[n]["recall"])
    top = max(best, key=lambda n: best[n]["miou"])
    return {
        "and_name": and_name, "or_name": or_name,
        "and_more_precise": all(a["difference"] > 0 for a in at.values()),
        "at_recall": [{"source": n, "recall": a["recall"], "baseline_precision": a["baseline_precision"],
                       "precision": None if np.isnan(a["precision"]) else a["precision"]} for n, a in at.items()],
        "and_empty_share": sweeps[and_name].empty_share, "and_unpredicted": best[and_name]["unpredicted"],
        "and_miou": best[and_name]["miou"],
        "or_highest_recall": highest_recall.startswith("or"), "highest_recall": highest_recall,
        "highest_recall_value": best[highest_recall]["recall"], "or_recall": best[or_name]["recall"],
        "top": top, "top_miou": best[top]["miou"],
        "top_single": top_single, "top_single_miou": singles[top_single]["miou"],
        "top_single_recall": singles[top_single]["recall"],
        "weak": weak, "weak_miou": singles[weak]["miou"], "weak_recall": singles[weak]["recall"],
    }
