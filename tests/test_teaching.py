import numpy as np
import pytest

from orandnet_lib.book import teaching
from orandnet_lib.book.teaching import Level, explorer, image_scores, png_bytes, refined_mask
from orandnet_lib.core.errors import ConfigError
from orandnet_lib.methods.refine import REFINEMENTS


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
    with pytest.raises(ConfigError, match="unknown refinement 'magic'; known: cam, crf, rw"):
        refined_mask(np.zeros((1, 4, 3), np.uint8), cams, np.array([3]), 0.5, "magic")
    assert png_bytes(np.zeros((4, 4, 3))).startswith(b"\x89PNG")


class _Data:
    """Two 4 x 6 images with a class-2 square, in the dataset interface the explorer reads."""

    num_classes = 3
    class_names = ("background", "disc", "square")

    def __init__(self):
        from types import SimpleNamespace

        mask = np.zeros((4, 6), np.uint8)
        mask[1:3, 1:4] = 2
        self.samples = {i: SimpleNamespace(image=np.full((4, 6, 3), 100 + 10 * n, np.uint8), mask=mask)
                        for n, i in enumerate(("a", "b"))}

    def load(self, image_id):
        return self.samples[image_id]


def _cams_of(variant, image_id):
    cam = np.zeros((1, 4, 6), np.float32)
    cam[0, 1:3, 1:4] = 0.8 if variant == "x" else 0.3
    return cam, np.array([2])


@pytest.fixture
def toy_refinement():
    """A refinement registered for the test: it halves the scores and records what it saw."""
    seen = []

    @REFINEMENTS.register("toy_half", label="toy: half")
    def half(x):
        seen.append((x.background, x.boundary is not None, dict(x.settings)))
        return x.cams * 0.5

    yield seen
    REFINEMENTS.remove("toy_half")


def test_mask_explorer_lists_a_newly_registered_refinement_by_its_label(toy_refinement):
    import ipywidgets as widgets

    m = teaching.mask_panels(_Data(), _cams_of, ["a", "b"], ["x", "y"], ["cam", "toy_half"], [0.2, 0.5],
                             settings={"k": 1})
    assert set(m.panels) == {(a, b, r, t) for a in range(2) for b in range(2) for r in range(2) for t in range(2)}
    # computed once per image and variant (it does not declare uses_background), with the settings
    assert len(toy_refinement) == 4 and toy_refinement[0] == (0.2, False, {"k": 1})
    # variant x: CAM 0.8 -> refined 0.4: above 0.2, below 0.5; the raw CAM is above both
    assert m.panels[(0, 0, 1, 0)][1]["miou"] == 100.0 and m.panels[(0, 0, 1, 1)][1]["miou"] < 100.0
    assert m.panels[(0, 0, 0, 1)][1]["miou"] == 100.0
    panel = m.panels[(0, 0, 0, 0)][0]
    assert panel.shape == (4, 6 + 4 + 6, 3) and m.width == 6
    box = teaching.mask_explorer(m)
    toggles = [c for c in box.children if isinstance(c, widgets.ToggleButtons)]
    assert [t.options for t in toggles] == [("x", "y"), ("CAM", "toy: half")]
    legend = box.children[-1]
    assert isinstance(legend, widgets.HTML) and "disc" in legend.value and "square" in legend.value
    assert ">background</span>" not in legend.value, "the legend lists the classes a mask can show"
    fig = teaching.mask_grid(m)
    assert len(fig.axes) == 2 * 2
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["disc", "square"], "mask colours under the grid"
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_refinements_that_need_boundaries_are_left_out_without_them(tmp_path):
    assert teaching.usable_refinements(["cam", "crf", "rw"], have_boundaries=False) == ["cam", "crf"]
    assert teaching.usable_refinements(["cam", "rw"], have_boundaries=True) == ["cam", "rw"]
    assert teaching.load_boundaries(tmp_path / "boundaries.npz") is None
    np.savez(tmp_path / "boundaries.npz", a=np.zeros((2, 2), np.float16))
    assert teaching.load_boundaries(tmp_path / "boundaries.npz")["a"].shape == (2, 2)


def test_random_walk_panel_uses_the_images_boundary_map():
    data = _Data()
    boundaries = {"a": np.zeros((2, 3), np.float16)}  # no boundary: the walk spreads the CAM evenly
    m = teaching.mask_panels(data, _cams_of, ["a"], ["x"], ["rw"], [0.5], boundaries=boundaries,
                             settings={"beta": 10.0, "exp_times": 2, "radius": 1})
    assert (0, 0, 0, 0) in m.panels


def test_threshold_explorer_moves_a_marker_along_the_curve():
    from orandnet_lib.book.teaching import marker_points, threshold_explorer
    from orandnet_lib.core.metrics import SweepResult

    # Two classes (background, object); rows ground truth, columns prediction; 12 background and
    # 6 object pixels. At 0.2 the mask marks 8 pixels as object, 6 rightly; at 0.6 it marks 3, all right.
    low = np.array([[10, 2], [0, 6]])
    high = np.array([[12, 0], [3, 3]])
    sweep = SweepResult(np.array([0.2, 0.6]), np.stack([low, high]))
    at_low, at_high = marker_points({"cam": sweep}, 0.25)["cam"], marker_points({"cam": sweep}, 0.55)["cam"]
    # precision: background 10/10, object 6/8 -> 87.5 %; recall: background 10/12, object 6/6 -> 91.67 %
    assert at_low["precision"] == pytest.approx(87.5) and at_low["recall"] == pytest.approx(100 * (10 / 12 + 1) / 2)
    # at 0.6: precision (12/15 + 3/3) / 2 = 90 %, recall (12/12 + 3/6) / 2 = 75 %
    assert at_high["precision"] == pytest.approx(90.0) and at_high["recall"] == pytest.approx(75.0)
    assert at_low["threshold"] == pytest.approx(20.0) and at_high["threshold"] == pytest.approx(60.0)
    box = threshold_explorer({"cam": sweep}, [0.2, 0.6], title="t")
    slider, stack = box.children[1], box.children[2]
    assert list(slider.options) == ["0.20", "0.60"] and len(stack.children) == 2
    images = [panel.children[0].value for panel in stack.children]
    assert images[0] != images[1], "the marker moves with the slider"
    assert "87.5" in stack.children[0].children[1].value and "90.0" in stack.children[1].children[1].value
