import numpy as np
import pytest

from orandnet_lib.core.metrics import ConfusionMatrix
from orandnet_lib.methods.refine import (boundary_affinities, cam_probabilities, confident_labels, crf_labels,
                                 crf_probabilities, neighbour_offsets, random_walk, random_walk_steps,
                                 transition_matrix)


def test_neighbour_offsets_cover_each_pair_once():
    assert neighbour_offsets(1) == [(0, 1), (1, 0)]  # the diagonals are sqrt(2) away
    offs2 = neighbour_offsets(2)
    assert (0, 1) in offs2 and (2, 0) in offs2 and (1, 1) in offs2 and (0, -1) not in offs2 and (2, 2) not in offs2


def test_random_walk_on_a_three_pixel_chain_by_hand():
    t = transition_matrix(np.zeros((1, 3)), radius=1, beta=1.0).toarray()
    # links 0-1 and 1-2 plus self-loops, rows normalised
    np.testing.assert_allclose(t, [[1 / 2, 1 / 2, 0], [1 / 3, 1 / 3, 1 / 3], [0, 1 / 2, 1 / 2]])
    scores = np.array([[[1.0, 0.0, 0.0]]])
    # exp_times is IRN's exponent: 2 ** 0 = 1 step, 2 ** 1 = 2 steps
    np.testing.assert_allclose(random_walk(scores, transition_matrix(np.zeros((1, 3)), 1, 1.0), 0)[0, 0],
                               [1 / 2, 1 / 3, 0])
    np.testing.assert_allclose(random_walk(scores, transition_matrix(np.zeros((1, 3)), 1, 1.0), 1)[0, 0],
                               [1 / 4 + 1 / 6, (1 / 2 + 1 / 3) / 3, 1 / 6])
    steps = random_walk_steps(scores, transition_matrix(np.zeros((1, 3)), 1, 1.0), [0, 1, 2])
    np.testing.assert_allclose(np.stack([s[0, 0] for s in steps]),
                               [[1, 0, 0], [1 / 2, 1 / 3, 0], [1 / 4 + 1 / 6, (1 / 2 + 1 / 3) / 3, 1 / 6]])
    with pytest.raises(ValueError):
        random_walk_steps(scores, transition_matrix(np.zeros((1, 3)), 1, 1.0), [2, 1])


def test_affinity_is_one_minus_the_strongest_boundary_on_the_path():
    boundary = np.array([[0.0, 0.2, 0.7, 0.1]])
    rows, cols, vals = boundary_affinities(boundary, radius=2)
    got = {(int(r), int(c)): float(v) for r, c, v in zip(rows, cols, vals)}
    assert got[(0, 1)] == pytest.approx(1 - 0.2)
    assert got[(0, 2)] == pytest.approx(1 - 0.7)  # passes 0.2 then reaches 0.7
    assert got[(1, 3)] == pytest.approx(1 - 0.7)  # crosses the 0.7 in the middle
    assert got[(2, 3)] == pytest.approx(1 - 0.7)
    assert len(got) == 3 + 2  # radius 2 on a row of 4: three neighbours at 1, two at 2


def test_a_wall_blocks_propagation():
    boundary = np.zeros((5, 9))
    boundary[:, 4] = 1.0  # a vertical wall
    t = transition_matrix(boundary, radius=3, beta=10.0)
    scores = np.zeros((1, 5, 9))
    scores[0, 2, 0] = 1.0  # a seed on the left
    out = random_walk(scores, t, 6)  # 64 steps
    assert out[0, :, :4].sum() > 0.99 * out[0].sum() - 1e-12  # everything stays left of the wall
    assert out[0, :, 5:].max() == 0.0
    open_field = random_walk(scores, transition_matrix(np.zeros((5, 9)), 3, 10.0), 6)
    assert open_field[0, :, 5:].max() > 0  # without the wall it crosses


def test_transition_matrix_is_sparse_and_row_stochastic():
    t = transition_matrix(np.random.default_rng(0).random((12, 15)), radius=5, beta=10.0)
    np.testing.assert_allclose(np.asarray(t.sum(axis=1)).ravel(), 1.0)
    n = 12 * 15
    assert t.nnz < n * (len(neighbour_offsets(5)) * 2 + 1) + 1


def test_confident_labels_with_ignore():
    cams = np.array([[[0.9, 0.2, 0.01, 0.5]], [[0.1, 0.1, 0.02, 0.6]]])
    labels = confident_labels(cams, [3, 7], fg_threshold=0.30, bg_threshold=0.05)
    # pixel 0: class 3 above 0.30; pixel 1: max 0.2 -> neither fg nor bg -> ignore;
    # pixel 2: everything below 0.05 -> background; pixel 3: class 7 wins.
    assert labels.tolist() == [[3, 255, 0, 7]]
    assert confident_labels(np.zeros((0, 1, 2)), [], 0.3, 0.05).tolist() == [[0, 0]]


