"""The held-out domain (data/heldout.py): a VOC folder of other objects on other photographs,
written and read back, and the smoke profile run on it as a user's own folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from orandnet_lib import cli
from orandnet_lib.data import aux_task, heldout, synth, voc

from conftest import requires_fashion_mnist


def test_its_sources_are_neither_the_benchmarks_nor_the_pretrainings():
    backgrounds = heldout.load_backgrounds()
    assert len(backgrounds) >= 8 and not set(backgrounds) & set(synth.PHOTOS)
    assert all(b.ndim == 3 and b.shape[2] == 3 and min(b.shape[:2]) >= 96 for b in backgrounds.values())
    pretraining = {c.name.split(" ", 1)[-1] for c in aux_task.catalogue("broad")}
    assert not set(heldout.CLASSES) & pretraining


def test_every_object_class_draws_a_connected_sizeable_silhouette():
    rng = np.random.default_rng(0)
    for name in heldout.CLASSES:
        for _ in range(5):
            mask = heldout.object_mask(name, rng)
            assert mask.any(axis=0).all() and mask.any(axis=1).all(), "cropped to the object"
            assert mask.sum() >= 150, f"{name}: {mask.sum()} pixels"


def test_the_gear_has_its_hole_and_the_paint_keeps_the_mask():
    mask = heldout.object_mask("gear", np.random.default_rng(1))
    h, w = mask.shape
    assert not mask[h // 2, w // 2]
    rgb, scaled = heldout.paint(mask, 30, np.random.default_rng(2))
    assert max(scaled.shape) == 30 and rgb.shape == (*scaled.shape, 3)
    assert abs(scaled.mean() - mask.mean()) < 0.05


def test_a_folder_written_and_read_back(tmp_path):
    cfg = heldout.HeldoutConfig(image_size=48, n_train=10, n_val=4, seed=1)
    root = heldout.generate(tmp_path / "held", cfg, progress=False, log=lambda m: None)
    dataset = voc.VOCDataset(root, "train")
    assert dataset.class_names == ("background", *heldout.CLASSES) and len(dataset) == 10
    assert len(voc.VOCDataset(root, "val")) == 4
    assert dataset.labels_source == voc.LABELS_CSV
    for sample in dataset:
        assert sample.image.shape == (48, 48, 3) and sample.mask.shape == (48, 48)
        present = set(np.unique(sample.mask).tolist()) - {0}
        assert present and present <= set(range(1, 6)), "every scene holds an object of the five classes"
        assert np.flatnonzero(sample.labels).tolist() == sorted(k - 1 for k in present)
    again = heldout.make_scene(3, "train", cfg, heldout.load_backgrounds())
    assert np.array_equal(again[1], dataset[3].mask), "seeded per scene"
    assert json.loads((root / heldout.INFO_FILE).read_text())["classes"] == list(heldout.CLASSES)
    assert not (root / synth.CONFIG_FILE).exists(), "no generator metadata the stages could lean on"
    with pytest.raises(FileExistsError, match="exists"):
        heldout.generate(root, cfg, progress=False, log=lambda m: None)
    assert [p.name for p in tmp_path.iterdir()] == ["held"], "nothing half-written beside it"


@pytest.mark.slow
@requires_fashion_mnist
def test_the_smoke_profile_runs_every_stage_on_a_held_out_folder(tmp_path, capsys):
    root = heldout.generate(tmp_path / "held", heldout.HeldoutConfig(image_size=48, n_train=24, n_val=8),
                            progress=False, log=lambda m: None)
    # the recipes in process (the notebooks on a VOC folder are the paper profile's test)
    code = cli.main(["run", "--profile", "smoke", "--data-root", str(root), "--run-dir", str(tmp_path / "runs"),
                     "-p", "replicates=1", "--quiet", "--in-process"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "in process: the stages' numbers into" in out.out and "--publish publishes" not in out.out
    summary = json.loads((tmp_path / "runs" / "summary.json").read_text())
    assert summary["dataset"]["classes"] == ["background", *heldout.CLASSES]
    assert summary["dataset"]["images"] == {"train": 24, "val": 8}
    for name in ("cnn", "vit"):
        assert 0 <= summary["cams"][name]["miou"] <= 100
    assert len(summary["stages"]) == 7, "every stage ran"
    assert not list(tmp_path.rglob("*.ipynb")), "in process: no notebook executed, no chapter published"
