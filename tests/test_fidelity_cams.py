"""Issue 14, items 4 and 5: the representation limit of a CAM grid (hand-computed masks) and
the ViT's gradient-weighted attention attribution (the official code's CAM method for its ViT)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from orandnet_lib.core.metrics import ConfusionMatrix
from orandnet_lib.data.voc import VOCDataset, VOCWriter
from orandnet_lib.methods.cams import (CAM_METHODS, CamStore, cam_function, compute_store, grid_limit, grid_limits,
                                       grid_roundtrip, grid_shape, multiscale_cam)
from orandnet_lib.nets.classifiers import create_classifier

# -- the representation limit ---------------------------------------------------------------------


def two_pixel_mask() -> np.ndarray:
    mask = np.zeros((16, 16), np.uint8)
    mask[5, 5:7] = 1  # a 2-pixel object of class 1
    return mask


def square_mask() -> np.ndarray:
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 2  # an 8x8 square of class 2, aligned with 2- and 4-pixel cells
    return mask


def test_grid_shape_is_the_ceiling_of_the_scaled_size_over_the_stride():
    assert grid_shape(96, 96, 16, 1.0) == (6, 6)
    assert grid_shape(96, 96, 16, 2.0) == (12, 12)  # the finest of the paper's four scales
    assert grid_shape(96, 96, 16, 0.5) == (3, 3)
    assert grid_shape(375, 500, 16, 1.0) == (24, 32)  # a VOC photo: 23.4 -> 24 rows
    assert grid_shape(100, 100, 16, 1.5) == (10, 10)  # 9.375 -> 10


def test_a_two_pixel_object_vanishes_on_a_4x_coarser_grid():
    """Each 4x4 cell holds at most 2/16 of the object; bilinear upsampling cannot raise that
    above background's 14/16, so the object is lost: IoU 0 for it, 254/256 for background."""
    mask = two_pixel_mask()
    out = grid_roundtrip(mask, (4, 4), 3)
    assert (out == 0).all()
    scores = ConfusionMatrix(2).update(out, mask).scores()
    assert scores.miou == pytest.approx((254 / 256 + 0) / 2)
    assert (grid_roundtrip(mask, (16, 16), 3) == mask).all()  # the pixel grid loses nothing


def test_an_8x8_square_survives_a_2x_grid_exactly_and_loses_its_corners_on_a_4x_grid():
    """2x (cells of 2x2): the pixel centre next to the square's edge lies 0.75 cell inside the
    square's cells, the corner pixel scores 0.75^2 = 0.5625 > 0.5 for the square, the first
    pixel outside 0.25: exact. 4x (cells of 4x4): the corner pixel scores 0.625^2 = 0.39 < 0.5
    and goes to background; edge pixels 0.625 stay: 60 of the 64 pixels survive."""
    mask = square_mask()
    assert (grid_roundtrip(mask, (8, 8), 3) == mask).all()
    coarse = grid_roundtrip(mask, (4, 4), 3)
    expected = mask.copy()
    for y, x in ((4, 4), (4, 11), (11, 4), (11, 11)):
        expected[y, x] = 0
    assert (coarse == expected).all()


