import pytest
import torch

from orandnet_lib.nets.orandnet import ORANDNet, collate, make_inputs, orand_loss, predict


def test_per_class_channel_shapes_with_and_without_image():
    torch.manual_seed(0)
    or_cams, image = torch.rand(3, 40, 48), torch.randn(3, 40, 48)
    net = ORANDNet("small", use_image=False)
    assert make_inputs(or_cams).shape == (3, 1, 40, 48)
    assert net(make_inputs(or_cams)).shape == (3, 1, 40, 48)
    net_rgb = ORANDNet("small", use_image=True)
    assert make_inputs(or_cams, image).shape == (3, 4, 40, 48)
    assert net_rgb(make_inputs(or_cams, image)).shape == (3, 1, 40, 48)
    out = predict(net, or_cams, None)
    assert out.shape == (3, 40, 48) and out.min() >= 0 and out.max() <= 1


def test_fcn8s_shape_on_vgg16():
    net = ORANDNet("vgg16")
    assert net(torch.rand(2, 1, 64, 64)).shape == (2, 1, 64, 64)


def test_collate_flattens_class_channels_and_keeps_owners():
    items = [{"or": torch.rand(2, 8, 8), "and": torch.rand(2, 8, 8)},
             {"or": torch.rand(1, 8, 8), "and": torch.rand(1, 8, 8)}]
    batch = collate(items)
    assert batch["x"].shape == (3, 1, 8, 8) and batch["target"].shape == (3, 1, 8, 8)
    assert batch["owner"].tolist() == [0, 0, 1]
    # images of different sizes: zero-padded at the right and bottom to the largest
    mixed = collate([{"or": torch.ones(1, 4, 6), "and": torch.ones(1, 4, 6)},
                     {"or": torch.ones(1, 5, 3), "and": torch.ones(1, 5, 3)}])
    assert mixed["x"].shape == (2, 1, 5, 6)
    assert mixed["x"][0, 0, 4].sum() == 0 and mixed["x"][0, 0, :4].sum() == 24
    assert mixed["target"][1, 0, :, 3:].sum() == 0 and mixed["target"][1, 0, :, :3].sum() == 15


def test_softmax_loss_gives_zero_gradient_on_a_single_class_image_and_bce_does_not():
    torch.manual_seed(0)
    net = ORANDNet("small")
    batch = collate([{"or": torch.rand(1, 16, 16), "and": torch.rand(1, 16, 16)}])
    for kind, zero in (("softmax", True), ("bce", False)):
        net.zero_grad()
        loss = orand_loss(net(batch["x"]), batch["target"], batch["owner"], kind)
        loss.backward()
        total = sum(float(p.grad.abs().sum()) for p in net.parameters() if p.grad is not None)
        assert (total == 0.0) is zero, kind
    # with two classes the softmax loss does train
    net.zero_grad()
    two = collate([{"or": torch.rand(2, 16, 16), "and": torch.rand(2, 16, 16)}])
    orand_loss(net(two["x"]), two["target"], two["owner"], "softmax").backward()
    assert sum(float(p.grad.abs().sum()) for p in net.parameters() if p.grad is not None) > 0


def test_softmax_loss_by_hand():
    logits = torch.tensor([0.0, 0.0]).view(2, 1, 1, 1)
    target = torch.tensor([1.0, 0.0]).view(2, 1, 1, 1)
    # softmax of equal logits: 0.5 each; loss = -(1 * log 0.5 + 0 * log 0.5) = log 2
    assert orand_loss(logits, target, torch.tensor([0, 0]), "softmax").item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    with pytest.raises(ValueError, match="loss must be one of"):
        orand_loss(logits, target, torch.tensor([0, 0]), "dice")


def test_orandnet_store_round_trips_and_training_lowers_the_loss(tmp_path, tiny_voc):
    import numpy as np

    from orandnet_lib.methods.cams import CamStore, CamStoreWriter
    from orandnet_lib.methods.orandnet_maps import OrAndSet, write_store
    from orandnet_lib.nets.orandnet import loss_fn
    from orandnet_lib.core.train import TrainConfig, fit
    from orandnet_lib.data.voc import VOCDataset

    ds = VOCDataset(tiny_voc, "train")
    rng = np.random.default_rng(0)
    paths = {}
    for name in ("or", "and"):
        with CamStoreWriter(tmp_path / name) as w:
            for image_id in ds.ids:
                ids = np.flatnonzero(ds.load(image_id).labels) + 1
                w.add(image_id, rng.random((len(ids), 20, 24)) * (0.5 if name == "and" else 1.0), ids)
        paths[name] = CamStore(tmp_path / name)
    torch.manual_seed(0)
    net = ORANDNet("small", widths=(4, 8, 8))
    data = OrAndSet(paths["or"], paths["and"], ds, seed=0)
    history = fit(net, data, loss_fn("bce"), TrainConfig(epochs=8, batch_size=3, lr=0.01, optimizer="adamw"),
                  collate=collate, progress=False)
    assert history[-1]["loss"] < history[0]["loss"]
    out = CamStore(write_store(net, paths["or"], ds, tmp_path / "orandnet", "bce", progress=False))
    assert out.ids == ds.ids and out.meta["loss"] == "bce"
    for image_id in ds.ids:
        cams, ids = out[image_id]
        expected = predict(net, torch.from_numpy(paths["or"][image_id][0]), None, "sigmoid_max").numpy()
        np.testing.assert_allclose(cams, expected, atol=1e-3)
        assert ids.tolist() == paths["or"][image_id][1].tolist()
