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

from orandnet_lib.core.keys import ArtifactKey, write_key
from orandnet_lib.core.stats import paired_difference
from orandnet_lib.data.voc import VOCDataset
from orandnet_lib.book import prose
from orandnet_lib.book.chapters import segmentation as s5_chapter
from orandnet_lib.book.chapters import precision as s6_chapter
from orandnet_lib.methods import precision_fit
from orandnet_lib.methods import curriculum
from orandnet_lib.methods.refine import REFINEMENTS
from orandnet_lib.methods.results import headline_difference, headline_pairs, written_pseudo_masks
from orandnet_lib.stages import s5_segmentation as s5
from orandnet_lib.stages import s6_precision as s6

REPO = Path(__file__).resolve().parents[1]


class Fingerprints(dict):
    def __missing__(self, name):
        return f"fp:{name}"


def test_plan_trains_every_schedule_and_every_headline_set_over_the_seeds():
    p = s5.Params()
    at_seed = [("gt", "constant", 0), ("gt", "curriculum", 0), ("cnn", "constant", 0), ("cnn", "curriculum", 0),
               ("and+offset", "curriculum", 0), ("orandnet", "constant", 0), ("orandnet", "curriculum", 0)]
    schedules = [(t, s, sd) for t in ("gt", "cnn", "orandnet") for s in ("constant", "curriculum") for sd in (1, 2)]
    control = [("and+offset", "curriculum", 1), ("and+offset", "curriculum", 2)]  # the control gets the headline's seeds
    assert s5.plan(p) == at_seed + schedules + control and len(s5.plan(p)) == 21  # was 11
    assert p.headline_sets == ("cnn", "and+offset", "orandnet") and s5.schedule_seeds(p) == (0, 1, 2)
    # schedule_seeds = [0]: schedules compared at one seed, the headline sets still over every seed
    one = s5.plan(dataclasses.replace(p, schedule_seeds=(0,)))
    assert one == at_seed + [(t, "curriculum", sd) for t in ("cnn", "and+offset", "orandnet") for sd in (1, 2)]
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
    by_content = curriculum.training_data_fingerprint("cnn", ds)
    mask = np.array(ds.load_mask(ds.ids[0]))
    mask[5, 5] = 2 if mask[5, 5] != 2 else 1
    from PIL import Image
    from orandnet_lib.data.voc import voc_palette
    im = Image.fromarray(mask, mode="P")
    im.putpalette(voc_palette().ravel().tolist())
    im.save(ds.mask_path(ds.ids[0]))
    assert curriculum.training_data_fingerprint("cnn", VOCDataset(folder, "train")) != by_content
    write_key(folder, ArtifactKey("pseudo_masks", {"refinement": "rw"}, data="d"))
    keyed = curriculum.training_data_fingerprint("cnn", VOCDataset(folder, "train"))
    write_key(folder, ArtifactKey("pseudo_masks", {"refinement": "crf"}, data="d"))
    assert curriculum.training_data_fingerprint("cnn", VOCDataset(folder, "train")) != keyed


def test_headline_is_the_paired_difference_over_seeds():
    summary = {"cnn": {"curriculum": {"seeds": [0, 1, 2], "per_seed": [{"miou": 10.0}, {"miou": 20.0}, {"miou": 30.0}]}},
               "orandnet": {"curriculum": {"seeds": [2, 0, 1], "per_seed": [{"miou": 33.0}, {"miou": 11.0}, {"miou": 22.0}]}}}
    d = headline_difference(summary, "cnn", "orandnet", "curriculum")
    assert d == paired_difference([10, 20, 30], [11, 22, 33])
    assert d["se"] == pytest.approx(1 / math.sqrt(3))
    assert headline_difference(summary, "cnn", "orandnet", "constant") is None


def _seeded(values_by_seed, key="miou"):
    """A stage-5 summary entry from {seed: value} (seeds deliberately out of order)."""
    seeds = sorted(values_by_seed, reverse=True)
    return {"seeds": seeds, "per_seed": [{key: values_by_seed[sd]} for sd in seeds]}