def test_grid_limits_over_a_split_match_the_hand_computed_miou(tmp_path):
    """Two images: the 2-pixel object (class 1) and the 8x8 square (class 2), 16 x 16 px.
    Stride 4 at scale 1 (a 4x4 grid): background keeps 254 + 192 of its 446 pixels and gains
    the 2 + 4 lost ones (IoU 446/452), the object scores 0, the square 60/64. Stride 8 at scale
    2 gives the same 4x4 grid; stride 2 (8x8): 446/448, 0, 1; stride 1: all exact. A 1x1 grid
    (stride 8 at scale 0.5) marks everything background: 446/512, 0, 0."""
    with VOCWriter(tmp_path / "voc", ("background", "dot", "square")) as writer:
        for i, mask in enumerate((two_pixel_mask(), square_mask())):
            writer.add("val", f"val_{i}", np.zeros((16, 16, 3), np.uint8), mask)
    ds = VOCDataset(tmp_path / "voc", "val")
    limits = grid_limits(ds, [(4, 1.0), (8, 2.0), (2, 1.0), (1, 1.0), (4, 1.0)])
    assert list(limits) == [(4, 1.0), (8, 2.0), (2, 1.0), (1, 1.0)]  # each grid once
    assert limits[(4, 1.0)] == pytest.approx(100 * (446 / 452 + 0 + 60 / 64) / 3)
    assert limits[(8, 2.0)] == pytest.approx(limits[(4, 1.0)])
    assert limits[(2, 1.0)] == pytest.approx(100 * (446 / 448 + 0 + 1) / 3)
    assert limits[(1, 1.0)] == pytest.approx(100.0)
    # stride 8 at scale 0.5: one cell for the whole image; the square's 1/4 loses to background
    assert grid_limit(ds, 8, (0.5, 2.0)) == {"stride 8 @ scale 0.5": pytest.approx(100 * (446 / 512 + 0 + 0) / 3),
                                             "stride 8 @ scale 2": pytest.approx(limits[(4, 1.0)])}


def test_ignored_pixels_count_for_no_class_and_are_not_scored():
    mask = square_mask()
    mask[0, :] = 255
    out = grid_roundtrip(mask, (8, 8), 3)
    assert (out[1:] == mask[1:]).all() and set(np.unique(out)) <= {0, 2}


# -- the ViT's attention attribution -------------------------------------------------------------

TINY_VIT = {"backbone": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 8,
            "backbone_kwargs": {"embed_dim": 16, "depth": 2, "num_heads": 2}}


def tiny_vit(pool: str = "token", classes: int = 3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_classifier("vit", classes, pool=pool, **TINY_VIT).eval()


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_attribution_shape_sign_and_batch_independence(pool):
    model = tiny_vit(pool)
    x = torch.randn(2, 3, 32, 48)
    out = model.attribution(x)
    assert out.shape == (2, 3, 4, 6) and out.min() >= 0 and out.amax(dim=(2, 3)).gt(0).all()
    torch.testing.assert_close(model.attribution(x[1:]), out[1:], rtol=1e-4, atol=1e-6)  # per image
    assert all(blk.attn.fused_attn == model.vit.blocks[0].attn.fused_attn for blk in model.vit.blocks)


def test_attribution_is_the_rollout_of_gradient_weighted_attention():
    """The row-vector propagation equals the rollout written as matrices, R = I, then for every
    block R <- R + mean_heads(relu(grad A * A)) @ R, read at the class token's row."""
    model = tiny_vit("token")
    x = torch.randn(1, 3, 32, 32)
    attns: list[torch.Tensor] = []
    for blk in model.vit.blocks:
        blk.attn.fused_attn = False
        blk.attn.attn_drop.register_forward_hook(lambda m, i, o: attns.append(o))
    logits = model(x)
    grads = torch.autograd.grad(logits[0, 2], attns)
    n = attns[0].shape[-1]
    rollout = torch.eye(n)
    for a, g in zip(attns, grads):
        rollout = rollout + (g * a).clamp(min=0).mean(dim=1)[0] @ rollout
    expected = rollout[0, 1:].reshape(4, 4)
    attns.clear()
    got = model.attribution(x, torch.tensor([[0, 0, 1]]))
    torch.testing.assert_close(got[0, 2], expected.detach(), rtol=1e-4, atol=1e-7)


def test_only_the_images_classes_are_computed(monkeypatch):
    model = tiny_vit("token")
    calls = []
    grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(1) or grad(*a, **k))
    x = torch.randn(2, 3, 32, 32)
    labels = torch.tensor([[1, 0, 0], [1, 0, 1]])
    out = model.attribution(x, labels)
    assert len(calls) == 2  # classes 1 and 3 appear in the batch; class 2 is never computed
    assert out[:, 1].eq(0).all() and out[0, 2].eq(0).all() and out[1, 2].gt(0).any()
    torch.testing.assert_close(out[0, 0], model.attribution(x[:1])[0, 0])  # the other image changes nothing


