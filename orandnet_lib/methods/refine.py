"""Pseudo-mask refinement: dense CRF, IRN's confident labels, boundary affinities and a
sparse random walk (Ahn et al. 2019), and the registry of refinements stage 4 scores.

Shapes: a CAM of an image is (K, H, W) in [0, 1] for its K classes with ids (K,);
a boundary map is (H, W) in [0, 1] (1 = a class boundary); labels are (H, W) uint8 with
255 = ignore. Affinities are kept sparse (each pixel links to the pixels within a radius),
so memory grows linearly with the number of pixels.

A refinement is one numpy-only function of :class:`RefineInputs` (it runs in forked worker
processes) plus one registration in :data:`REFINEMENTS`; stage 4 then scores it, stage 6
plots it, the results page and the teaching widget list it::

    @REFINEMENTS.register("blur", label="Gaussian blur", settings=("sigma",))
    def refine_blur(x: RefineInputs) -> np.ndarray: ...

Attributes of an entry: ``settings`` (the names in ``RefineInputs.settings`` it reads: they
key the pseudo-masks it writes), ``needs_boundary`` (it reads the relation network's
boundary map), ``uses_background`` (it reads the background score, so written pseudo-masks
are refined again at the fixed score), ``unrefined`` (it returns the CAM unchanged).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import sparse

from ..core.neighbours import neighbour_offsets, segments
from ..core.registry import Registry
from ..data.voc import IGNORE_INDEX


def crf_labels(image: np.ndarray, labels: np.ndarray, n_labels: int, gt_prob: float = 0.7, iterations: int = 10,
               gauss_sxy: float = 3.0, gauss_compat: float = 3.0, bilateral_sxy: float = 50.0,
               bilateral_srgb: float = 5.0, bilateral_compat: float = 10.0) -> np.ndarray:
    """Dense CRF (Kraehenbuehl & Koltun) on a hard label map, as IRN's confident labels use it.

    image: (H, W, 3) uint8; labels: (H, W) ints in [0, n_labels). Returns the refined (H, W) labels.
    """
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_labels

    h, w = labels.shape
    crf = dcrf.DenseCRF2D(w, h, n_labels)
    crf.setUnaryEnergy(unary_from_labels(labels, n_labels, gt_prob=gt_prob, zero_unsure=False))
    crf.addPairwiseGaussian(sxy=gauss_sxy, compat=gauss_compat)
    # a writable copy: the binding refuses read-only arrays (images decoded by PIL are)
    crf.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=np.array(image, dtype=np.uint8, order="C"),
                             compat=bilateral_compat)
    q = np.array(crf.inference(iterations)).reshape(n_labels, h, w)
    return q.argmax(axis=0)


def crf_probabilities(image: np.ndarray, probs: np.ndarray, iterations: int = 10, gauss_sxy: float = 3.0,
                      gauss_compat: float = 3.0, bilateral_sxy: float = 50.0, bilateral_srgb: float = 5.0,
                      bilateral_compat: float = 10.0) -> np.ndarray:
    """Dense CRF with a soft unary: probs (L, H, W) summing to 1 over L -> refined (L, H, W)."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    n, h, w = probs.shape
    crf = dcrf.DenseCRF2D(w, h, n)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(np.clip(probs, 1e-8, 1.0).astype(np.float32))))
    crf.addPairwiseGaussian(sxy=gauss_sxy, compat=gauss_compat)
    # a writable copy: the binding refuses read-only arrays (images decoded by PIL are)
    crf.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=np.array(image, dtype=np.uint8, order="C"),
                             compat=bilateral_compat)
    return np.array(crf.inference(iterations)).reshape(n, h, w)


def cam_probabilities(cams: np.ndarray, background_score: float) -> np.ndarray:
    """(K, H, W) CAMs -> (K + 1, H, W) probabilities: a constant background score stacked
    first, then normalised to sum to one per pixel."""
    stacked = np.concatenate([np.full((1, *cams.shape[1:]), background_score, np.float32), cams.astype(np.float32)])
    return stacked / np.maximum(stacked.sum(axis=0, keepdims=True), 1e-8)


