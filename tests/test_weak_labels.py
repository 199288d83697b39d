"""Issue 23, item 2: the pipeline runs on what a weakly supervised method is given. A VOC-layout
folder whose train split has image-level labels (VOC's Annotations/*.xml) and no masks runs every
stage of the smoke profile; the chapters that need train masks say so, and val is still scored."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from orandnet_lib import cli
from orandnet_lib.data import synth
from orandnet_lib.data.voc import ANNOTATIONS, LABELS_CSV, VOCDataset

from conftest import requires_fashion_mnist

pytestmark = pytest.mark.slow


def weakly_labelled_folder(root):
    """Small embedded scenes turned into a plain VOC folder: train masks removed, labels.csv
    replaced by one VOC annotation per image (its objects' class names), no generator files."""
    synth.generate(root, synth.SceneConfig(image_size=64, n_train=32, n_val=8, seed=5), progress=False,
                   log=lambda m: None)
    ds = {split: VOCDataset(root, split) for split in ("train", "val")}
    (root / ANNOTATIONS).mkdir()
    for split, d in ds.items():
        for image_id in d.ids:
            names = [d.class_names[k + 1] for k in np.flatnonzero(d.load_labels(image_id))]
            objects = "".join(f"<object><name>{n}</name></object>" for n in names)
            (root / ANNOTATIONS / f"{image_id}.xml").write_text(f"<annotation>{objects}</annotation>")
            if split == "train":
                (root / "SegmentationClass" / f"{image_id}.png").unlink()
    for name in (LABELS_CSV, synth.CONFIG_FILE, synth.SCENES_FILE):
        (root / name).unlink(missing_ok=True)
    return root


@requires_fashion_mnist
def test_every_stage_runs_on_image_level_labels_without_train_masks(tmp_path, capsys):
    root = weakly_labelled_folder(tmp_path / "weak")
    train = VOCDataset(root, "train")
    assert not train.has_masks and train.labels_source == ANNOTATIONS and VOCDataset(root, "val").has_masks
    code = cli.main(["run", "--profile", "smoke", "--data-root", str(root), "--run-dir", str(tmp_path / "runs"),
                     "--book-dir", str(tmp_path / "book"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "runs" / "summary.json").read_text())
    assert summary["dataset"]["masks"] == {"train": False, "val": True}
    assert summary["dataset"]["labels_source"] == ANNOTATIONS
    # stage 1: CAMs scored on val only; stage 2: the offset from the CAMs alone (the smoke profile's "align")
    assert set(summary["cams"]["cnn"]) == {"val"}
    assert summary["ensemble"]["offset_rule"] == "align" and set(summary["ensemble"]["offset_thresholds"]) == {"cnn", "vit"}
    # stage 4 wrote every variant's pseudo-masks, unscored, and stage 5 trained on them (no ground-truth set)
    for variant, written in summary["pseudo_masks"].items():
        assert "miou" not in written
        masks = VOCDataset(tmp_path / "runs" / "04_refinement" / "pseudo_masks" / variant, "train")
        assert masks.has_masks and len(masks) == len(train)
    assert "gt" not in summary["segmentation"] and {"cnn", "orandnet"} <= set(summary["segmentation"])
    assert summary["segmentation_headline"]["difference"]["n"] == 2
    # the chapters that need train masks say so
    chapter = json.loads((tmp_path / "book" / "02_or_and_ensembles.ipynb").read_text())
    text = json.dumps(chapter)
    assert "has no masks (image-level labels only" in text
    shutil.rmtree(tmp_path / "runs")
