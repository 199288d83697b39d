"""Stage 2: OR and AND ensembles of the two CAMs. Given stage 1's CAM stores, a pixel-wise
probabilistic OR (a + b - ab) keeps what either classifier found (high recall) and a pixel-wise
AND (ab) keeps only what both found (high precision). The stage scores every single source and
every standard ensemble (mean, max, OR, AND, with and without the official code's offset on the
ViT map) at two background scores (best mIoU; precision = recall), and writes the variants
ORANDNet learns between (OR as input, AND as target) as CAM stores of their own.

The offset is chosen by a stated rule that never looks at ORANDNet's result (``offset_rule``):
``fixed`` adds ``offset`` (the official +0.15, tuned for its LRP maps); ``align`` adds the
offset that aligns the two sources' operating points on the train split, each Otsu's
threshold of that source's own top scores (``methods.score_rules``; no mask is read), the
other source's minus the offset source's, so one background score suits both maps of an
OR / AND. It records which ensemble it built (``metrics["ensemble"]``: sources,
offset source, the offset applied, its rule and the thresholds it came from, operators); later
stages rebuild the same variants from that record (``methods.ensemble.recorded_variants``), so the offset
is set in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..core import paper
from ..core.errors import ConfigError
from ..core.keys import ArtifactKey
from ..core.metrics import SweepResult
from ..data.fingerprint import dataset_fingerprint
from ..data.voc import VOCDataset
from ..methods.cams import CamStore
from ..methods.ensemble import (OffsetChoice, Variant, align_offset, compare_to_sources, fused_store_key,
                                offset_variants, source_points, standard_operators, sweep_variants, write_fused_store)

STAGE = "02_or_and_ensembles"
UPSTREAM = "01_classifiers_and_cams"
NOT_IN_KEYS = {
    "seed": "no randomness: the ensembles are fixed functions of stage 1's CAMs (whose keys hold the seed)",
    "offset": "keyed as the offset applied (the offset variants' spec 'offsets'): this value under offset_rule "
              "'fixed'; unused under 'align', whose offset follows the source stores (in the keys)",
    "n_examples": "presentation: training images shown with their masks",
}


@dataclass(frozen=True)
class Params:
    seed: int = 0
    train_split: str = "train"
    sources: tuple[str, ...] = ("cnn", "vit")  # CAM stores of stage 1
    offset_source: str = "vit"  # the source that gets the offset (the official code: the ViT)
    offset_rule: str = "fixed"  # "fixed": add `offset` | "align": align the sources' mask-free operating points
    offset: float = paper.OFFICIAL_OFFSET  # the offset under offset_rule = "fixed"
    store_variants: tuple[str, ...] = ("or+offset", "and+offset")  # written as CAM stores for ORANDNet
    n_examples: int = 5


OFFSET_RULES = ("fixed", "align")


def check(p: Params) -> None:
    """The offset rule is one this stage knows (the runner calls this before any stage starts)."""
    if p.offset_rule not in OFFSET_RULES:
        raise ConfigError(f"offset_rule must be one of {OFFSET_RULES}, got {p.offset_rule!r}")


def choose_offset(p: Params, stores: Mapping[str, CamStore] | None = None) -> OffsetChoice:
    """The offset by ``p.offset_rule``; ``stores``: the sources' train-split CAM stores
    (:func:`source_stores`, needed by ``align``)."""
    check(p)
    if p.offset_rule == "fixed":
        return OffsetChoice("fixed", p.offset, {})
    if stores is None:
        raise ConfigError("offset_rule 'align' needs the sources' CAM stores")
    thresholds = source_points({n: stores[n] for n in p.sources})
    return OffsetChoice("align", align_offset(thresholds, p.offset_source), thresholds)


def variants(p: Params, offset: float) -> dict[str, Variant]:
    """The standard variants: each source, then each standard operator over all of them, then
    the offset variants (``or+offset``, ``and+offset``) with the ``offset`` applied (:func:`choose_offset`)."""
    return offset_variants(p.sources, p.offset_source, offset)


def ensemble_record(p: Params, choice: OffsetChoice) -> dict[str, Any]:
    """What later stages need to rebuild :func:`variants` (``metrics["ensemble"]``, read back by
    :func:`~orandnet_lib.methods.ensemble.recorded_variants`), with the offset applied, its
    rule and the thresholds it came from."""
    return {"sources": list(p.sources), "offset_source": p.offset_source, "offset": choice.offset,
            "offset_rule": choice.rule, "offset_thresholds": dict(choice.thresholds),
            "operators": standard_operators()}


def artifact_keys(p: Params, data: Mapping[str, str], upstream: Mapping[str, str],
                  offset: float | None = None) -> dict[str, ArtifactKey]:
    """``cams:<variant>_<train_split>`` for each of ``store_variants``. ``upstream["cams:<source>_<split>"]``:
    the digest of stage 1's store of that source (under ``offset_rule`` "align" also what chose
    the offset). ``offset``: the offset applied (:func:`choose_offset`); under "fixed" it is
    ``p.offset``; under "align" the key without it holds the rule and its inputs."""
    rule: dict[str, Any] | None = None
    rule_inputs: dict[str, str] = {}
    if p.offset_rule != "fixed":  # the fixed rule's keys are those of a plain offset
        rule = {"offset_rule": p.offset_rule, "score_rule": "otsu"}
        rule_inputs = {f"cams:{s}_{p.train_split}": upstream[f"cams:{s}_{p.train_split}"] for s in p.sources}
    applied = p.offset if p.offset_rule == "fixed" else offset
    known = variants(p, p.offset if applied is None else applied)
    if applied is None:  # "align" before its thresholds are read: the offset stands as the rule
        known = {n: Variant(v.sources, v.op, tuple((s, p.offset_rule) for s, _ in v.offsets))  # type: ignore[misc]
                 for n, v in known.items()}
    return {f"cams:{name}_{p.train_split}": fused_store_key(name, known.get(name), p.train_split, data, upstream, rule,
                                                            rule_inputs)
            for name in p.store_variants}


def source_stores(stage: Any, p: Params) -> dict[str, CamStore]:
    """Stage 1's CAM stores of the sources on the train split."""
    stage1 = stage.upstream(UPSTREAM).dir
    return {name: CamStore(stage1 / "cams" / f"{name}_{p.train_split}") for name in p.sources}