def test_every_pair_of_the_three_headline_sets_is_paired_by_seed():
    # per seed 0, 1, 2: cnn (10, 20, 30), and+offset (11, 22, 33), orandnet (12, 20, 34)
    summary = {"cnn": {"curriculum": _seeded({0: 10.0, 1: 20.0, 2: 30.0})},
               "and+offset": {"curriculum": _seeded({0: 11.0, 1: 22.0, 2: 33.0})},
               "orandnet": {"curriculum": _seeded({0: 12.0, 1: 20.0, 2: 34.0})}}
    p = s5.Params()
    rows = curriculum.paired_comparisons(summary, p.headline_sets, p.headline_schedule)
    assert [r["comparison"] for r in rows] == ["orandnet − cnn", "and+offset − cnn", "orandnet − and+offset"]
    t_crit = 0.95 * math.sqrt(2 / (4 * 0.975 * 0.025))  # t_0.975 with 2 df, closed form
    orn, ctl, vs = rows
    # orandnet - cnn = (2, 0, 4): mean 2, sd 2, se 2 / sqrt(3), t = sqrt(3); 2 df: p = 1 - t / sqrt(2 + t^2)
    assert (orn["n"], orn["df"], orn["mean"]) == (3, 2, 2.0) and orn["se"] == pytest.approx(2 / math.sqrt(3))
    assert orn["t"] == pytest.approx(math.sqrt(3)) and orn["p"] == pytest.approx(1 - math.sqrt(3) / math.sqrt(5))
    assert orn["low"] == pytest.approx(2 - t_crit * 2 / math.sqrt(3)) and orn["high"] == pytest.approx(2 + t_crit * 2 / math.sqrt(3))
    # and+offset - cnn = (1, 2, 3): mean 2, se 1 / sqrt(3), t = 2 sqrt(3), p = 1 - 2 sqrt(3) / sqrt(14)
    assert ctl["mean"] == 2.0 and ctl["se"] == pytest.approx(1 / math.sqrt(3))
    assert ctl["p"] == pytest.approx(1 - 2 * math.sqrt(3) / math.sqrt(14))
    # orandnet - and+offset = (1, -2, 1): mean 0, sd sqrt(3), se 1, t = 0, p = 1, interval +- t_crit
    assert vs["mean"] == pytest.approx(0.0) and vs["se"] == pytest.approx(1.0) and vs["t"] == pytest.approx(0.0)
    assert vs["p"] == pytest.approx(1.0) and (vs["low"], vs["high"]) == pytest.approx((-t_crit, t_crit))
    assert curriculum.headline_record(rows, p.headline_sets, p.headline_schedule) == {
        "baseline": "cnn", "other": "orandnet", "schedule": "curriculum",
        "difference": paired_difference([10, 20, 30], [12, 20, 34])}
    table = s5_chapter.differences_table(rows)
    assert list(table.index) == ["orandnet − cnn", "and+offset − cnn", "orandnet − and+offset"]
    assert table.loc["orandnet − cnn", "df"] == 2 and table.loc["and+offset − cnn", "mean difference"] == 2.0
    assert headline_pairs(["cnn"]) == [] and headline_pairs(["a", "b"]) == [("a", "b")]


