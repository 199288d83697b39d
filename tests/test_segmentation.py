import numpy as np
import pytest
import torch

from orandnet_lib.methods.segmentation import (DeepLab, Evaluation, ScaleSchedule, SegmentationSet, SegmenterSpec,
                                       component_recall, downsample_mask, evaluate, predict_probs, recall_by_size,
                                       segmentation_loss, train_segmenter)
from orandnet_lib.core.metrics import ConfusionMatrix
from orandnet_lib.data.voc import VOCDataset, VOCWriter

TINY = {"channels": [8, 8, 16, 16], "layers": [1, 1, 1, 1]}


@pytest.mark.parametrize("head", ["largefov", "aspp"])
def test_deeplab_output_stride_and_shapes(head):
    torch.manual_seed(0)
    model = DeepLab(4, "resnet18", head=head, rates=(2, 4), head_channels=16, backbone_kwargs=TINY).eval()
    x = torch.randn(2, 3, 64, 48)
    assert model.stride == 8
    assert model.logits(x).shape == (2, 4, 8, 6)
    assert model(x).shape == (2, 4, 64, 48)
    groups = model.param_groups(10.0)
    assert [g["lr_mult"] for g in groups] == [1.0, 10.0]
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in model.parameters())


def test_deeplab_rejects_unknown_head():
    with pytest.raises(ValueError, match="unknown segmentation head 'psp'; known: largefov, aspp"):
        DeepLab(3, "resnet18", head="psp", backbone_kwargs=TINY)


def test_a_registered_head_is_one_builder():
    from torch import nn

    from orandnet_lib.nets.deeplab import SEG_HEADS

    @SEG_HEADS.register("linear", label="1x1 classifier")
    def linear(channels, num_classes, rates, head_channels, dropout):
        return nn.Conv2d(channels, num_classes, 1)

    try:
        model = SegmenterSpec(backbone="resnet18", backbone_kwargs=TINY, head="linear").build(5)
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5, 32, 32)
        assert SEG_HEADS.label("aspp") == "DeepLab-v2 ASPP"
    finally:
        SEG_HEADS.remove("linear")


def test_schedule_gives_the_scale_of_each_fraction_of_training():
    s = ScaleSchedule.parse([[0, 0.5], [0.5, 0.75], [0.75, 1.0]])
    assert [s.scale_at(p) for p in (0.0, 0.49, 0.5, 0.74, 0.75, 1.0)] == [0.5, 0.5, 0.75, 0.75, 1.0, 1.0]
    assert not s.constant
    assert ScaleSchedule.parse("constant").constant and ScaleSchedule.parse([]).points == ((0.0, 1.0),)
    for bad in ([[0.2, 0.5]], [[0, 0.5], [0, 1.0]], [[0, 0.5], [1.0, 1.0]], [[0, 0.0]], "fast", [[0, 1, 2]]):
        with pytest.raises(ValueError, match="scale schedule"):
            ScaleSchedule.parse(bad)


def test_dataset_follows_the_schedule_epoch_by_epoch(tiny_voc):
    ds = VOCDataset(tiny_voc, "train")  # 20 x 24 images
    data = SegmentationSet(ds, schedule=ScaleSchedule.parse([[0, 0.5], [0.5, 1.0]]), epochs=4, flip=False)
    shapes = []
    for epoch in range(4):
        data.set_epoch(epoch)
        x, y = data[0]
        shapes.append((tuple(x.shape), tuple(y.shape)))
    assert shapes == [((3, 10, 12), (10, 12))] * 2 + [((3, 20, 24), (20, 24))] * 2
    data.set_epoch(3)
    np.testing.assert_array_equal(data[1][1].numpy(), ds.load_mask(ds.ids[1]))  # scale 1: the mask as written


