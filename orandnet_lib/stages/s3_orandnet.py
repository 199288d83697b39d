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
retrained with another seed) in N-way OR / AND.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import ConfigError
from ..core.keys import ArtifactKey, spec_dict
from ..core.metrics import SweepResult, ThresholdSweep, equal_recall
from ..core.progress import bar as progress_bar
from ..core.train import TrainConfig, config_from, fit, learning_config
from ..data.fingerprint import dataset_fingerprint
from ..data.voc import VOCDataset
from ..methods.cam_classifier import ClassifierRecipe, cam_key, cam_stores, classifier_key, train_classifier
from ..methods.cams import CamStore, sweep_store, to_tensor
from ..methods.ensemble import Variant, recorded_variants, sweep_variants
from ..methods.orandnet_maps import OrAndSet, write_store
from ..nets.orandnet import LOSSES, READOUTS, ORANDNet, collate, loss_fn, outputs, readout_of

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
                                                       data[p.train_split], classifier.digest)
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


@dataclass
class Trained:
    history: list[dict[str, float]]
    store: CamStore  # its maps under its own loss's read-out
    checkpoint: Path
    model: ORANDNet | None = None
    loss: str = "bce"


def train_variant(name: str, or_store: CamStore, and_store: CamStore, dataset: VOCDataset, cfg: TrainConfig,
                  out_dir: Path, key: ArtifactKey, *, loss: str = "bce", use_image: bool = False,
                  encoder: str = "small", widths: Sequence[int] = (16, 32, 64), pretrained: str = "",
                  progress: bool = True) -> Trained:
    """Train one ORANDNet model with the one training loop (its checkpoint named and checked
    by ``key``, resumed when it exists) and write its maps of ``dataset`` as a CAM store
    ``out_dir/cams/<name>_<split>`` (read out as ``loss`` asks) that carries ``key`` as its identity."""
    torch.manual_seed(cfg.seed)
    model = ORANDNet(encoder, use_image=use_image, widths=widths, pretrained=pretrained)
    data = OrAndSet(or_store, and_store, dataset, use_image=use_image, seed=cfg.seed)
    checkpoint = key.path(out_dir, name)
    history = fit(model, data, loss_fn(loss), cfg, checkpoint=checkpoint, key=key, collate=collate,
                  desc=f"training {name}", progress=progress)
    tag = "".join(c if c.isalnum() else "_" for c in name).strip("_")
    path = write_store(model, or_store, dataset, Path(out_dir) / "cams" / f"{tag}_{dataset.split}", loss,
                       meta={"run": name, "identity": key.to_dict()}, progress=progress)
    return Trained(history, CamStore(path), checkpoint, model, loss)


