"""Interactive teaching figures that keep working in the static book.

A widget explorer here is a tree of ``ipywidgets.Stack``s with every panel computed in
advance; the controls (dropdown, toggle buttons, slider) are tied to the stacks with
``jslink``, which runs in the browser. The executed notebook stores the widget state, the
book embeds it, and moving a slider changes the panel with no kernel behind the page.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..core.metrics import ConfusionMatrix, cam_to_mask
from ..methods.refine import cam_probabilities, crf_probabilities


@dataclass(frozen=True)
class Level:
    """One control of an explorer: its label, its option labels and the kind of control
    (``"dropdown"``, ``"toggle"`` or ``"slider"``)."""

    label: str
    options: tuple[str, ...]
    kind: str = "toggle"


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def explorer(levels: Sequence[Level], leaf: Callable[[tuple[int, ...]], "object"], title: str = ""):
    """A VBox of one control per level above nested Stacks whose leaves are
    ``leaf((i_level0, i_level1, ...))``. Each control's ``index`` is jslinked to the
    ``selected_index`` of every Stack of its level (the links are in ``.links``)."""
    import ipywidgets as widgets

    if not levels or any(not lv.options for lv in levels):
        raise ValueError("an explorer needs at least one level, each with at least one option")
    stacks_by_level: list[list[widgets.Stack]] = [[] for _ in levels]

    def build(depth: int, prefix: tuple[int, ...]):
        if depth == len(levels):
            return leaf(prefix)
        stack = widgets.Stack([build(depth + 1, prefix + (i,)) for i in range(len(levels[depth].options))],
                              selected_index=0)
        stacks_by_level[depth].append(stack)
        return stack

    root = build(0, ())
    controls, links = [], []
    for level, stacks in zip(levels, stacks_by_level):
        if level.kind == "dropdown":
            control = widgets.Dropdown(options=list(level.options), index=0, description=level.label)
        elif level.kind == "slider":
            control = widgets.SelectionSlider(options=list(level.options), index=0, description=level.label,
                                              continuous_update=True)
        elif level.kind == "toggle":
            control = widgets.ToggleButtons(options=list(level.options), index=0, description=level.label)
        else:
            raise ValueError(f"control kind must be dropdown, toggle or slider, got {level.kind!r}")
        for stack in stacks:
            links.append(widgets.jslink((control, "index"), (stack, "selected_index")))
        controls.append(control)
    header = [widgets.HTML(f"<b>{title}</b>")] if title else []
    box = widgets.VBox(header + controls + [root])
    box.links = links  # the browser-side links (kept for inspection)
    return box


def image_scores(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> dict[str, float]:
    """mIoU, precision and recall (percent) of one image's mask."""
    return ConfusionMatrix(num_classes).update(pred, gt).scores().summary()


def refined_mask(image: np.ndarray, cams: np.ndarray, class_ids: np.ndarray, background: float, refinement: str,
                 crf_iterations: int = 10) -> np.ndarray:
    """The mask of a CAM at a background score, raw (``"cam"``) or after a dense CRF whose
    unary uses that score (``"crf"``)."""
    if refinement == "cam" or len(class_ids) == 0:
        return cam_to_mask(cams, class_ids, background)
    if refinement == "crf":
        q = crf_probabilities(image, cam_probabilities(cams, background), crf_iterations)
        return np.concatenate([[0], np.asarray(class_ids)]).astype(np.uint8)[q.argmax(axis=0)]
    raise ValueError(f"refinement must be 'cam' or 'crf', got {refinement!r}")
