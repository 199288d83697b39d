"""Stages 5 and 6 as library recipes: what runs, how checkpoints are keyed, the paired
headline, and stage 6's tables generic over the registered refinements."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from orandnet_lib.core.identity import ArtifactKey, write_identity
from orandnet_lib.core.stats import paired_difference
from orandnet_lib.data.voc import VOCDataset
from orandnet_lib.methods.refine import REFINEMENTS
from orandnet_lib.stages import s5_segmentation as s5
from orandnet_lib.stages import s6_precision as s6

REPO = Path(__file__).resolve().parents[1]


class Fingerprints(dict):
    def __missing__(self, name):
        return f"fp:{name}"


def test_plan_keeps_the_notebooks_run_order():
    p = s5.Params()
    assert s5.plan(p) == [("gt", "constant", 0), ("gt", "curriculum", 0), ("cnn", "constant", 0), ("cnn", "curriculum", 0),
                          ("and+offset", "curriculum", 0), ("orandnet", "constant", 0), ("orandnet", "curriculum", 0),
                          ("cnn", "curriculum", 1), ("cnn", "curriculum", 2), ("orandnet", "curriculum", 1),
                          ("orandnet", "curriculum", 2)]
    with pytest.raises(ValueError, match="headline_sets"):
        s5.check(dataclasses.replace(p, headline_sets=("cnn", "vit")))
    with pytest.raises(ValueError, match="headline_schedule"):
        s5.check(dataclasses.replace(p, headline_schedule="fast"))


def test_deeplab_keys_hold_spec_schedule_masks_and_seed():
    p = s5.Params()
    keys = s5.artifact_keys(p, Fingerprints(), {})
    assert len(keys) == len(s5.plan(p)) and all(k.kind == "deeplab" for k in keys.values())
    key = keys["deeplab:cnn/curriculum/s1"]
    assert key.seed == 1 and key.data == "fp:pseudo_masks/cnn/train"
    assert key.spec["schedule"] == [[0.0, 0.5], [0.5, 0.75], [0.75, 1.0]] and key.spec["head"] == "largefov"
    assert keys["deeplab:gt/constant/s0"].data == "fp:train"
    # a new schedule for the curriculum changes exactly the curriculum models
    q = dataclasses.replace(p, schedules={**p.schedules, "curriculum": [[0.0, 0.25], [0.5, 1.0]]})
    other = s5.artifact_keys(q, Fingerprints(), {})
    changed = {n for n in keys if keys[n].digest != other[n].digest}
    assert changed == {n for n in keys if "/curriculum/" in n}
    # new pseudo-masks of one variant retrain only the models on them
    data = Fingerprints({"pseudo_masks/orandnet/train": "artifact:new"})
    changed = {n for n, k in s5.artifact_keys(p, data, {}).items() if k.digest != keys[n].digest}
    assert changed == {n for n in keys if n.startswith("deeplab:orandnet/")}
    # test-time options are evaluated every run and key nothing
    q = dataclasses.replace(p, eval_flip=True, eval_scales=(0.5, 1.0), eval_crf_iterations=5, n_examples=1)
    assert {n: k.digest for n, k in s5.artifact_keys(q, Fingerprints(), {}).items()} == \
           {n: k.digest for n, k in keys.items()}


def test_training_masks_are_identified_by_their_artifact_key_or_content(tiny_voc, tmp_path):
    folder = tmp_path / "pm"
    shutil.copytree(tiny_voc, folder)
    ds = VOCDataset(folder, "train")
    by_content = s5.training_data_fingerprint("cnn", ds)
    mask = np.array(ds.load_mask(ds.ids[0]))
    mask[5, 5] = 2 if mask[5, 5] != 2 else 1
    from PIL import Image
    from orandnet_lib.data.voc import voc_palette
    im = Image.fromarray(mask, mode="P")
    im.putpalette(voc_palette().ravel().tolist())
    im.save(ds.mask_path(ds.ids[0]))
    assert s5.training_data_fingerprint("cnn", VOCDataset(folder, "train")) != by_content
    write_identity(folder, ArtifactKey("pseudo_masks", {"refinement": "rw"}, data="d"))
    keyed = s5.training_data_fingerprint("cnn", VOCDataset(folder, "train"))
    write_identity(folder, ArtifactKey("pseudo_masks", {"refinement": "crf"}, data="d"))
    assert s5.training_data_fingerprint("cnn", VOCDataset(folder, "train")) != keyed


def test_headline_is_the_paired_difference_over_seeds():
    summary = {"cnn": {"curriculum": {"seeds": [0, 1, 2], "per_seed": [{"miou": 10.0}, {"miou": 20.0}, {"miou": 30.0}]}},
               "orandnet": {"curriculum": {"seeds": [2, 0, 1], "per_seed": [{"miou": 33.0}, {"miou": 11.0}, {"miou": 22.0}]}}}
    d = s5.headline_difference(summary, "cnn", "orandnet", "curriculum")
    assert d == paired_difference([10, 20, 30], [11, 22, 33])
    assert d["se"] == pytest.approx(1 / math.sqrt(3))
    assert s5.headline_difference(summary, "cnn", "orandnet", "constant") is None


def test_written_pseudo_masks_read_both_layouts():
    new = {"pseudo_masks": {"cnn": {"miou": 1.0, "precision": 2.0, "recall": 3.0, "threshold": 0.25, "refinement": "rw"}}}
    old = {"pseudo_masks": {"cnn": {"cam": {"miou": 9.0}, "rw_fixed": {"miou": 1.0, "precision": 2.0, "recall": 3.0,
                                                                       "threshold": 25.0}}}}
    assert s5.written_pseudo_masks(new)["cnn"]["refinement"] == "rw"
    assert s5.written_pseudo_masks(old)["cnn"] == {"miou": 1.0, "precision": 2.0, "recall": 3.0, "threshold": 25.0,
                                                   "refinement": "rw"}


class _Upstream(SimpleNamespace):
    pass


class FakeStage:
    """The stage context stage 5 uses: data root, its folder, upstream records, pseudo-masks."""

    def __init__(self, root: Path, data_root: Path, pseudo: dict[str, Path], edges):
        self.dir, self.data_root, self._pseudo = root, data_root, pseudo
        self._up = {"00_dataset": _Upstream(summary={"dataset": {"size_edges": list(edges)}}, metrics={}, params={}),
                    "04_refinement": _Upstream(summary={}, params={}, metrics={"pseudo_masks": {
                        v: {"miou": 5.0, "precision": 6.0, "recall": 7.0, "threshold": 0.25, "refinement": "rw"}
                        for v in pseudo}})}
        self.recorded = None

    def upstream(self, name):
        return self._up[name]

    def pseudo_masks(self, variant):
        return self._pseudo[variant]

    def record(self, metrics=None, summary=None, artifacts=None):
        self.recorded = {"metrics": metrics, "summary": summary, "artifacts": artifacts, "peak_rss_mb": 1.0}
        return self.recorded


def test_stage5_recipe_end_to_end_on_a_tiny_set(tiny_voc, tmp_path):
    pm = tmp_path / "pm_cnn"
    shutil.copytree(tiny_voc, pm)
    write_identity(pm, ArtifactKey("pseudo_masks", {"variant": "cnn"}, data="d"))
    stage = FakeStage(tmp_path / "05", tiny_voc, {"cnn": pm, "orandnet": pm}, (0.01, 0.2))
    p = s5.Params(training_sets=("gt", "cnn", "orandnet"), schedule_sets=("cnn",), seeds=(0, 1),
                  schedules={"constant": [[0.0, 1.0]], "curriculum": [[0.0, 0.5], [0.5, 1.0]]},
                  backbone_kwargs={"channels": [8, 8, 16, 16], "layers": [1, 1, 1, 1]}, rates=(1,), head_channels=8,
                  epochs=1, batch_size=2, n_examples=1)
    setup = s5.setup(stage, p)
    assert setup.size_edges == (0.01, 0.2)  # stage 0's bins, not recomputed
    assert setup.scales == [0.5, 1.0] and setup.example_set == "cnn"
    runs = s5.train_and_evaluate_all(setup, p, progress=False)
    assert [(r.training_set, r.schedule, r.seed) for r in runs] == s5.plan(p)
    for r in runs:  # the checkpoint is named by the key artifact_keys gives
        assert r.checkpoint.name.endswith(f"-{setup.keys['deeplab:' + r.name].digest}.pt") and r.checkpoint.exists()
    summary = s5.summarise_runs(runs)
    first = s5.at_seed(runs, p.seed)
    by_size = s5.object_recall(first, setup.size_edges)
    ious = s5.class_iou_table(first, setup.val.class_names)
    table = s5.scores_table(summary, setup.pseudo_mask_scores)
    assert table.loc[("cnn", "curriculum"), "pseudo-mask miou"] == 5.0
    rec = s5.record(stage, p, setup, runs, summary, by_size, ious)
    head = rec["summary"]["segmentation_headline"]
    # the same masks for both sets: identical models, a zero difference with no spread
    assert head["difference"]["n"] == 2 and head["difference"]["mean"] == 0.0 and head["difference"]["se"] == 0.0
    assert set(rec["artifacts"]) == set(setup.keys)
    assert "paired difference" in s5.findings(p, summary, first, by_size, runs, 1.0)
    assert "Object area bins" in s5.size_bins_note(setup.size_edges, first)


def _inputs(refinements):
    seg = {"gt": {"curriculum": {"miou": 50.0, "seeds": [0], "per_seed": [{"miou": 50.0}]}},
           "cnn": {"curriculum": {"miou": 20.0, "miou_std": 10.0, "seeds": [0, 1, 2],
                                  "per_seed": [{"miou": 10.0}, {"miou": 20.0}, {"miou": 30.0}]}},
           "orandnet": {"curriculum": {"miou": 22.0, "miou_std": 10.0, "seeds": [0, 1, 2],
                                       "per_seed": [{"miou": 11.0}, {"miou": 22.0}, {"miou": 33.0}]}}}
    written = {v: {"miou": m, "precision": m + 5, "recall": m + 10, "threshold": 0.25, "refinement": "rw"}
               for v, m in (("cnn", 40.0), ("orandnet", 42.0))}
    return s6.Inputs({"cnn": {r: {"miou": 30.0 + i, "precision": 40.0, "recall": 50.0, "threshold": 0.3}
                              for i, r in enumerate(refinements)}},
                     written, seg, list(refinements), {}, "cnn", "orandnet", "curriculum")


def test_stage6_tables_are_generic_over_registered_refinements():
    REFINEMENTS.add("toy_sharpen", lambda x: x.cams, label="toy sharpen")
    try:
        pm = s6.pseudo_mask_table(_inputs(["cam", "crf", "rw", "toy_sharpen"]))
    finally:
        REFINEMENTS.remove("toy_sharpen")
    assert list(pm["refinement"][:4]) == ["CAM", "dense CRF", "random walk", "toy sharpen"]
    assert (pm["refinement"] == "random walk (fixed score): trained on").sum() == 2


def test_stage6_gain_uses_the_paired_standard_error():
    from orandnet_lib.core import paper

    inp = _inputs(["cam"])
    p = s6.Params()
    table, gain = s6.comparison(inp, p)
    assert gain == paired_difference([10, 20, 30], [11, 22, 33])
    spread = table["± seeds (sd; gain: paired se)"]
    assert spread["gain in segmentation mIoU"] == pytest.approx(1 / math.sqrt(3))  # not sqrt(10^2 + 10^2)
    assert table.iloc[:, 0]["gain in segmentation mIoU"] == pytest.approx(paper.GAIN)
    points = s6.points_table(inp)
    agg = s6.aggregate(points)
    assert list(agg["training set"]) == ["cnn", "orandnet"] and s6.ground_truth_mious(inp) == [50.0]
    fits, rows = s6.fit_relations(points, "curriculum")
    assert "error" in fits["precision + recall"] and len(rows) == 6
    text = s6.findings(p, fits, rows, agg, gain, inp)
    assert f"paper {paper.GAIN:+.1f}" in text and "+1.0 ± 0.6" not in text and "+2.0 ± 0.6 points" in text


def test_stage6_no_longer_types_the_vit_offset():
    assert "vit_offset" not in {f.name for f in dataclasses.fields(s6.Params)}
    nb = json.loads((REPO / "notebooks" / "06_precision_vs_miou.ipynb").read_text())
    assert not any("vit_offset" in "".join(c["source"]) or "0.15" in "".join(c["source"]) for c in nb["cells"])
    for toml in (REPO / "orandnet_lib" / "book" / "profiles").glob("*.toml"):
        assert "vit_offset" not in toml.read_text()
    assert s6.artifact_keys(s6.Params(), Fingerprints(), {}) == {}


@pytest.mark.parametrize("name", ["05_segmentation_curriculum", "06_precision_vs_miou"])
def test_notebooks_type_no_paper_number(name):
    nb = json.loads((REPO / "notebooks" / f"{name}.ipynb").read_text())
    text = "".join("".join(c["source"]) for c in nb["cells"])
    for number in ("6.8", "63.5", "70.3", "66.5", "72.1"):
        assert number not in text, f"{name} types the paper's {number}: read it from core.paper"
