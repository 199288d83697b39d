import numpy as np
import pytest
import torch

from orandnet_lib.methods.refine import boundary_affinities, neighbour_offsets
from orandnet_lib.nets.boundary import BoundaryNet, affinity_loss, downsample_labels, pair_labels, path_max


def test_torch_path_max_matches_the_numpy_affinities():
    boundary = np.random.default_rng(0).random((6, 7))
    offsets = neighbour_offsets(3)
    pm = path_max(torch.from_numpy(boundary)[None], offsets)[0].numpy()  # (n_off, H, W)
    rows, cols, vals = boundary_affinities(boundary, radius=3)
    lookup = {(int(r), int(c)): v for r, c, v in zip(rows, cols, vals)}
    w = boundary.shape[1]
    for k, (dy, dx) in enumerate(offsets):
        for y in range(6):
            for x in range(7):
                j = (y + dy) * w + (x + dx)
                if 0 <= y + dy < 6 and 0 <= x + dx < 7:
                    assert 1 - pm[k, y, x] == pytest.approx(lookup[(y * w + x, j)])
                else:
                    assert pm[k, y, x] == 1.0


def test_pair_labels_by_hand():
    labels = torch.tensor([[[0, 0, 2, 255]]])
    kinds = pair_labels(labels, [(0, 1)])  # each pixel with its right neighbour
    assert kinds["bg"][0, 0, 0].tolist() == [True, False, False, False]
    assert kinds["fg"][0, 0, 0].tolist() == [False, False, False, False]
    assert kinds["neg"][0, 0, 0].tolist() == [False, True, False, False]  # 0 | 2; 2 | 255 is ignored


def test_the_loss_by_hand_when_a_kind_of_pair_is_missing():
    # one row, labels 0 0 255, radius 1 (offsets right and down): the one pair is (0, 1), background;
    # no foreground or negative pair, so the loss is half the background term and the others log 0
    boundary = torch.tensor([[[[0.2, 0.6, 0.1]]]], dtype=torch.float64, requires_grad=True)
    loss, logs = affinity_loss(boundary, torch.tensor([[[0, 0, 255]]]), radius=1)
    bg = -np.log(1 - 0.6 + 1e-5)  # the strongest boundary on the step 0 -> 1 is 0.6
    assert float(loss) == pytest.approx(bg / 2) and logs == pytest.approx({"bg_loss": bg, "fg_loss": 0.0, "neg_loss": 0.0})
    (g,) = torch.autograd.grad(loss, boundary)
    assert g[0, 0, 0].tolist() == pytest.approx([0.0, 0.5 / (1 - 0.6 + 1e-5), 0.0])


def test_pair_labels_refuse_labels_outside_a_byte():
    with pytest.raises(ValueError, match="0..255"):
        pair_labels(torch.tensor([[[0, 300]]]), [(0, 1)])


