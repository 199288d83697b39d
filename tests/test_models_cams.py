"""CAM classifiers, multi-scale CAM inference and the CAM store."""

import numpy as np
import pytest
import timm
import torch
from torch import nn

from orandnet_lib.methods.cams import CamStore, CamStoreWriter, compute_store, multiscale_cam, normalise, to_tensor
from orandnet_lib.core.errors import ConfigError, DataError
from orandnet_lib.methods.cam_classifier import ClassifierSpec, cam_key
from orandnet_lib.nets.classifiers import CNNCAM, ViTCAM, create_classifier
from orandnet_lib.data.voc import VOCDataset

SMALL_RESNET = {"backbone": "resnet18", "backbone_kwargs": {"channels": (8, 16, 16, 32)}}
SMALL_VIT = {"backbone": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 1, "stem_widths": (8, 16),
             "backbone_kwargs": {"embed_dim": 32, "depth": 1, "num_heads": 2}}


def test_cnn_cam_shapes_and_output_stride_16():
    torch.manual_seed(0)
    model = create_classifier("cnn", 5, **SMALL_RESNET).eval()
    x = torch.randn(2, 3, 64, 96)
    assert model(x).shape == (2, 5)
    assert model.stride == 16 and model.cam(x).shape == (2, 5, 4, 6)
    assert model.classifier.bias is None


def test_cnn_cam_head_with_known_weights():
    """With a one-hot classifier the CAM of class c is feature channel j, and the logit is
    the CAM's spatial mean (global average pooling commutes with the 1x1 classifier)."""
    torch.manual_seed(0)
    model = create_classifier("cnn", 3, **SMALL_RESNET).eval()
    with torch.no_grad():
        model.classifier.weight.zero_()
        for c, j in enumerate((0, 5, 31)):
            model.classifier.weight[c, j] = 1.0
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        feats, cam, logits = model.feature_map(x), model.cam(x), model(x)
    torch.testing.assert_close(cam[:, 1], feats[:, 5])
    torch.testing.assert_close(cam[:, 2], feats[:, 31])
    torch.testing.assert_close(logits, cam.mean(dim=(2, 3)), rtol=1e-5, atol=1e-6)


def test_vit_cam_head_is_exact_for_average_pooling_and_gradcam_has_cam_shape():
    torch.manual_seed(0)
    model = create_classifier("vit", 4, **SMALL_VIT).eval()
    assert model.stride == 4
    x = torch.randn(2, 3, 32, 48)  # dynamic image size: another shape than the training one
    with torch.no_grad():
        cam, logits = model.cam(x), model(x)
    assert cam.shape == (2, 4, 8, 12)
    torch.testing.assert_close(logits, cam.mean(dim=(2, 3)), rtol=1e-5, atol=1e-5)
    assert model.gradcam(x).shape == (2, 4, 8, 12)
    with pytest.raises(ValueError, match="pool"):
        ViTCAM(4, pool="max", **{k: v for k, v in SMALL_VIT.items()})


def test_vit_gradcam_known_answer_without_the_final_norm():
    """Without the final norm an average-pooled logit is linear in the last block's patch tokens
    (d logit_c / d t_n = w_c / N), so Grad-CAM is the CAM head divided by the N patches."""
    torch.manual_seed(0)
    model = create_classifier("vit", 4, **SMALL_VIT).eval()
    model.vit.norm = nn.Identity()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        cam = model.cam(x)
    assert cam.abs().max() > 0
    torch.testing.assert_close(model.gradcam(x), cam / (8 * 12), rtol=1e-5, atol=1e-7)


def test_vit_gradcam_refuses_class_token_pooling():
    """With class-token pooling no patch token moves the logit after the last block: the maps
    would be zero everywhere, so the model and the classifier spec refuse it."""
    token_model = create_classifier("vit", 4, **{**SMALL_VIT, "pool": "token"}).eval()
    with pytest.raises(ValueError, match="class-token pooling"):
        token_model.gradcam(torch.randn(1, 3, 32, 32))
    with pytest.raises(ConfigError, match="class-token pooling"):
        ClassifierSpec(kind="vit", backbone="vit_tiny_patch16_224", pool="token", cam_method="gradcam")
    ClassifierSpec(kind="vit", backbone="vit_tiny_patch16_224", pool="token", cam_method="attribution")