def test_majority_downsampling_drops_a_region_below_the_cell_and_keeps_a_large_one():
    mask = np.zeros((8, 8), np.uint8)
    mask[0:4, 4:8] = 1  # a 4 x 4 object: four 2 x 2 cells
    mask[6, 1] = 2  # one pixel: a quarter of a cell
    mask[4:8, 4:8] = 255  # a large ignored block stays ignored
    out = downsample_mask(mask, (4, 4), num_classes=3, mode="majority")
    expected = np.zeros((4, 4), np.uint8)
    expected[0:2, 2:4] = 1
    expected[2:4, 2:4] = 255
    np.testing.assert_array_equal(out, expected)
    # nearest keeps whatever pixel it samples: the lone pixel survives when it is sampled
    near = downsample_mask(mask, (4, 4), num_classes=3, mode="nearest")
    assert near[0:2, 2:4].tolist() == [[1, 1], [1, 1]]
    lone = np.zeros((8, 8), np.uint8)
    lone[0, 0] = 2
    assert downsample_mask(lone, (4, 4), 3, "nearest")[0, 0] == 2
    assert downsample_mask(lone, (4, 4), 3, "majority")[0, 0] == 0
    with pytest.raises(ValueError):
        downsample_mask(mask, (4, 4), 3, mode="bicubic")


def test_ignored_pixels_carry_no_loss():
    model = lambda x: x  # noqa: E731  (logits = input)
    logits = torch.randn(1, 3, 2, 2)
    mask = torch.full((1, 2, 2), 255, dtype=torch.long)
    mask[0, 1, 0] = 2
    loss, _ = segmentation_loss(model, (logits, mask))
    expected = -torch.log_softmax(logits[0, :, 1, 0], dim=0)[2]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # and the metric leaves them out too
    m = ConfusionMatrix(3).update(np.array([[1, 1], [2, 0]]), np.array([[255, 255], [2, 255]]))
    assert m.matrix.sum() == 1 and m.matrix[2, 2] == 1


def test_component_recall_by_hand():
    gt = np.zeros((6, 6), np.uint8)
    gt[0:2, 0:2] = 1  # 4 px, half found
    gt[4:6, 3:6] = 1  # 6 px, all found
    gt[3, 0] = 2  # 1 px, missed
    gt[5, 0] = 255
    pred = np.zeros_like(gt)
    pred[0, 0:2] = 1
    pred[4:6, 3:6] = 1
    pred[3, 0] = 1  # wrong class: not a hit for class 2
    found = sorted(component_recall(pred, gt))
    assert found == [(1, 4, 0.5), (1, 6, 1.0), (2, 1, 0.0)]
    ev = Evaluation(ConfusionMatrix(3), found, [36, 36, 36])
    bins = recall_by_size(ev, (2 / 36, 5 / 36))
    assert bins == {"small": 0.0, "medium": 50.0, "large": 100.0}
    # stage 0's bins: an object on an edge is in the lower bin (small <= e0 < medium <= e1 < large)
    assert recall_by_size(ev, (1 / 36, 4 / 36)) == {"small": 0.0, "medium": 50.0, "large": 100.0}


def test_flip_test_probabilities_are_a_distribution():
    torch.manual_seed(0)
    model = DeepLab(3, "resnet18", head="aspp", rates=(1, 2), backbone_kwargs=TINY).eval()
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 40, 3), dtype=np.uint8)
    p = predict_probs(model, images, scales=(1.0, 0.5), flip=True)
    assert p.shape == (2, 3, 32, 40)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)


def write_coloured_shapes(root, n=8, size=32):
    """Squares of class 1 (red) and 2 (blue) on grey noise at random places: a set a tiny
    network can learn in seconds."""
    rng = np.random.default_rng(1)
    with VOCWriter(root, ("background", "red", "blue")) as writer:
        for i in range(n):
            image = rng.integers(90, 130, (size, size, 3)).astype(np.uint8)
            mask = np.zeros((size, size), np.uint8)
            for c, colour in ((1, (220, 30, 30)), (2, (30, 30, 220))):
                y, x = rng.integers(0, size - 10, 2)
                mask[y : y + 10, x : x + 10] = c
                image[y : y + 10, x : x + 10] = colour
            writer.add("train", f"img{i}", image, mask)
    return root