def test_curriculum_against_constant_is_paired_by_seed_in_miou_and_small_object_recall():
    nan = float("nan")
    summary = {"cnn": {
        "constant": {"seeds": [0, 1, 2], "per_seed": [{"miou": 10.0, "object_recall_small": 50.0},
                                                      {"miou": 12.0, "object_recall_small": 40.0},
                                                      {"miou": 14.0, "object_recall_small": nan}]},
        "curriculum": {"seeds": [0, 1, 2], "per_seed": [{"miou": 11.0, "object_recall_small": 45.0},
                                                        {"miou": 14.0, "object_recall_small": 38.0},
                                                        {"miou": 17.0, "object_recall_small": 20.0}]}}}
    p = dataclasses.replace(s5.Params(), schedule_sets=("cnn",))
    miou, small = curriculum.schedule_comparisons(summary, p.schedule_sets, list(p.schedules))
    assert miou["comparison"] == "cnn: curriculum − constant" and miou["measure"] == "mIoU"
    assert miou["mean"] == 2.0 and miou["se"] == pytest.approx(1 / math.sqrt(3)) and miou["df"] == 2
    # small objects: seed 2 has none under the constant scale (NaN) and drops out of the pairing;
    # d = (-5, -2): mean -3.5, sd sqrt(4.5), se 1.5, t = -7/3; with 1 df P(|T| > t) = 1 - (2 / pi) atan(|t|)
    # and t_0.975(1) = tan(0.475 pi)
    assert small["measure"] == "small-object recall" and small["n"] == 2 and small["df"] == 1
    assert small["mean"] == -3.5 and small["se"] == pytest.approx(1.5) and small["t"] == pytest.approx(-7 / 3)
    assert small["p"] == pytest.approx(1 - 2 / math.pi * math.atan(7 / 3))
    assert small["high"] == pytest.approx(-3.5 + math.tan(0.475 * math.pi) * 1.5)
    facts = s5.findings(p, summary, [], [miou, small], [], 1024.0)
    row = facts["schedule_rows"][1]
    assert (row["training_set"], row["other"], row["baseline"], row["measure"]) == \
        ("cnn", "curriculum", "constant", "small-object recall")
    assert row["difference"]["kind"] == "tested" and row["difference"]["mean"] == -3.5 and not row["difference"]["separates"]
    assert facts["replicates"] == 1 and facts["pairs"] == [] and facts["upper_bound"] is None
    assert prose.render("05_segmentation_curriculum/findings", facts)  # every name the template uses is in the facts


def test_upper_bound_line_names_the_schedule_and_the_other_ground_truth_run():
    summary = {"gt": {"constant": {"miou": 61.5, "seeds": [0]}, "curriculum": {"miou": 56.7, "seeds": [0]}},
               "cnn": {"curriculum": {"miou": 41.1, "seeds": [0]}},
               "and+offset": {"curriculum": {"miou": 47.9, "seeds": [0]}}}
    p = dataclasses.replace(s5.Params(), training_sets=("gt", "cnn", "and+offset"), headline_sets=("cnn", "and+offset"),
                            schedule_sets=("gt",))
    facts = s5.findings(p, summary, [], [], [], 1024.0)
    assert facts["upper_bound"] == {"schedule": "curriculum", "miou": 56.7, "also": {"constant": 61.5},
                                    "best_set": "and+offset", "best_miou": 47.9, "gap": pytest.approx(8.8),
                                    "side": "below"}
    assert facts["peak_rss_gb"] == 1.0 and facts["models"] == 0
    assert prose.render("05_segmentation_curriculum/findings", facts)
    # without the headline schedule the ground truth is read at its first; a better pseudo-mask set is above it
    gt_constant = {**summary, "gt": {"constant": {"miou": 40.0, "seeds": [0]}}}
    assert curriculum.upper_bound(gt_constant, p.training_sets, "curriculum") == {
        "schedule": "constant", "miou": 40.0, "also": {}, "best_set": "and+offset", "best_miou": 47.9,
        "gap": pytest.approx(7.9), "side": "above"}
    assert curriculum.upper_bound({k: v for k, v in summary.items() if k != "gt"}, p.training_sets, "curriculum") is None


def test_a_difference_is_judged_by_its_seeds():
    none = curriculum.difference_verdict(paired_difference({0: 1.0}, {1: 2.0}))
    single = curriculum.difference_verdict(paired_difference({0: 1.0}, {0: 2.0}))
    identical = curriculum.difference_verdict(paired_difference({0: 1.0, 1: 2.0}, {0: 2.0, 1: 3.0}))
    noisy = curriculum.difference_verdict(paired_difference([10, 20, 30], [11, 22, 33]))
    clear = curriculum.difference_verdict(paired_difference([0.0, 0.0, 0.0], [5.5, 4.5, 5.0]))
    assert [d["kind"] for d in (none, single, identical, noisy, clear)] == ["none", "single", "tested", "tested", "tested"]
    assert identical["t"] == math.inf and identical["separates"]  # +1 on both seeds: no spread, p = 0
    same = curriculum.difference_verdict(paired_difference({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0}))
    assert same["kind"] == "identical" and not same["separates"]
    assert not noisy["separates"] and noisy["p_shown"] == "p = 0.07" and clear["separates"]
    assert noisy["mean"] == 2.0 and noisy["n"] == 3 and noisy["df"] == 2


