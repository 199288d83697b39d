"""The auxiliary pretraining (methods/pretrain.py) and how every network starts from it: the
task's images and splits, the cache, loading into each backbone, IRN's frozen backbone and
the stage keys that name a recipe's settings. All on the "aux-smoke" recipe, cached in a
folder of this module's own."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed
from torch.utils.data import TensorDataset

from orandnet_lib.book import prose
from orandnet_lib.book.chapters import classifiers as chapter
from orandnet_lib.core.train import TrainConfig, fit
from orandnet_lib.data import fashion_mnist, synth
from orandnet_lib.methods import pretrain
from orandnet_lib.nets.boundary import BoundaryNet
from orandnet_lib.nets.backbone import backbone_shape, load_weights
from orandnet_lib.nets.classifiers import CNNCAM, ViTCAM
from orandnet_lib.nets.deeplab import DeepLab
from orandnet_lib.stages import s1_classifiers as s1
from orandnet_lib.stages import s4_refinement as s4
from orandnet_lib.stages import s5_segmentation as s5

from conftest import requires_fashion_mnist

pytestmark = requires_fashion_mnist

RECIPE = "aux-smoke"
SHAPE = {"channels": [8, 16, 24, 32], "layers": [1, 1, 1, 1]}  # the smoke profile's ResNet
TIMM_SHAPE = {k: tuple(v) for k, v in SHAPE.items()}
VIT = {"backbone": "vit_tiny_patch16_224", "backbone_kwargs": {"embed_dim": 32, "depth": 1, "num_heads": 2},
       "patch_size": 1, "stem_widths": (8, 16, 32)}
QUIET: dict[str, Any] = {"progress": False, "log": lambda message: None}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as mp:
        folder = tmp_path_factory.mktemp("aux_cache")
        mp.setenv(pretrain.CACHE_ENV, str(folder))
        yield folder


@pytest.fixture(scope="module")
def cnn_file(cache: Path) -> tuple[Path, int]:
    """The smoke ResNet's weights, trained here: (path, how many times ``fit`` ran)."""
    calls = []
    real = pretrain.fit
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pretrain, "fit", lambda *a, **k: calls.append(1) or real(*a, **k))
        path = pretrain.weights_file(RECIPE, "cnn", "resnet18", SHAPE, **QUIET)
    return path, len(calls)


@pytest.fixture(scope="module")
def vit_file(cache: Path) -> Path:
    shape = backbone_shape("vit", VIT["backbone_kwargs"], VIT["patch_size"], VIT["stem_widths"])
    return pretrain.weights_file(RECIPE, "vit", VIT["backbone"], shape, **QUIET)