def confident_labels(cams: np.ndarray, class_ids: Sequence[int] | np.ndarray, fg_threshold: float = 0.30,
                     bg_threshold: float = 0.05, image: np.ndarray | None = None) -> np.ndarray:
    """IRN's seeds for the relation network: foreground where the CAM beats ``fg_threshold``,
    background where every CAM stays below ``bg_threshold``, 255 (ignore) in between.

    With ``image`` given, both maps are first refined by a dense CRF (IRN does this). An image
    with a labelled class whose map nowhere beats ``fg_threshold`` (an empty or truncated map)
    gets no confident background: its label says the object is there, and where it lies is not
    known, so calling the rest background would teach boundaries that are not there.
    Returns (H, W) uint8 in {0, class ids, 255}.
    """
    class_ids = np.asarray(class_ids, dtype=np.int64)
    lookup = np.concatenate([[0], class_ids]).astype(np.uint8)

    def labels_at(threshold: float) -> np.ndarray:
        if len(class_ids) == 0:
            return np.zeros(cams.shape[1:], dtype=np.int64)
        stacked = np.concatenate([np.full((1, *cams.shape[1:]), threshold, np.float32), cams.astype(np.float32)])
        index = stacked.argmax(axis=0)
        if image is not None:
            index = crf_labels(image, index, len(class_ids) + 1)
        return index

    fg = lookup[labels_at(fg_threshold)]
    out = np.where(fg > 0, fg, IGNORE_INDEX).astype(np.uint8)
    if len(class_ids) and np.asarray(cams, np.float32).reshape(len(class_ids), -1).max(axis=1).min() <= fg_threshold:
        return out  # a labelled class without any confident foreground: no confident background either
    bg = lookup[labels_at(bg_threshold)]
    out[bg == 0] = 0
    return out


def _shift(array: np.ndarray, dy: int, dx: int, fill: float) -> np.ndarray:
    """out[y, x] = array[y + dy, x + dx], ``fill`` outside."""
    h, w = array.shape
    out = np.full_like(array, fill)
    if abs(dy) >= h or abs(dx) >= w:  # nothing lands inside (and a negative slice end would wrap)
        return out
    ys, yd = slice(max(dy, 0), h + min(dy, 0)), slice(max(-dy, 0), h + min(-dy, 0))
    xs, xd = slice(max(dx, 0), w + min(dx, 0)), slice(max(-dx, 0), w + min(-dx, 0))
    out[yd, xd] = array[ys, xs]
    return out