def test_tiny_deeplab_overfits_a_tiny_mask_set(tmp_path):
    ds = VOCDataset(write_coloured_shapes(tmp_path / "shapes", n=8), "train")
    spec = SegmenterSpec(backbone="resnet18", backbone_kwargs=TINY, head="aspp", rates=(1, 2), dropout=0.0,
                         flip=False, epochs=15, batch_size=4, optimizer="adamw", lr=0.02, weight_decay=0.0,
                         head_lr_mult=1.0)
    from orandnet_lib.core.keys import ArtifactKey, spec_dict

    key = ArtifactKey("deeplab", spec_dict(spec), data="shapes", seed=0)
    ckpt = key.path(tmp_path, "tiny")
    trained = train_segmenter(spec, ds, ckpt, seed=0, key=key, val=ds, progress=False)
    losses = [h["loss"] for h in trained.history]
    mious = [h["val_miou"] for h in trained.history]
    assert losses[-1] < 0.5 * losses[0]
    assert mious[-1] > mious[0] + 20 and mious[-1] > 60
    ev, kept = evaluate(trained.model, ds, progress=False, keep=[ds.ids[0]])
    assert ev.summary()["miou"] == pytest.approx(mious[-1])
    assert kept[ds.ids[0]].shape == ds.load_mask(ds.ids[0]).shape
    # a second call finds the finished checkpoint and trains nothing more
    again = train_segmenter(spec, ds, ckpt, seed=0, key=key, progress=False)
    assert again.history == trained.history
    # the file of this key is never resumed by another run
    other = ArtifactKey("deeplab", spec_dict(spec), data="other masks", seed=0)
    with pytest.raises(ValueError, match="belongs to another artifact"):
        train_segmenter(spec, ds, ckpt, seed=0, key=other, progress=False)



def test_the_per_epoch_validation_draws_nothing_so_a_model_trained_without_it_is_the_same(tmp_path):
    """Stage 5 scores the training curve only at the seed whose curves the chapter shows; that is
    free only if the evaluation leaves the training's randomness (dropout, flips, crops) alone."""
    ds = VOCDataset(write_coloured_shapes(tmp_path / "shapes", n=8), "train")
    spec = SegmenterSpec(backbone="resnet18", backbone_kwargs=TINY, head="largefov", rates=(2,), head_channels=16,
                         dropout=0.3, flip=True, crop_size=32, scale_range=(0.75, 1.25), epochs=3, batch_size=4,
                         optimizer="adamw", lr=0.02, weight_decay=0.0, head_lr_mult=1.0)
    curve = train_segmenter(spec, ds, tmp_path / "curve.pt", seed=1, val=ds, progress=False)
    plain = train_segmenter(spec, ds, tmp_path / "plain.pt", seed=1, progress=False)
    assert all("val_miou" in h for h in curve.history) and not any("val_miou" in h for h in plain.history)
    a, b = curve.model.state_dict(), plain.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

def test_runs_are_summarised_per_set_and_schedule_with_seed_spread():
    from orandnet_lib.methods.curriculum import SegmentationRun, summarise_runs

    def run(tset, sched, seed, diag):
        m = ConfusionMatrix(2)
        m.matrix[:] = [[diag, 10 - diag], [0, 10]]
        return SegmentationRun(tset, sched, seed, [], Evaluation(m, []), {}, 0.0, 0.0)

    out = summarise_runs([run("cnn", "curriculum", 1, 10), run("cnn", "curriculum", 0, 0), run("gt", "constant", 0, 10)])
    cnn = out["cnn"]["curriculum"]
    # seed 0: bg never right -> IoU (0, 10/20), precision (nan -> left out, 10/20), recall (0, 1)
    # seed 1: perfect -> 100 everywhere
    assert cnn["seeds"] == [0, 1]
    assert cnn["miou"] == pytest.approx((25 + 100) / 2)
    assert cnn["miou_std"] == pytest.approx(np.std([25, 100], ddof=1))
    assert cnn["precision"] == pytest.approx((50 + 100) / 2) and cnn["recall"] == pytest.approx((50 + 100) / 2)
    assert out["gt"]["constant"]["miou"] == pytest.approx(100) and "miou_std" not in out["gt"]["constant"]