def saved(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


class Recorder:
    """Stands in for synth.render_item and records the index of each item it is given."""

    def __init__(self, items: np.ndarray):
        self.items, self.indices = items, []
        self.real = synth.render_item

    def __call__(self, item: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        offset = item.__array_interface__["data"][0] - self.items.__array_interface__["data"][0]
        self.indices.append(offset // self.items[0].nbytes)
        return self.real(item, *args, **kwargs)


# ----------------------------------------------------------------------------- the task

def test_a_sample_is_deterministic_and_labelled_with_the_class_of_the_item_pasted(monkeypatch):
    images, labels = fashion_mnist.load("train")
    recipe, photos = pretrain.AUX_RECIPES.get(RECIPE), synth.load_photos()
    pools = pretrain.item_pools(labels, "train")
    first, label = pretrain.aux_sample(3, "train", recipe, photos, images, pools)
    again, label_again = pretrain.aux_sample(3, "train", recipe, photos, images, pools)
    assert np.array_equal(first, again) and label == label_again
    assert first.shape == (recipe.image_size, recipe.image_size, 3) and first.dtype == np.uint8
    recorder = Recorder(images)
    monkeypatch.setattr(synth, "render_item", recorder)
    drawn = [pretrain.aux_sample(i, "train", recipe, photos, images, pools)[1] for i in range(40)]
    assert [int(labels[i]) for i in recorder.indices] == drawn
    assert len(set(drawn)) > 5  # the draws cover the classes


def test_the_val_split_pastes_only_held_out_items_and_train_never_does(monkeypatch):
    images, labels = fashion_mnist.load("train")
    monkeypatch.setattr(fashion_mnist, "load", lambda split: (images, labels))  # the arrays the recorder knows
    for split, held_out in (("val", True), ("train", False)):
        pools = pretrain.item_pools(labels, split)
        indices = np.concatenate(list(pools.values()))
        assert np.all((indices % 10 == 0) == held_out)
        assert all(np.all(labels[pool] == c) for c, pool in pools.items())
        recorder = Recorder(images)
        monkeypatch.setattr(synth, "render_item", recorder)
        _, targets = pretrain.aux_images(pretrain.AUX_RECIPES.get(RECIPE), split, progress=False, n=30)
        drawn = np.array(recorder.indices)
        assert len(drawn) == 30 and np.all((drawn % 10 == 0) == held_out)
        assert np.array_equal(labels[drawn], targets)
    train, val = (np.concatenate(list(pretrain.item_pools(labels, s).values())) for s in ("train", "val"))
    assert not set(train) & set(val) and len(train) + len(val) == len(labels)


def test_two_rendering_processes_make_the_one_process_images(monkeypatch):
    recipe = pretrain.AUX_RECIPES.get(RECIPE)
    monkeypatch.setattr(pretrain, "_CHUNK", 7)  # 30 images: five chunks over two forked workers
    one = pretrain.aux_images(recipe, "train", progress=False, n=30, workers=1)
    two = pretrain.aux_images(recipe, "train", progress=False, n=30, workers=2)
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1])
    assert one[0].std() > 10 and len(set(one[1].tolist())) > 3  # real images, several classes
    assert not pretrain._GENERATOR  # nothing left behind for the next call


# ----------------------------------------------------------------------------- the cache

def test_weights_are_trained_once_and_another_shape_is_another_file(cnn_file, cache, monkeypatch):
    path, calls = cnn_file
    assert calls == 1 and path.exists() and path.parent == cache / "pretrained"
    monkeypatch.setattr(pretrain, "fit", lambda *a, **k: pytest.fail("trained again"))
    assert pretrain.weights_file(RECIPE, "cnn", "resnet18", TIMM_SHAPE, **QUIET) == path  # tuples or lists alike
    other = pretrain.cached_path(RECIPE, "cnn", "resnet18", {**SHAPE, "channels": [8, 16, 24, 48]})
    assert other != path and not other.exists()
    info = pretrain.summary(path)
    assert len(info["history"]) == pretrain.AUX_RECIPES.get(RECIPE).epochs
    assert info["val_accuracy"] == info["history"][-1]["val_accuracy"]


# ----------------------------------------------------------------------------- loading into each network

def test_every_cnn_network_gets_exactly_the_saved_tensors(cnn_file):
    path, _ = cnn_file
    weights = saved(path)
    torch.manual_seed(0)
    deeplab = DeepLab(3, "resnet18", str(path), head="largefov", rates=(2,), head_channels=8, output_stride=8,
                      backbone_kwargs=SHAPE)
    assert deeplab.stride == 8
    modules = {"CNNCAM": CNNCAM(3, "resnet18", str(path), backbone_kwargs=TIMM_SHAPE).features,
               "DeepLab": deeplab.backbone,
               "BoundaryNet": BoundaryNet("resnet18", str(path), backbone_kwargs=TIMM_SHAPE).features}
    for name, module in modules.items():
        state = module.state_dict()
        assert set(state) == set(weights), name
        assert all(torch.equal(state[k], weights[k]) for k in weights), name
    scratch = CNNCAM(3, "resnet18", "", backbone_kwargs=TIMM_SHAPE).features.state_dict()
    assert not all(torch.equal(scratch[k], weights[k]) for k in weights)  # the check above is not vacuous


def test_a_vit_of_another_image_size_loads_with_its_position_embedding_resampled(vit_file):
    weights = saved(vit_file)
    vit = ViTCAM(3, VIT["backbone"], str(vit_file), img_size=64, patch_size=VIT["patch_size"],
                 stem_widths=VIT["stem_widths"], backbone_kwargs=VIT["backbone_kwargs"])
    state = vit.vit.state_dict()
    assert weights["pos_embed"].shape == (1, 1 + 6 * 6, 32)  # trained at 48 px: a 6 x 6 token grid
    assert state["pos_embed"].shape == (1, 1 + 8 * 8, 32)
    assert torch.equal(state["pos_embed"], resample_abs_pos_embed(weights["pos_embed"], [8, 8], num_prefix_tokens=1))
    assert all(torch.equal(state[k], weights[k]) for k in weights if k != "pos_embed")
    assert vit(torch.zeros(1, 3, 64, 64)).shape == (1, 3)


def test_weights_of_another_shape_are_refused_naming_the_file(cnn_file, tmp_path):
    path, _ = cnn_file
    wider = timm.create_model("resnet18", features_only=True, out_indices=(-1,), channels=(8, 16, 24, 48),
                              layers=(1, 1, 1, 1))
    with pytest.raises(ValueError, match=path.name):
        load_weights(wider, path)
    # equal widths: strided, the third stage has a projection shortcut; dilated (output stride 8) it has none
    equal = {"channels": (8, 16, 16, 32), "layers": (1, 1, 1, 1)}
    strided = timm.create_model("resnet18", features_only=True, out_indices=(-1,), **equal)
    torch.save({"state_dict": strided.state_dict()}, tmp_path / "equal.pt")
    dilated = timm.create_model("resnet18", features_only=True, out_indices=(-1,), output_stride=8, **equal)
    with pytest.raises(ValueError, match="projection shortcut"):
        load_weights(dilated, tmp_path / "equal.pt")
    with pytest.raises(FileNotFoundError, match="no-such-file.pt does not exist"):
        CNNCAM(3, "resnet18", "no-such-file.pt", backbone_kwargs=TIMM_SHAPE)


def test_a_constructor_never_trains_a_stage_resolves_the_recipe_once(cnn_file, monkeypatch):
    path, _ = cnn_file
    monkeypatch.setattr(pretrain, "fit", lambda *a, **k: pytest.fail("trained again"))
    with pytest.raises(FileNotFoundError, match="resolved to its file by the stage"):
        CNNCAM(3, "resnet18", RECIPE, backbone_kwargs=TIMM_SHAPE)  # a recipe's name is not a weights file
    assert pretrain.resolve(RECIPE, "cnn", "resnet18", SHAPE, **QUIET) == str(path)
    for setting in ("", "timm", "some/file.pt"):
        assert pretrain.resolve(setting, "cnn", "resnet18", SHAPE) == setting


def test_a_frozen_backbone_keeps_its_weights_and_batchnorm_statistics(cnn_file):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(4, 3, 32, 32))
    cfg = TrainConfig(epochs=1, batch_size=4, lr=0.01, optimizer="adamw", device="cpu")

    def step(net: BoundaryNet) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        before = {k: v.clone() for k, v in net.state_dict().items()}
        fit(net, data, lambda m, batch: (m(batch[0]).mean(), {}), cfg, progress=False)
        return before, net.state_dict()

    frozen = BoundaryNet("resnet18", str(cnn_file[0]), backbone_kwargs=TIMM_SHAPE, freeze_backbone=True)
    assert not any(p.requires_grad for p in frozen.features.parameters())
    frozen.train()
    assert frozen.training and frozen.head.training and not frozen.features.training
    before, after = step(frozen)
    backbone = [k for k in before if k.startswith("features.")]
    assert any("running_mean" in k for k in backbone)
    assert all(torch.equal(before[k], after[k]) for k in backbone)
    assert not torch.equal(before["head.weight"], after["head.weight"])  # the new layers learn
    before, after = step(BoundaryNet("resnet18", str(cnn_file[0]), backbone_kwargs=TIMM_SHAPE))
    assert not all(torch.equal(before[k], after[k]) for k in backbone)  # unfrozen, the same step changes it


