"""Interactive teaching figures that keep working in the static book.

A widget explorer here is a tree of ``ipywidgets.Stack``s with every panel computed in
advance; the controls (dropdown, toggle buttons, slider) are tied to the stacks with
``jslink``, which runs in the browser. The executed notebook stores the widget state, the
book embeds it, and moving a slider changes the panel with no kernel behind the page.

The mask explorer of chapter 06 lists the refinements by name from the registry
(``methods.refine.REFINEMENTS``): a newly registered refinement appears in it with no edit here.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import plots
from ..core.metrics import ConfusionMatrix, cam_to_mask
from ..methods.refine import REFINEMENTS, RefineInputs


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
                 boundary: np.ndarray | None = None, settings: Mapping[str, Any] | None = None) -> np.ndarray:
    """The mask of a CAM after a registered refinement (``REFINEMENTS``, e.g. ``"cam"``,
    ``"crf"``, ``"rw"``), at a background score: the refinement's (K, H, W) scores, then the
    argmax over [background score, scores]. ``boundary``: the image's relation-net boundary
    map, for a refinement that needs it; ``settings``: its settings (beta, iterations, ...)."""
    if len(class_ids) == 0:
        return cam_to_mask(cams, class_ids, background)
    refine = REFINEMENTS.get(refinement)  # an unknown name lists the known ones
    scores = refine(RefineInputs(image, cams, np.asarray(class_ids), background, boundary, dict(settings or {})))
    return cam_to_mask(scores, class_ids, background)


def usable_refinements(names: Sequence[str], have_boundaries: bool) -> list[str]:
    """The registered refinements among ``names`` that can run: one that needs the boundary
    maps is left out when there are none."""
    return [n for n in names if have_boundaries or not REFINEMENTS.entry(n).attrs.get("needs_boundary")]


def load_boundaries(path: str | Path) -> Mapping[str, np.ndarray] | None:
    """Stage 4's boundary maps (``boundaries.npz``: one (h, w) float16 array per image id),
    or None when the file is missing."""
    path = Path(path)
    return np.load(path) if path.exists() else None


CamsOf = Callable[[str, str], tuple[np.ndarray, np.ndarray]]  # (variant, image id) -> (cams (K, H, W), class ids (K,))


@dataclass
class MaskPanels:
    """Every panel of the mask explorer, computed in advance: ``panels[(image, variant,
    refinement, threshold)]`` (indices) is (the mask over the image beside the ground truth,
    that image's scores)."""

    image_ids: tuple[str, ...]
    variants: tuple[str, ...]
    refinements: tuple[str, ...]
    thresholds: tuple[float, ...]
    panels: dict[tuple[int, int, int, int], tuple[np.ndarray, dict[str, float]]]
    width: int  # of one image, so a panel's left half is the mask alone
    class_names: tuple[str, ...] = ()


BoundaryOf = Callable[[str, str], "np.ndarray | None"]  # (variant, image id) -> (h, w) boundary map, or None


def mask_panels(dataset: Any, cams_of: CamsOf, image_ids: Sequence[str], variants: Sequence[str],
                refinements: Sequence[str], thresholds: Sequence[float], *,
                boundaries: Mapping[str, np.ndarray] | BoundaryOf | None = None,
                settings: Mapping[str, Any] | None = None) -> MaskPanels:
    """For each image, CAM variant, registered refinement and background score: the refined
    mask (each refinement through its registry function, with the boundary map of the relation
    net that refines that variant) and its precision, recall and mIoU on that image. A
    refinement whose entry does not declare ``uses_background`` is computed once per image and
    variant and thresholded at each score. ``boundaries``: one net's maps by image id, or a
    function of (variant, image id)."""
    settings = dict(settings or {})
    gap = None
    panels: dict[tuple[int, int, int, int], tuple[np.ndarray, dict[str, float]]] = {}
    width = 0
    for a, image_id in enumerate(image_ids):
        sample = dataset.load(image_id)
        width = sample.image.shape[1]
        gap = np.full((sample.image.shape[0], 4, 3), 255, np.uint8)
        gt_panel = plots.overlay(sample.image, sample.mask)
        for b, variant in enumerate(variants):
            cams, class_ids = cams_of(variant, image_id)
            found = (boundaries(variant, image_id) if callable(boundaries) else
                     None if boundaries is None else boundaries[image_id])
            boundary = None if found is None else np.asarray(found, dtype=np.float32)
            for r, name in enumerate(refinements):
                entry = REFINEMENTS.entry(name)
                needs = boundary if entry.attrs.get("needs_boundary") else None
                per_score = bool(entry.attrs.get("uses_background"))
                scores = None
                for t, thr in enumerate(thresholds):
                    if len(class_ids) == 0:
                        mask = cam_to_mask(cams, class_ids, thr)
                    else:
                        if scores is None or per_score:
                            scores = entry.obj(RefineInputs(sample.image, cams, np.asarray(class_ids), float(thr),
                                                            needs, settings))
                        mask = cam_to_mask(scores, class_ids, thr)
                    panel = np.concatenate([plots.overlay(sample.image, mask), gap, gt_panel], axis=1)
                    panels[(a, b, r, t)] = (panel, image_scores(mask, sample.mask, dataset.num_classes))
    return MaskPanels(tuple(image_ids), tuple(variants), tuple(refinements), tuple(float(t) for t in thresholds),
                      panels, width, tuple(dataset.class_names))


def panel_leaf(panel: np.ndarray, scores: Mapping[str, float]) -> Any:
    """One leaf of the explorer: the panel at twice its size and the image's scores."""
    import ipywidgets as widgets

    return widgets.VBox([widgets.Image(value=png_bytes(panel), format="png", width=2 * panel.shape[1],
                                       height=2 * panel.shape[0]),
                         widgets.HTML(f"precision {scores['precision']:.1f} %, recall {scores['recall']:.1f} %, "
                                      f"mIoU {scores['miou']:.1f} % (this image)")])


def mask_explorer(m: MaskPanels, title: str = "CAM masks, ensembles and refinements") -> Any:
    """The explorer over :func:`mask_panels`: image (dropdown), variant and refinement
    (toggles, refinements by their registry labels), background score (slider)."""
    import ipywidgets as widgets

    levels = [Level("image", m.image_ids, "dropdown"), Level("variant", m.variants, "toggle"),
              Level("refinement", tuple(REFINEMENTS.label(r) for r in m.refinements), "toggle"),
              Level("background", tuple(f"{t:.2f}" for t in m.thresholds), "slider")]
    box = explorer(levels, lambda key: panel_leaf(*m.panels[key]), title=title)
    if m.class_names:
        box.children = (*box.children, widgets.HTML(class_legend_html(m.class_names)))
    return box


def class_legend_html(class_names: Sequence[str]) -> str:
    """The mask colours (VOC palette) as HTML swatches, for widgets."""
    palette = plots.voc_palette()
    swatches = "".join(
        f'<span style="display:inline-block;margin-right:12px"><span style="display:inline-block;width:12px;'
        f'height:12px;background:rgb({",".join(str(int(c)) for c in palette[i])});margin-right:4px;'
        f'vertical-align:middle"></span>{name}</span>' for i, name in enumerate(class_names) if i > 0)
    return f"<div><b>mask colours:</b> {swatches}</div>"


def mask_grid(m: MaskPanels, image: int = 0, refinement: int = 0) -> Any:
    """The static twin of the explorer: one image's masks by variant (rows) and background
    score (columns) after one refinement."""
    shown = sorted({int(round(i)) for i in np.linspace(0, len(m.thresholds) - 1, min(5, len(m.thresholds)))})
    rows = [[m.panels[(image, b, refinement, t)][0][:, : m.width] for t in shown] for b in range(len(m.variants))]
    fig = plots.image_grid(rows, titles=[f"background {m.thresholds[t]:.2f}" for t in shown],
                           row_labels=list(m.variants), size=1.4, class_names=m.class_names or None)
    fig.suptitle(f"{m.image_ids[image]}: {REFINEMENTS.label(m.refinements[refinement])} masks by variant (rows) "
                 "and background score (columns)", fontsize=10, y=1.01)
    return fig


# ----------------------------------------------------------------------------- threshold explorer

def marker_points(sweeps: Mapping[str, Any], background: float) -> dict[str, dict[str, float]]:
    """Each variant's operating point (percent) at the grid score nearest ``background``:
    ``{name: {"recall", "precision", "miou", "threshold"}}``."""
    out = {}
    for name, sweep in sweeps.items():
        index = int(np.abs(np.asarray(sweep.thresholds) - background).argmin())
        out[name] = sweep.at(index)
    return out


def threshold_explorer(sweeps: Mapping[str, Any], backgrounds: Sequence[float], title: str = "",
                       dashed: Sequence[str] = ()) -> Any:
    """Precision against recall of every variant, with a marker on each curve at the background
    score a slider chooses (every position drawn in advance, so it works in the static book)."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    panels = []
    for background in backgrounds:
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
        plots.precision_recall_curves(sweeps, ax, dashed=list(dashed))
        for i, (name, point) in enumerate(marker_points(sweeps, background).items()):
            ax.plot(point["recall"], point["precision"], "o", ms=9, mec="black", mfc=f"C{i % 10}", zorder=5)
        ax.set_title(f"background score {background:.2f}: markers show each variant's precision and recall")
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", bbox_inches="tight")
        plt.close(fig)
        points = marker_points(sweeps, background)
        table = "".join(f"<tr><td>{n}</td><td>{p['precision']:.1f}</td><td>{p['recall']:.1f}</td>"
                        f"<td>{p['miou']:.1f}</td></tr>" for n, p in points.items())
        panels.append(widgets.VBox([
            widgets.Image(value=buffer.getvalue(), format="png", layout=widgets.Layout(max_width="640px")),
            widgets.HTML("<table><tr><th>variant</th><th>precision %</th><th>recall %</th><th>mIoU %</th></tr>"
                         f"{table}</table>")]))
    levels = [Level("background", tuple(f"{b:.2f}" for b in backgrounds), "slider")]
    return explorer(levels, lambda key: panels[key[0]], title=title)
