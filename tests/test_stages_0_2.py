"""Stages 0 to 2 as library recipes: keys that the recipes really use, the record stage 2
leaves for later stages, and the dataset chapter's statistics on a tiny folder."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from orandnet_lib.book import prose
from orandnet_lib.book.stage import Upstream
from orandnet_lib.core.errors import ConfigError
from orandnet_lib.core.train import load_checkpoint
from orandnet_lib.methods.cam_classifier import build
from orandnet_lib.methods.cams import CamStore
from orandnet_lib.methods.ensemble import OPERATORS
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
    summary = s1.limits_summary(limits)
    assert set(summary) == {"cnn", "vit", "deeplab"} and summary["vit"]["stride"] == 4
    assert summary["cnn"]["finest"] == {"scale": 2.0, **summary["cnn"]["scales"]["2"]}
    assert summary["deeplab"]["finest"]["val"] == limits.loc[("deeplab", 8, 1.0), "val limit mIoU (%)"]


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
    assert s2.variants_from(recorded) == s2.variants(p, 0.2)
    assert s2.variants_from(recorded)["and+offset"].offsets == (("vit", 0.2),)
    OPERATORS.add("geo", lambda stack: stack.prod(axis=0) ** (1 / len(stack)), standard=True)
    try:
        assert "geo" not in s2.variants_from(recorded)  # what stage 2 built, not what is registered now
        with_geo = Upstream("02_or_and_ensembles", None, {"params": {}, "metrics": {"ensemble": s2.ensemble_record(p, choice)}})
        assert "geo" in s2.variants_from(with_geo) and "geo" in s2.variants(p, 0.2)
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
    from orandnet_lib.core.metrics import ThresholdSweep

    sweep = ThresholdSweep(3, [0.2, 0.6])
    sweep.update(np.array([[[0.9, 0.5, 0.0, 0.0]], [[0.0, 0.0, 0.0, 0.0]]]), [1, 2], np.array([[1, 1, 2, 0]]))
    table = s2.variant_table({"and": sweep.result()})
    row = table.loc[("best mIoU", "and")]
    assert row["empty maps %"] == 50.0 and row["unpredicted"] == 1  # class 2's map is empty: never predicted
