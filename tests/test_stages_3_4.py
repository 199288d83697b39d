"""Stages 3 and 4 on tiny data: every checkpoint is named by its full key.

The bug this guards against: the relation network's checkpoint was named
``boundary-<upstream hash>-<seed variant>.pt``, without the confident-label thresholds, the
CRF switch, the radius or the backbone, and the training loop resumes a finished checkpoint
without training. Changing ``fg_threshold`` therefore reused the network trained on the old
labels.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from orandnet_lib.book.stage import Stage
from orandnet_lib.core.store import MANIFEST, write_json
from orandnet_lib.core.keys import ArtifactKey, read_key
from orandnet_lib.core.train import TrainConfig, fit, load_checkpoint
from orandnet_lib.data.voc import VOCDataset
from orandnet_lib.methods.cams import CamStore, CamStoreWriter
from orandnet_lib.methods import pseudo
from orandnet_lib.methods.orandnet_maps import train_orandnet
from orandnet_lib.nets.boundary import BoundaryNet
from orandnet_lib.stages import s3_orandnet as s3
from orandnet_lib.stages import s4_refinement as s4
from orandnet_lib.book import prose
from orandnet_lib.book.chapters import refinement as chapter4
from orandnet_lib.methods.refinement import moved, with_band

SMALL = {"channels": [8, 16, 16, 32], "layers": [1, 1, 1, 1]}


def write_run(run_dir: Path, ds: VOCDataset, variant: str = "cnn") -> None:
    """A completed 'stage 1' in ``run_dir`` holding one CAM store: soft discs around the
    masks' objects, so both thresholds fall inside the score range."""
    rng = np.random.default_rng(0)
    stage1 = run_dir / "01_classifiers_and_cams"
    meta = {"identity": ArtifactKey("cams", {"test": variant}, data="tiny").to_dict(), "split": ds.split}
    with CamStoreWriter(stage1 / "cams" / f"{variant}_{ds.split}", meta) as w:
        for i in ds.ids:
            mask = ds.load_mask(i)
            ids = np.flatnonzero(ds.load(i).labels) + 1
            cams = np.stack([np.clip((mask == k) * 0.6 + rng.random(mask.shape) * 0.35, 0, 1) for k in ids])
            w.add(i, cams.astype(np.float32), ids)
    write_json(stage1 / MANIFEST, {"params": {}, "metrics": {}})


def tiny_params(**changes) -> s4.Params:
    return dataclasses.replace(s4.Params(variants=("cnn",), boundary_backbone_kwargs=SMALL, use_crf=False, epochs=2,
                                         batch_size=3, crf_iterations=2, exp_times=2, n_examples=2, workers=1),
                               **changes)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return all(torch.equal(wa[k], wb[k]) for k in wa)


def open_tiny(root: Path, run_dir: Path, p: s4.Params) -> s4.Inputs:
    stage = Stage("04_refinement", "smoke", run_dir, root, p.seed)
    return s4.open_inputs(stage, p)


def test_changing_a_confident_label_threshold_trains_a_new_relation_network(tiny_voc, tmp_path):
    ds = VOCDataset(tiny_voc, "train")
    run_dir = tmp_path / "runs"
    write_run(run_dir, ds)
    out = run_dir / "04_refinement"
    first = s4.train_boundary_net(tiny_params(fg_threshold=0.3), open_tiny(tiny_voc, run_dir, tiny_params()), "cnn",
                                  out, progress=False)
    p2 = tiny_params(fg_threshold=0.2)
    second = s4.train_boundary_net(p2, open_tiny(tiny_voc, run_dir, p2), "cnn", out, progress=False)

    # Two checkpoints side by side, each carrying its own key.
    assert first.checkpoint != second.checkpoint and first.checkpoint.exists() and second.checkpoint.exists()
    assert load_checkpoint(second.checkpoint)["identity"]["spec"]["fg_threshold"] == 0.2
    # The labels differ, and the second network was trained on its own: it has the weights of
    # a network trained with fg_threshold 0.2 in an empty folder, not those of the first.
    assert any((first.labels.labels[i] != second.labels.labels[i]).any() for i in ds.ids)
    alone = s4.train_boundary_net(p2, open_tiny(tiny_voc, run_dir, p2), "cnn", tmp_path / "alone", progress=False)
    assert same_weights(second.checkpoint, alone.checkpoint)
    assert not same_weights(first.checkpoint, second.checkpoint)
    assert [h["loss"] for h in second.history] == [h["loss"] for h in alone.history]
    assert [h["loss"] for h in second.history] != [h["loss"] for h in first.history]


