"""Stages 0 to 2 as library recipes: keys that the recipes really use, the record stage 2
leaves for later stages, and the dataset chapter's statistics on a tiny folder."""

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from orandnet_lib.book import prose
from orandnet_lib.book.stage import Upstream
from orandnet_lib.core import paper
from orandnet_lib.core.errors import ConfigError
from orandnet_lib.core.train import load_checkpoint
from orandnet_lib.data import synth
from orandnet_lib.data.voc import VOCDataset
from orandnet_lib.methods import pretrain
from orandnet_lib.methods.cam_classifier import build, limits_summary
from orandnet_lib.methods.cams import CamStore
from orandnet_lib.methods.classification import chance_map
from orandnet_lib.methods.ensemble import OPERATORS, OffsetChoice, recorded_variants
from orandnet_lib.stages import s0_dataset as s0
from orandnet_lib.stages import s1_classifiers as s1
from orandnet_lib.stages import s2_ensembles as s2


def tiny_params(**changes):
    return s1.Params(crop_size=16, cnn_backbone_kwargs={"channels": [8, 8, 8, 8], "layers": [1, 1, 1, 1]},
                     cnn_epochs=1, cnn_batch_size=2, vit_backbone_kwargs={"embed_dim": 16, "depth": 1, "num_heads": 2},
                     vit_stem_widths=(4, 8), vit_epochs=1, vit_batch_size=2, vit_warmup_steps=0, cam_scales=(1.0,),
                     **changes)


def test_stage1_checkpoints_and_stores_carry_the_keys_of_artifact_keys(tiny_voc, tmp_path):
    p = tiny_params()
    stage = SimpleNamespace(dir=tmp_path, data_root=tiny_voc)
    splits = s1.load_splits(stage, p)
    keys = s1.artifact_keys(p, splits.fingerprints(), {})
    assert set(keys) == {"classifier:cnn", "classifier:vit", "cams:cnn_train", "cams:cnn_val", "cams:vit_train",
                         "cams:vit_val"}
    trained = s1.train_classifiers(stage, p, splits)
    for name, t in trained.items():
        assert t.checkpoint == keys[f"classifier:{name}"].path(tmp_path, name) and t.checkpoint.exists()
        assert load_checkpoint(t.checkpoint)["identity"] == keys[f"classifier:{name}"].to_dict()
    stores = s1.compute_cams(stage, p, trained, splits)
    for name, by_split in stores.items():
        for split, st in by_split.items():
            assert st.digest == keys[f"cams:{name}_{split}"].digest
            assert keys[f"cams:{name}_{split}"].upstream == {"classifier": keys[f"classifier:{name}"].digest}
    # Without a key (stage 3's third classifier), train_classifier derives the same one.
    torch.manual_seed(0)
    again = s1.train_classifier("cnn", s1.classifier_specs(p)["cnn"], splits.fit, splits.val, tmp_path, seed=p.seed)
    assert again.key == keys["classifier:cnn"] and again.history == trained["cnn"].history  # reloaded, not retrained
    path = s1.cam_stores(again, {"train": splits.train}, tmp_path / "other", p.cam_scales)["train"]
    assert CamStore(path).digest == keys["cams:cnn_train"].digest


