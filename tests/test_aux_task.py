"""The broad auxiliary task's classes (data/aux_task.py) and the recipes that use them."""

from __future__ import annotations

import numpy as np
import pytest

from orandnet_lib.data import aux_task, fashion_mnist, synth
from orandnet_lib.methods import pretrain

from conftest import requires_fashion_mnist


def test_the_broad_catalogue_has_over_100_classes_from_four_sources_with_the_benchmark_a_small_share():
    classes = aux_task.catalogue("broad")
    assert len(classes) >= 100 and len(set(classes)) == len(classes)
    counts = aux_task.source_counts(classes)
    assert set(counts) == set(aux_task.SOURCES) and counts["fashion-mnist"] == 10
    benchmark = [c for c in classes if c.name in synth.SceneConfig().classes]
    assert len(benchmark) == 6 and len(benchmark) / len(classes) < 0.05
    assert len({c.name for c in classes}) == len(classes), "names tell the classes apart in chapter 1"


def test_minus_the_benchmark_drops_exactly_its_six_garments():
    full, minus = aux_task.catalogue("broad"), aux_task.catalogue("broad", synth.SceneConfig().classes)
    assert set(full) - set(minus) == {c for c in full if c.name in synth.SceneConfig().classes}
    assert {c.name for c in minus if c.source == "fashion-mnist"} == {"pullover", "coat", "shirt", "sneaker"}
    recipe = pretrain.AUX_RECIPES.get("aux-broad-minus")
    assert recipe.classes == minus and len(recipe.classes) == len(full) - 6
    with pytest.raises(ValueError, match="not Fashion-MNIST classes"):
        aux_task.catalogue("broad", ("teapot",))
    with pytest.raises(ValueError, match="unknown auxiliary catalogue"):
        aux_task.catalogue("imagenet")


def test_the_first_recipe_keeps_its_key_and_the_broad_ones_get_their_own():
    aux = pretrain.AUX_RECIPES.get("aux")
    assert "catalogue" not in aux.to_dict() and [c.name for c in aux.classes] == list(fashion_mnist.CLASS_NAMES)
    keys = {pretrain.weights_key(name, "cnn", "resnet18", {"channels": [8, 16]}).digest
            for name in ("aux", "aux-broad", "aux-broad-minus")}
    assert len(keys) == 3


def test_every_glyph_renders_and_no_two_are_the_same_picture():
    rng = np.random.default_rng(0)
    seen = {}
    for char in aux_task.GLYPHS:
        font = aux_task._font("DejaVuSans.ttf", 24)
        assert font.getmask(char).getbbox() is not None, f"{char!r} has no outline in DejaVu Sans"
        item = aux_task.glyph_item(char, np.random.default_rng(1))
        assert item.shape == (aux_task.ITEM_SIZE, aux_task.ITEM_SIZE) and item.dtype == np.uint8
        assert (item > 10).sum() >= 12, f"{char!r} rendered (almost) empty"
        seen[item.tobytes()] = char
    assert len(seen) == len(aux_task.GLYPHS), "a missing glyph renders as the same .notdef box"
    a, b = aux_task.glyph_item("A", rng), aux_task.glyph_item("A", rng)
    assert not np.array_equal(a, b), "font, size, shear and rotation vary"


def test_every_shape_fills_a_fair_part_of_its_box_and_a_ring_has_a_hole():
    rng = np.random.default_rng(0)
    for name in aux_task.SHAPES:
        item = aux_task.shape_item(name, rng)
        share = (item > 127).mean()
        assert 0.05 < share < 0.8, f"{name}: {share:.2f} of the box"
    ring = aux_task.shape_item("ring", rng)
    c = aux_task.ITEM_SIZE // 2
    assert ring[c, c] < 50 and (ring > 127).any()
    with pytest.raises(ValueError, match="unknown shape"):
        aux_task.shape_item("teapot", rng)


def test_a_texture_item_is_its_photograph_inside_a_blob():
    photo = np.zeros((40, 40, 3), dtype=np.float32)
    photo[..., 1] = 200.0  # a green photograph
    patch, mask = aux_task.texture_patch(photo, 20, np.random.default_rng(0))
    assert patch.shape == (20, 20, 3) and mask.shape == (20, 20) and 0.5 < mask.mean() < 0.95
    assert np.all(patch[..., 0] == 0) and np.all(patch[..., 1] >= 160), "colours are the photograph's, untinted"
    assert not mask[0, 0] and mask[10, 10]


@requires_fashion_mnist
def test_a_broad_sample_is_deterministic_and_its_label_names_what_was_pasted(monkeypatch):
    recipe = pretrain.AUX_RECIPES.get("aux-broad-smoke")
    images, labels = fashion_mnist.load("train")
    photos, pools = synth.load_photos(), pretrain.item_pools(labels, "train")
    first = pretrain.aux_sample(5, "train", recipe, photos, images, pools)
    again = pretrain.aux_sample(5, "train", recipe, photos, images, pools)
    assert np.array_equal(first[0], again[0]) and first[1] == again[1]
    drawn = []
    real = aux_task.render
    monkeypatch.setattr(aux_task, "render", lambda cls, *a, **k: drawn.append(cls) or real(cls, *a, **k))
    out = [pretrain.aux_sample(i, "train", recipe, photos, images, pools)[1] for i in range(60)]
    assert [recipe.classes[i] for i in out] == drawn
    assert len({c.source for c in drawn}) >= 3 and len(set(out)) > 30
