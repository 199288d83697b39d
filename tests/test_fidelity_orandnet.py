"""Issue 14, items 1, 6 and 7, on cases whose answers are known.

1. ORANDNet is read out as its loss trained it (issue 23): the official softmax loss by the
   official ``module/encdec_pred.py`` (ReLU, each class map over its own maximum), the binary
   cross-entropy by the sigmoid (each class map over its own maximum).
6. Stage 2's offset is chosen by a stated rule (``fixed`` / ``align``) that reads no mask (issue 23:
   Otsu's threshold of each source's own train-split scores), recorded, and read back by later stages.
7. A timm ORANDNet encoder starts from given weights ("timm" or a local file), like the classifiers.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import timm
import torch

from orandnet_lib.book.stage import Upstream
from orandnet_lib.book import prose
from orandnet_lib.core.errors import ConfigError
from orandnet_lib.methods.ensemble import OffsetChoice, align_offset, recorded_variants
from orandnet_lib.methods.orandnet_maps import PERFECT, ReadoutScore, Trained, empty_map_share, perfect_logits, readout_scores
from orandnet_lib.nets.orandnet import (LOSSES, READOUTS, ORANDNet, collate, make_inputs, normalise, orand_loss, predict,
                                        readout_of)
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


def test_each_loss_is_registered_with_its_own_read_out():
    assert readout_of("softmax") == "relu_max" and readout_of("bce") == "sigmoid_max"
    assert set(LOSSES) == {"softmax", "bce"} and set(READOUTS) == {"relu_max", "sigmoid_max"}
    out = torch.tensor([[[0.0, 2.0], [-2.0, 0.0]]])
    s = torch.sigmoid(out)
    torch.testing.assert_close(predict(Stub(out), torch.rand(1, 2, 2), None, "sigmoid_max"), s / s.max())
    # the sigmoid never leaves a map empty: where ReLU keeps only the positive logits
    assert predict(Stub(-torch.ones(1, 2, 2)), torch.rand(1, 2, 2), None, "sigmoid_max").min() == 1.0
    assert predict(Stub(-torch.ones(1, 2, 2)), torch.rand(1, 2, 2), None, "relu_max").max() == 0.0


def test_a_perfect_bce_network_reproduces_the_and_sweep_and_relu_truncates_it_at_one_half(tiny_voc):
    """Logits equal to logit(AND): under the sigmoid read-out the AND maps come back (here each
    class map peaks at 1, so the division by the maximum changes nothing) and the sweep is AND's
    own; under ReLU / max only the pixels where AND exceeds 0.5 are left."""
    from orandnet_lib.core.metrics import ThresholdSweep
    from orandnet_lib.data.voc import VOCDataset

    ds = VOCDataset(tiny_voc, "train")
    rng = np.random.default_rng(0)
    sweeps = {k: ThresholdSweep(ds.num_classes) for k in ("and", "sigmoid_max", "relu_max")}
    for image_id in ds.ids:
        ids = np.flatnonzero(ds.load(image_id).labels) + 1
        and_maps = rng.random((len(ids), 20, 24)).astype(np.float32) * 0.9
        and_maps[:, 0, 0] = 1.0  # each class map peaks at 1, as a max-normalised AND of two peaked maps can
        logits = perfect_logits(torch.from_numpy(and_maps))
        gt = ds.load_mask(image_id)
        sweeps["and"].update(and_maps, ids, gt)
        for r in ("sigmoid_max", "relu_max"):
            maps = predict(Stub(logits), torch.rand(len(ids), 20, 24), None, r).float().numpy()
            sweeps[r].update(maps, ids, gt)
            if r == "sigmoid_max":
                np.testing.assert_allclose(maps, and_maps, atol=1e-5)
            else:  # relu(logit(a)) > 0 exactly where a > 0.5
                np.testing.assert_array_equal(maps > 0, and_maps > 0.5)
    got = {k: sw.result() for k, sw in sweeps.items()}
    np.testing.assert_array_equal(got["sigmoid_max"].matrices, got["and"].matrices)
    # at background score 0 the ReLU read-out calls foreground exactly where AND exceeds 0.5
    fg = lambda m: m.sum() - m[:, 0].sum()  # noqa: E731  (pixels not predicted background)
    assert fg(got["relu_max"].matrices[0]) == fg(got["and"].matrices[50])


def test_the_written_store_is_read_as_its_loss_asks(tmp_path, tiny_voc):
    """One network written under each loss name: the softmax store is relu / max of the outputs,
    the bce store sigmoid / max; both are recorded in the store's meta."""
    from orandnet_lib.data.voc import VOCDataset
    from orandnet_lib.methods.cams import CamStore, CamStoreWriter
    from orandnet_lib.methods.orandnet_maps import write_store

    torch.manual_seed(0)
    net = ORANDNet("small", widths=(4, 8, 8))
    ds = VOCDataset(tiny_voc, "train")
    with CamStoreWriter(tmp_path / "or") as w:
        for image_id in ds.ids:
            ids = np.flatnonzero(ds.load(image_id).labels) + 1
            w.add(image_id, np.random.default_rng(0).random((len(ids), 12, 12)).astype(np.float32), ids)
    or_store = CamStore(tmp_path / "or")
    stores = {k: CamStore(write_store(net, or_store, ds, tmp_path / k, k, progress=False)) for k in ("softmax", "bce")}
    for image_id in ds.ids:
        out = net.eval()(make_inputs(torch.from_numpy(or_store[image_id][0])))[:, 0]
        np.testing.assert_allclose(stores["softmax"][image_id][0], normalise(out).detach().numpy(), atol=1e-3)
        s = torch.sigmoid(out).detach()
        np.testing.assert_allclose(stores["bce"][image_id][0], (s / s.amax(dim=(-2, -1), keepdim=True)).numpy(),
                                   atol=1e-3)
    assert stores["softmax"].meta["readout"] == "relu_max" and stores["bce"].meta["readout"] == "sigmoid_max"
    with pytest.raises(ConfigError, match="unknown ORANDNet read-out"):
        write_store(net, or_store, ds, tmp_path / "x", "bce", progress=False, readout="softmax")


