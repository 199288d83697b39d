import numpy as np
import pytest

from orandnet_lib.core.stats import ols
from orandnet_lib.book.teaching import Level, explorer, image_scores, png_bytes, refined_mask


def test_ols_recovers_an_exact_line_and_gives_textbook_standard_errors():
    x = [0.0, 1.0, 2.0, 3.0]
    fit = ols([1.0, 3.0, 5.0, 7.0], {"x": x})
    assert fit["coef"]["intercept"] == pytest.approx(1.0) and fit["coef"]["x"] == pytest.approx(2.0)
    assert fit["r2"] == pytest.approx(1.0) and fit["se"]["x"] == pytest.approx(0.0, abs=1e-9)
    # y = (0, 2, 1, 3): slope 0.8, intercept 0.3; residuals (-0.3, 0.9, -0.9, 0.3), s^2 = 1.8 / 2,
    # se(slope) = sqrt(s^2 / sum (x - mean)^2) = sqrt(0.9 / 5)
    fit = ols([0.0, 2.0, 1.0, 3.0], {"x": x})
    assert fit["coef"]["x"] == pytest.approx(0.8) and fit["coef"]["intercept"] == pytest.approx(0.3)
    assert fit["se"]["x"] == pytest.approx(np.sqrt(0.9 / 5)) and fit["dof"] == 2
    with pytest.raises(ValueError, match="collinear"):
        ols([1.0, 2.0, 3.0], {"a": [1, 2, 3], "b": [2, 4, 6]})
    assert np.isnan(ols([1.0, 2.0], {"x": [0.0, 1.0]})["se"]["x"])  # no residual degrees of freedom


def test_explorer_links_each_control_to_every_stack_of_its_level():
    import ipywidgets as widgets

    levels = [Level("image", ("a", "b"), "dropdown"), Level("variant", ("x", "y", "z")), Level("t", ("0.1", "0.2"), "slider")]
    box = explorer(levels, lambda key: widgets.HTML("-".join(map(str, key))))
    dropdown, toggle, slider, root = box.children
    assert isinstance(root, widgets.Stack) and len(root.children) == 2
    assert all(len(s.children) == 3 for s in root.children)
    leaf = root.children[1].children[2].children[0]
    assert leaf.value == "1-2-0"
    links = box.links
    def targets(control):
        return {id(l.target[0]) for l in links if l.source[0] is control and l.source[1] == "index"}
    assert targets(dropdown) == {id(root)}
    assert targets(toggle) == {id(s) for s in root.children}
    assert targets(slider) == {id(s) for v in root.children for s in v.children}
    assert isinstance(slider, widgets.SelectionSlider) and slider.options == ("0.1", "0.2")


def test_single_image_scores_and_masks():
    gt = np.array([[0, 0, 1, 1]])
    assert image_scores(np.array([[0, 0, 1, 1]]), gt, 2) == {"miou": 100.0, "precision": 100.0, "recall": 100.0}
    cams = np.array([[[0.1, 0.4, 0.6, 0.9]]], np.float32)
    np.testing.assert_array_equal(refined_mask(np.zeros((1, 4, 3), np.uint8), cams, np.array([3]), 0.5, "cam"),
                                  [[0, 0, 3, 3]])
    with pytest.raises(ValueError):
        refined_mask(np.zeros((1, 4, 3), np.uint8), cams, np.array([3]), 0.5, "magic")
    assert png_bytes(np.zeros((4, 4, 3))).startswith(b"\x89PNG")