def test_stage1_representation_limits_use_each_networks_own_stride(tiny_voc):
    """Rows: each classifier at each CAM scale with its own output stride (the CNN's 16, the
    ViT's token stride: a stem of 4 x patch 1), then DeepLab at stride 8, scale 1; the summary's
    ``cams_limit`` holds them and the finest (largest) scale's limit."""
    p = dataclasses.replace(tiny_params(), cam_scales=(2.0, 1.0))
    stage = SimpleNamespace(data_root=tiny_voc)
    splits = s1.load_splits(stage, p)
    trained = {name: SimpleNamespace(model=build(spec, 2)) for name, spec in s1.classifier_specs(p).items()}
    limits = s1.representation_limits(p, trained, splits)
    assert list(limits.index) == [("cnn", 16, 1.0), ("cnn", 16, 2.0), ("vit", 4, 1.0), ("vit", 4, 2.0),
                                  ("deeplab", 8, 1.0)]
    assert list(limits["grid at 20x24 px"]) == ["2x2", "3x3", "5x6", "10x12", "3x3"]
    assert limits.loc[("cnn", 16, 2.0), "train limit mIoU (%)"] == limits.loc[("deeplab", 8, 1.0), "train limit mIoU (%)"]
    summary = limits_summary(limits)
    assert set(summary) == {"cnn", "vit", "deeplab"} and summary["vit"]["stride"] == 4
    assert summary["cnn"]["finest"] == {"scale": 2.0, **summary["cnn"]["scales"]["2"]}
    assert summary["deeplab"]["finest"]["val"] == limits.loc[("deeplab", 8, 1.0), "val limit mIoU (%)"]


def test_stages_1_and_2_run_on_a_tiny_folder_and_state_their_findings(tiny_voc, tmp_path):
    """``run`` of stage 1, then of stage 2 on its stores; the findings' facts are the recorded
    numbers with the verdicts they imply, and every name the templates use is in them."""
    p1, p2 = tiny_params(), s2.Params()
    stage1 = SimpleNamespace(dir=tmp_path / "s1", data_root=tiny_voc, record=lambda **kw: kw)
    summary = s1.run(stage1, p1)["summary"]
    assert set(summary) == {"classifiers", "cams", "error_overlap", "cams_limit"}  # no pretrained backbone
    facts = s1.findings(p1, summary, chance_map(VOCDataset(tiny_voc, "val")))
    assert [c["name"] for c in facts["classifiers"]] == ["cnn", "vit"] and 0 < facts["chance"] < 100
    for c in facts["classifiers"]:
        cam, recorded = c["cam"], summary["cams"][c["name"]]
        assert (cam["miou"], c["val_miou"]) == (recorded["miou"], recorded["val"]["miou"])
        assert cam["mode"] == ("over-spread" if cam["recall"] > cam["precision"] else "under-covering")
        finest = summary["cams_limit"][c["name"]]["finest"]
        assert c["ceiling"] == {"value": finest["train"], "split": "train", "stride": summary["cams_limit"][c["name"]]["stride"],
                                "scale": 1.0}
    assert facts["deeplab"]["stride"] == 8 and facts["shared"]["fp"] == summary["error_overlap"]["fp_jaccard_mean"]
    assert prose.render("01_classifiers_and_cams/findings", facts)
    unscored = {"classifiers": summary["classifiers"], "cams": {n: {"val": c["val"]} for n, c in summary["cams"].items()}}
    facts = s1.findings(p1, unscored, 50.0)  # a train split without masks: no CAM scores there, no limits
    assert [c["cam"] for c in facts["classifiers"]] == [None, None] and facts["deeplab"] is facts["shared"] is None
    assert prose.render("01_classifiers_and_cams/findings", facts)

    stage2 = SimpleNamespace(dir=tmp_path / "s2", data_root=tiny_voc, record=lambda **kw: kw,
                             upstream=lambda name: SimpleNamespace(dir=stage1.dir))
    cams = s2.run(stage2, p2)["summary"]["cams"]
    choice = s2.choose_offset(p2)
    sweeps = s2.sweep(s2.source_stores(stage2, p2), VOCDataset(tiny_voc, "train"), s2.variants(p2, choice.offset))
    facts = s2.findings(p2, sweeps, choice)
    assert facts["scored"] and (facts["and_name"], facts["or_name"]) == ("and+offset", "or+offset")
    assert facts["top_miou"] == max(c["miou"] for c in cams.values()) and facts["top"] in cams
    assert facts["weak_miou"] == min(cams[n]["miou"] for n in p2.sources)
    assert [a["source"] for a in facts["at_recall"]] == ["cnn", "vit"]
    assert facts["and_more_precise"] == all(a["precision"] is not None and a["precision"] > a["baseline_precision"]
                                            for a in facts["at_recall"])
    assert facts["or_highest_recall"] == (max(cams, key=lambda n: cams[n]["recall"]).startswith("or"))
    assert prose.render("02_or_and_ensembles/findings", facts)
    unscored = s2.findings(p2, {}, choice)  # a train split without masks: the offset alone
    assert not unscored["scored"] and "top" not in unscored and unscored["rule"] == "fixed"
    assert prose.render("02_or_and_ensembles/findings", unscored)