def test_the_old_checkpoint_name_reused_the_stale_network(tiny_voc, tmp_path):
    """The bug itself, with the old name: the second 'training' resumes the finished first
    checkpoint and returns its weights and history without a step on the new labels."""
    ds = VOCDataset(tiny_voc, "train")
    write_run(tmp_path / "runs", ds)
    store = CamStore(tmp_path / "runs" / "01_classifiers_and_cams" / "cams" / "cnn_train")
    old_name = tmp_path / "boundary-0123456789ab-cnn.pt"
    cfg = TrainConfig(epochs=2, batch_size=3, optimizer="adamw", lr=0.001)
    histories = []
    for fg in (0.3, 0.2):
        torch.manual_seed(0)
        net = BoundaryNet("resnet18", backbone_kwargs={k: tuple(v) for k, v in SMALL.items()})
        labels = pseudo.BoundarySet(store, ds, net.stride, fg, 0.05, use_crf=False, progress=False, workers=1)
        histories.append(fit(net, labels, pseudo.boundary_loss(5), cfg, checkpoint=old_name, progress=False))
    assert histories[0] == histories[1]  # stale: nothing was trained on the 0.2 labels
    # With the key's identity the resume is refused instead.
    key = ArtifactKey("boundary_net", {"fg_threshold": 0.2}, data="tiny")
    with pytest.raises(ValueError, match="another artifact"):
        fit(net, labels, pseudo.boundary_loss(5), cfg, checkpoint=old_name, key=key, progress=False)


def test_every_boundary_setting_names_another_checkpoint():
    p = tiny_params()
    data, upstream = {"train": "d"}, {"cams:cnn_train": "u"}
    base = s4.artifact_keys(p, data, upstream)["boundary_net:cnn"].digest
    for change in ({"fg_threshold": 0.2}, {"bg_threshold": 0.1}, {"use_crf": True}, {"radius": 4},
                   {"boundary_backbone": "resnet34"}, {"boundary_backbone_kwargs": {"channels": [8, 8, 8, 8]}},
                   {"boundary_pretrained": "timm"}, {"epochs": 3}, {"seed": 1}):
        other = s4.artifact_keys(dataclasses.replace(p, **change), data, upstream)
        assert other["boundary_net:cnn"].digest != base, change
    # the relation network's settings reach the pseudo-masks through its digest
    pm = s4.artifact_keys(p, data, upstream)["pseudo_masks:cnn"]
    assert pm.upstream == {"cams": "u", "boundary_net": base}
    assert s4.artifact_keys(dataclasses.replace(p, workers=4, n_examples=1), data, upstream) == \
        s4.artifact_keys(p, data, upstream)


def test_one_relation_net_per_source_keys_the_masks_it_refines():
    data = {"train": "d"}
    upstream = {"cams:cnn_train": "c", "cams:orandnet_train": "o", "cams:vit_train": "v"}
    per = s4.artifact_keys(tiny_params(variants=("cnn", "orandnet")), data, upstream)  # the paper's setting
    assert {k for k in per if k.startswith("boundary_net")} == {"boundary_net:cnn", "boundary_net:orandnet"}
    assert per["boundary_net:cnn"].upstream == {"cams": "c"} and per["boundary_net:orandnet"].upstream == {"cams": "o"}
    assert per["pseudo_masks:cnn"].upstream["boundary_net"] == per["boundary_net:cnn"].digest
    assert per["pseudo_masks:orandnet"].upstream["boundary_net"] == per["boundary_net:orandnet"].digest
    # one source: its net (keyed by its own store) refines every variant
    one = s4.artifact_keys(tiny_params(variants=("cnn", "orandnet"), boundary_source="vit"), data, upstream)
    assert {k for k in one if k.startswith("boundary_net")} == {"boundary_net:vit"}
    assert one["boundary_net:vit"].upstream == {"cams": "v"}
    assert {one[f"pseudo_masks:{v}"].upstream["boundary_net"] for v in ("cnn", "orandnet")} == \
        {one["boundary_net:vit"].digest}
    # the cnn net trained on the cnn labels is the same artifact in both settings
    cnn = s4.artifact_keys(tiny_params(variants=("cnn", "orandnet"), boundary_source="cnn"), data, upstream)
    assert cnn["boundary_net:cnn"] == per["boundary_net:cnn"]
    assert cnn["pseudo_masks:orandnet"] != per["pseudo_masks:orandnet"]


