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