def test_vit_takes_the_explicit_attention_under_cpu_bf16_autocast_only():
    """Under CPU bf16 autocast, where a backward may follow, the ViT computes softmax(q k^T) v itself
    (the fused kernel's bf16 backward is about 3x slower there); it is the same function, and the
    fused kernel is back after. Without a backward it keeps the fused kernel's faster forward."""
    torch.manual_seed(0)
    model = create_classifier("vit", 4, **SMALL_VIT).train()
    probs = []  # the explicit path sends the attention probabilities through attn_drop; the fused one does not
    for blk in model.vit.blocks:
        blk.attn.attn_drop.register_forward_hook(lambda m, i, o: probs.append(o))
    x = torch.randn(2, 3, 32, 32)
    fused_logits = model(x)
    assert probs == []
    qkv = model.vit.blocks[0].attn.qkv.weight  # its gradient flows back through the attention
    (fused_grad,) = torch.autograd.grad(fused_logits.sum(), qkv)
    with model.explicit_attention():
        explicit_logits = model(x)
    assert len(probs) == len(model.vit.blocks)
    torch.testing.assert_close(explicit_logits, fused_logits, rtol=1e-5, atol=1e-6)
    (explicit_grad,) = torch.autograd.grad(explicit_logits.sum(), qkv)
    assert explicit_grad.abs().max() > 0
    torch.testing.assert_close(explicit_grad, fused_grad, rtol=1e-5, atol=1e-6)
    probs.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_logits = model(x)
    assert len(probs) == len(model.vit.blocks) and probs[0].shape == (2, 2, 65, 65)  # 2 heads, 8 x 8 patches + the class token
    torch.testing.assert_close(bf16_logits.float(), fused_logits, rtol=0.05, atol=0.05)
    assert all(blk.attn.fused_attn for blk in model.vit.blocks)
    probs.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():  # no backward: the fused kernel's faster forward
        model(x)
    assert probs == []


def test_vit_gradcam_matches_gradients_taken_through_the_whole_network():
    """Grad-CAM runs the blocks without a graph and differentiates only the tail after the last
    block; its maps equal those from gradients taken through the whole network, with the final norm."""
    torch.manual_seed(0)
    model = create_classifier("vit", 4, **SMALL_VIT).eval()
    with torch.no_grad():
        model.vit.norm.weight.uniform_(0.5, 1.5)  # a norm that is not the identity
    x = torch.randn(2, 3, 32, 48)
    out: list[torch.Tensor] = []
    hook = model.vit.blocks[-1].register_forward_hook(lambda m, i, o: out.append(o))
    logits = model(x)
    hook.remove()
    reference = []
    for c in range(4):
        (g,) = torch.autograd.grad(logits[:, c].sum(), out[0], retain_graph=True)
        weights = g[:, model.num_prefix :].mean(dim=1, keepdim=True)
        reference.append((out[0][:, model.num_prefix :] * weights).sum(-1).reshape(2, 8, 12))
    maps = model.gradcam(x)
    assert maps.abs().max() > 0 and not maps.requires_grad
    torch.testing.assert_close(maps, torch.stack(reference, dim=1).detach(), rtol=1e-5, atol=1e-6)


