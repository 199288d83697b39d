"""IRN's random walk as IRN defines it (step/make_sem_seg_labels.py, misc/indexing.py
``propagate_to_edge``), on cases whose answers are computed by hand:

- the transition matrix raised to 2 ** exp_times, by 2 ** exp_times sparse steps, equals
  IRN's dense matrix (A^beta divided by its column sums, applied as ``x @ T``) squared
  exp_times times;
- the scores are multiplied by (1 - boundary) before the walk;
- after the walk and the upsampling, the maps are divided by their maximum over all classes
  and pixels (``rw_up / torch.max(rw_up)``), not class by class.
"""

from __future__ import annotations

import numpy as np
import pytest

from orandnet_lib.methods.refine import (REFINEMENTS, RefineInputs, boundary_affinities, random_walk,
                                         random_walk_steps, transition_matrix, walk_input)

CHAIN = np.array([[0.0, 0.0, 0.5]])  # a01 = 1 - max(0, 0) = 1, a12 = 1 - max(0, 0.5) = 0.5 (radius 1)
# With beta = 1 and self-loops of 1: A = [[1, 1, 0], [1, 1, .5], [0, .5, 1]], degrees (2, 2.5, 1.5);
# one step makes each pixel the A-weighted mean of its neighbours. From x = (1, 0, 0):
# step 1: (1/2, 2/5, 0); step 2: (9/20, 9/25, 2/15); step 3: (81/200, 263/750, 47/225);
# step 4: (2267/6000, 7741/22500, 1729/6750).
BY_HAND = {1: [1 / 2, 2 / 5, 0], 2: [9 / 20, 9 / 25, 2 / 15], 4: [2267 / 6000, 7741 / 22500, 1729 / 6750]}


def irn_dense_walk(boundary: np.ndarray, scores: np.ndarray, radius: int, beta: float, exp_times: int) -> np.ndarray:
    """IRN's ``to_transition_matrix`` and product, written densely from the affinities:
    A^beta over its column sums, squared exp_times times, then ``x @ T``."""
    n = boundary.size
    rows, cols, vals = boundary_affinities(boundary, radius)
    a = np.eye(n)
    a[rows, cols] = a[cols, rows] = vals
    t = a ** beta
    t = t / t.sum(axis=0, keepdims=True)
    for _ in range(exp_times):
        t = t @ t
    return (scores.reshape(len(scores), n) @ t).reshape(scores.shape)


def test_chain_after_two_and_four_steps_by_hand_equals_the_dense_power():
    t = transition_matrix(CHAIN, radius=1, beta=1.0)
    np.testing.assert_allclose(t.toarray(), [[1 / 2, 1 / 2, 0], [2 / 5, 2 / 5, 1 / 5], [0, 1 / 3, 2 / 3]])
    x = np.array([[[1.0, 0.0, 0.0]]])
    for exp_times, steps in ((0, 1), (1, 2), (2, 4)):  # exp_times is the exponent: 2 ** exp_times steps
        np.testing.assert_allclose(random_walk(x, t, exp_times)[0, 0], BY_HAND[steps], rtol=1e-12)
        np.testing.assert_allclose(irn_dense_walk(CHAIN, x, 1, 1.0, exp_times)[0, 0], BY_HAND[steps], rtol=1e-12)
    steps = random_walk_steps(x, t, [0, 1, 2, 4])
    np.testing.assert_allclose(np.stack([s[0, 0] for s in steps]), [[1, 0, 0], BY_HAND[1], BY_HAND[2], BY_HAND[4]])
    with pytest.raises(ValueError):
        random_walk(x, t, -1)


def test_sparse_steps_equal_irns_dense_squaring_on_a_small_graph():
    rng = np.random.default_rng(0)
    boundary = rng.random((4, 5)) * 0.6  # no link falls under the 1e-8 the sparse matrix drops
    scores = rng.random((2, 4, 5))
    for exp_times in (0, 3, 8):
        np.testing.assert_allclose(random_walk(scores, transition_matrix(boundary, 2, 10.0), exp_times),
                                   irn_dense_walk(boundary, scores, 2, 10.0, exp_times), rtol=1e-9, atol=1e-12)


def refine(cams: np.ndarray, boundary: np.ndarray, **settings: float) -> np.ndarray:
    x = RefineInputs(np.zeros((*cams.shape[1:], 3), np.uint8), cams.astype(np.float32), np.arange(1, len(cams) + 1),
                     0.25, boundary, {"beta": 10.0, "exp_times": 8, "radius": 5, **settings})
    return REFINEMENTS.get("rw")(x)


def test_one_minus_boundary_zeroes_the_score_on_a_boundary_pixel():
    # boundary grid = CAM grid, so pooling and upsampling are the identity; the boundary pixel
    # in the middle cuts every link (each affinity passes through it): the walk is the identity.
    cams, boundary = np.array([[[0.2, 1.0, 0.2]]]), np.array([[0.0, 1.0, 0.0]])
    np.testing.assert_allclose(walk_input(cams, boundary), [[[0.2, 0.0, 0.2]]])
    # without (1 - boundary) the peak 1.0 would stay and the sides stay 0.2; with it the middle
    # is 0 and the sides are the image's maximum
    np.testing.assert_allclose(refine(cams, boundary), [[[1.0, 0.0, 1.0]]], rtol=1e-6)
    # half a boundary halves the score before the walk
    np.testing.assert_allclose(walk_input(np.ones((1, 2, 2)), np.full((2, 2), 0.5)), np.full((1, 2, 2), 0.5))


def test_the_walked_maps_are_divided_by_the_global_maximum_not_per_class():
    # two classes on the same cut graph (the walk is the identity): after (1 - boundary)
    # class 1 = (0.8, 0, 0.2), class 2 = (0.1, 0, 0.4); the maximum over both is 0.8
    cams, boundary = np.array([[[0.8, 0.5, 0.2]], [[0.1, 0.3, 0.4]]]), np.array([[0.0, 1.0, 0.0]])
    out = refine(cams, boundary)
    np.testing.assert_allclose(out, [[[1.0, 0.0, 0.25]], [[0.125, 0.0, 0.5]]], rtol=1e-6)
    # per class it would have been (0.25, 0, 1) for class 2: at a background score of 0.6 the
    # third pixel is background here, class 2 there
    assert out[1, 0, 2] < 0.6


def test_an_all_boundary_image_gives_zeros_not_nan():
    out = refine(np.ones((1, 2, 2)), np.ones((2, 2)))
    assert np.isfinite(out).all() and out.max() == 0.0


def test_the_walk_class_by_class_is_the_product_with_all_classes_at_once():
    """The walk steps one class column at a time (faster in scipy); the terms and their order are
    those of the product with the (N, C) scores, so the result is the same to the last bit."""
    rng = np.random.default_rng(0)
    boundary = rng.random((12, 13)) * 0.5
    t = transition_matrix(boundary, 3, 10.0)
    scores = rng.random((3, 12, 13))
    flat = scores.reshape(3, -1).T
    for _ in range(2 ** 4):
        flat = t @ flat
    assert np.array_equal(random_walk(scores, t, 4), flat.T.reshape(3, 12, 13))
    assert random_walk(np.zeros((0, 12, 13)), t, 4).shape == (0, 12, 13)  # an image without a class