def test_stage2_states_the_offset_that_ran_and_its_rule():
    p = s2.Params()
    assert s2.offset_facts(p, s2.choose_offset(p)) == {"rule": "fixed", "offset": paper.OFFICIAL_OFFSET,
                                                       "offset_source": "vit", "train_split": "train", "thresholds": {},
                                                       "other": None, "official_offset": paper.OFFICIAL_OFFSET,
                                                       "official": True}
    other = dataclasses.replace(p, offset=0.3)  # a fixed offset of one's own is not called the official one
    assert not s2.offset_facts(other, s2.choose_offset(other))["official"]
    aligned = s2.offset_facts(p, OffsetChoice("align", -0.12, {"cnn": 0.41, "vit": 0.53}))
    assert aligned["other"] == "cnn" and aligned["thresholds"] == {"cnn": 0.41, "vit": 0.53}
    assert not aligned["official"]
    for facts in (s2.offset_facts(p, s2.choose_offset(p)), aligned, s2.offset_facts(other, s2.choose_offset(other))):
        assert prose.render("02_or_and_ensembles/offset", facts)


def test_stage1_says_where_each_classifier_starts():
    """A hybrid ViT on the CNN's pretrained ResNet: its own weights from scratch, its stem from
    the CNN's recipe; the broad recipe without the benchmark's garments (no weights are read)."""
    p = s1.Params(cnn_pretrained="aux-broad-minus", vit_stem="resnet")
    used = {"cnn": pretrain.Pretrained("aux-broad-minus", "cnn", "resnet18", Path("w.pt"), {})}
    facts = s1.pretraining_facts(p, used)
    cnn, vit = facts["classifiers"]
    assert cnn == {"name": "cnn", "start": {"kind": "recipe", "setting": "aux-broad-minus"}, "stem": None}
    assert vit["start"] == {"kind": "scratch", "setting": ""}
    assert vit["stem"] == {"backbone": "resnet18", "stride": 8, "start": {"kind": "recipe", "setting": "aux-broad-minus"}}
    (recipe,) = facts["recipes"]
    assert recipe["catalogue"] == "broad" and recipe["exclude"] == list(synth.SceneConfig().classes)
    assert sum(recipe["sources"].values()) == len(recipe["classes"]) and recipe["hold_out_every"] == 10
    assert prose.render("01_classifiers_and_cams/pretraining", facts)
    timm = s1.pretraining_facts(s1.Params(cnn_pretrained="timm", vit_pretrained="weights/vit.pt"), {})
    assert [c["start"]["kind"] for c in timm["classifiers"]] == ["timm", "file"] and timm["recipes"] == []
    assert prose.render("01_classifiers_and_cams/pretraining", timm)


def test_stage2_reads_the_stores_stage1_names():
    p1, p2 = s1.Params(), s2.Params()
    data = {split: f"fp-{split}" for split in ("train", "val")}
    stage1 = s1.artifact_keys(p1, data, {})
    upstream = {name: key.digest for name, key in stage1.items()}
    keys = s2.artifact_keys(p2, data, upstream)
    assert set(keys) == {"cams:or+offset_train", "cams:and+offset_train"}
    for key in keys.values():
        assert key.upstream == {"cams:cnn_train": upstream["cams:cnn_train"], "cams:vit_train": upstream["cams:vit_train"]}
    assert keys["cams:and+offset_train"].spec == {"operator": "and", "offsets": {"vit": 0.15}, "sources": ["cnn", "vit"]}