def test_stage_4_end_to_end_on_tiny_data(tiny_voc, tmp_path):
    ds = VOCDataset(tiny_voc, "train")
    run_dir = tmp_path / "runs"
    write_run(run_dir, ds)
    p = tiny_params()
    inputs = open_tiny(tiny_voc, run_dir, p)
    out = run_dir / "04_refinement"
    relations = s4.train_boundary_nets(p, inputs, out, progress=False)
    assert list(relations) == ["cnn"]
    boundaries = s4.boundary_maps(p, relations, inputs, out, progress=False)
    assert boundaries.source_of == {"cnn": "cnn"} and boundaries.paths["cnn"] == out / "boundaries-cnn.npz"
    for name in (s4.BOUNDARIES_FILE, "boundaries-cnn.npz"):  # the widget's file and the net's own
        with np.load(out / name) as saved:
            assert sorted(saved.files) == sorted(ds.ids)
            assert all(saved[i].dtype == np.float16 and saved[i].shape == boundaries.of("cnn")[i].shape
                       for i in ds.ids)
    results = s4.refine_variants(p, inputs, boundaries, out, progress=False)
    r = results["cnn"]
    assert set(r.scores) == {"cam", "crf", "rw"}
    assert all(set(sc) == {"miou", "precision", "recall", "threshold"} for sc in r.scores.values())
    assert r.pseudo_masks["refinement"] == "rw" and r.pseudo_masks["threshold"] == 25.0
    assert set(r.timings) == {"cam_ms_per_image", "crf_ms_per_image", "rw_ms_per_image"}
    assert len(r.examples) == 2
    folder = out / "pseudo_masks" / "cnn"
    assert read_key(folder)["digest"] == inputs.keys["pseudo_masks:cnn"].digest
    written = VOCDataset(folder, "train")
    for image_id, refined, ids in r.examples:
        from orandnet_lib.core.metrics import cam_to_mask

        np.testing.assert_array_equal(written.load_mask(image_id), cam_to_mask(refined, ids, p.pseudo_mask_background))
    table = chapter4.score_table(results)
    assert list(table.index.get_level_values("refinement")) == ["CAM", "dense CRF", "random walk",
                                                                "random walk, written"]
    # Writing the CAM itself instead: another key, no relation network in it.
    p_cam = dataclasses.replace(p, pseudo_mask_refinement="cam")
    key = s4.artifact_keys(p_cam, {"train": "d"}, {"cams:cnn_train": "u"})["pseudo_masks:cnn"]
    assert "boundary_net" not in key.upstream and key.spec == {"refinement": "cam", "background": 0.25,
                                                            "threshold_rule": "fixed", "reference_background": 0.15,
                                                            "operating_point_rule": "otsu", "min_ignore_band": 0.1}


def test_orandnet_keys_cover_inputs_and_runs():
    p = s3.Params()
    data, upstream = {"train": "d", "val": "v"}, {"cams:or+offset_train": "o", "cams:and+offset_train": "a"}
    keys = s3.artifact_keys(p, data, upstream)
    assert set(keys) == {"orandnet:orandnet", "orandnet:orandnet (softmax)", "orandnet:orandnet (bce, +image)",
                         "classifier:cnn_seed1", "cams:cnn_seed1_train"}
    main = keys["orandnet:orandnet"]
    assert main.upstream == {"or": "o", "and": "a"} and main.spec["loss"] == "bce" and main.seed == 0
    assert main.spec["train"]["epochs"] == p.epochs
    assert keys["classifier:cnn_seed1"].seed == 1
    assert keys["cams:cnn_seed1_train"].upstream == {"classifier": keys["classifier:cnn_seed1"].digest}
    skipped = s3.artifact_keys(dataclasses.replace(p, third_classifier_seed=-1, ablate_loss=False, ablate_image=False),
                               data, upstream)
    assert set(skipped) == {"orandnet:orandnet"}


