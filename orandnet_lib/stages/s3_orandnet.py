"""Stage 3: ORANDNet, from OR to AND. A small encoder-decoder takes the OR map of one class
(what either classifier found, stage 2) and is trained to output the AND map (what both
found); at inference it sees only OR, so its output is a learned, smoothed AND. The stage
trains it with the chosen loss, and as ablations with the other loss (the official softmax
over class channels gives single-class images no gradient) and with the RGB image as extra
input. Each model is read out as its loss trained it (``nets.orandnet.LOSSES``: softmax with
the official ReLU / max, binary cross-entropy with sigmoid / max); the chapter also shows every
model under every read-out and the AND target itself through each read-out (a perfect
network), so a reader sees what a read-out alone allows. It compares every model with the
single CAMs, OR and AND on one sweep, and combines a third classifier (stage 1's CNN
retrained with another seed) in N-way OR / AND. Training and read-outs are
:mod:`~orandnet_lib.methods.orandnet_maps`'s; the tables, ``book/chapters/orandnet.py``'s; the
findings' wording, ``book/prose/03_orandnet/``'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import ConfigError
from ..core.keys import ArtifactKey, spec_dict
from ..core.metrics import SweepResult, equal_recall
from ..core.train import config_from, learning_config
from ..data.fingerprint import dataset_fingerprint
from ..data.voc import VOCDataset
from ..methods.cam_classifier import ClassifierRecipe, cam_key, cam_stores, classifier_key, train_classifier
from ..methods.cams import CamStore, sweep_store
from ..methods.ensemble import Variant, recorded_variants, sweep_variants
from ..methods.orandnet_maps import PERFECT, ReadoutScore, Trained, readout_scores, train_orandnet
from ..nets.orandnet import LOSSES, READOUTS, readout_of

STAGE = "03_orandnet"
# Every parameter changes a checkpoint or store this stage writes.
NOT_IN_KEYS: dict[str, str] = {}

MAIN = "orandnet"  # the main model's name; its store is "orandnet_<split>", which stage 4 refines
STAGE1, STAGE2 = "01_classifiers_and_cams", "02_or_and_ensembles"


@dataclass(frozen=True)
class Params:
    seed: int = 0
    train_split: str = "train"
    or_variant: str = "or+offset"  # the stage 2 store used as input
    and_variant: str = "and+offset"  # the stage 2 store used as target
    encoder: str = "small"  # "small" (strides 2-8) | a timm backbone such as "vgg16" (FCN-8s)
    pretrained: str = ""  # a timm encoder's start: "" from scratch | "timm" (ImageNet, hub) | a weights file
    widths: tuple[int, ...] = (16, 32, 64)
    loss: str = "bce"  # the main model's loss: "bce" (read out by sigmoid / max) | "softmax" (official: ReLU / max)
    epochs: int = 4
    max_steps: int = 0  # > 0: exactly this many steps (the official: 5000 iterations of one image)
    batch_size: int = 16
    optimizer: str = "adamw"
    lr: float = 0.001
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0001
    bf16: bool = False
    ablate_loss: bool = True  # also train with the other loss
    ablate_image: bool = True  # also train with the RGB image as input
    third_classifier_seed: int = 1  # stage 1's CNN retrained with this seed; -1: skip


@dataclass(frozen=True)
class Run:
    """One ORANDNet model of the chapter: its loss and whether it sees the image."""

    loss: str
    use_image: bool = False


def runs(p: Params) -> dict[str, Run]:
    """The main model, then the ablations the parameters ask for (in training order)."""
    out = {MAIN: Run(p.loss)}
    if p.ablate_loss:
        other = "softmax" if p.loss == "bce" else "bce"
        out[f"orandnet ({other})"] = Run(other)
    if p.ablate_image:
        out[f"orandnet ({p.loss}, +image)"] = Run(p.loss, use_image=True)
    return out


def third_name(p: Params) -> str:
    return f"cnn_seed{p.third_classifier_seed}"


def artifact_keys(p: Params, data: Mapping[str, str], upstream: Mapping[str, str],
                  cnn: ClassifierRecipe | None = None) -> dict[str, ArtifactKey]:
    """The keys of the ORANDNet models (checkpoint and CAM store each; ``orandnet:<name>``)
    and of the third classifier and its CAM store (``classifier:cnn_seed<n>``,
    ``cams:cnn_seed<n>_<train_split>``).

    ``data[split]``: split fingerprints (``train_split``, and stage 1's training and
    validation splits for the third classifier); ``upstream["cams:<variant>_<split>"]``: the
    OR and AND stores' digests. ``cnn``: stage 1's CNN as it recorded it (:func:`stage1_cnn`),
    which the third classifier repeats with another seed; a recipe's defaults when not given.
    """
    train = spec_dict(learning_config(config_from(p)))
    inputs = {"or": upstream[f"cams:{p.or_variant}_{p.train_split}"],
              "and": upstream[f"cams:{p.and_variant}_{p.train_split}"]}
    keys = {f"orandnet:{name}": ArtifactKey(
        "orandnet", {"encoder": p.encoder, "pretrained": p.pretrained, "widths": list(p.widths), "loss": run.loss,
                     "use_image": run.use_image, "train": train}, data=data[p.train_split], upstream=inputs, seed=p.seed)
        for name, run in runs(p).items()}
    if p.third_classifier_seed >= 0:
        cnn = cnn or ClassifierRecipe()
        name = third_name(p)
        classifier = classifier_key(cnn.spec, p.third_classifier_seed, data[cnn.fit_split], data[cnn.val_split])
        keys[f"classifier:{name}"] = classifier
        keys[f"cams:{name}_{p.train_split}"] = cam_key(cnn.spec.cam_method, cnn.cam_scales, cnn.cam_flip,
                                                       data[p.train_split], classifier.digest, bf16=cnn.spec.bf16)
    return keys


def stage1_cnn(upstream1: Any) -> ClassifierRecipe:
    """Stage 1's CNN as it recorded it (spec, training and validation splits, CAM settings):
    what the third classifier repeats."""
    recipes = upstream1.metrics.get("recipes", {})
    if "cnn" not in recipes:
        raise ConfigError(f"{upstream1.dir}: stage 1's record has no recipe of its CNN (written before recipes were "
                         f"recorded); run stage 1 again (`orandnet run --from 01_classifiers_and_cams`)")
    return ClassifierRecipe.from_dict(recipes["cnn"], f"{upstream1.dir}: stage 1's CNN recipe")


@dataclass
class Inputs:
    """What the stage reads: the scored split, the stage-2 variants and their source stores,
    the OR (input) and AND (target) stores, stage 1's recipe and the keys of what it writes."""

    train: VOCDataset
    variants: dict[str, Variant]
    sources: dict[str, CamStore]
    or_store: CamStore
    and_store: CamStore
    cnn: ClassifierRecipe  # stage 1's CNN, which the third classifier repeats
    keys: dict[str, ArtifactKey]


