"""Issue 14, items 1, 6 and 7, on cases whose answers are known.

1. ORANDNet infers as the official ``module/encdec_pred.py``: each class channel through the
   network, ReLU, each class map divided by its own maximum, whatever the training loss.
6. Stage 2's offset is chosen by a stated rule (``fixed`` / ``align``) from stage 1's
   validation sweeps, recorded, and read back by later stages.
7. A timm ORANDNet encoder starts from given weights ("timm" or a local file), like the classifiers.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import timm
import torch

from orandnet_lib.book.stage import Upstream
from orandnet_lib.core.errors import ConfigError
from orandnet_lib.nets.orandnet import ORANDNet, collate, make_inputs, normalise, orand_loss, predict
from orandnet_lib.stages import s2_ensembles as s2
from orandnet_lib.stages import s3_orandnet as s3


class Stub(ORANDNet):
    """An ORANDNet whose output is set by hand: row i of every batch is ``outputs[i]``."""

    def __init__(self, outputs: torch.Tensor):
        super().__init__("small", widths=(2, 2, 2))
        self.outputs = outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outputs[: x.shape[0]].unsqueeze(1)


def test_inference_is_relu_then_each_class_divided_by_its_own_maximum():
    out = torch.tensor([[[-1.0, 2.0], [4.0, 1.0]],      # max 4: [[0, .5], [1, .25]]
                        [[0.5, -3.0], [0.25, 0.0]],     # max .5: [[1, 0], [.5, 0]]
                        [[-1.0, -2.0], [0.0, -0.5]]])   # no positive output: stays 0, no division by zero
    expected = torch.tensor([[[0.0, 0.5], [1.0, 0.25]], [[1.0, 0.0], [0.5, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    got = predict(Stub(out), torch.rand(3, 2, 2), None)
    assert torch.equal(got, expected)
    assert torch.equal(normalise(out), expected)


def test_inference_does_not_depend_on_the_loss_and_one_class_is_not_all_ones(tmp_path, tiny_voc):
    """The softmax-trained variant: formerly softmax over the image's channels, so a one-class
    image got 1 everywhere; now its map is the network's own relu(out) / max."""
    from orandnet_lib.data.voc import VOCDataset
    from orandnet_lib.methods.cams import CamStore, CamStoreWriter
    from orandnet_lib.nets.orandnet import write_store

    torch.manual_seed(0)
    net = ORANDNet("small", widths=(4, 8, 8))
    two = collate([{"or": torch.rand(2, 16, 16), "and": torch.rand(2, 16, 16)}])
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(3):  # a few softmax-loss steps on a two-class image (one-class images give none)
        opt.zero_grad()
        orand_loss(net(two["x"]), two["target"], two["owner"], "softmax").backward()
        opt.step()
    one = torch.rand(1, 16, 16)
    logits = net.eval()(make_inputs(one))[:, 0]
    assert torch.equal(torch.softmax(logits, dim=0), torch.ones_like(logits))  # what the old inference gave
    got = predict(net, one, None)
    assert torch.equal(got, normalise(logits))
    assert not torch.equal(got, torch.ones_like(got))
    # Here every output is negative, so the map is 0: the softmax loss cannot see a shift common to
    # all channels of a pixel, so the level ReLU reads is not what it trains.
    shifted = two["x"], two["target"], two["owner"]
    out = net(shifted[0])
    assert orand_loss(out + 5.0, shifted[1], shifted[2], "softmax").item() == \
        pytest.approx(orand_loss(out, shifted[1], shifted[2], "softmax").item(), abs=1e-6)
    # the same model written with either loss name gives the same maps
    ds = VOCDataset(tiny_voc, "train")
    with CamStoreWriter(tmp_path / "or") as w:
        for image_id in ds.ids:
            ids = np.flatnonzero(ds.load(image_id).labels) + 1
            w.add(image_id, np.random.default_rng(0).random((len(ids), 12, 12)).astype(np.float32), ids)
    stores = {k: CamStore(write_store(net, CamStore(tmp_path / "or"), ds, tmp_path / k, k, progress=False))
              for k in ("softmax", "bce")}
    for image_id in ds.ids:
        np.testing.assert_array_equal(stores["softmax"][image_id][0], stores["bce"][image_id][0])
    assert stores["softmax"].meta["loss"] == "softmax"


