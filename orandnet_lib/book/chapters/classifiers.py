"""Chapter 1's figures and tables: the pretrained starting points, the two classifiers' scores,
their CAMs' scores and masks, and the errors both make."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .. import plots
from ...core.metrics import SweepResult, cam_to_mask
from ...data import aux_task
from ...data.voc import VOCDataset
from ...methods import pretrain
from ...methods.cam_classifier import TrainedClassifier
from ...methods.cams import CamStore
from ...methods.pretrain import Pretrained


def pretraining_table(pretrained: Mapping[str, Pretrained]) -> pd.DataFrame:
    """One row per pretrained backbone: kind, timm backbone, recipe, held-out accuracy, the
    seconds its pretraining took (when it ran, on whichever run first asked) and the cached file."""
    return pd.DataFrame({name: {"kind": t.kind, "backbone": t.backbone, "recipe": t.recipe,
                                "val accuracy (%)": t.summary["val_accuracy"], "seconds": t.summary["seconds"],
                                "cached file": t.path.name}
                         for name, t in pretrained.items()}).T


def pretraining_curves(pretrained: Mapping[str, Pretrained]) -> plt.Figure:
    """The training loss and held-out accuracy after each epoch of every pretraining."""
    return plots.training_curves({f"{name} ({t.recipe})": t.summary["history"] for name, t in pretrained.items()},
                                 keys=("loss", "val_accuracy"))


def pretraining_examples(pretrained: Mapping[str, Pretrained], n: int = 12) -> plt.Figure:
    """Training images of the (first) auxiliary task, each titled with its class."""
    recipe = pretrain.AUX_RECIPES.get(next(iter(pretrained.values())).recipe)
    images, labels = pretrain.aux_images(recipe, "train", progress=False, n=n)
    return plots.labelled_grid(list(images), [recipe.classes[int(c)].name for c in labels], columns=6)


def pretraining_classes(pretrained: Mapping[str, Pretrained]) -> pd.DataFrame:
    """The classes of each recipe used: per source, how many and which."""
    rows = []
    for recipe_name in dict.fromkeys(t.recipe for t in pretrained.values()):
        classes = pretrain.AUX_RECIPES.get(recipe_name).classes
        for source, n in aux_task.source_counts(classes).items():
            names = [c.name.removeprefix(f"{source} ").removeprefix("glyph ") for c in classes if c.source == source]
            rows.append({"recipe": recipe_name, "source": source, "classes": n,
                         "share (%)": 100 * n / len(classes), "which": " ".join(names) if source == "glyph"
                         else ", ".join(names)})
    return pd.DataFrame(rows).set_index(["recipe", "source"])


def classifier_table(trained: Mapping[str, TrainedClassifier]) -> pd.DataFrame:
    return pd.DataFrame({
        name: {"val mAP (%)": t.val_scores["map"], "val F1 (%)": t.val_scores["f1"],
               "training time (s)": t.train_seconds, "epochs": len(t.history)}
        for name, t in trained.items()}).T


def per_class_ap(trained: Mapping[str, TrainedClassifier], class_names: Sequence[str]) -> pd.DataFrame:
    """(classifier, foreground class) validation AP in percent."""
    return pd.DataFrame({name: t.val_scores["ap_per_class"] for name, t in trained.items()}, index=class_names[1:]).T


def cam_table(sweeps: Mapping[str, Mapping[str, SweepResult]]) -> pd.DataFrame:
    """Scores at the best-mIoU and the precision = recall background score, per split and source
    (``sweeps``: {split: {classifier: sweep}})."""
    rows = []
    for split, by_source in sweeps.items():
        for name, sweep in by_source.items():
            for rule, scores in (("best mIoU", sweep.best()), ("precision = recall", sweep.crossover())):
                rows.append({"split": split, "source": name, "threshold rule": rule, **scores})
    return pd.DataFrame(rows).set_index(["split", "source", "threshold rule"])


def example_figure(train: VOCDataset, stores: Mapping[str, Mapping[str, CamStore]],
                   thresholds: Mapping[str, float] | None, n_examples: int) -> plt.Figure:
    """Images of ``train``: ground truth, then per classifier its CAM (max over the image's
    classes) and its mask at its background score in ``thresholds`` (None, a split without
    masks: the CAMs alone). ``stores``: {classifier: {split: store}}."""
    scored = thresholds is not None
    picks = np.linspace(0, len(train) - 1, min(n_examples, len(train))).astype(int)
    rows = []
    for i in picks:
        sample = train[i]
        row = [sample.image] + ([plots.overlay(sample.image, sample.mask)] if scored else [])
        for name in stores:
            cams, ids = stores[name][train.split][sample.id]
            heat = cams.max(axis=0) if len(cams) else np.zeros(sample.image.shape[:2])
            row.append(plots.heatmap_overlay(sample.image, heat))
            if thresholds is not None:
                row.append(plots.overlay(sample.image, cam_to_mask(cams, ids, thresholds[name])))
        rows.append(row)
    kinds = ("CAM", "mask") if scored else ("CAM",)
    titles = ["image"] + (["ground truth"] if scored else []) + [f"{n} {kind}" for n in stores for kind in kinds]
    return plots.image_grid(rows, titles=titles, size=1.7, class_names=train.class_names)


def shared_errors_figure(overlap: pd.DataFrame, names: Sequence[str]) -> plt.Figure:
    """Per foreground class, the share of false positives and of false negatives both
    classifiers make (shared / union) on the train split."""
    fig, ax = plt.subplots(figsize=(plots.COLUMN, 3.6))
    overlap.iloc[1:][["fp_jaccard", "fn_jaccard"]].rename(
        columns={"fp_jaccard": "false positives", "fn_jaccard": "false negatives"}).plot.bar(ax=ax)
    ax.set(ylabel="shared / union", title=f"errors shared by {names[0]} and {names[1]} (train split)", ylim=(0, 1))
    plt.xticks(rotation=30)
    fig.tight_layout()
    return fig