def open_inputs(stage: Any, p: Params) -> Inputs:
    train = VOCDataset(stage.data_root, p.train_split)
    variants = recorded_variants(stage.upstream(STAGE2).metrics["ensemble"])
    names = list(dict.fromkeys(s for v in variants.values() for s in v.sources))
    sources = {n: CamStore(stage.cam_store(n, p.train_split)) for n in names}
    or_store = CamStore(stage.cam_store(p.or_variant, p.train_split))
    and_store = CamStore(stage.cam_store(p.and_variant, p.train_split))
    cnn = stage1_cnn(stage.upstream(STAGE1))
    data = {split: dataset_fingerprint(train if split == p.train_split else VOCDataset(stage.data_root, split))
            for split in dict.fromkeys([p.train_split, cnn.fit_split, cnn.val_split])}
    upstream = {f"cams:{p.or_variant}_{p.train_split}": or_store.digest,
                f"cams:{p.and_variant}_{p.train_split}": and_store.digest}
    return Inputs(train, variants, sources, or_store, and_store, cnn, artifact_keys(p, data, upstream, cnn))


def train_orandnets(p: Params, inputs: Inputs, out_dir: Path, progress: bool = True) -> dict[str, Trained]:
    """The main model and the ablations, in order."""
    return {name: train_orandnet(name, inputs.or_store, inputs.and_store, inputs.train, config_from(p), out_dir,
                                 inputs.keys[f"orandnet:{name}"], loss=run.loss, use_image=run.use_image,
                                 encoder=p.encoder, widths=p.widths, pretrained=p.pretrained, progress=progress)
            for name, run in runs(p).items()}