def test_the_third_classifier_repeats_the_cnn_stage_1_recorded(tmp_path):
    """Stage 3 reads stage 1's CNN from its record (JSON, as a manifest holds it), not from
    stage 1's code: its third classifier is stage 1's CNN key with only the seed changed."""
    import json
    from types import SimpleNamespace

    from orandnet_lib.core.errors import ConfigError
    from orandnet_lib.stages import s1_classifiers as s1

    p1 = dataclasses.replace(s1.Params(), fit_split="fit", cam_scales=(1.0, 0.5), cam_flip=False)
    data = {"train": "d", "val": "v", "fit": "f"}
    recorded = json.loads(json.dumps({"recipes": {k: r.to_dict() for k, r in s1.recipes(p1).items()}}))
    cnn = s3.stage1_cnn(SimpleNamespace(metrics=recorded, dir=tmp_path))
    assert cnn.fit_split == "fit" and cnn.cam_scales == (1.0, 0.5) and cnn.cam_flip is False
    p3 = s3.Params()
    keys = s3.artifact_keys(p3, data, {"cams:or+offset_train": "o", "cams:and+offset_train": "a"}, cnn)
    p1_third_seed = dataclasses.replace(p1, seed=p3.third_classifier_seed)
    own = s1.artifact_keys(p1_third_seed, data, {})
    assert keys["classifier:cnn_seed1"].digest == own["classifier:cnn"].digest
    assert keys["cams:cnn_seed1_train"].digest == own["cams:cnn_train"].digest
    with pytest.raises(ConfigError, match="no recipe of its CNN"):
        s3.stage1_cnn(SimpleNamespace(metrics={"classifiers": {}}, dir=tmp_path))


def test_train_orandnet_names_its_checkpoint_and_store_by_the_key(tiny_voc, tmp_path):
    ds = VOCDataset(tiny_voc, "train")
    rng = np.random.default_rng(0)
    stores = {}
    for name in ("or", "and"):
        with CamStoreWriter(tmp_path / name) as w:
            for image_id in ds.ids:
                ids = np.flatnonzero(ds.load(image_id).labels) + 1
                w.add(image_id, rng.random((len(ids), 20, 24)) * (0.5 if name == "and" else 1.0), ids)
        stores[name] = CamStore(tmp_path / name)
    cfg = TrainConfig(epochs=1, batch_size=3, optimizer="adamw", lr=0.01)
    key = ArtifactKey("orandnet", {"loss": "bce"}, data="tiny", upstream={"or": "o", "and": "a"})
    t = train_orandnet("orandnet (bce, +image)", stores["or"], stores["and"], ds, cfg, tmp_path, key,
                       use_image=True, widths=(4, 8, 8), progress=False)
    assert t.checkpoint == key.path(tmp_path, "orandnet (bce, +image)") and t.checkpoint.exists()
    assert t.store.path == tmp_path / "cams" / "orandnet__bce___image_train"
    assert t.store.digest == key.digest
    other = ArtifactKey("orandnet", {"loss": "softmax"}, data="tiny", upstream={"or": "o", "and": "a"})
    assert other.path(tmp_path, "orandnet (bce, +image)") != t.checkpoint


def test_per_variant_trains_one_relation_net_per_variant_and_saves_each_nets_maps(tiny_voc, tmp_path):
    ds = VOCDataset(tiny_voc, "train")
    run_dir = tmp_path / "runs"
    write_run(run_dir, ds, "cnn")
    write_run(run_dir, ds, "vit")
    p = tiny_params(variants=("vit", "cnn"), boundary_source="per_variant", epochs=1)
    inputs = open_tiny(tiny_voc, run_dir, p)
    out = run_dir / "04_refinement"
    relations = s4.train_boundary_nets(p, inputs, out, progress=False)
    assert list(relations) == ["vit", "cnn"] and relations["vit"].checkpoint != relations["cnn"].checkpoint
    assert load_checkpoint(relations["vit"].checkpoint)["identity"]["upstream"] == \
        {"cams": inputs.stores["vit"].digest}
    boundaries = s4.boundary_maps(p, relations, inputs, out, progress=False)
    assert boundaries.source_of == {"vit": "vit", "cnn": "cnn"}
    with np.load(out / s4.BOUNDARIES_FILE) as widget, np.load(out / "boundaries-vit.npz") as vit:
        assert all(np.array_equal(widget[i], vit[i]) for i in ds.ids)  # the widget's file: the first variant's net
    results = s4.refine_variants(p, inputs, boundaries, out, progress=False)
    for v in p.variants:
        assert read_key(out / "pseudo_masks" / v)["upstream"]["boundary_net"] == \
            inputs.keys[f"boundary_net:{v}"].digest
    assert set(results) == {"vit", "cnn"}


