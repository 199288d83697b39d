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

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..book import plots
from ..core.errors import ConfigError
from ..core.keys import ArtifactKey
from ..core.metrics import SweepResult, cam_to_mask, equal_recall
from ..data.fingerprint import dataset_fingerprint
from ..data.voc import VOCDataset
from ..methods import score_rules
from ..methods.cams import CamStore
from ..methods.ensemble import (Variant, offset_variants, recorded_variants, standard_operators, sweep_variants,
                                write_fused_store)

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
    offset: float = 0.15  # the offset under offset_rule = "fixed" (the official code's)
    store_variants: tuple[str, ...] = ("or+offset", "and+offset")  # written as CAM stores for ORANDNet
    n_examples: int = 5


OFFSET_RULES = ("fixed", "align")


@dataclass(frozen=True)
class OffsetChoice:
    """The offset applied to ``offset_source``, the rule that chose it and, under ``align``,
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


def choose_offset(p: Params, stores: Mapping[str, CamStore] | None = None) -> OffsetChoice:
    """The offset by ``p.offset_rule``; ``stores``: the sources' train-split CAM stores
    (:func:`source_stores`, needed by ``align``)."""
    if p.offset_rule == "fixed":
        return OffsetChoice("fixed", p.offset, {})
    if p.offset_rule == "align":
        if stores is None:
            raise ConfigError("offset_rule 'align' needs the sources' CAM stores")
        thresholds = source_points({n: stores[n] for n in p.sources})
        return OffsetChoice("align", align_offset(thresholds, p.offset_source), thresholds)
    raise ConfigError(f"offset_rule must be one of {OFFSET_RULES}, got {p.offset_rule!r}")


def variants(p: Params, offset: float) -> dict[str, Variant]:
    """The standard variants: each source, then each standard operator over all of them, then
    the offset variants (``or+offset``, ``and+offset``) with the ``offset`` applied (:func:`choose_offset`)."""
    return offset_variants(p.sources, p.offset_source, offset)


def ensemble_record(p: Params, choice: OffsetChoice) -> dict[str, Any]:
    """What later stages need to rebuild :func:`variants` (``metrics["ensemble"]``), with the
    offset applied, its rule and the thresholds it came from."""
    return {"sources": list(p.sources), "offset_source": p.offset_source, "offset": choice.offset,
            "offset_rule": choice.rule, "offset_thresholds": dict(choice.thresholds),
            "operators": standard_operators()}


def variants_from(upstream: Any) -> dict[str, Variant]:
    """The standard variants stage 2 built, with the offset it applied, from its record
    (``stage.upstream("02_or_and_ensembles")``; later stages call :func:`recorded_variants`)."""
    return recorded_variants(upstream.metrics["ensemble"])


def store_key(name: str, variant: Variant | None, split: str, data: Mapping[str, str],
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
    return {f"cams:{name}_{p.train_split}": store_key(name, known.get(name), p.train_split, data, upstream, rule,
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


def variant_table(sweeps: Mapping[str, SweepResult]) -> pd.DataFrame:
    """Scores of each variant at its best-mIoU and its precision = recall background score, with
    what its mean precision leaves out: the classes it never predicts there (``unpredicted``) and
    its empty class maps (percent)."""
    rows = []
    for name, s in sweeps.items():
        for rule, scores in (("best mIoU", s.best()), ("precision = recall", s.crossover())):
            rows.append({"variant": name, "threshold rule": rule, **scores, "empty maps %": s.empty_share})
    return pd.DataFrame(rows).set_index(["threshold rule", "variant"]).sort_index(level=0, sort_remaining=False)


def curves_figure(sweeps: Mapping[str, SweepResult]) -> plt.Figure:
    """Precision against recall, and mIoU over the background score (offset variants dashed)."""
    fig, axes = plt.subplots(2, 1, figsize=(plots.COLUMN, 9.0), gridspec_kw={"height_ratios": [3, 2]})
    offset_names = [n for n in sweeps if "+offset" in n]
    plots.precision_recall_curves(dict(sweeps), axes[0], dashed=offset_names)
    for i, (name, s) in enumerate(sweeps.items()):
        curve = s.curve()
        axes[1].plot(curve["threshold"], curve["miou"], "--" if name in offset_names else "-", color=f"C{i % 10}",
                     label=name)
    axes[1].set(xlabel="background score (%)", ylabel="mIoU (%)", title="mIoU over the background score")
    fig.tight_layout()
    return fig


def per_class_precision(sweeps: Mapping[str, SweepResult], class_names: Any) -> pd.DataFrame:
    """(variant, class) precision in percent at each variant's best-mIoU background score."""
    return pd.DataFrame({name: 100 * s.scores(s.best_index).precision for name, s in sweeps.items()},
                        index=class_names).T