def test_the_read_out_comparison_scores_the_perfect_network_as_and_over_its_maximum(tmp_path, tiny_voc):
    from orandnet_lib.core.metrics import ThresholdSweep
    from orandnet_lib.data.voc import VOCDataset
    from orandnet_lib.methods.cams import CamStore, CamStoreWriter

    ds = VOCDataset(tiny_voc, "train")
    rng = np.random.default_rng(1)
    maps = {i: (rng.random((len(np.flatnonzero(ds.load(i).labels)), 20, 24)) * 0.8).astype(np.float32) for i in ds.ids}
    for name, scale in (("or", 1.0), ("and", 1.0)):
        with CamStoreWriter(tmp_path / name) as w:
            for i in ds.ids:
                w.add(i, maps[i] * scale, np.flatnonzero(ds.load(i).labels) + 1)
    scores = readout_scores(ds, CamStore(tmp_path / "or"), CamStore(tmp_path / "and"), {}, progress=False)
    assert set(scores) == {(PERFECT, "relu_max"), (PERFECT, "sigmoid_max")}
    expected = ThresholdSweep(ds.num_classes)
    mae, n = 0.0, 0
    for i in ds.ids:
        a = CamStore(tmp_path / "and")[i][0].astype(np.float32)
        over = a / a.reshape(len(a), -1).max(axis=1)[:, None, None]
        expected.update(over, np.flatnonzero(ds.load(i).labels) + 1, ds.load_mask(i))
        mae, n = mae + float(np.abs(over - a).sum()), n + a.size
    got = scores[PERFECT, "sigmoid_max"]
    np.testing.assert_array_equal(got.sweep.matrices, expected.result().matrices)
    assert got.mae == pytest.approx(mae / n, rel=1e-4) and got.empty == 0.0
    # uniform in [0, 0.8): each map has pixels above 0.5, so ReLU / max leaves none empty here
    assert scores[PERFECT, "relu_max"].empty == 0.0
    assert got.describe() == {**got.sweep.best(), "empty_maps": 0.0, "mae": got.mae}
    # the chapter's table: the perfect network is read as binary cross-entropy logits (its own read-out sigmoid / max)
    from orandnet_lib.book.chapters import orandnet as chapter

    table = chapter.readout_table({}, scores)
    assert table.loc[(PERFECT, "sigmoid / max"), "own read-out"] == "yes"
    assert table.loc[(PERFECT, "ReLU / max"), "own read-out"] == "no"
    assert table.loc[(PERFECT, "sigmoid / max"), "mIoU"] == got.sweep.best()["miou"]
    curves = chapter.own_readout_sweeps({}, scores, expected.result(), "and")
    assert list(curves) == [f"{PERFECT} (sigmoid / max)", "and (target)"] and curves[f"{PERFECT} (sigmoid / max)"] is got.sweep


def test_softmax_loss_over_one_class_channel_has_exactly_zero_gradient():
    torch.manual_seed(0)
    net = ORANDNet("small", widths=(4, 8, 8))
    batch = collate([{"or": torch.rand(1, 16, 16), "and": torch.rand(1, 16, 16)}])
    loss = orand_loss(net(batch["x"]), batch["target"], batch["owner"], "softmax")
    loss.backward()
    assert loss.item() == 0.0  # log softmax of one channel is log 1 = 0
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in net.parameters())