def test_later_stages_rebuild_stage2s_variants_from_its_record():
    p = s2.Params(offset=0.2)
    choice = s2.choose_offset(p)
    recorded = Upstream("02_or_and_ensembles", None, {"params": {}, "metrics": {"ensemble": s2.ensemble_record(p, choice)}})
    assert recorded_variants(recorded.metrics["ensemble"]) == s2.variants(p, 0.2)
    assert recorded_variants(recorded.metrics["ensemble"])["and+offset"].offsets == (("vit", 0.2),)
    OPERATORS.add("geo", lambda stack: stack.prod(axis=0) ** (1 / len(stack)), standard=True)
    try:
        assert "geo" not in recorded_variants(recorded.metrics["ensemble"])  # what stage 2 built, not what is registered now
        with_geo = Upstream("02_or_and_ensembles", None, {"params": {}, "metrics": {"ensemble": s2.ensemble_record(p, choice)}})
        assert "geo" in recorded_variants(with_geo.metrics["ensemble"]) and "geo" in s2.variants(p, 0.2)
    finally:
        OPERATORS.remove("geo")


def test_stage2_refuses_a_store_variant_it_does_not_build(tmp_path):
    p = s2.Params(store_variants=("or+offset", "xor"))
    with pytest.raises(ConfigError, match=r"store_variants \['xor'\] are not ensemble variants; known: cnn, vit"):
        s2.write_stores(SimpleNamespace(dir=tmp_path), p, {}, None, s2.variants(p, p.offset), s2.choose_offset(p))
    assert not (tmp_path / "cams").exists()


def test_stage0_statistics_on_a_folder_not_generated_here(tiny_voc):
    stage = SimpleNamespace(data_root=tiny_voc, profile="test")
    p = s0.Params()
    assert s0.artifact_keys(p, {}, {}) == {}
    data = s0.open_benchmark(stage, p)
    assert data.generator is None and list(data.datasets) == ["train", "val"]
    facts, config = s0.overview(stage, data)
    assert not facts["generated"] and facts["images"] == {"train": 3, "val": 2} and config is None
    assert facts["classes"] == ["disc", "bar"] and facts["unmasked"] == []
    stats = s0.class_statistics(data)
    edges, share = s0.size_bins(stats, "train")
    context = s0.context_bias(data)
    assert context.rates is None and list(context.matrix.index) == ["disc", "bar"]
    summary = s0.summarise(stage, data, stats, edges, share, context)
    d = summary["dataset"]
    assert d["images"] == {"train": 3, "val": 2} and d["objects"] == 8 and "context_bias_measured" not in d
    assert abs(sum(d["size_share"].values()) - 1) < 1e-9
    assert d["size_edges"] == list(edges)
    facts = s0.findings(summary, stats, context)
    assert (facts["objects"], facts["scored_images"], facts["scored_splits"]) == (8, 5, ["train", "val"])
    assert facts["context"] is None and facts["small_below"] == edges[0]
    assert d["masks"] == {"train": True, "val": True} and d["labels_source"] == "labels.csv"  # VOCWriter writes it
    assert s0.generator_facts(data) == {"generator": None}
    for name, f in [("overview", s0.overview(stage, data)[0]), ("findings", facts), ("calibration", s0.generator_facts(data))]:
        assert prose.render(f"00_dataset/{name}", f)  # every name the template uses is in the facts


def test_the_variant_table_says_what_each_precision_leaves_out():
    """Beside each precision: the classes never predicted at that score and the empty class maps."""
    from orandnet_lib.book.chapters import ensembles
    from orandnet_lib.core.metrics import ThresholdSweep

    sweep = ThresholdSweep(3, [0.2, 0.6])
    sweep.update(np.array([[[0.9, 0.5, 0.0, 0.0]], [[0.0, 0.0, 0.0, 0.0]]]), [1, 2], np.array([[1, 1, 2, 0]]))
    table = ensembles.variant_table({"and": sweep.result()})
    row = table.loc[("best mIoU", "and")]
    assert row["empty maps %"] == 50.0 and row["unpredicted"] == 1  # class 2's map is empty: never predicted