def test_the_relative_rule_moves_irns_thresholds_to_the_cams_operating_point():
    p = s4.Params(threshold_rule="relative")
    # At IRN's own operating point the rule gives IRN's numbers.
    at_ref = s4.thresholds(p, 0.15)
    assert (at_ref.fg, at_ref.bg, at_ref.pseudo_mask_background) == pytest.approx((0.30, 0.05, 0.25))
    # Hand-computed at 0.48: fg 0.48 + 0.52 * 0.15 / 0.85, bg 0.05 * 0.48 / 0.15, walk 0.48 + 0.52 * 0.10 / 0.85.
    th = s4.thresholds(p, 0.48)
    assert th.fg == pytest.approx(0.571765, abs=1e-6) and th.bg == pytest.approx(0.16)
    assert th.pseudo_mask_background == pytest.approx(0.541176, abs=1e-6) and th.operating_point == 0.48
    assert moved(0.0, 0.15, 0.48) == 0.0 and moved(1.0, 0.15, 0.48) == 1.0  # the ends stay put
    # The fixed rule ignores the operating point.
    fixed = s4.thresholds(s4.Params(), 0.48)
    assert (fixed.fg, fixed.bg, fixed.pseudo_mask_background) == (0.30, 0.05, 0.25)
    with pytest.raises(ValueError, match="threshold_rule"):
        s4.thresholds(s4.Params(threshold_rule="quantile"), 0.48)
    with pytest.raises(ValueError, match="reference_background"):
        s4.thresholds(s4.Params(threshold_rule="relative", reference_background=1.0), 0.48)


def test_the_thresholds_always_keep_an_ignore_band():
    """A CAM whose operating point is 0 (ORANDNet's under a truncating read-out): the relative
    rule puts bg at 0 and fg at 0.15 / 0.85; a wider band moves bg down to 0 and fg up."""
    p = s4.Params(threshold_rule="relative")
    th = s4.thresholds(p, 0.0)
    assert th.bg == 0.0 and th.fg == pytest.approx(0.15 / 0.85) and th.fg - th.bg >= p.min_ignore_band
    wide = s4.thresholds(s4.Params(threshold_rule="relative", min_ignore_band=0.3), 0.0)
    assert (wide.bg, wide.fg) == (0.0, pytest.approx(0.3))
    # fixed numbers closer than the band: bg moves down first
    close = s4.thresholds(s4.Params(fg_threshold=0.30, bg_threshold=0.25, min_ignore_band=0.1), 0.5)
    assert (close.fg, close.bg) == (0.30, pytest.approx(0.20))
    assert with_band(0.05, 0.0, 0.1) == (pytest.approx(0.1), 0.0)
    with pytest.raises(ValueError, match="min_ignore_band"):
        s4.thresholds(s4.Params(min_ignore_band=0.0), 0.5)