def test_confident_labels_call_nothing_background_when_a_labelled_class_has_no_confident_foreground():
    # all maps empty: the image's labels say the objects are there, so nothing is confident background
    assert confident_labels(np.zeros((2, 2, 3)), [1, 2], 0.3, 0.05).tolist() == [[255] * 3] * 2
    # one class truncated below the foreground threshold (its map never exceeds 0.3): the other
    # class's confident foreground stays, the rest is ignored
    cams = np.array([[[0.9, 0.0, 0.0]], [[0.2, 0.1, 0.0]]])
    assert confident_labels(cams, [3, 7], 0.3, 0.05).tolist() == [[3, 255, 255]]
    # with a truncated core and bg = 0 (the relative rule at operating point 0), the zeros would all be
    # background; the ignore band still separates the core from them where scores lie in (0, fg]
    cams = np.array([[[0.9, 0.2, 0.1, 0.0]]])
    assert confident_labels(cams, [4], 0.3, 0.0).tolist() == [[4, 255, 255, 0]]


def test_crf_improves_a_noisy_mask_on_a_two_region_image():
    rng = np.random.default_rng(0)
    image = np.zeros((40, 40, 3), np.uint8)
    image[:, 20:] = 200  # two flat regions
    truth = np.zeros((40, 40), np.int64)
    truth[:, 20:] = 1
    noisy = truth.copy()
    flip = rng.random(truth.shape) < 0.2
    noisy[flip] = 1 - noisy[flip]
    refined = crf_labels(image, noisy, 2, gt_prob=0.7)
    before = ConfusionMatrix(2).update(noisy, truth).scores().miou
    after = ConfusionMatrix(2).update(refined, truth).scores().miou
    assert after > before + 0.2 and after > 0.95


def test_crf_on_probabilities_keeps_shape_and_sums_to_one():
    cams = np.random.default_rng(1).random((2, 10, 12)).astype(np.float32)
    probs = cam_probabilities(cams, 0.3)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, rtol=1e-5)
    out = crf_probabilities(np.zeros((10, 12, 3), np.uint8), probs, iterations=3)
    assert out.shape == (3, 10, 12)
    np.testing.assert_allclose(out.sum(axis=0), 1.0, rtol=1e-4)


def test_pseudo_masks_round_trip_through_the_voc_reader(tiny_voc, tmp_path):
    from orandnet_lib.methods.pseudo import write_pseudo_masks
    from orandnet_lib.data.voc import VOCDataset

    ds = VOCDataset(tiny_voc, "train")
    masks = {i: np.where(ds.load_mask(i) == 2, 255, ds.load_mask(i)).astype(np.uint8) for i in ds.ids}
    root = write_pseudo_masks(tmp_path / "pseudo", ds, masks.items())
    back = VOCDataset(root, "train")
    assert back.ids == ds.ids and back.class_names == ds.class_names
    for i in ds.ids:
        np.testing.assert_array_equal(back.load_mask(i), masks[i])
        np.testing.assert_array_equal(back.load_image(i), ds.load_image(i))
        assert (root / "JPEGImages" / f"{i}.jpg").is_symlink()


def test_refined_cams_end_to_end_on_tiny_data(tiny_voc, tmp_path):
    import torch

    from orandnet_lib.methods.cams import CamStore, CamStoreWriter
    from orandnet_lib.methods.pseudo import BoundarySet, boundary_maps, refined_cams
    from orandnet_lib.nets.boundary import BoundaryNet
    from orandnet_lib.data.voc import VOCDataset

    ds = VOCDataset(tiny_voc, "train")
    with CamStoreWriter(tmp_path / "cams") as w:
        for i in ds.ids:
            mask = ds.load_mask(i)
            ids = np.flatnonzero(ds.load(i).labels) + 1
            w.add(i, np.stack([(mask == k).astype(np.float32) * 0.9 for k in ids]), ids)
    store = CamStore(tmp_path / "cams")
    torch.manual_seed(0)
    net = BoundaryNet("resnet18", backbone_kwargs={"channels": (8, 16, 16, 32), "layers": (1, 1, 1, 1)})
    data = BoundarySet(store, ds, stride=net.stride, use_crf=False, progress=False)
    assert set(data.label_statistics()) == {"foreground", "background", "ignored"}
    x, y = data[0]
    assert x.shape == (3, 20, 24) and y.shape == (5, 6)
    settings = {"beta": 10.0, "exp_times": 2, "radius": 5, "crf_iterations": 2}
    with pytest.raises(ValueError, match="boundary"):
        next(refined_cams("rw", store, ds, background=0.3, settings=settings, progress=False))
    boundaries = boundary_maps(net, ds, progress=False)
    out = list(refined_cams("rw", store, ds, background=0.3, settings=settings, boundaries=boundaries, workers=1,
                            progress=False))
    assert [o[0] for o in out] == list(ds.ids)
    for image_id, cams, ids in out:
        assert cams.shape == store[image_id][0].shape and cams.max() <= 1.0 + 1e-6 and cams.min() >= 0
    # worker processes give the same result, in order
    forked = list(refined_cams("rw", store, ds, background=0.3, settings=settings, boundaries=boundaries, workers=2,
                               progress=False))
    for (i, a, _), (j, b, _) in zip(out, forked):
        assert i == j
        np.testing.assert_array_equal(a, b)
    crf = list(refined_cams("crf", store, ds, background=0.3, settings=settings, progress=False))
    assert all(c.shape == store[i][0].shape for i, c, _ in crf)