def boundary_affinities(boundary: np.ndarray, radius: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse affinities from a boundary map: a_ij = 1 - max boundary on the segment i -> j.

    Returns (rows, cols, values) for every pair within ``radius`` (each pair once, i < j in
    raster order is not guaranteed; use both directions for a symmetric matrix).
    """
    h, w = boundary.shape
    index = np.arange(h * w).reshape(h, w)
    rows, cols, vals = [], [], []
    offsets = neighbour_offsets(radius)
    for (dy, dx), cells in zip(offsets, segments(offsets)):
        path_max = boundary.copy()
        for sy, sx in cells:
            path_max = np.maximum(path_max, _shift(boundary, sy, sx, fill=1.0))
        target = _shift(index.astype(np.float64), dy, dx, fill=-1.0).astype(np.int64)
        valid = target >= 0
        rows.append(index[valid])
        cols.append(target[valid])
        vals.append(1.0 - path_max[valid])
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)


def transition_matrix(boundary: np.ndarray, radius: int = 5, beta: float = 10.0) -> sparse.csr_matrix:
    """The random walk's (N, N) sparse transition matrix, N = H * W: affinities raised to
    ``beta``, made symmetric, with self-loops of 1, then normalised so that one step
    ``s <- T @ s`` makes each pixel the affinity-weighted mean of its neighbours.

    IRN's ``to_transition_matrix`` (misc/indexing.py) divides A^beta by its column sums and
    multiplies the scores from the left, ``x @ T``; A is symmetric, so that is this
    row-normalised ``D^-1 A`` acting on the scores as columns: the same walk, transposed.
    """
    n = boundary.size
    rows, cols, vals = boundary_affinities(boundary, radius)
    vals = np.power(np.clip(vals, 0.0, 1.0), beta)
    # Negligible links are dropped: besides sparsity, they would breed subnormal floats,
    # which make the walk's arithmetic tens of times slower.
    vals[vals < 1e-8] = 0.0
    r = np.concatenate([rows, cols, np.arange(n)])
    c = np.concatenate([cols, rows, np.arange(n)])
    v = np.concatenate([vals, vals, np.ones(n)])
    a = sparse.csr_matrix((v, (r, c)), shape=(n, n))
    a.eliminate_zeros()
    degree = np.asarray(a.sum(axis=1)).ravel()
    return (sparse.diags(1.0 / degree) @ a).tocsr()


def _steps(flat: np.ndarray, transition: sparse.csr_matrix, n: int) -> np.ndarray:
    """``n`` single steps of the walk on (N, C) scores, one class column at a time: scipy's
    product with one vector is 2-2.5x faster than with two or three columns at once (measured
    at 48 x 48 cells, radius 5), and sums the same terms in the same order."""
    columns = [np.ascontiguousarray(flat[:, k]) for k in range(flat.shape[1])]
    for _ in range(n):
        columns = [transition @ column for column in columns]
    return np.stack(columns, axis=1) if columns else flat


def random_walk(scores: np.ndarray, transition: sparse.csr_matrix, exp_times: int) -> np.ndarray:
    """Propagate (C, H, W) scores by the transition matrix raised to the power
    ``2 ** exp_times``, IRN's ``exp_times`` (8: 256 steps).

    IRN squares a dense N x N matrix ``exp_times`` times; here the sparse matrix is applied
    ``2 ** exp_times`` times to the scores, the same power, in memory linear in N (the
    squared matrix fills in after a few squarings)."""
    if exp_times < 0:
        raise ValueError(f"exp_times must be non-negative, got {exp_times}")
    c, h, w = scores.shape
    flat = _steps(scores.reshape(c, h * w).T.astype(np.float64), transition, 2 ** exp_times)  # (N, C)
    return flat.T.reshape(c, h, w)


def random_walk_steps(scores: np.ndarray, transition: sparse.csr_matrix, steps: Sequence[int]) -> list[np.ndarray]:
    """The walk's state after each number of single steps in ``steps`` (ascending), for
    figures that show the propagation step by step (``random_walk(.., e)`` is ``2 ** e`` steps)."""
    if list(steps) != sorted(steps) or (len(steps) and steps[0] < 0):
        raise ValueError(f"steps must be ascending and non-negative, got {list(steps)}")
    c, h, w = scores.shape
    out, done, current = [], 0, scores.reshape(c, h * w).T.astype(np.float64)
    for n in steps:
        current = _steps(current, transition, n - done)
        done = n
        out.append(current.T.reshape(c, h, w))
    return out


# numpy twins of torch's adaptive average pooling and bilinear resizing: the random walk runs
# in forked worker processes, where torch's thread pool, inherited mid-use, can deadlock.

def _bins(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    i = np.arange(n_out)
    return (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)  # floor(i n / m), ceil((i + 1) n / m)


def adaptive_avg_pool(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, H, W) -> (C, h, w), each output cell the mean of its input bin (as torch's
    ``adaptive_avg_pool2d``), from an integral image."""
    c, h, w = array.shape
    integral = np.zeros((c, h + 1, w + 1), np.float64)
    integral[:, 1:, 1:] = array.astype(np.float64).cumsum(1).cumsum(2)
    y0, y1 = _bins(h, size[0])
    x0, x1 = _bins(w, size[1])
    total = (integral[:, y1][:, :, x1] - integral[:, y0][:, :, x1] - integral[:, y1][:, :, x0]
             + integral[:, y0][:, :, x0])
    return total / ((y1 - y0)[:, None] * (x1 - x0)[None, :])


def resize_bilinear(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) -> (C, H, W), bilinear with half-pixel centres (torch's
    ``align_corners=False``, no antialiasing)."""
    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo

    y0, y1, wy = axis(array.shape[1], size[0])
    x0, x1, wx = axis(array.shape[2], size[1])
    rows = array[:, y0] * (1 - wy)[None, :, None] + array[:, y1] * wy[None, :, None]
    return rows[:, :, x0] * (1 - wx) + rows[:, :, x1] * wx


def true_boundary(mask: np.ndarray, stride: int) -> np.ndarray:
    """The boundary map a perfect relation network would give on a grid of ``stride``-pixel
    cells: 1 on a cell whose pixels hold more than one label (255, VOC's unlabelled ring,
    counts as a label of its own) or whose label differs from the cell to its left, above, or
    above-left (a class change on the line between two cells; the diagonal closes the corners
    a walk step could cut), 0 elsewhere. (h, w) = ceil(H / stride), ceil(W / stride); float32."""
    mask = np.asarray(mask)
    h, w = -(-mask.shape[0] // stride), -(-mask.shape[1] // stride)
    ys, xs = np.arange(h) * stride, np.arange(w) * stride
    first = mask[np.ix_(ys, xs)]
    mixed = np.zeros((h, w), dtype=bool)
    for dy in range(stride):
        for dx in range(stride):
            mixed |= mask[np.ix_(np.minimum(ys + dy, mask.shape[0] - 1), np.minimum(xs + dx, mask.shape[1] - 1))] != first
    mixed[:, 1:] |= first[:, 1:] != first[:, :-1]
    mixed[1:, :] |= first[1:, :] != first[:-1, :]
    mixed[1:, 1:] |= first[1:, 1:] != first[:-1, :-1]
    return mixed.astype(np.float32)


def walk_input(cams: np.ndarray, boundary: np.ndarray) -> np.ndarray:
    """What the walk starts from: the (K, H, W) CAMs average-pooled to the (h, w) boundary
    grid and multiplied by (1 - boundary), as IRN's ``propagate_to_edge`` does, so a score
    on a predicted edge does not spread across it."""
    return adaptive_avg_pool(cams, boundary.shape) * (1.0 - np.asarray(boundary, dtype=np.float64))


# ----------------------------------------------------------------------------- the registry

@dataclass(frozen=True)
class RefineInputs:
    """What a refinement sees of one image."""

    image: np.ndarray  # (H, W, 3) uint8
    cams: np.ndarray  # (K, H, W) float32 in [0, 1]
    class_ids: np.ndarray  # (K,)
    background: float  # background score (the CRF's unary uses it)
    boundary: np.ndarray | None = None  # (h, w) relation-net boundary map on its grid, or None
    settings: Mapping[str, Any] = field(default_factory=dict)  # beta, exp_times, radius, crf_iterations, ...


Refinement = Callable[[RefineInputs], np.ndarray]  # -> refined scores (K, H, W) in [0, 1]

REFINEMENTS: Registry[Refinement] = Registry("refinement")


@REFINEMENTS.register("cam", label="CAM", settings=(), unrefined=True)
def refine_cam(x: RefineInputs) -> np.ndarray:
    """The CAM itself: the baseline every refinement is compared with."""
    return x.cams


@REFINEMENTS.register("crf", label="dense CRF", settings=("crf_iterations",), uses_background=True)
def refine_crf(x: RefineInputs) -> np.ndarray:
    """Dense CRF on the CAM probabilities (background score stacked first), returned as
    P(class | class or background) so it can be swept like a CAM."""
    q = crf_probabilities(x.image, cam_probabilities(x.cams, x.background), int(x.settings.get("crf_iterations", 10)))
    return q[1:] / np.maximum(q[1:] + q[:1], 1e-8)


@REFINEMENTS.register("rw", label="random walk", settings=("beta", "exp_times", "radius"), needs_boundary=True)
def refine_random_walk(x: RefineInputs) -> np.ndarray:
    """IRN's propagation (step/make_sem_seg_labels.py, misc/indexing.py ``propagate_to_edge``):
    the CAMs, average-pooled to the boundary grid and multiplied by (1 - boundary), walk
    ``2 ** exp_times`` steps along the boundary-derived affinities, are upsampled back and
    divided by their maximum over all classes and pixels of the image (IRN's
    ``rw_up / torch.max(rw_up)``), so the fixed background score compares with that scale."""
    if x.boundary is None:
        raise ValueError("the random walk needs the relation network's boundary map")
    s = x.settings
    boundary = np.asarray(x.boundary, dtype=np.float64)
    small = walk_input(x.cams, boundary)
    walked = random_walk(small, transition_matrix(boundary, int(s.get("radius", 5)), float(s.get("beta", 10.0))),
                         int(s.get("exp_times", 8)))
    up = np.maximum(resize_bilinear(walked, x.cams.shape[1:]), 0).astype(np.float32)
    top = float(up.max()) if up.size else 0.0
    return up / top if top > 0 else up  # all zero (a boundary everywhere): IRN would divide by 0