# --- 6. the offset rule ------------------------------------------------------------------

def write_bimodal_store(path, low: float, high: float):
    """A CAM store of one class whose scores sit at two values (3 of 4 pixels low): Otsu's
    threshold of its top scores falls just above the low one."""
    from orandnet_lib.methods.cams import CamStore, CamStoreWriter

    with CamStoreWriter(path) as w:
        w.add("a", np.array([[[low, low], [low, high]]], np.float32), np.array([1]))
    return CamStore(path)


def test_align_moves_the_offset_sources_operating_point_onto_the_others(tmp_path):
    """Each source's point is Otsu's threshold of its own scores (no mask is read): 0.51 for
    scores at 0.5 / 0.875, 0.26 for 0.25 / 0.875 (the first edge above the low bin; the values
    are exact in the stores' float16)."""
    stores = {"cnn": write_bimodal_store(tmp_path / "cnn", 0.5, 0.875),
              "vit": write_bimodal_store(tmp_path / "vit", 0.25, 0.875)}
    p = s2.Params(offset_rule="align", offset=0.5)  # `offset` is not used under "align"
    choice = s2.choose_offset(p, stores)
    assert choice == OffsetChoice("align", 0.25, {"cnn": 0.51, "vit": 0.26})
    assert s2.variants(p, choice.offset)["and+offset"].offsets == (("vit", 0.25),)
    swapped = s2.choose_offset(p, {"cnn": stores["vit"], "vit": stores["cnn"]})
    assert swapped.offset == -0.25
    zero = s2.choose_offset(p, {"cnn": stores["cnn"], "vit": stores["cnn"]})
    assert zero.offset == 0.0 and s2.variants(p, 0.0)["or+offset"].offsets == (("vit", 0.0),)
    # fixed: the parameter, whatever the stores hold
    assert s2.choose_offset(s2.Params(), stores) == OffsetChoice("fixed", 0.15, {})
    with pytest.raises(ConfigError, match="offset_rule must be one of"):
        s2.choose_offset(s2.Params(offset_rule="best-on-orandnet"))
    with pytest.raises(ConfigError, match="needs two sources"):
        align_offset({"cnn": 0.4, "vit": 0.2, "cnn2": 0.3}, "vit")
    with pytest.raises(ConfigError, match="needs the sources' CAM stores"):
        s2.choose_offset(p)


def test_later_stages_read_the_offset_that_ran():
    p = s2.Params(offset_rule="align")
    choice = OffsetChoice("align", 0.15, {"cnn": 0.41, "vit": 0.26})
    record = s2.ensemble_record(p, choice)
    assert record["offset"] == 0.15 and record["offset_rule"] == "align"
    assert record["offset_thresholds"] == {"cnn": 0.41, "vit": 0.26}
    upstream2 = Upstream("02_or_and_ensembles", None, {"params": {}, "metrics": {"ensemble": record}})
    assert recorded_variants(upstream2.metrics["ensemble"]) == s2.variants(p, 0.15)
    assert recorded_variants(upstream2.metrics["ensemble"])["or+offset"].offsets == (("vit", 0.15),)


def test_align_keys_hold_the_applied_offset_and_the_stores_that_chose_it():
    data = {"train": "d"}
    upstream = {"cams:cnn_train": "c", "cams:vit_train": "v"}
    fixed = s2.artifact_keys(s2.Params(), data, upstream)
    # "fixed": the plain offset keys (unchanged by this rule's introduction)
    assert fixed["cams:and+offset_train"].spec == {"operator": "and", "offsets": {"vit": 0.15}, "sources": ["cnn", "vit"]}
    assert set(fixed["cams:and+offset_train"].upstream) == {"cams:cnn_train", "cams:vit_train"}
    p = s2.Params(offset_rule="align")
    key = s2.artifact_keys(p, data, upstream, 0.15)["cams:and+offset_train"]
    assert key.spec == {"operator": "and", "offsets": {"vit": 0.15}, "sources": ["cnn", "vit"], "offset_rule": "align",
                        "score_rule": "otsu"}
    assert key.upstream == upstream  # the train stores, which the rule reads: no val store, no mask
    assert key.digest != fixed["cams:and+offset_train"].digest
    assert s2.artifact_keys(p, data, upstream, 0.2)["cams:and+offset_train"].digest != key.digest
    moved = s2.artifact_keys(p, data, {**upstream, "cams:vit_train": "other"}, 0.15)["cams:and+offset_train"]
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


