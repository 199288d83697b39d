"""Mask-free score rules (issue 23): Otsu's threshold of a CAM's own top scores."""

import numpy as np
import pytest

from orandnet_lib.core.errors import ConfigError
from orandnet_lib.methods.score_rules import operating_point, otsu_threshold, top_score_histogram


def test_top_score_histogram_counts_each_pixels_largest_labelled_score():
    cams = np.array([[[0.05, 0.50]], [[0.30, 0.995]]], np.float32)  # two classes, two pixels: tops 0.30 and 0.995
    hist = top_score_histogram([(cams, np.array([1, 2])), (np.zeros((0, 1, 2)), np.array([]))], bins=10)
    assert hist.tolist() == [0, 0, 0, 1, 0, 0, 0, 0, 0, 1]  # 0.30 in bin 3, 0.995 in the last; no-class image left out
    assert top_score_histogram([(np.ones((1, 2, 2)), np.array([1]))], bins=4).tolist() == [0, 0, 0, 4]


def test_otsu_threshold_by_hand():
    # Two bins of 4 bins, centres 0.125 and 0.625: the only split with pixels on both sides is at edge 0.25
    # (edge 0.5 and 0.75 give the same groups, so the first is taken).
    assert otsu_threshold(np.array([3, 0, 1, 0])) == 0.25
    # Three occupied bins [2, 1, 0, 1] (centres .125, .375, .875): between-group variance w0 w1 (m0 - m1)^2 at
    # edge .25: 2*2*(.125 - .625)^2 = 1.0; at edge .5: 3*1*(.2083 - .875)^2 = 1.333; so the edge is 0.5 (and 0.75
    # gives the same groups).
    assert otsu_threshold(np.array([2, 1, 0, 1])) == 0.5


def test_otsu_splits_a_bimodal_cam_between_its_modes():
    rng = np.random.default_rng(0)
    low = np.clip(rng.normal(0.1, 0.03, 3000), 0, 1)
    high = np.clip(rng.normal(0.8, 0.05, 1000), 0, 0.999)
    cams = np.concatenate([low, high]).reshape(1, 1, -1).astype(np.float32)
    t = operating_point([(cams, np.array([1]))])
    # every edge in the empty gap splits the same groups; the first is taken
    assert np.floor(low.max() * 100) / 100 < t <= np.floor(high.min() * 100) / 100


def test_constant_maps_have_no_operating_point():
    with pytest.raises(ConfigError, match="at least two bins"):
        operating_point([(np.zeros((1, 4, 4), np.float32), np.array([1]))])
    with pytest.raises(ConfigError, match="unknown score rule"):
        operating_point([(np.zeros((1, 4, 4), np.float32), np.array([1]))], "best-on-masks")