def train_orandnets(p: Params, inputs: Inputs, out_dir: Path, progress: bool = True) -> dict[str, Trained]:
    """The main model and the ablations, in order."""
    return {name: train_variant(name, inputs.or_store, inputs.and_store, inputs.train, config_from(p), out_dir,
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


PERFECT = "perfect network"  # the AND target as binary cross-entropy logits, logit(AND)


@dataclass
class ReadoutScore:
    """One model's maps under one read-out: their sweep against the masks, the share of class
    maps left empty (no positive value, so never foreground) and the per-pixel mean absolute
    error against the AND target."""

    sweep: SweepResult | None  # None for a split without masks
    empty: float  # percent of class maps
    mae: float  # mean |map - AND| over every pixel of every class map


def perfect_logits(and_maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """logit(AND): what a network that minimises the binary cross-entropy against AND outputs
    (the softmax loss has no unique optimum: any per-pixel shift of the logits is as good).
    In float64, so that the sigmoid gives AND back to float32 precision."""
    a = and_maps.double().clamp(eps, 1 - eps)
    return torch.log(a) - torch.log1p(-a)


def readout_comparison(inputs: Inputs, trained: Mapping[str, Trained], progress: bool = True
                       ) -> dict[tuple[str, str], ReadoutScore]:
    """Every trained model under every registered read-out, and the perfect network
    (:func:`perfect_logits`) under each, on the train split: ``{(model, read-out): score}``.
    The network runs once per image; the masks score (when the split has them), nothing is
    chosen on them; the empty maps and the error against AND need no mask."""
    models = {n: t.model for n, t in trained.items() if t.model is not None}
    names = [*models, PERFECT]
    ds = inputs.train
    scored = ds.has_masks
    sweeps = {(n, r): ThresholdSweep(ds.num_classes) for n in names for r in READOUTS}
    empty = {k: 0 for k in sweeps}
    err = {k: 0.0 for k in sweeps}
    maps_seen, pixels = 0, 0
    for image_id in progress_bar(ds.ids, desc="read-outs", disable=not progress):
        or_cams, class_ids = inputs.or_store[image_id]
        if len(class_ids) == 0:
            continue
        gt = ds.load_mask(image_id) if scored else None
        target = torch.from_numpy(np.asarray(inputs.and_store[image_id][0], np.float32))
        raw = {n: outputs(m, torch.from_numpy(np.asarray(or_cams, np.float32)),
                          to_tensor(ds.load_image(image_id))[0] if m.use_image else None).cpu()
               for n, m in models.items()}
        raw[PERFECT] = perfect_logits(target)
        maps_seen += len(class_ids)
        pixels += target.numel()
        for n, out in raw.items():
            for r in READOUTS:
                maps = READOUTS.get(r)(out)
                if gt is not None:
                    sweeps[n, r].update(maps.float().numpy(), class_ids, gt)
                empty[n, r] += int((maps.amax(dim=(-2, -1)) <= 0).sum())
                err[n, r] += float((maps.float() - target).abs().sum())
    return {k: ReadoutScore(sw.result() if scored else None, 100.0 * empty[k] / max(maps_seen, 1),
                            err[k] / max(pixels, 1)) for k, sw in sweeps.items()}


def readout_table(p: Params, trained: Mapping[str, Trained], scores: Mapping[tuple[str, str], ReadoutScore]) -> Any:
    """One row per (model, read-out) at the best-mIoU background score (an oracle: the masks
    choose the score), with the empty maps and the error against AND; ``own`` marks the
    read-out of the model's loss. The perfect network is AND's own logits."""
    import pandas as pd

    rows = []
    for (name, r), sc in scores.items():
        loss = trained[name].loss if name in trained else "bce"
        nan = float("nan")
        best = sc.sweep.best() if sc.sweep is not None else {"miou": nan, "precision": nan, "recall": nan,
                                                             "threshold": nan}
        rows.append({"model": name, "loss": LOSSES.label(loss), "read-out": READOUTS.label(r),
                     "own read-out": "yes" if r == readout_of(loss) else "no",
                     "mIoU": best["miou"], "precision": best["precision"], "recall": best["recall"],
                     "best score": best["threshold"] / 100, "empty maps %": sc.empty, "MAE vs AND": sc.mae})
    return pd.DataFrame(rows).set_index(["model", "read-out"])


def own_readout_sweeps(trained: Mapping[str, Trained], scores: Mapping[tuple[str, str], ReadoutScore],
                       and_sweep: SweepResult, and_name: str) -> dict[str, SweepResult]:
    """Each model under its own read-out, the perfect network under sigmoid / max and the AND
    target itself, for the side-by-side sweep figure."""
    out = {f"{n} ({READOUTS.label(readout_of(t.loss))})": scores[n, readout_of(t.loss)].sweep
           for n, t in trained.items() if (n, readout_of(t.loss)) in scores}
    out[f"{PERFECT} ({READOUTS.label('sigmoid_max')})"] = scores[PERFECT, "sigmoid_max"].sweep
    out[f"{and_name} (target)"] = and_sweep
    return {k: v for k, v in out.items() if v is not None}


def comparison_table(sweeps: Mapping[str, Any]) -> Any:
    """Each variant at its best-mIoU score and at the precision/recall crossover, with the classes
    it never predicts there and its empty class maps (percent)."""
    import pandas as pd

    rows = [{"variant": n, "threshold rule": rule, **sc, "empty maps %": s.empty_share} for n, s in sweeps.items()
            for rule, sc in (("best mIoU", s.best()), ("precision = recall", s.crossover()))]
    return pd.DataFrame(rows).set_index(["threshold rule", "variant"]).sort_index(level=0, sort_remaining=False)


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


def readouts_summary(scores: Mapping[tuple[str, str], ReadoutScore]) -> dict[str, dict[str, Any]]:
    """The record's ``readouts``: ``"<model> | <read-out>"`` -> best-mIoU scores, empty maps and MAE."""
    return {f"{n} | {r}": {**(sc.sweep.best() if sc.sweep is not None else {}), "empty_maps": sc.empty, "mae": sc.mae}
            for (n, r), sc in scores.items()}


def record(stage: Any, inputs: Inputs, trained: Mapping[str, Trained], sweeps: Mapping[str, Any],
           n_way: Mapping[str, Any], readouts: Mapping[tuple[str, str], ReadoutScore] | None = None
           ) -> dict[str, Any]:
    """The stage's record: ``cams`` (also in the summary), each model's loss and read-out,
    ``readouts`` (:func:`readouts_summary`), the training histories and the keys of every
    checkpoint and store written."""
    cams = cams_summary(sweeps, n_way)
    models = {name: {"loss": t.loss, "readout": readout_of(t.loss)} for name, t in trained.items()}
    extra = {"readouts": readouts_summary(readouts)} if readouts else {}
    return stage.record(metrics={"cams": cams, "models": models, **extra,
                                 "history": {name: t.history for name, t in trained.items()}},
                        summary={"cams": cams, "models": models, **extra}, artifacts=inputs.keys)


def single_class_share(inputs: Inputs) -> float:
    """The share (percent) of the training images with a foreground class that have exactly
    one: under the softmax loss their gradient is exactly zero."""
    counts = [len(inputs.or_store[i][1]) for i in inputs.or_store.ids]
    with_class = [c for c in counts if c > 0]
    return 100.0 * sum(c == 1 for c in with_class) / max(len(with_class), 1)


def empty_map_share(trained: Mapping[str, Trained]) -> dict[str, float]:
    """Per model, the share (percent) of class maps with no positive value under its read-out:
    0 everywhere, so that class is never foreground."""
    out = {}
    for name, t in trained.items():
        peaks = [float(m.max()) for i in t.store.ids for m in t.store[i][0]]
        out[name] = 100.0 * sum(v <= 0 for v in peaks) / max(len(peaks), 1)
    return out


def findings(p: Params, sweeps: Mapping[str, Any], n_way: Mapping[str, Any], sources: Sequence[str],
             single_class: float | None = None, empty: Mapping[str, float] | None = None,
             readouts: Mapping[tuple[str, str], ReadoutScore] | None = None) -> str:
    """The chapter's "What this chapter found", from the computed sweeps; ``single_class``:
    :func:`single_class_share` of the training split; ``empty``: :func:`empty_map_share`;
    ``readouts``: :func:`readout_comparison`. Without sweeps (a split without masks) only what
    needs no mask: the read-out, the empty maps and the error against AND."""
    if not sweeps:
        lines = [f"- The `{p.train_split}` split has no masks: the models were trained and their maps written "
                 "(stage 4 refines them), and cannot be scored here."]
        mine = (readouts or {}).get((MAIN, readout_of(p.loss)))
        if mine is not None:
            lines.append(f"- The main model ({LOSSES.label(p.loss)}, read by {READOUTS.label(readout_of(p.loss))}): "
                         f"{mine.empty:.1f} % of its class maps empty, mean absolute error against AND {mine.mae:.3f}.")
        return "\n".join(lines)
    b = {n: s.best() for n, s in sweeps.items()}
    a, c = list(sources)[:2]
    top_single = max((a, c), key=lambda n: b[n]["miou"])
    m = b[MAIN]
    at = equal_recall(sweeps[MAIN], sweeps[top_single])
    more_precise = at["difference"] > 0
    kept_miou = m["miou"] >= b[top_single]["miou"]
    reached = (f"{at['precision']:.1f} % against {at['baseline_precision']:.1f} %" if not np.isnan(at["precision"])
               else "not measurable: its curve does not reach that recall")
    lines = [
        f"- **Does ORANDNet ({p.loss} loss) raise precision over the best single CAM ({top_single}) without losing "
        f"mIoU?** At {top_single}'s recall ({at['recall']:.1f} %, its best-mIoU score) ORANDNet's precision is "
        f"{reached} ({'higher' if more_precise else 'not higher'}; {sweeps[MAIN].empty_share:.1f} % of its class maps "
        f"empty, {m['unpredicted']} classes never predicted at its best score); best mIoU {m['miou']:.1f} % against "
        f"{b[top_single]['miou']:.1f} % ({'kept' if kept_miou else 'lost'}). Against its own target, AND: precision "
        f"{b[p.and_variant]['precision']:.1f} %, mIoU {b[p.and_variant]['miou']:.1f} % at its best score.",
    ]
    share = "" if single_class is None else f" ({single_class:.1f} % of the {p.train_split} images with a class)"
    own = READOUTS.label(readout_of(p.loss))
    lines.append(
        f"- **Read-out**: each model is read as its loss trained it; the main model ({LOSSES.label(p.loss)}) by "
        f"{own}, each class map divided by its own maximum. Under the softmax loss, single-class images"
        f"{share} give exactly zero gradient, so that model learns from the multi-class images only; and since a "
        "softmax cannot see a shift common to all channels of a pixel, it does not train the level of the outputs "
        "that its ReLU read-out reads.")
    if readouts:
        other = [r for r in READOUTS if r != readout_of(p.loss)]
        mine = readouts.get((MAIN, readout_of(p.loss)))
        if mine is not None:
            alt = "; ".join(f"read by {READOUTS.label(r)} instead it scores {readouts[MAIN, r].sweep.best()['miou']:.1f} % "  # type: ignore[union-attr]
                            f"with {readouts[MAIN, r].empty:.1f} % of its class maps empty" for r in other
                            if (MAIN, r) in readouts)
            perfect = "; ".join(f"{READOUTS.label(r)} {readouts[PERFECT, r].sweep.best()['miou']:.1f} %"  # type: ignore[union-attr]
                                for r in READOUTS if (PERFECT, r) in readouts)
            lines.append(
                f"- **What the read-out allows**: the main model scores {mine.sweep.best()['miou']:.1f} % mIoU under "  # type: ignore[union-attr]
                f"its own read-out ({mine.empty:.1f} % of class maps empty, mean absolute error against AND "
                f"{mine.mae:.3f}){'; ' + alt if alt else ''}. A perfect network, AND's own logits, scores {perfect} "
                "(best background score of each, chosen on the masks: an oracle row).")
    if empty and any(v > 0 for v in empty.values()):
        lines.append("- **Class maps with no positive value under their read-out** (0 everywhere, so never "
                     "foreground): " + ", ".join(f"{n} {v:.1f} %" for n, v in empty.items())
                     + ". A model whose maps are mostly empty is scored on the few classes it keeps; its precision "
                     "then says little.")
    for name in runs(p):
        if name != MAIN:
            lines.append(f"- Ablation **{name}**: mIoU {b[name]['miou']:.1f} %, precision {b[name]['precision']:.1f} %, "
                         f"recall {b[name]['recall']:.1f} %.")
    if n_way:
        nb = {n: s.best() for n, s in n_way.items()}
        pair, same = f"({a}, {c})", f"({a}, cnn2)"
        lines.append(
            f"- **N-way**: AND of three sources has precision {nb['and (3-way)']['precision']:.1f} % and recall "
            f"{nb['and (3-way)']['recall']:.1f} % (two-way {a} + {c}: {nb['and ' + pair]['precision']:.1f} % and "
            f"{nb['and ' + pair]['recall']:.1f} %); OR of three has recall {nb['or (3-way)']['recall']:.1f} % "
            f"(two-way: {nb['or ' + pair]['recall']:.1f} %), each at its own best-mIoU background score. Two CNNs of "
            f"different seeds: AND precision {nb['and ' + same]['precision']:.1f} %, mIoU "
            f"{nb['and ' + same]['miou']:.1f} % (the first CNN alone: {b[a]['precision']:.1f} % and "
            f"{b[a]['miou']:.1f} %).")
    lines.append(f"- One run of this stage (seed {p.seed}); chapter 5 and the What-reproduces page pair the headline "
                 "over whole-pipeline replicates where the profile runs them.")
    return "\n".join(lines)


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