def test_stage3_findings_compare_precision_at_equal_recall():
    """Two-class sweeps over background scores (0.2, 0.6), rows ground truth: the baseline
    (cnn, the higher mIoU) keeps the 10 object pixels at 0.2 with 10 false positives (recall 100,
    precision 75 over both classes) and at 0.6 keeps 5 of them; the ORANDNet stand-in has the same
    recall at 0.2 with one false positive and none at 0.6, so at the baseline's recall (between its
    two points) it is more precise."""
    from orandnet_lib.core.metrics import SweepResult

    def sweep(fp_low: int, tp_high: int, fp_high: int) -> SweepResult:
        low = np.array([[90 - fp_low, fp_low], [0, 10]])
        high = np.array([[90 - fp_high, fp_high], [10 - tp_high, tp_high]])
        return SweepResult(np.array([0.2, 0.6]), np.stack([low, high]), maps=4, empty_maps=1)

    p = s3.Params(ablate_image=False, ablate_loss=False)
    sweeps = {"cnn": sweep(10, 9, 1), "vit": sweep(20, 4, 2), "or+offset": sweep(30, 10, 5),
              "and+offset": sweep(5, 3, 0), "orandnet": sweep(1, 8, 0)}
    facts = s3.findings(p, sweeps, {}, ["cnn", "vit"], single_class=39.5)
    base = sweeps["cnn"].best()
    assert base["threshold"] == 60.0
    assert facts["top_single"] == "cnn" and facts["recall"] == base["recall"]
    assert facts["precision"] > facts["baseline_precision"] == base["precision"] and facts["higher"]
    assert facts["empty_share"] == 25.0 and facts["kept"] and facts["orandnet"]["miou"] > facts["top"]["miou"]
    assert facts["single_class"] == 39.5 and facts["readout_label"] == "sigmoid / max"
    assert facts["main"] is None and facts["n_way"] is None and facts["ablations"] == {} and facts["empty_maps"] == {}
    assert prose.render("03_orandnet/findings", facts)  # every name the template uses is in the facts

    # with the read-outs, an ablation, maps left empty and the N-way sweeps, every branch of the template
    p = s3.Params(ablate_image=False)
    sweeps["orandnet (softmax)"] = sweep(2, 7, 1)
    n_way = {n: sweep(4, 5, 1) for n in ("cnn2", "or (cnn, vit)", "and (cnn, vit)", "or (cnn, cnn2)",
                                          "and (cnn, cnn2)", "or (3-way)", "and (3-way)")}
    n_way["and (3-way)"] = sweep(0, 3, 0)
    readouts = {(m, r): ReadoutScore(sweeps["orandnet"], e, 0.1) for m in ("orandnet", PERFECT)
                for r, e in (("relu_max", 50.0), ("sigmoid_max", 0.0))}
    facts = s3.findings(p, sweeps, n_way, ["cnn", "vit"], None, {"orandnet": 0.0, "orandnet (softmax)": 12.5}, readouts)
    assert facts["main"] == {"empty": 0.0, "mae": 0.1, "miou": sweeps["orandnet"].best()["miou"]}
    assert facts["other_readouts"] == {"ReLU / max": {"miou": sweeps["orandnet"].best()["miou"], "empty": 50.0}}
    assert set(facts["perfect"]) == {"ReLU / max", "sigmoid / max"} and list(facts["ablations"]) == ["orandnet (softmax)"]
    assert facts["empty_maps"] == {"orandnet": 0.0, "orandnet (softmax)": 12.5}
    assert facts["n_way"]["and3"]["precision"] > facts["n_way"]["and_pair"]["precision"]
    assert facts["n_way"]["first"] == base and (facts["n_way"]["a"], facts["n_way"]["c"]) == ("cnn", "vit")
    assert prose.render("03_orandnet/findings", facts)


def test_stage3_findings_without_masks_say_only_what_needs_none():
    p = s3.Params()
    facts = s3.findings(p, {}, {}, ["cnn", "vit"], readouts={("orandnet", "sigmoid_max"): ReadoutScore(None, 12.5, 0.25)})
    assert not facts["scored"] and facts["main"] == {"empty": 12.5, "mae": 0.25} and "top_single" not in facts
    assert prose.render("03_orandnet/findings", facts)
    assert s3.findings(p, {}, {}, ["cnn", "vit"])["main"] is None


def test_stage3_counts_the_class_maps_left_empty_by_the_relu(tmp_path):
    from orandnet_lib.methods.cams import CamStore, CamStoreWriter

    with CamStoreWriter(tmp_path / "s") as w:
        w.add("a", np.array([[[0.0, 0.0]], [[0.0, 0.5]]], np.float32), np.array([1, 2]))
        w.add("b", np.array([[[0.0, 0.0]]], np.float32), np.array([3]))
    trained = {"orandnet": Trained([], CamStore(tmp_path / "s"), tmp_path / "x.pt")}
    assert empty_map_share(trained) == {"orandnet": pytest.approx(200 / 3)}  # 2 of 3 maps