def example_figure(p: Params, train: VOCDataset, stores: Mapping[str, CamStore], chosen: Mapping[str, Variant],
                   sweeps: Mapping[str, SweepResult]) -> plt.Figure:
    """Masks of the single CAMs and of the first two of OR / AND (with the offset when there is
    one), each at its own best-mIoU background score; without sweeps (a split without masks)
    the maps themselves (the largest score over the image's classes)."""
    shown = list(p.sources) + [v for v in ("or+offset", "and+offset", "or", "and") if v in chosen][:2]
    best_t = {name: sweeps[name].best()["threshold"] / 100 for name in shown} if sweeps else {}
    picks = np.linspace(0, len(train) - 1, min(p.n_examples, len(train))).astype(int)
    grid = []
    for i in picks:
        sample = train[i]
        maps = {name: stores[name][sample.id][0] for name in p.sources}
        class_ids = stores[p.sources[0]][sample.id][1]
        fused = {n: chosen[n].compute(maps) for n in shown}
        if sweeps:
            row = [sample.image, plots.overlay(sample.image, sample.mask)]
            row += [plots.overlay(sample.image, cam_to_mask(fused[n], class_ids, best_t[n])) for n in shown]
        else:
            row = [sample.image] + [plots.heatmap_overlay(sample.image, fused[n].max(axis=0) if len(class_ids)
                                                          else np.zeros(sample.image.shape[:2])) for n in shown]
        grid.append(row)
    titles = ["image", "ground truth", *shown] if sweeps else ["image", *shown]
    return plots.image_grid(grid, titles=titles, size=1.8, class_names=train.class_names)


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


def offset_text(p: Params, choice: OffsetChoice) -> str:
    """One paragraph (markdown): the rule that chose the offset and the value that ran."""
    if choice.rule == "fixed":
        return (f"**Offset** (rule `fixed`): {choice.offset:+.2f} added to the {p.offset_source} map before the "
                "`+offset` ensembles, the official code's value (tuned there for its LRP maps).")
    other = next(n for n in choice.thresholds if n != p.offset_source)
    return (f"**Offset** (rule `align`): {choice.offset:+.2f} added to the {p.offset_source} map before the `+offset` "
            f"ensembles: the offset that moves its operating point on the {p.train_split} split "
            f"({choice.thresholds[p.offset_source]:.2f}) onto {other}'s ({choice.thresholds[other]:.2f}), so one "
            "background score suits both maps. Each point is Otsu's threshold of the source's own top scores: no "
            "mask is read, and it is fixed before any ORANDNet result exists (the official code adds +0.15, tuned "
            "for its LRP maps).")


def findings(p: Params, sweeps: Mapping[str, SweepResult], choice: OffsetChoice) -> str:
    """The chapter's closing bullets (markdown): the offset that ran, is AND more precise, does
    OR recall most, why (without sweeps, a split without masks: the offset alone)."""
    if not sweeps:
        return "\n".join([f"- {offset_text(p, choice)}", f"- The `{p.train_split}` split has no masks: the ensembles "
                          "were built and written, and cannot be scored here."])
    best = {name: s.best() for name, s in sweeps.items()}
    singles = {name: best[name] for name in p.sources}
    top_single = max(singles, key=lambda n: singles[n]["miou"])
    weak = min(singles, key=lambda n: singles[n]["miou"])
    and_name = "and+offset" if "and+offset" in best else "and"
    or_name = "or+offset" if "or+offset" in best else "or"
    at = {n: equal_recall(sweeps[and_name], sweeps[n]) for n in p.sources}
    and_more_precise = all(a["difference"] > 0 for a in at.values())
    highest_recall = max(best, key=lambda n: best[n]["recall"])
    top = max(best, key=lambda n: best[n]["miou"])
    return "\n".join([
        f"- {offset_text(p, choice)}",
        f"- **Is AND more precise than either single CAM, at equal recall?** {_verdict(and_more_precise)}: "
        + "; ".join(f"at {n}'s recall ({a['recall']:.1f} %, its best-mIoU score) {and_name} has precision "
                    + ("(its curve does not reach that recall)" if np.isnan(a["precision"]) else
                       f"{a['precision']:.1f} % against {n}'s {a['baseline_precision']:.1f} %")
                    for n, a in at.items())
        + f" ({sweeps[and_name].empty_share:.1f} % of its class maps empty, "
        f"{best[and_name]['unpredicted']} classes never predicted at its best score). Its best mIoU is "
        f"{best[and_name]['miou']:.1f} % against the best single CAM ({top_single}) at {singles[top_single]['miou']:.1f} %.",
        f"- **Does OR have the highest recall?** {_verdict(highest_recall.startswith('or'))}: the highest recall at the "
        f"best-mIoU score is {highest_recall}'s ({best[highest_recall]['recall']:.1f} %); {or_name} reaches "
        f"{best[or_name]['recall']:.1f} %.",
        f"- Best mIoU of all variants: {top} ({best[top]['miou']:.1f} %).",
        f"- **Why**: an AND can only keep what both sources see. Here {weak} is the weaker source (best mIoU "
        f"{singles[weak]['miou']:.1f} % against {singles[top_single]['miou']:.1f} %, recall {singles[weak]['recall']:.1f} % "
        f"against {singles[top_single]['recall']:.1f} %), so the AND loses object pixels {weak} misses; the paper's pair "
        "(ImageNet-pretrained ResNet-50 and DeiT) had two CAMs of comparable quality. The size of this gap, not the "
        "operators, decides the outcome on this benchmark.",
        "- These are single-seed numbers on the embedded benchmark; differences of a point or two need the "
        "multi-seed runs of the later chapters before they count as effects.",
    ])


def _verdict(flag: bool) -> str:
    return "yes" if flag else "no"


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