def test_softmax_loss_over_one_class_channel_has_exactly_zero_gradient():
    torch.manual_seed(0)
    net = ORANDNet("small", widths=(4, 8, 8))
    batch = collate([{"or": torch.rand(1, 16, 16), "and": torch.rand(1, 16, 16)}])
    loss = orand_loss(net(batch["x"]), batch["target"], batch["owner"], "softmax")
    loss.backward()
    assert loss.item() == 0.0  # log softmax of one channel is log 1 = 0
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in net.parameters())


# --- 6. the offset rule ------------------------------------------------------------------

def stage1_record(cnn: float, vit: float) -> Upstream:
    """A stage 1 record whose validation sweeps found these best-mIoU background scores (percent)."""
    cams = {"cnn": {"threshold": 70.0, "val": {"threshold": cnn}}, "vit": {"threshold": 10.0, "val": {"threshold": vit}}}
    return Upstream("01_classifiers_and_cams", None, {"params": {"val_split": "val"}, "summary": {"cams": cams}})


def test_align_moves_the_offset_sources_best_threshold_onto_the_others():
    p = s2.Params(offset_rule="align", offset=0.5)  # `offset` is not used under "align"
    choice = s2.choose_offset(p, stage1_record(40.0, 25.0))
    assert choice == s2.OffsetChoice("align", 0.15, {"cnn": 0.40, "vit": 0.25})
    assert s2.variants(p, choice.offset)["and+offset"].offsets == (("vit", 0.15),)
    # the other way round: a negative offset; equal thresholds: 0, and the +offset variants stay
    assert s2.choose_offset(p, stage1_record(25.0, 40.0)).offset == -0.15
    zero = s2.choose_offset(p, stage1_record(30.0, 30.0))
    assert zero.offset == 0.0 and s2.variants(p, 0.0)["or+offset"].offsets == (("vit", 0.0),)
    # fixed: the parameter, whatever stage 1 found
    fixed = s2.choose_offset(s2.Params(), stage1_record(40.0, 25.0))
    assert fixed == s2.OffsetChoice("fixed", 0.15, {})
    with pytest.raises(ConfigError, match="offset_rule must be one of"):
        s2.choose_offset(s2.Params(offset_rule="best-on-orandnet"))
    with pytest.raises(ConfigError, match="needs two sources"):
        s2.align_offset({"cnn": 0.4, "vit": 0.2, "cnn2": 0.3}, "vit")


def test_later_stages_read_the_offset_that_ran():
    p = s2.Params(offset_rule="align")
    choice = s2.choose_offset(p, stage1_record(40.0, 25.0))
    record = s2.ensemble_record(p, choice)
    assert record["offset"] == 0.15 and record["offset_rule"] == "align"
    assert record["offset_thresholds"] == {"cnn": 0.40, "vit": 0.25}
    upstream2 = Upstream("02_or_and_ensembles", None, {"params": {}, "metrics": {"ensemble": record}})
    assert s2.variants_from(upstream2) == s2.variants(p, 0.15)
    assert s2.variants_from(upstream2)["or+offset"].offsets == (("vit", 0.15),)