def mask_attention_to(token: int):
    """A forward hook on attn_drop: no query attends to ``token`` (its column set to zero,
    rows renormalised)."""
    def hook(module, inputs, attn):
        attn = attn.clone()
        attn[..., token] = 0
        return attn / attn.sum(dim=-1, keepdim=True)
    return hook


def test_a_token_no_one_attends_to_gets_zero_relevance():
    """With every block's attention to patch token j zeroed, j's content stays at position j:
    the class token (pool="token") is a function of the other tokens only, so the class logit
    cannot depend on patch j (checked by changing j's pixels), and every rollout path into j
    passes an attention weight A[., j] = 0, so its relevance is exactly zero."""
    model = tiny_vit("token")
    j = 5  # patch (1, 1) of the 4 x 4 grid; token index 1 + j after the class token
    for blk in model.vit.blocks:
        blk.attn.fused_attn = False
        blk.attn.attn_drop.register_forward_hook(mask_attention_to(1 + j))
    x = torch.randn(1, 3, 32, 32)
    changed = x.clone()
    changed[..., 8:16, 8:16] = torch.randn(3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(changed), model(x))  # patch j cannot influence the classes
    out = model.attribution(x)
    assert out[0, :, 1, 1].eq(0).all()
    assert out[0].flatten(1).gt(0).sum(dim=1).ge(10).all()  # the others are (mostly) relevant


def test_a_class_whose_logit_ignores_the_image_gets_no_relevance_beyond_the_identity():
    """A zero head row makes the logit constant: every gradient is zero, so every block adds
    nothing and R stays the identity. Read at the class token (pool="token"), the patches get
    0; at the mean of the patch rows (pool="avg"), each of the 16 patches gets exactly 1/16."""
    for pool, expected in (("token", 0.0), ("avg", 1 / 16)):
        model = tiny_vit(pool)
        with torch.no_grad():
            model.head.weight[1] = 0
        out = model.attribution(torch.randn(1, 3, 32, 32))
        torch.testing.assert_close(out[0, 1], torch.full((4, 4), expected))


def test_attribution_is_a_registered_cam_method_given_the_images_classes(tiny_voc, tmp_path):
    model = tiny_vit("token", classes=2)
    assert CAM_METHODS.label("attribution") == "attention attribution"
    assert CAM_METHODS.entry("attribution").attrs == {"gradient": True, "classes": True}
    x = torch.randn(1, 3, 32, 32)
    labels = torch.tensor([[0, 1]])
    out = multiscale_cam(cam_function(model, "attribution"), x, (1.0, 0.5), flip=True, classes=labels)
    assert out.shape == (1, 2, 32, 32) and out[0, 0].eq(0).all() and out[0, 1].gt(0).any()
    ds = VOCDataset(tiny_voc, "train")
    st = CamStore(compute_store(model, ds, tmp_path / "cams", scales=(1.0, 0.5), method="attribution",
                                progress=False))
    assert st.meta["method"] == "attribution"
    for image_id, cams, ids in st:
        assert cams.shape == (len(ids), 20, 24) and cams.min() >= 0 and np.allclose(cams.max(axis=(1, 2)), 1, atol=1e-2)
    cnn = create_classifier("cnn", 2, backbone="resnet18", backbone_kwargs={"channels": (8, 8, 8, 8)})
    from orandnet_lib.core.errors import ConfigError

    with pytest.raises(ConfigError, match="CNNCAM has no attention attribution"):
        cam_function(cnn, "attribution")