def sweep(stores: Mapping[str, CamStore], train: VOCDataset, chosen: Mapping[str, Variant]) -> dict[str, SweepResult]:
    """Background-score sweeps of every variant, in one pass over the split; {} for a split
    without masks (nothing to score against)."""
    return sweep_variants(stores, train, chosen) if train.has_masks else {}


def write_stores(stage: Any, p: Params, stores: Mapping[str, CamStore], train: VOCDataset,
                 chosen: Mapping[str, Variant], choice: OffsetChoice) -> dict[str, ArtifactKey]:
    """Write each of ``store_variants`` as a CAM store ``<stage>/cams/<variant>_<split>``,
    keyed by :func:`artifact_keys` with the offset applied. Returns {artifact name: key}."""
    unknown = [n for n in p.store_variants if n not in chosen]
    if unknown:
        raise ConfigError(f"store_variants {unknown} are not ensemble variants; known: {', '.join(chosen)}")
    upstream = {f"cams:{name}_{p.train_split}": s.digest for name, s in stores.items()}
    keys = artifact_keys(p, {p.train_split: dataset_fingerprint(train)}, upstream, choice.offset)
    for name in p.store_variants:
        v = chosen[name]
        write_fused_store({s: stores[s] for s in v.sources}, train.ids, v.op,
                          stage.dir / "cams" / f"{name}_{p.train_split}", offsets=dict(v.offsets),
                          key=keys[f"cams:{name}_{p.train_split}"])
    return keys


def summarise(sweeps: Mapping[str, SweepResult]) -> dict[str, Any]:
    """The ``cams`` summary section: each variant's best-mIoU scores and its crossover."""
    return {"cams": {name: s.describe() for name, s in sweeps.items()}}


def record(stage: Any, p: Params, summary: Mapping[str, Any], keys: Mapping[str, ArtifactKey],
           choice: OffsetChoice) -> dict[str, Any]:
    """The stage's record: the scores, the written stores, the ensemble it built (with the
    offset applied and its rule; also in the summary) and the stores' keys."""
    stores = {name: str(stage.dir / "cams" / f"{name}_{p.train_split}") for name in p.store_variants}
    ensemble = ensemble_record(p, choice)
    return stage.record(metrics={**summary, "stores": stores, "ensemble": ensemble},
                        summary={**summary, "ensemble": ensemble}, artifacts=keys)


def offset_facts(p: Params, choice: OffsetChoice) -> dict[str, Any]:
    """Facts for ``offset.md``: the rule that chose the offset, the value that ran and, under
    ``align``, the two operating points (``other``: the source whose point it moves onto)."""
    other = next((n for n in choice.thresholds if n != p.offset_source), None)
    return {"rule": choice.rule, "offset": choice.offset, "offset_source": p.offset_source,
            "train_split": p.train_split, "thresholds": dict(choice.thresholds), "other": other,
            "official_offset": paper.OFFICIAL_OFFSET,
            "official": choice.rule == "fixed" and choice.offset == paper.OFFICIAL_OFFSET}


def findings(p: Params, sweeps: Mapping[str, SweepResult], choice: OffsetChoice) -> dict[str, Any]:
    """Facts for the chapter's closing bullets (``findings.md``): the offset that ran and, given
    sweeps (``scored``; none for a split without masks), is AND more precise, does OR recall
    most, and why (:func:`~orandnet_lib.methods.ensemble.compare_to_sources`)."""
    return {**offset_facts(p, choice), "scored": bool(sweeps),
            **(compare_to_sources(sweeps, p.sources) if sweeps else {})}


# -- the stage in order --------------------------------------------------------------------------

def run(stage: Any, p: Params) -> dict[str, Any]:
    """The stage's recipe in the order the notebook runs it, without its tables and figures:
    the offset by its rule, the variants, their sweeps and the stores ORANDNet reads, recorded.
    Returns the record."""
    train = VOCDataset(stage.data_root, p.train_split)
    stores = source_stores(stage, p)
    choice = choose_offset(p, stores)
    chosen = variants(p, choice.offset)
    sweeps = sweep(stores, train, chosen)
    keys = write_stores(stage, p, stores, train, chosen, choice)
    return record(stage, p, summarise(sweeps), keys, choice)