def test_the_relative_rule_is_in_the_keys_and_cuts_the_written_masks(tiny_voc, tmp_path):
    data, upstream = {"train": "d"}, {"cams:cnn_train": "u"}
    fixed = s4.artifact_keys(tiny_params(), data, upstream)
    relative = s4.artifact_keys(tiny_params(threshold_rule="relative"), data, upstream)
    other_ref = s4.artifact_keys(tiny_params(threshold_rule="relative", reference_background=0.2), data, upstream)
    for name in ("boundary_net:cnn", "pseudo_masks:cnn"):
        assert len({fixed[name].digest, relative[name].digest, other_ref[name].digest}) == 3, name
    # On the tiny CAMs (0.6 inside the objects plus noise) the operating point is Otsu's threshold of
    # the CAMs' own top scores (no mask read), and the written masks are cut at the moved walk background.
    ds = VOCDataset(tiny_voc, "train")
    run_dir = tmp_path / "runs"
    write_run(run_dir, ds)
    p = tiny_params(threshold_rule="relative", refinements=("cam", "rw"))
    inputs = open_tiny(tiny_voc, run_dir, p)
    th = inputs.thresholds["cnn"]
    from orandnet_lib.methods.cams import sweep_store

    from orandnet_lib.methods import score_rules

    items = [(c, i) for _, c, i in inputs.stores["cnn"]]
    assert th.operating_point == score_rules.otsu_threshold(score_rules.top_score_histogram(items))
    assert th == s4.thresholds(p, th.operating_point)
    assert inputs.sweeps["cnn"].best_score == sweep_store(inputs.stores["cnn"], ds).best()["threshold"] / 100
    out = run_dir / "04_refinement"
    assert th.fg != pytest.approx(0.30)  # the tiny CAMs' point is not IRN's: the rule moved the thresholds
    relations = s4.train_boundary_nets(p, inputs, out, progress=False)
    expected = pseudo.BoundarySet(inputs.stores["cnn"], ds, relations["cnn"].net.stride, th.fg, th.bg, use_crf=False,
                                  progress=False, workers=1).labels
    assert all(np.array_equal(relations["cnn"].labels.labels[i], expected[i]) for i in ds.ids)
    boundaries = s4.boundary_maps(p, relations, inputs, out, progress=False)
    r = s4.refine_variants(p, inputs, boundaries, out, progress=False)["cnn"]
    assert r.pseudo_masks["threshold"] == pytest.approx(100 * th.pseudo_mask_background)
    # the CAM row is the stage's one sweep of the store (its best score an oracle, for description)
    assert r.scores["cam"]["threshold"] == pytest.approx(100 * inputs.sweeps["cnn"].best_score)
    assert r.cam_background == th.operating_point  # what the refinements that read a background score get
    assert r.timings["cam_ms_per_image"] == pytest.approx(1000 * inputs.sweeps["cnn"].seconds / len(ds))
    # The walk along the true boundaries, on the relation net's grid.
    limit = s4.walk_limit(p, inputs, relations, progress=False)
    assert limit["variant"] == "cnn" and limit["grid_stride"] == relations["cnn"].net.stride
    table = chapter4.walk_limit_table(limit, r.scores)
    assert list(table.index) == ["CAM", "random walk, relation-net boundaries", "random walk, true boundaries"]
    assert table.loc["random walk, true boundaries", "miou"] == limit["miou"]
    # The chapter's facts from these results; every name a template uses is in its facts.
    qualities = s4.seed_quality(p, inputs)
    facts = s4.findings(p, inputs, relations, qualities, boundaries, {"cnn": r}, 1536.0, limit)
    assert facts["threshold_rule"] == "relative" and facts["peak_rss_gb"] == 1.5 and facts["variant_names"] == ["cnn"]
    (confident,) = facts["confident"]
    assert (confident["fg"], confident["bg"], confident["operating_point"]) == (th.fg, th.bg, th.operating_point)
    assert confident["best"] == inputs.sweeps["cnn"].best_score
    assert confident["best_above_fg"] == (confident["best"] > th.fg)
    assert confident["foreground_after_crf"] == relations["cnn"].labels.label_statistics()["foreground"]
    (refined,) = facts["refined"]
    assert [m["refinement"] for m in refined["moves"]] == ["random walk"] and refined["miou"] == r.pseudo_masks["miou"]
    assert refined["background"] == th.pseudo_mask_background and refined["source"] == "cnn"
    assert facts["limit"]["walk"] == limit["miou"] and set(facts["timings"]["cnn"]) == {"CAM", "random walk"}
    for name, f in [("source", s4.source_facts(p)), ("walk", s4.walk_facts(p)), ("findings", facts)]:
        assert prose.render(f"04_refinement/{name}", f)
    # The chapter's figures draw these results: the walk figure shows 2^0 ... 2^exp_times steps.
    import matplotlib.pyplot as plt

    figures = [chapter4.seed_quality_figure(qualities, inputs.thresholds),
               chapter4.example_figure(inputs.train, inputs.stores["cnn"], r, variant="cnn", source="cnn",
                                       labels=relations["cnn"].labels.labels, stride=relations["cnn"].net.stride,
                                       boundaries=boundaries.of("cnn"), background=th.pseudo_mask_background),
               chapter4.walk_figure(inputs.train, inputs.stores["cnn"], boundaries.of("cnn"), r.examples[0][0],
                                    source="cnn", exp_times=p.exp_times, radius=p.radius, beta=p.beta)]
    assert figures[0].axes[0].get_title() == "cnn CAM"
    assert [ax.get_title() for ax in figures[2].axes][2:] == ["start", "1 steps (2^0)", "2 steps (2^1)",
                                                              "4 steps (2^2)"]
    for fig in figures:
        plt.close(fig)