def test_minimising_the_loss_puts_the_boundary_between_the_classes():
    labels = torch.zeros(1, 4, 10, dtype=torch.long)
    labels[:, :, 5:] = 1
    logits = torch.zeros(1, 1, 4, 10, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.1)
    for _ in range(150):
        loss, logs = affinity_loss(torch.sigmoid(logits), labels, radius=2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    boundary = torch.sigmoid(logits)[0, 0].mean(dim=0)  # per column
    assert boundary[4:6].max() > 0.5  # at the border between column 4 (class 0) and 5 (class 1)
    assert boundary[[0, 1, 8, 9]].max() < 0.1  # far from it
    assert set(logs) == {"bg_loss", "fg_loss", "neg_loss"}


def test_boundary_net_shape_and_range():
    net = BoundaryNet("resnet18", backbone_kwargs={"channels": (8, 16, 16, 32), "layers": (1, 1, 1, 1)})
    out = net(torch.randn(2, 3, 64, 48))
    assert out.shape == (2, 1, 16, 12) and net.stride == 4
    assert out.min() >= 0 and out.max() <= 1


def test_boundary_net_input_scale_refines_its_grid():
    torch.manual_seed(0)
    kwargs = {"channels": (8, 16, 16, 32), "layers": (1, 1, 1, 1)}
    net = BoundaryNet("resnet18", backbone_kwargs=kwargs, input_scale=2).eval()
    x = torch.randn(2, 3, 64, 48)
    out = net(x)
    assert out.shape == (2, 1, 32, 24) and net.stride == 2  # stride 4 on an image twice the size
    # the same network without the scale, fed the enlarged image itself, gives the same map
    plain = BoundaryNet("resnet18", backbone_kwargs=kwargs).eval()
    plain.load_state_dict(net.state_dict())
    enlarged = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(plain(enlarged), out, atol=1e-6)
    with pytest.raises(ValueError, match="input_scale"):
        BoundaryNet("resnet18", backbone_kwargs=kwargs, input_scale=3)


def test_downsample_labels_takes_cell_centres():
    labels = np.arange(36).reshape(6, 6)
    assert downsample_labels(labels, 4).tolist() == [[14, 17], [32, 35]]
    assert downsample_labels(labels, 2).shape == (3, 3)


def _random_cam_store(tiny_voc):
    """A store of random two-class CAMs for every train image of the tiny VOC folder."""
    import numpy as np

    from orandnet_lib.data.voc import VOCDataset
    from orandnet_lib.methods.cams import CamStore, CamStoreWriter

    ds = VOCDataset(tiny_voc, "train")
    rng = np.random.default_rng(0)
    with CamStoreWriter(tiny_voc.parent / "cams", {"split": "train"}) as w:
        for i in ds.ids:
            h, w_ = ds.load_image(i).shape[:2]
            w.add(i, rng.random((2, h, w_)).astype(np.float32), np.array([0, 1]))
    return ds, CamStore(tiny_voc.parent / "cams")


def test_cached_frozen_features_train_the_head_as_the_images_would(tiny_voc):
    """The feature cache (stage 4's feature_cache) gives the head the features the frozen backbone
    gives each image and flip, so the loss of a step equals the loss on the images."""
    from orandnet_lib.methods import pseudo

    ds, store = _random_cam_store(tiny_voc)
    torch.manual_seed(0)
    net = BoundaryNet("resnet18", backbone_kwargs={"channels": (8, 16, 16, 32), "layers": (1, 1, 1, 1)},
                      freeze_backbone=True, input_scale=2).train()
    base = pseudo.BoundarySet(store, ds, net.stride, 0.3, 0.05, use_crf=False, progress=False, workers=1)
    decoded: list[str] = []
    load_image = ds.load_image
    ds.load_image = lambda image_id: decoded.append(image_id) or load_image(image_id)  # type: ignore[method-assign]
    cached = pseudo.FrozenFeatures(base, net, progress=False)
    assert decoded == [], "nothing is computed before an item is read (a finished checkpoint reads none)"
    cached[0]
    ds.load_image = load_image  # type: ignore[method-assign]
    assert sorted(decoded) == sorted(ds.ids), "each image is decoded once, for both flips"
    assert net.training and not net.features.training, "the cache leaves the net's modes as they were"
    for epoch in (0, 1, 2):
        cached.set_epoch(epoch)
        for index in range(len(base)):
            (image, labels), (feats, labels_cached) = base[index], cached[index]
            assert torch.equal(labels, labels_cached)
            with torch.no_grad():
                direct = net(image[None])
                from_cache = net.head_from([f[None] for f in feats])
            torch.testing.assert_close(from_cache, direct, rtol=1e-5, atol=1e-6)
    assert cached.nbytes() == 2 * sum(f.numel() * 4 for f in cached[0][0]) * len(base)
    images = pseudo.boundary_loss(5)(net, base.collate([base[i] for i in range(len(base))]))[0]
    feats = pseudo.boundary_loss_from_features(5)(net, torch.utils.data.default_collate([cached[i] for i in range(len(base))]))[0]
    torch.testing.assert_close(feats, images, rtol=1e-5, atol=1e-6)


# -- the fast forms against their plain definitions ----------------------------------------------

def _path_max_by_definition(boundary: torch.Tensor, offsets) -> torch.Tensor:
    """The maximum over each segment, cell by cell, differentiated by autograd."""
    h, w = boundary.shape[-2:]
    out = []
    for dy, dx in offsets:
        steps = max(abs(dy), abs(dx))
        m = boundary
        for s in range(1, steps + 1):
            sy, sx = round(s / steps * dy), round(s / steps * dx)
            shifted = torch.nn.functional.pad(boundary, (5, 5, 5, 5), value=1.0)[..., 5 + sy : 5 + sy + h, 5 + sx : 5 + sx + w]
            m = torch.maximum(m, shifted)
        out.append(m)
    return torch.stack(out, dim=1)


def test_path_max_and_its_gradient_match_the_cell_by_cell_definition():
    boundary = torch.rand(2, 9, 11, dtype=torch.float64, requires_grad=True)  # no ties
    offsets = neighbour_offsets(4)
    fast, plain = path_max(boundary, offsets), _path_max_by_definition(boundary, offsets)
    assert torch.equal(fast, plain)
    weights = torch.randn_like(plain)
    (g_fast,) = torch.autograd.grad((fast * weights).sum(), boundary)
    (g_plain,) = torch.autograd.grad((plain * weights).sum(), boundary)
    torch.testing.assert_close(g_fast, g_plain, rtol=0, atol=1e-12)
    small = torch.rand(1, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda b: path_max(b, neighbour_offsets(2)), (small,))


def test_at_a_tie_the_gradient_goes_to_the_nearest_cell_once():
    flat = torch.full((1, 3, 5), 0.5, requires_grad=True)
    (grad,) = torch.autograd.grad(path_max(flat, [(0, 2)]).sum(), flat)
    # columns 0-2 reach their own cell first; columns 3-4 see the outside (1.0) and pass nothing
    assert grad[0].tolist() == [[1.0, 1.0, 1.0, 0.0, 0.0]] * 3
    edge = torch.tensor([[[0.1, 0.9, 0.9]]], requires_grad=True)
    (grad,) = torch.autograd.grad(path_max(edge, [(0, 2)])[0, 0, 0, 0], edge)
    assert grad[0, 0].tolist() == [0.0, 1.0, 0.0]  # the first 0.9 on the way, not both halves


def test_the_affinity_loss_is_the_mean_over_each_kind_of_pair():
    torch.manual_seed(0)
    boundary = torch.rand(2, 1, 8, 9, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (2, 8, 9))
    labels[:, :2] = 255
    loss, logs = affinity_loss(boundary, labels, radius=3)
    offsets = neighbour_offsets(3)
    affinity = 1.0 - _path_max_by_definition(boundary[:, 0], offsets)
    kinds = pair_labels(labels, offsets)
    by_kind = {"bg": -torch.log(affinity[kinds["bg"]] + 1e-5).mean(), "fg": -torch.log(affinity[kinds["fg"]] + 1e-5).mean(),
               "neg": -torch.log(1.0 - affinity[kinds["neg"]] + 1e-5).mean()}
    expected = by_kind["bg"] / 2 + by_kind["fg"] / 2 + by_kind["neg"]
    torch.testing.assert_close(loss, expected)
    assert logs == pytest.approx({f"{k}_loss": float(v.detach()) for k, v in by_kind.items()})
    (g,) = torch.autograd.grad(loss, boundary)
    (g_expected,) = torch.autograd.grad(expected, boundary)
    torch.testing.assert_close(g, g_expected)


def test_the_head_is_the_1x1_convolution_of_the_upsampled_concatenated_levels():
    torch.manual_seed(0)
    net = BoundaryNet("resnet18", backbone_kwargs={"channels": (8, 16, 16, 32), "layers": (1, 1, 1, 1)}).eval()
    feats = net.backbone_features(torch.randn(2, 3, 64, 48))
    size = feats[0].shape[-2:]
    fused = [torch.nn.functional.interpolate(s(f), size=size, mode="bilinear", align_corners=False)
             for s, f in zip(net.squeeze, feats)]
    expected = torch.sigmoid(net.head(torch.cat(fused, dim=1)))
    torch.testing.assert_close(net.head_from(feats), expected, rtol=1e-5, atol=1e-6)


def test_relation_nets_with_one_frozen_backbone_share_its_features_and_another_backbone_gets_its_own(tiny_voc):
    from orandnet_lib.methods import pseudo

    ds, store = _random_cam_store(tiny_voc)
    kwargs = {"channels": (8, 16, 16, 32), "layers": (1, 1, 1, 1)}

    def net(seed: int) -> BoundaryNet:
        torch.manual_seed(seed)
        return BoundaryNet("resnet18", backbone_kwargs=kwargs, freeze_backbone=True, input_scale=2)

    first, second, other = net(0), net(0), net(1)
    second.head.weight.data.fill_(0.5)  # the new layers differ; the frozen backbone does not
    labels = pseudo.BoundarySet(store, ds, first.stride, 0.3, 0.05, use_crf=False, progress=False, workers=1)
    shared = pseudo.FeatureCache(ds, progress=False)
    a = pseudo.FrozenFeatures(labels, first, cache=shared)
    b = pseudo.FrozenFeatures(labels, second, cache=shared)
    own = pseudo.FrozenFeatures(labels, second, progress=False)  # computed for itself, as without sharing
    for index in range(len(labels)):
        (fa, _), (fb, _), (fo, _) = a[index], b[index], own[index]
        assert all(torch.equal(x, y) and torch.equal(x, z) for x, y, z in zip(fa, fb, fo))
    assert shared.computed == 1
    c = pseudo.FrozenFeatures(labels, other, cache=shared)
    c[0]
    assert shared.computed == 2, "another backbone's features are its own"
    assert not torch.equal(c.levels[False][0], a.levels[False][0])
    with pytest.raises(ValueError, match="computes in float32, this training in bfloat16"):
        pseudo.FrozenFeatures(labels, first, bf16=True, cache=shared)


def test_feature_cache_fills_whole_split_tensors_batch_by_batch(tiny_voc):
    """Batches of 2 images (the last one short) are written into tensors of the whole split: each
    image's row is its backbone's features, unflipped and flipped, in the backbone's layout."""
    from orandnet_lib.methods import pseudo
    from orandnet_lib.methods.cams import to_tensor

    ds, _ = _random_cam_store(tiny_voc)
    torch.manual_seed(0)
    net = BoundaryNet("resnet18", backbone_kwargs={"channels": (8, 16, 16, 32), "layers": (1, 1, 1, 1)},
                      freeze_backbone=True, input_scale=2).eval().to(memory_format=torch.channels_last)
    assert len(ds) % 2 != 0
    levels = pseudo.FeatureCache(ds, batch_size=2, progress=False).of(net)
    with torch.no_grad():
        for i, image_id in enumerate(ds.ids):
            x = to_tensor(ds.load_image(image_id)[None])
            for flip in (False, True):
                expected = net.backbone_features(x.flip(-1) if flip else x)
                assert len(levels[flip]) == len(expected)
                for whole, one in zip(levels[flip], expected):
                    assert whole.shape[0] == len(ds)
                    assert whole.is_contiguous(memory_format=torch.channels_last) == one.is_contiguous(
                        memory_format=torch.channels_last)
                    torch.testing.assert_close(whole[i], one[0], rtol=1e-4, atol=1e-5)