def test_seeds_facts_say_what_the_seeds_vary():
    facts = s5.seeds_facts(s5.Params())
    assert facts == {"replicates": 1, "seeds": [0, 1, 2],
                     "drawn": ["initialisation", "data order", "dropout", "random flips"]}
    varied = s5.seeds_facts(dataclasses.replace(s5.Params(), crop_size=64, scale_range=(0.5, 1.5), replicates=3))
    assert varied["drawn"][-2:] == ["random rescaling", "random crops"] and varied["replicates"] == 3
    for f in (facts, varied):  # one line: the stage records it and the results page quotes it
        assert len(prose.render("05_segmentation_curriculum/seeds", f).splitlines()) == 1


def test_written_pseudo_masks_read_both_layouts():
    new = {"pseudo_masks": {"cnn": {"miou": 1.0, "precision": 2.0, "recall": 3.0, "threshold": 0.25, "refinement": "rw"}}}
    old = {"pseudo_masks": {"cnn": {"cam": {"miou": 9.0}, "rw_fixed": {"miou": 1.0, "precision": 2.0, "recall": 3.0,
                                                                       "threshold": 25.0}}}}
    assert written_pseudo_masks(new)["cnn"]["refinement"] == "rw"
    assert written_pseudo_masks(old)["cnn"] == {"miou": 1.0, "precision": 2.0, "recall": 3.0, "threshold": 25.0,
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
    write_key(pm, ArtifactKey("pseudo_masks", {"variant": "cnn"}, data="d"))
    stage = FakeStage(tmp_path / "05", tiny_voc, {"cnn": pm, "orandnet": pm}, (0.01, 0.2))
    p = s5.Params(training_sets=("gt", "cnn", "orandnet"), schedule_sets=("cnn",), seeds=(0, 1),
                  headline_sets=("cnn", "orandnet"),
                  schedules={"constant": [[0.0, 1.0]], "curriculum": [[0.0, 0.5], [0.5, 1.0]]},
                  backbone_kwargs={"channels": [8, 8, 16, 16], "layers": [1, 1, 1, 1]}, rates=(1,), head_channels=8,
                  epochs=1, batch_size=2, n_examples=1)
    setup = s5.setup(stage, p)
    assert setup.size_edges == (0.01, 0.2)  # stage 0's bins, not recomputed
    assert s5_chapter.schedule_scales(setup.specs) == [0.5, 1.0] and s5_chapter.example_set(setup.train_sets) == "cnn"
    runs = s5.train_and_evaluate_all(setup, p, progress=False)
    assert [(r.training_set, r.schedule, r.seed) for r in runs] == s5.plan(p)
    for r in runs:  # the checkpoint is named by the key artifact_keys gives
        assert r.checkpoint.name.endswith(f"-{setup.keys['deeplab:' + r.name].digest}.pt") and r.checkpoint.exists()
    summary = curriculum.summarise_runs(runs, setup.size_edges)
    assert {"miou", "object_recall_small", "object_recall_large"} <= set(summary["cnn"]["constant"]["per_seed"][0])
    first = curriculum.at_seed(runs, p.seed)
    by_size = curriculum.object_recall(first, setup.size_edges)
    ious = s5_chapter.class_iou_table(first, setup.val.class_names)
    table = s5_chapter.scores_table(summary, setup.pseudo_mask_scores)
    assert table.loc[("cnn", "curriculum"), "pseudo-mask miou"] == 5.0
    pairs = curriculum.paired_comparisons(summary, p.headline_sets, p.headline_schedule)
    schedule_rows = curriculum.schedule_comparisons(summary, p.schedule_sets, list(p.schedules))
    assert len(schedule_rows) == 2 and schedule_rows[0]["n"] == 2  # cnn mIoU over both seeds (small objects: maybe none)
    rec = s5.record(stage, p, setup, runs, summary, by_size, ious, pairs, schedule_rows)
    head = rec["summary"]["segmentation_headline"]
    # the same masks for both sets: identical models, a zero difference with no spread
    assert head["difference"]["n"] == 2 and head["difference"]["mean"] == 0.0 and head["difference"]["se"] == 0.0
    assert rec["summary"]["segmentation_paired"] == pairs and rec["summary"]["segmentation_schedules"] == schedule_rows
    assert set(rec["artifacts"]) == set(setup.keys)
    seeds_note = prose.render("05_segmentation_curriculum/seeds", s5.seeds_facts(p))
    assert rec["summary"]["segmentation_seeds"] == rec["metrics"]["seeds_note"] == seeds_note
    facts = s5.findings(p, summary, pairs, schedule_rows, runs, 1.0)
    assert facts["models"] == len(runs) == 7 and facts["pairs"][0]["difference"]["kind"] == "identical"
    assert facts["upper_bound"]["schedule"] == "curriculum" and facts["upper_bound"]["best_set"] == "cnn"
    bins = s5.size_bins_facts(setup.size_edges, first)
    assert bins == {"small_below": 0.01, "large_above": 0.2, "objects": len(first["gt", "curriculum"].evaluation.objects)}
    for name, f in (("findings", facts), ("size_bins", bins)):
        assert prose.render(f"05_segmentation_curriculum/{name}", f)


def _inputs(refinements):
    seg = {"gt": {"curriculum": {"miou": 50.0, "seeds": [0], "per_seed": [{"miou": 50.0}]}},
           "cnn": {"curriculum": {"miou": 20.0, "miou_std": 10.0, "seeds": [0, 1, 2],
                                  "per_seed": [{"miou": 10.0}, {"miou": 20.0}, {"miou": 30.0}]}},
           "orandnet": {"curriculum": {"miou": 22.0, "miou_std": 10.0, "seeds": [0, 1, 2],
                                       "per_seed": [{"miou": 11.0}, {"miou": 22.0}, {"miou": 33.0}]}}}
    written = {v: {"miou": m, "precision": m + 5, "recall": m + 10, "threshold": 0.25, "refinement": "rw"}
               for v, m in (("cnn", 40.0), ("orandnet", 42.0))}
    return precision_fit.Recorded({"cnn": {r: {"miou": 30.0 + i, "precision": 40.0, "recall": 50.0, "threshold": 0.3}
                                           for i, r in enumerate(refinements)}},
                                  written, seg, list(refinements), {}, "cnn", "orandnet", "curriculum")


def test_stage6_tables_are_generic_over_registered_refinements():
    REFINEMENTS.add("toy_sharpen", lambda x: x.cams, label="toy sharpen")
    try:
        inp = _inputs(["cam", "crf", "rw", "toy_sharpen"])
        pm = s6_chapter.pseudo_mask_table(inp.refinement, inp.pseudo_masks)
    finally:
        REFINEMENTS.remove("toy_sharpen")
    assert list(pm["refinement"][:4]) == ["CAM", "dense CRF", "random walk", "toy sharpen"]
    assert (pm["refinement"] == "random walk (written score): trained on").sum() == 2


def test_stage6_gain_uses_the_paired_standard_error():
    from orandnet_lib.core import paper

    inp = _inputs(["cam"])
    p = s6.Params()
    table, gain = precision_fit.comparison(inp, p.fit_schedule)
    assert gain == paired_difference([10, 20, 30], [11, 22, 33])
    spread = table["± seeds (sd; gain: paired se)"]
    assert spread["gain in segmentation mIoU"] == pytest.approx(1 / math.sqrt(3))  # not sqrt(10^2 + 10^2)
    assert table.iloc[:, 0]["gain in segmentation mIoU"] == pytest.approx(paper.GAIN)
    points = precision_fit.points_table(inp)
    agg = precision_fit.aggregate(points)
    assert list(agg["training set"]) == ["cnn", "orandnet"] and precision_fit.ground_truth_mious(inp) == [50.0]
    fits, rows = precision_fit.fit_relations(points, "curriculum")
    # two pseudo-mask sets (six models): nothing is fitted, the seeds are not points
    assert len(rows) == 2 and all("error" in f for f in fits.values())
    facts = s6.findings(p, fits, rows, agg, gain, inp)
    assert facts["thesis"] == "too few" and facts["slope"] is None and facts["two_error"] is None
    against = s6.against_paper(gain, inp)["against"]
    assert facts["against"] == against and (against["paper_gain"], against["paper_context"]) == (paper.GAIN, paper.CONTEXT)
    assert against["gain"] == curriculum.difference_verdict(gain) and against["replicates"] == 1
    assert (against["gain"]["mean"], against["gain"]["kind"]) == (2.0, "tested")
    assert against["gain"]["se"] == pytest.approx(1 / math.sqrt(3))  # the paired se, not that of the two means
    assert facts["best"] == {"precise_set": "orandnet", "precision": 47.0, "same": True, "set": "orandnet",
                             "schedule": "curriculum", "final": 22.0, "seeds": 3}
    assert f"paper {paper.GAIN:+.1f}" in prose.render("06_precision_vs_miou/findings", facts)
    assert paper.CONTEXT in prose.render("06_precision_vs_miou/against_paper", s6.against_paper(gain, inp))
    assert s6.against_paper(None, inp)["against"]["gain"] is None
    assert prose.render("06_precision_vs_miou/against_paper", s6.against_paper(None, inp))


def _sets(finals_by_seed, precision, recall):
    """Stage-6 inputs of several pseudo-mask sets: per-seed final mIoU, the masks' precision and recall."""
    seg = {t: {"curriculum": {"miou": float(np.mean(v)), "seeds": list(range(len(v))),
                              "per_seed": [{"miou": x} for x in v]}} for t, v in finals_by_seed.items()}
    written = {t: {"miou": 30.0 + i, "precision": precision[i], "recall": recall[i], "threshold": 0.25,
                   "refinement": "rw"} for i, t in enumerate(finals_by_seed)}
    return precision_fit.Recorded({}, written, seg, ["rw"], {}, "a", "c", "curriculum")


def test_stage6_fits_one_point_per_set_a_line_on_three_sets():
    # set means (20, 23, 24) at precision (40, 45, 50): slope = Sxy / Sxx = 20 / 50 = 0.4, intercept 22.333 - 18
    # residuals (-1/3, 2/3, -1/3), s^2 = (2/3) / 1, se = sqrt((2/3) / 50); 1 df: t_0.975 = tan(0.475 pi)
    inp = _sets({"a": [19.0, 20.0, 21.0], "b": [22.0, 23.0, 24.0], "c": [24.0, 23.0, 25.0]},
                precision=[40.0, 45.0, 50.0], recall=[60.0, 50.0, 45.0])
    fits, rows = precision_fit.fit_relations(precision_fit.points_table(inp), "curriculum")
    f = fits["precision"]
    assert f["n"] == 3 and f["dof"] == 1 and list(rows["final"]) == pytest.approx([20.0, 23.0, 24.0])
    assert f["coef"]["precision"] == pytest.approx(0.4) and f["coef"]["intercept"] == pytest.approx(22 + 1 / 3 - 18)
    se = math.sqrt((2 / 3) / 50)
    assert f["se"]["precision"] == pytest.approx(se)
    assert f["low"]["precision"] == pytest.approx(0.4 - math.tan(0.475 * math.pi) * se)
    assert "at least 5 pseudo-mask sets, this run has 3" in fits["precision + recall"]["error"]
    slope = precision_fit.slope(f, "precision")
    assert (slope["relation"], slope["n"], slope["dof"], slope["confidence"], slope["few"]) == ("none", 3, 1, 95, True)
    assert slope["coef"] == pytest.approx(0.4) and slope["what"] == "pseudo-mask precision"
    facts = s6.findings(s6.Params(), fits, rows, precision_fit.aggregate(precision_fit.points_table(inp)), None, inp)
    assert facts["thesis"] == "fitted" and facts["slope"] == slope and facts["r2"] == f["r2"]
    assert facts["precision_span"] == 10.0 and facts["two_error"] == fits["precision + recall"]["error"]
    assert facts["against"] is None and facts["best"]["set"] == "c" and facts["best"]["same"]
    assert prose.render("06_precision_vs_miou/findings", facts)
    table = s6_chapter.fit_table(fits)
    assert set(table["sets"]) == {3} and ("precision", "pseudo-mask precision") in table.index


def test_stage6_refuses_two_regressors_on_four_sets_and_fits_them_on_five():
    finals = {t: [v - 1, v + 1] for t, v in zip("abcd", (20.0, 23.0, 24.0, 29.0))}
    four = _sets(finals, precision=[40.0, 45.0, 50.0, 55.0], recall=[60.0, 50.0, 45.0, 47.0])
    fits, rows = precision_fit.fit_relations(precision_fit.points_table(four), "curriculum")
    assert len(rows) == 4 and fits["precision"]["n"] == 4 and fits["precision"]["dof"] == 2
    assert "coef" not in fits["precision + recall"] and fits["precision + recall"]["n"] == 4
    notes = s6.fit_notes(fits, rows)
    assert notes == {"n_sets": 4, "unfitted": {"precision + recall": fits["precision + recall"]["error"]}}
    assert "2 regressor(s) need at least 5" in notes["unfitted"]["precision + recall"]
    assert prose.render("06_precision_vs_miou/fit_notes", notes)
    five = _sets({**finals, "e": [30.0, 32.0]}, precision=[40.0, 45.0, 50.0, 55.0, 60.0],
                 recall=[60.0, 50.0, 45.0, 47.0, 40.0])
    fits5, rows5 = precision_fit.fit_relations(precision_fit.points_table(five), "curriculum")
    assert fits5["precision + recall"]["n"] == 5 and fits5["precision + recall"]["dof"] == 2
    # a slope whose interval excludes 0 is worded as a relation of these sets
    steep = _sets({"a": [10.0], "b": [20.0], "c": [30.1]}, precision=[40.0, 50.0, 60.0], recall=[1.0, 2.0, 0.0])
    assert s6.fit_notes(fits5, rows5)["unfitted"] == {}
    assert prose.render("06_precision_vs_miou/fit_notes", s6.fit_notes(fits5, rows5)) == ""
    f = precision_fit.fit_relations(precision_fit.points_table(steep), "curriculum")[0]["precision"]
    assert precision_fit.slope(f, "precision")["relation"] == "rises" and f["low"]["precision"] > 0


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


def test_the_widget_walks_each_variant_with_the_relation_net_that_refined_it(tmp_path):
    from orandnet_lib.book.stage import Upstream
    from orandnet_lib.stages.s6_precision import relation_net_maps

    for source, value in (("cnn", 0.25), ("orandnet", 0.75)):
        np.savez(tmp_path / f"boundaries-{source}.npz", img0=np.full((2, 2), value, np.float16))
    np.savez(tmp_path / "boundaries.npz", img0=np.full((2, 2), 0.25, np.float16))
    nets = {"boundary_source": "per_variant", "refines": {"cnn": "cnn", "orandnet": "orandnet"},
            "files": {"cnn": "boundaries-cnn.npz", "orandnet": "boundaries-orandnet.npz"}, "widget_file": "boundaries.npz"}
    boundary_of = relation_net_maps(Upstream("04_refinement", tmp_path, {"params": {}, "metrics": {"boundary_nets": nets}}))
    assert float(boundary_of("orandnet", "img0")[0, 0]) == 0.75
    assert float(boundary_of("cnn", "img0")[0, 0]) == 0.25
    assert float(boundary_of("vit", "img0")[0, 0]) == 0.25, "a variant stage 4 did not refine: the first net's maps"
    assert relation_net_maps(Upstream("04_refinement", tmp_path / "none", {"params": {}, "metrics": {}})) is None