def test_align_keys_hold_the_applied_offset_and_the_val_stores_that_chose_it():
    data = {"train": "d"}
    upstream = {"cams:cnn_train": "c", "cams:vit_train": "v", "val_cams:cnn": "cv", "val_cams:vit": "vv"}
    fixed = s2.artifact_keys(s2.Params(), data, upstream)
    # "fixed": the plain offset keys (unchanged by this rule's introduction), no val stores
    assert fixed["cams:and+offset_train"].spec == {"operator": "and", "offsets": {"vit": 0.15}, "sources": ["cnn", "vit"]}
    assert set(fixed["cams:and+offset_train"].upstream) == {"cams:cnn_train", "cams:vit_train"}
    p = s2.Params(offset_rule="align")
    key = s2.artifact_keys(p, data, upstream, 0.15)["cams:and+offset_train"]
    assert key.spec == {"operator": "and", "offsets": {"vit": 0.15}, "sources": ["cnn", "vit"], "offset_rule": "align"}
    assert key.upstream == upstream
    assert key.digest != fixed["cams:and+offset_train"].digest
    assert s2.artifact_keys(p, data, upstream, 0.2)["cams:and+offset_train"].digest != key.digest
    moved = s2.artifact_keys(p, data, {**upstream, "val_cams:vit": "other"}, 0.15)["cams:and+offset_train"]
    assert moved.digest != key.digest
    # under "align" the parameter `offset` is not what runs
    assert s2.artifact_keys(dataclasses.replace(p, offset=0.3), data, upstream, 0.15) == \
        s2.artifact_keys(p, data, upstream, 0.15)


# --- 7. pretrained ORANDNet encoders ---------------------------------------------------------

def test_a_timm_encoder_starts_from_a_local_weights_file(tmp_path):
    torch.manual_seed(1)
    saved = timm.create_model("test_resnet").state_dict()
    path = tmp_path / "encoder.pth"
    torch.save(saved, path)
    net = ORANDNet("test_resnet", pretrained=str(path))
    encoder = net.encoder.body.state_dict()
    first = "conv1.0.weight"  # timm adapts the RGB filters to the one-channel input by summing them
    torch.testing.assert_close(encoder[first], saved[first].sum(dim=1, keepdim=True))
    for name, value in encoder.items():
        if name != first:
            assert torch.equal(value, saved[name]), name
    assert not torch.equal(ORANDNet("test_resnet").encoder.body.state_dict()["layer1.0.conv1.weight"],
                           saved["layer1.0.conv1.weight"])
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        ORANDNet("test_resnet", pretrained=str(missing))
    with pytest.raises(ValueError, match="no pretrained weights"):
        ORANDNet("small", pretrained="timm")


def test_stage3_keys_and_trains_with_the_pretrained_setting():
    data, upstream = {"train": "d", "val": "v"}, {"cams:or+offset_train": "o", "cams:and+offset_train": "a"}
    p = s3.Params(encoder="vgg16", third_classifier_seed=-1)
    base = s3.artifact_keys(p, data, upstream)["orandnet:orandnet"]
    timm_key = s3.artifact_keys(dataclasses.replace(p, pretrained="timm"), data, upstream)["orandnet:orandnet"]
    assert base.spec["pretrained"] == "" and timm_key.spec["pretrained"] == "timm" and base.digest != timm_key.digest


def test_stage3_findings_state_how_inference_is_done():
    class Sweep:
        def __init__(self, v: float):
            self.v = v

        def best(self) -> dict[str, float]:
            return {"miou": self.v, "precision": self.v, "recall": self.v, "threshold": 50.0}

    p = s3.Params(ablate_image=False)
    sweeps = {n: Sweep(v) for n, v in (("cnn", 10), ("vit", 12), ("or+offset", 11), ("and+offset", 9),
                                       ("orandnet", 13), ("orandnet (softmax)", 8))}
    text = s3.findings(p, sweeps, {}, ["cnn", "vit"], single_class=39.5)
    assert "divides each class map by its own maximum" in text and "compares the losses alone" in text
    assert "(39.5 % of the train images with a class)" in text


def test_stage3_counts_the_class_maps_left_empty_by_the_relu(tmp_path):
    from orandnet_lib.methods.cams import CamStore, CamStoreWriter

    with CamStoreWriter(tmp_path / "s") as w:
        w.add("a", np.array([[[0.0, 0.0]], [[0.0, 0.5]]], np.float32), np.array([1, 2]))
        w.add("b", np.array([[[0.0, 0.0]]], np.float32), np.array([3]))
    trained = {"orandnet": s3.Trained([], CamStore(tmp_path / "s"), tmp_path / "x.pt")}
    assert s3.empty_map_share(trained) == {"orandnet": pytest.approx(200 / 3)}  # 2 of 3 maps