# ----------------------------------------------------------------------------- keys

def test_identity_names_the_recipes_settings_without_reading_a_file(monkeypatch):
    monkeypatch.setattr(pretrain, "weights_file", lambda *a, **k: pytest.fail("identity trained or read weights"))
    for setting in ("", "timm", "weights/some-file.pt"):
        assert pretrain.keyed_setting(setting, "cnn", "resnet18", SHAPE) == setting
    base = pretrain.keyed_setting(RECIPE, "cnn", "resnet18", SHAPE)
    assert base == f"{RECIPE}:{pretrain.weights_key(RECIPE, 'cnn', 'resnet18', SHAPE).digest}"
    assert pretrain.keyed_setting(RECIPE, "cnn", "resnet18", {**SHAPE, "layers": [2, 1, 1, 1]}) != base
    assert pretrain.keyed_setting(RECIPE, "vit", "resnet18", SHAPE) != base
    entry = pretrain.AUX_RECIPES.entry(RECIPE)
    monkeypatch.setitem(pretrain.AUX_RECIPES._entries, RECIPE,
                        dataclasses.replace(entry, obj=dataclasses.replace(entry.obj, epochs=entry.obj.epochs + 1)))
    assert pretrain.keyed_setting(RECIPE, "cnn", "resnet18", SHAPE) != base