def test_marks_that_would_print_over_each_other_share_one_label():
    marks = [(0.18, "foreground threshold"), (0.0, "background threshold"), (0.01, "best-mIoU background score")]
    assert chapter4.merged_marks(marks) == [(0.0, "background threshold = best-mIoU background score"),
                                            (0.18, "foreground threshold")]
    assert chapter4.merged_marks([(0.5, "a"), (0.2, "b")]) == [(0.2, "b"), (0.5, "a")]


def test_the_walk_limit_facts_say_whose_loss_it_is():
    scores = {"cam": {"miou": 40.0}, "rw": {"miou": 37.0}}
    leaves = s4.limit_facts({"variant": "cnn", "grid_stride": 2, "miou": 46.0}, scores)
    assert (leaves["walk"], leaves["cam"], leaves["rw"], leaves["grid_stride"]) == (46.0, 40.0, 37.0, 2)
    assert leaves["verdict"] == "leaves" and leaves["gain"] == 6.0 and leaves["left"] == 9.0
    assert s4.limit_facts({"variant": "cnn", "grid_stride": 4, "miou": 35.0}, scores)["verdict"] == "no_gain"
    alone = s4.limit_facts({"variant": "v", "grid_stride": 4, "miou": 45.0}, {"cam": {"miou": 40.0}})
    assert alone["verdict"] == "gain" and alone["rw"] is None and alone["left"] is None and alone["gain"] == 5.0
    beaten = s4.limit_facts({"variant": "cnn", "grid_stride": 2, "miou": 43.0}, {"cam": {"miou": 40.0},
                                                                                 "rw": {"miou": 44.5}})
    assert beaten["verdict"] == "takes_all" and beaten["beyond"] == 1.5
    even = s4.limit_facts({"variant": "cnn", "grid_stride": 2, "miou": 43.0}, {"cam": {"miou": 40.0},
                                                                               "rw": {"miou": 43.0}})
    assert even["verdict"] == "takes_all" and even["beyond"] == 0.0


def test_no_threshold_moves_when_the_train_masks_change(tiny_voc, tmp_path):
    """Weak labels only: the stage 4 thresholds (and so every key and label they shape) are read
    from the CAMs alone. The same CAM store with the train masks blanked to background, or removed
    altogether, gives the same thresholds; only the oracle sweep, which reads the masks, moves."""
    from orandnet_lib.data.voc import save_mask_png

    run_dir = tmp_path / "runs"
    write_run(run_dir, VOCDataset(tiny_voc, "train"))
    p = tiny_params(threshold_rule="relative")
    before = open_tiny(tiny_voc, run_dir, p)
    for image_id in VOCDataset(tiny_voc, "train").ids:
        save_mask_png(tiny_voc / "SegmentationClass" / f"{image_id}.png", np.zeros((20, 24), np.uint8))
    blanked = open_tiny(tiny_voc, run_dir, p)
    assert blanked.thresholds == before.thresholds and blanked.keys == before.keys
    assert blanked.sweeps["cnn"].best_score != before.sweeps["cnn"].best_score or \
        not np.array_equal(blanked.sweeps["cnn"].sweep.matrices, before.sweeps["cnn"].sweep.matrices)
    for image_id in VOCDataset(tiny_voc, "train").ids:
        (tiny_voc / "SegmentationClass" / f"{image_id}.png").unlink()
    unmasked = open_tiny(tiny_voc, run_dir, p)
    assert unmasked.thresholds == before.thresholds and unmasked.sweeps == {}