class PixelModel(nn.Module):
    """cam(x) = a 1x1 convolution of the input: stride 1, no context."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 0, -1.0]]).view(2, 3, 1, 1))

    def cam(self, x):
        return self.conv(x)


def test_multiscale_sums_relu_maps_over_scales_and_flips():
    x = torch.full((1, 3, 8, 8), 0.5)
    out = multiscale_cam(PixelModel().cam, x, scales=(1.0, 0.5), flip=True)
    # class 0 sees +0.5 at every pixel, at 2 scales x 2 flips; class 1 sees -0.5, ReLU'd to 0.
    torch.testing.assert_close(out[0, 0], torch.full((8, 8), 2.0))
    torch.testing.assert_close(out[0, 1], torch.zeros(8, 8))


def test_flip_symmetric_input_gives_flip_symmetric_cam():
    torch.manual_seed(0)
    model = create_classifier("cnn", 3, **SMALL_RESNET).eval()
    x = torch.randn(1, 3, 64, 64)
    x = (x + x.flip(-1)) / 2
    with torch.no_grad():
        out = multiscale_cam(model.cam, x, scales=(1.0, 0.5, 1.5), flip=True)
    torch.testing.assert_close(out, out.flip(-1), rtol=1e-4, atol=1e-5)
    assert out.shape == (1, 3, 64, 64) and out.min() >= 0


def test_normalise_keeps_ground_truth_classes_and_max_normalises():
    cams = np.zeros((3, 2, 2), np.float32)
    cams[0] = [[2, 1], [0, -1]]
    cams[1] = [[9, 9], [9, 9]]  # not a ground-truth class of the image: dropped
    cams[2] = [[0.5, 0.25], [0, 0]]
    kept, ids = normalise(cams, np.array([1, 0, 1]))
    assert ids.tolist() == [1, 3]
    np.testing.assert_allclose(kept[0], [[1, 0.5], [0, 0]], atol=1e-4)
    np.testing.assert_allclose(kept[1], [[1, 0.5], [0, 0]], atol=1e-4)
    empty, none = normalise(cams, np.zeros(3))
    assert empty.shape == (0, 2, 2) and none.size == 0


def test_cam_store_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    items = {"a": (rng.random((2, 5, 7)), [1, 3]), "b": (rng.random((1, 4, 4)), [2]), "c": (np.zeros((0, 3, 3)), [])}
    with CamStoreWriter(tmp_path / "store", {"source": "test"}) as w:
        for k, (cams, ids) in items.items():
            w.add(k, cams, np.array(ids))
    st = CamStore(tmp_path / "store")
    assert st.ids == ("a", "b", "c") and st.meta["source"] == "test" and st.meta["images"] == 3
    for k, (cams, ids) in items.items():
        got, got_ids = st[k]
        np.testing.assert_allclose(got, cams, atol=1e-3)  # float16
        assert got.dtype == np.float32 and got_ids.tolist() == ids
    with pytest.raises(KeyError, match="'z' is not in the CAM store"):
        st["z"]


def test_cam_store_rejects_nan_and_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(ValueError, match="NaN or Inf"):
        with CamStoreWriter(tmp_path / "store") as w:
            w.add("a", np.full((1, 2, 2), np.nan), np.array([1]))
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "broken").mkdir()
    with pytest.raises(DataError, match="not a complete CAM store: cams.f16 is missing"):
        CamStore(tmp_path / "broken")


def test_compute_store_on_a_voc_split(tiny_voc, tmp_path):
    torch.manual_seed(0)
    ds = VOCDataset(tiny_voc, "train")
    model = create_classifier("cnn", ds.num_classes - 1, **SMALL_RESNET)
    path = compute_store(model, ds, tmp_path / "cams", scales=(1.0, 0.5), batch_size=2, progress=False)
    st = CamStore(path)
    assert st.ids == ds.ids and st.meta["scales"] == [1.0, 0.5]
    for image_id, cams, ids in st:
        sample = ds.load(image_id)
        assert cams.shape == (int(sample.labels.sum()), 20, 24)
        assert ids.tolist() == (np.flatnonzero(sample.labels) + 1).tolist()
        assert cams.min() >= 0 and cams.max() <= 1.0 + 1e-3


def test_a_bf16_store_is_computed_under_autocast_and_says_so(tiny_voc, tmp_path):
    torch.manual_seed(0)
    ds = VOCDataset(tiny_voc, "train")
    model = create_classifier("cnn", ds.num_classes - 1, **SMALL_RESNET)
    fp32, bf16 = (CamStore(compute_store(model, ds, tmp_path / name, scales=(1.0, 0.5), batch_size=2, progress=False,
                                         bf16=name == "bf16")) for name in ("fp32", "bf16"))
    assert (fp32.meta["bf16"], bf16.meta["bf16"]) == (False, True)
    gaps = [np.abs(fp32[i][0].astype(np.float32) - bf16[i][0].astype(np.float32)).max() for i in ds.ids]
    assert 0 < max(gaps) < 0.05  # bfloat16 rounding: there, and small against maps normalised to [0, 1]
    keys = [cam_key("cam", (1.0,), True, "data", "clf", bf16=b) for b in (False, True)]
    assert keys[0] == cam_key("cam", (1.0,), True, "data", "clf") and "bf16" not in keys[0].spec  # old keys hold
    assert keys[1].spec["bf16"] is True and keys[0].digest != keys[1].digest


def test_to_tensor_normalises_with_imagenet_statistics():
    x = to_tensor(np.full((2, 2, 3), 255, np.uint8))
    assert x.shape == (1, 3, 2, 2)
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]))


def test_backbone_weights_load_from_a_local_file(tmp_path):
    torch.manual_seed(1)
    reference = timm.create_model("resnet18", channels=(8, 16, 16, 32), num_classes=0)
    path = tmp_path / "resnet18-local.pth"
    torch.save(reference.state_dict(), path)
    model = CNNCAM(3, pretrained=str(path), **SMALL_RESNET)
    torch.testing.assert_close(model.features.conv1.weight, reference.conv1.weight)
    torch.testing.assert_close(model.features.layer4[0].conv2.weight, reference.layer4[0].conv2.weight)
    with pytest.raises(FileNotFoundError, match="nowhere.pth does not exist"):
        CNNCAM(3, pretrained=str(tmp_path / "nowhere.pth"), **SMALL_RESNET)


def test_classifier_key_changes_with_spec_seed_and_data_but_not_the_cam_method(tiny_voc):
    import dataclasses

    from orandnet_lib.data.fingerprint import dataset_fingerprint
    from orandnet_lib.methods.cam_classifier import ClassifierSpec, classifier_key

    val = dataset_fingerprint(VOCDataset(tiny_voc, "val"))

    def digest(spec, seed, ds, val_data=val):
        return classifier_key(spec, seed, dataset_fingerprint(ds), val_data).digest

    spec = ClassifierSpec(kind="cnn", backbone="resnet18")
    ds = VOCDataset(tiny_voc, "train")
    name = digest(spec, 0, ds)
    assert name == digest(spec, 0, VOCDataset(tiny_voc, "train"))
    assert name != digest(spec, 1, ds)
    assert name != digest(ClassifierSpec(kind="cnn", backbone="resnet18", epochs=9), 0, ds)
    assert name != digest(spec, 0, ds, val_data="another validation split")  # the history holds val scores
    assert name == digest(dataclasses.replace(spec, cam_method="gradcam"), 0, ds)  # read after training
    (tiny_voc / "ImageSets/Segmentation/train.txt").write_text("train_0\ntrain_1\n")
    assert name != digest(spec, 0, VOCDataset(tiny_voc, "train"))


def test_vit_cams_cover_images_whose_sides_are_not_multiples_of_the_patch():
    torch.manual_seed(0)
    model = create_classifier("vit", 3, backbone="vit_tiny_patch16_224", img_size=32, patch_size=8,
                              backbone_kwargs={"embed_dim": 16, "depth": 1, "num_heads": 2}).eval()
    x = torch.randn(1, 3, 44, 36)  # 5.5 x 4.5 patches: resized to 6 x 4 patches (48 x 32)
    assert model.cam(x).shape == (1, 3, 6, 4)
    assert model(x).shape == (1, 3)


def test_a_hybrid_vit_starts_from_the_resnet_stages_up_to_its_stem_stride(tmp_path):
    torch.manual_seed(1)
    reference = timm.create_model("resnet18", channels=(8, 16, 16, 32), num_classes=0)
    path = tmp_path / "resnet18-local.pth"
    torch.save(reference.state_dict(), path)
    stem = {"kind": "resnet", "backbone": "resnet18", "backbone_kwargs": {"channels": [8, 16, 16, 32]},
            "pretrained": str(path)}
    model = create_classifier("vit", 5, **SMALL_VIT, stem=stem).eval()  # stem_widths (8, 16): stride 4
    x = torch.randn(2, 3, 32, 32)
    assert model.stride == 4 and model.cam(x).shape == (2, 5, 8, 8) and model(x).shape == (2, 5)
    # the embedding's backbone is the ResNet's stem, max-pool and layer1 (stride 4), with its weights
    backbone = model.vit.patch_embed.backbone
    with torch.no_grad():
        reference.eval()
        expected = reference.layer1(reference.maxpool(reference.act1(reference.bn1(reference.conv1(x)))))
        torch.testing.assert_close(backbone(x), expected)
    assert backbone.num_features == 8  # layer1's channels
    with pytest.raises(ConfigError, match="unknown ViT stem kind 'densenet'"):
        create_classifier("vit", 5, **SMALL_VIT, stem={**stem, "kind": "densenet"})
    # a kind alone, or settings without one, never fall back to the conv stem in silence
    with pytest.raises(ConfigError, match="unknown ViT stem kind 'densenet'"):
        create_classifier("vit", 5, **SMALL_VIT, stem={"kind": "densenet"})
    with pytest.raises(ConfigError, match="needs its backbone"):
        create_classifier("vit", 5, **SMALL_VIT, stem={"kind": "resnet"})
    with pytest.raises(ConfigError, match="without a kind"):
        create_classifier("vit", 5, **SMALL_VIT, stem={k: v for k, v in stem.items() if k != "kind"})
    with pytest.raises(ValueError, match="takes its stride from stem_widths"):
        create_classifier("vit", 5, **{**SMALL_VIT, "stem_widths": ()}, stem=stem)
    with pytest.raises(ValueError, match="pretrained must be empty"):
        create_classifier("vit", 5, **SMALL_VIT, pretrained="timm", stem=stem)


def test_the_vit_key_holds_its_resnet_stem_and_that_stems_start(tiny_voc):
    import dataclasses

    from orandnet_lib.stages.s1_classifiers import Params, classifier_key, classifier_specs

    def vit_digest(**changes):
        spec = classifier_specs(dataclasses.replace(Params(), **changes))["vit"]
        return classifier_key(spec, 0, "data", "val").digest

    conv = vit_digest()
    assert conv == vit_digest(cnn_pretrained="elsewhere.pth")  # a conv stem reads nothing of the CNN
    hybrid = vit_digest(vit_stem="resnet")
    assert hybrid != conv
    assert hybrid != vit_digest(vit_stem="resnet", cnn_pretrained="elsewhere.pth")
    assert hybrid != vit_digest(vit_stem="resnet", cnn_backbone_kwargs={"channels": [8, 16, 16, 32]})