@pytest.mark.parametrize("module, params, name", [
    (s1, s1.Params(cnn_pretrained=RECIPE), "classifier:cnn"),
    (s1, s1.Params(vit_pretrained=RECIPE), "classifier:vit"),
    (s4, s4.Params(boundary_pretrained=RECIPE), "boundary_net:cnn"),
    (s5, s5.Params(pretrained=RECIPE), "deeplab:gt/curriculum/s0"),
])
def test_a_stage_key_changes_when_its_recipe_changes(module, params, name, monkeypatch):
    fake: defaultdict[str, str] = defaultdict(lambda: "0123456789abcdef")
    before = module.artifact_keys(params, fake, fake)[name].digest
    entry = pretrain.AUX_RECIPES.entry(RECIPE)
    monkeypatch.setitem(pretrain.AUX_RECIPES._entries, RECIPE,
                        dataclasses.replace(entry, obj=dataclasses.replace(entry.obj, n_train=entry.obj.n_train + 1)))
    assert module.artifact_keys(params, fake, fake)[name].digest != before


# ----------------------------------------------------------------------------- chapter 1's section

def test_chapter_one_shows_each_pretrained_backbone(cnn_file, vit_file, monkeypatch):
    monkeypatch.setattr(pretrain, "fit", lambda *a, **k: pytest.fail("trained again"))
    p = s1.Params(cnn_backbone_kwargs=SHAPE, cnn_pretrained=RECIPE, vit_backbone=VIT["backbone"],
                  vit_backbone_kwargs=VIT["backbone_kwargs"], vit_patch_size=VIT["patch_size"],
                  vit_stem_widths=VIT["stem_widths"], vit_pretrained=RECIPE)
    pretrained = s1.pretrained_backbones(p, progress=False)
    table = chapter.pretraining_table(pretrained)
    assert list(table.index) == ["cnn", "vit"]
    assert list(table["cached file"]) == [cnn_file[0].name, vit_file.name]
    assert table.loc["cnn", "val accuracy (%)"] == pretrain.summary(cnn_file[0])["val_accuracy"]
    fig = chapter.pretraining_examples(pretrained, n=6)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 6 and set(titles) <= set(fashion_mnist.CLASS_NAMES)
    assert min(ax.title.get_fontsize() for ax in fig.axes) >= 9 and fig.get_figwidth() <= 7.2
    facts = s1.pretraining_facts(p, pretrained)
    assert [c["start"] for c in facts["classifiers"]] == [{"kind": "recipe", "setting": RECIPE}] * 2
    assert [r["name"] for r in facts["recipes"]] == [RECIPE]  # one recipe, said once
    assert facts["recipes"][0]["n_val"] == pretrain.AUX_RECIPES.get(RECIPE).n_val
    assert prose.render("01_classifiers_and_cams/pretraining", facts)
    timm = s1.pretraining_facts(s1.Params(cnn_pretrained="timm"), {})
    assert timm["classifiers"][0]["start"]["kind"] == "timm" and timm["recipes"] == []