def compare(p: Params, inputs: Inputs, trained: Mapping[str, Trained]) -> dict[str, Any]:
    """Sweeps of the single sources, the OR and AND variants used, and every ORANDNet model;
    {} for a train split without masks."""
    if not inputs.train.has_masks:
        return {}
    chosen = [*inputs.sources, p.or_variant, p.and_variant]
    sweeps = sweep_variants(inputs.sources, inputs.train, {k: inputs.variants[k] for k in dict.fromkeys(chosen)})
    sweeps.update({name: sweep_store(t.store, inputs.train) for name, t in trained.items()})
    return sweeps


def readout_comparison(inputs: Inputs, trained: Mapping[str, Trained], progress: bool = True
                       ) -> dict[tuple[str, str], ReadoutScore]:
    """Every trained model and the perfect network under every read-out, on the train split
    (:func:`~orandnet_lib.methods.orandnet_maps.readout_scores`)."""
    models = {n: t.model for n, t in trained.items() if t.model is not None}
    return readout_scores(inputs.train, inputs.or_store, inputs.and_store, models, progress=progress)


def n_way_variants(a: str, b: str, third: str = "cnn2") -> dict[str, Variant]:
    """The third source alone, OR and AND of each pair with the first source, and of all three."""
    return {third: Variant((third,)),
            f"or ({a}, {b})": Variant((a, b), "or"), f"and ({a}, {b})": Variant((a, b), "and"),
            f"or ({a}, {third})": Variant((a, third), "or"), f"and ({a}, {third})": Variant((a, third), "and"),
            "or (3-way)": Variant((a, b, third), "or"), "and (3-way)": Variant((a, b, third), "and")}


def third_classifier(stage: Any, p: Params, inputs: Inputs, progress: bool = True) -> dict[str, Any]:
    """Stage 1's CNN trained again with ``third_classifier_seed`` on stage 1's training split,
    its CAMs of ``train_split``, and the N-way sweeps; {} when skipped (seed -1)."""
    if p.third_classifier_seed < 0:
        return {}
    cnn, name = inputs.cnn, third_name(p)
    fit_ds = inputs.train if cnn.fit_split == p.train_split else VOCDataset(stage.data_root, cnn.fit_split)
    val_ds = VOCDataset(stage.data_root, cnn.val_split)
    third = train_classifier(name, cnn.spec, fit_ds, val_ds, stage.dir, seed=p.third_classifier_seed,
                             progress=progress, key=inputs.keys[f"classifier:{name}"])
    path = cam_stores(third, {p.train_split: inputs.train}, stage.dir / "cams", cnn.cam_scales, cnn.cam_flip,
                      cnn.cam_batch_size, progress=progress,
                      keys={p.train_split: inputs.keys[f"cams:{name}_{p.train_split}"]})[p.train_split]
    a, b = list(inputs.sources)[:2]
    stores = {**inputs.sources, "cnn2": CamStore(path)}
    if not inputs.train.has_masks:
        return {}
    return sweep_variants(stores, inputs.train, n_way_variants(a, b), progress=progress)


def cams_summary(sweeps: Mapping[str, Any], n_way: Mapping[str, Any]) -> dict[str, Any]:
    """The record's ``cams``: each ORANDNet model and each N-way variant (``nway:<name>``) at
    its best-mIoU score, with its precision = recall crossover."""
    out = {name: s.describe() for name, s in sweeps.items() if name.startswith("orandnet")}
    out.update({f"nway:{name}": s.describe() for name, s in n_way.items()})
    return out


def record(stage: Any, inputs: Inputs, trained: Mapping[str, Trained], sweeps: Mapping[str, Any],
           n_way: Mapping[str, Any], readouts: Mapping[tuple[str, str], ReadoutScore] | None = None
           ) -> dict[str, Any]:
    """The stage's record: ``cams`` (also in the summary), each model's loss and read-out,
    ``readouts`` (``"<model> | <read-out>"`` -> :meth:`ReadoutScore.describe`), the training
    histories and the keys of every checkpoint and store written."""
    cams = cams_summary(sweeps, n_way)
    models = {name: {"loss": t.loss, "readout": readout_of(t.loss)} for name, t in trained.items()}
    extra = {"readouts": {f"{n} | {r}": sc.describe() for (n, r), sc in readouts.items()}} if readouts else {}
    return stage.record(metrics={"cams": cams, "models": models, **extra,
                                 "history": {name: t.history for name, t in trained.items()}},
                        summary={"cams": cams, "models": models, **extra}, artifacts=inputs.keys)