@pytest.mark.parametrize("shape,size", [((2, 96, 96), (24, 24)), ((1, 21, 17), (6, 5)), ((3, 7, 9), (7, 9))])
def test_numpy_pooling_and_resizing_match_torch(shape, size):
    import torch
    import torch.nn.functional as F

    from orandnet_lib.methods.refine import adaptive_avg_pool, resize_bilinear

    x = np.random.default_rng(0).random(shape)
    t = torch.from_numpy(x)[None]
    np.testing.assert_allclose(adaptive_avg_pool(x, size), F.adaptive_avg_pool2d(t, size)[0].numpy(), atol=1e-12)
    small = x[:, : size[0], : size[1]]
    np.testing.assert_allclose(resize_bilinear(small, shape[1:]),
                               F.interpolate(torch.from_numpy(small)[None], size=shape[1:], mode="bilinear",
                                             align_corners=False)[0].numpy(), atol=1e-12)


def test_true_boundary_marks_mixed_cells_and_class_changes_between_cells():
    from orandnet_lib.methods.refine import true_boundary
    mask = np.zeros((10, 10), np.uint8)
    mask[2:8, 2:8] = 1
    # stride 2: the square fills cells (1..3, 1..3) exactly; a cell is marked where its label
    # differs from the cell to its left, above or above-left (the bottom-right corner)
    assert true_boundary(mask, 2).tolist() == [[0, 0, 0, 0, 0],
                                               [0, 1, 1, 1, 1],
                                               [0, 1, 0, 0, 1],
                                               [0, 1, 0, 0, 1],
                                               [0, 1, 1, 1, 1]]
    # stride 4: cells (0..1, 0..1) each hold part of the square and background
    assert true_boundary(mask, 4).tolist() == [[1, 1, 0], [1, 1, 1], [0, 1, 1]]
    # VOC's unlabelled ring counts as a label; a 5-pixel side leaves a partial last cell
    ring = np.zeros((5, 5), np.uint8)
    ring[4, 4] = 255
    assert true_boundary(ring, 2).tolist() == [[0, 0, 0], [0, 0, 0], [0, 0, 1]]
    assert true_boundary(np.full((6, 6), 3), 3).sum() == 0


def test_a_walk_along_the_true_boundaries_pulls_a_spilled_cam_back_inside_the_object():
    from orandnet_lib.methods.refine import RefineInputs, refine_random_walk, true_boundary
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 1
    cam = np.zeros((1, 32, 32), np.float32)
    cam[0, 4:28, 4:28] = 0.6  # spills 4 pixels past every edge
    cam[0, 12:20, 12:20] = 1.0  # peaks inside
    walked = refine_random_walk(RefineInputs(None, cam, np.array([1]), 0.5, true_boundary(mask, 2),
                                             {"exp_times": 6, "radius": 5, "beta": 10.0}))[0]

    def iou(pred: np.ndarray) -> float:
        return float((pred & (mask == 1)).sum() / (pred | (mask == 1)).sum())

    # At the CAM's best cut the spill stays: 16^2 / 24^2 = 0.44. The walk averages the spill
    # over the whole background region, so a cut below the object's score leaves it out.
    cuts = np.linspace(0.05, 0.95, 19)
    assert max(iou(cam[0] > t) for t in cuts) == pytest.approx(0.444, abs=1e-3)
    assert max(iou(walked > t) for t in cuts) > 0.7
    assert walked[mask == 0].max() < walked[12:20, 12:20].min()