def findings(p: Params, sweeps: Mapping[str, SweepResult], n_way: Mapping[str, SweepResult], sources: Sequence[str],
             single_class: float | None = None, empty: Mapping[str, float] | None = None,
             readouts: Mapping[tuple[str, str], ReadoutScore] | None = None) -> dict[str, Any]:
    """Facts for the chapter's closing bullets (``03_orandnet/findings.md``); ``single_class``:
    :func:`~orandnet_lib.methods.orandnet_maps.single_class_share` of the training split; ``empty``:
    :func:`~orandnet_lib.methods.orandnet_maps.empty_map_share`; ``readouts``: :func:`readout_comparison`.
    Without sweeps (a split without masks) only what needs no mask: the main model's empty maps
    and error against AND. Scores are ``SweepResult.best()`` entries (percent)."""
    own, readouts = readout_of(p.loss), readouts or {}
    mine = readouts.get((MAIN, own))
    facts: dict[str, Any] = {"scored": bool(sweeps), "train_split": p.train_split, "seed": p.seed, "loss": p.loss,
                             "loss_label": LOSSES.label(p.loss), "readout_label": READOUTS.label(own),
                             "single_class": single_class,
                             "main": None if mine is None else {"empty": mine.empty, "mae": mine.mae}}
    if not sweeps:
        return facts
    best = {n: s.best() for n, s in sweeps.items()}
    nb = {n: s.best() for n, s in n_way.items()}
    a, c = list(sources)[:2]
    top = max((a, c), key=lambda n: best[n]["miou"])
    at = equal_recall(sweeps[MAIN], sweeps[top])
    scored = {k: sc.sweep.best() for k, sc in readouts.items() if sc.sweep is not None}
    if mine is not None:
        facts["main"]["miou"] = scored[MAIN, own]["miou"]
    facts.update(
        top_single=top, top=best[top], orandnet=best[MAIN], target=best[p.and_variant],
        empty_share=sweeps[MAIN].empty_share, recall=at["recall"], baseline_precision=at["baseline_precision"],
        precision=None if np.isnan(at["precision"]) else at["precision"], higher=bool(at["difference"] > 0),
        kept=bool(best[MAIN]["miou"] >= best[top]["miou"]),
        other_readouts={READOUTS.label(r): {"miou": scored[MAIN, r]["miou"], "empty": readouts[MAIN, r].empty}
                        for r in READOUTS if r != own and (MAIN, r) in readouts},
        perfect={READOUTS.label(r): scored[PERFECT, r]["miou"] for r in READOUTS if (PERFECT, r) in readouts},
        empty_maps=dict(empty) if empty and any(v > 0 for v in empty.values()) else {},
        ablations={name: best[name] for name in runs(p) if name != MAIN},
        n_way=({"a": a, "c": c, "first": best[a], "and3": nb["and (3-way)"], "or3": nb["or (3-way)"],
                "and_pair": nb[f"and ({a}, {c})"], "or_pair": nb[f"or ({a}, {c})"],
                "and_same": nb[f"and ({a}, cnn2)"]} if n_way else None))
    return facts


# -- the stage in order --------------------------------------------------------------------------

def run(stage: Any, p: Params) -> dict[str, Any]:
    """The stage's recipe in the order the notebook runs it, without its tables and figures:
    ORANDNet and its ablations, their sweeps and read-outs, the third classifier, recorded.
    Returns the record."""
    inputs = open_inputs(stage, p)
    trained = train_orandnets(p, inputs, stage.dir)
    sweeps = compare(p, inputs, trained)
    readouts = readout_comparison(inputs, trained)
    n_way = third_classifier(stage, p, inputs)
    return record(stage, inputs, trained, sweeps, n_way, readouts)
