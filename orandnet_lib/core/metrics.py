"""The one metrics module: confusion matrices, per-class precision / recall / IoU,
CAM-to-mask conversion and the background-threshold sweep.

Conventions (PASCAL VOC): rows of a confusion matrix are ground truth, columns are
predictions; label 255 is ignored; class 0 is background and counts in every mean.
As in the official ORANDNet / IRN evaluation, a ratio with a zero denominator is undefined
(NaN) and left out of the mean: a class never predicted has no precision, a class absent
from ground truth no recall.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = 255  # the label of pixels no score counts (VOC's object borders); data.voc re-exports it


class ConfusionMatrix:
    """Accumulates a (C, C) int64 confusion matrix over any number of masks."""

    def __init__(self, num_classes: int):
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> "ConfusionMatrix":
        """Add one prediction / ground-truth pair of equal shape (integer class maps)."""
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
        gt = gt.ravel().astype(np.int64)
        pred = pred.ravel().astype(np.int64)
        keep = gt != IGNORE_INDEX
        gt, pred = gt[keep], pred[keep]
        c = self.num_classes
        if gt.size and (gt.max() >= c or gt.min() < 0 or pred.max() >= c or pred.min() < 0):
            raise ValueError(f"class index outside [0, {c}) (ground truth max {gt.max()}, prediction max {pred.max()})")
        self.matrix += np.bincount(gt * c + pred, minlength=c * c).reshape(c, c)
        return self

    def __iadd__(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        self.matrix += other.matrix
        return self

    def scores(self) -> "Scores":
        return Scores.from_matrix(self.matrix)


@dataclass(frozen=True)
class Scores:
    """Per-class precision, recall and IoU (fractions, NaN where undefined) and their means."""

    precision: np.ndarray  # (C,)
    recall: np.ndarray  # (C,)
    iou: np.ndarray  # (C,)

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> "Scores":
        matrix = np.asarray(matrix, dtype=np.float64)
        tp = np.diag(matrix)
        pred_total = matrix.sum(axis=0)  # TP + FP
        gt_total = matrix.sum(axis=1)  # TP + FN
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(pred_total > 0, tp / pred_total, np.nan)
            recall = np.where(gt_total > 0, tp / gt_total, np.nan)
            union = gt_total + pred_total - tp
            iou = np.where(union > 0, tp / union, np.nan)
        return cls(precision, recall, iou)

    @property
    def miou(self) -> float:
        return float(np.nanmean(self.iou))

    @property
    def mean_precision(self) -> float:
        return float(np.nanmean(self.precision))

    @property
    def mean_recall(self) -> float:
        return float(np.nanmean(self.recall))

    def summary(self, percent: bool = True) -> dict[str, float]:
        """{'miou', 'precision', 'recall'} as means, in percent by default."""
        k = 100.0 if percent else 1.0
        return {"miou": k * self.miou, "precision": k * self.mean_precision, "recall": k * self.mean_recall}


def cam_to_mask(cams: np.ndarray, class_ids: Sequence[int] | np.ndarray, background_score: float) -> np.ndarray:
    """Mask from CAMs: argmax over [background_score, cams of the image's classes].

    cams: (K, H, W) scores of the image's K ground-truth classes; class_ids: (K,) their
    indices (1-based: 0 is background). Ties go to background. Returns (H, W) uint8.
    """
    cams = np.asarray(cams, dtype=np.float32)
    class_ids = np.asarray(class_ids, dtype=np.int64)
    if cams.ndim != 3 or cams.shape[0] != class_ids.shape[0]:
        raise ValueError(f"cams {cams.shape} must be (K, H, W) with K = len(class_ids) = {class_ids.shape[0]}")
    if cams.shape[0] == 0:
        return np.zeros(cams.shape[1:], dtype=np.uint8)
    best = cams.argmax(axis=0)
    score = cams.max(axis=0)
    return np.where(score > background_score, class_ids[best], 0).astype(np.uint8)


def default_thresholds(step: float = 0.01) -> np.ndarray:
    """Background scores 0.00, 0.01, ..., 0.99 (CAMs are max-normalised to [0, 1])."""
    return np.round(np.arange(0.0, 1.0, step), 6)


@dataclass(frozen=True)
class SweepResult:
    """Scores of CAM masks over a grid of background scores, and how many class maps the
    swept CAMs held and how many of those were empty (no positive value: never foreground)."""

    thresholds: np.ndarray  # (T,)
    matrices: np.ndarray  # (T, C, C) confusion matrices
    maps: int = 0
    empty_maps: int = 0

    def scores(self, index: int) -> Scores:
        return Scores.from_matrix(self.matrices[index])

    @property
    def miou(self) -> np.ndarray:
        return np.array([self.scores(i).miou for i in range(len(self.thresholds))])

    @property
    def precision(self) -> np.ndarray:
        return np.array([self.scores(i).mean_precision for i in range(len(self.thresholds))])

    @property
    def recall(self) -> np.ndarray:
        return np.array([self.scores(i).mean_recall for i in range(len(self.thresholds))])

    @property
    def best_index(self) -> int:
        """Index of the best-mIoU background score (the first one on ties)."""
        return int(np.nanargmax(self.miou))

    @property
    def crossover_index(self) -> int:
        """The official code's choice: the first background score at which mean precision
        reaches mean recall. If precision never catches up, the last score."""
        above = np.flatnonzero(self.precision >= self.recall)
        return int(above[0]) if above.size else len(self.thresholds) - 1

    def at(self, index: int) -> dict[str, float]:
        """{'miou', 'precision', 'recall', 'threshold'} in percent at a grid index, with
        ``unpredicted``: the classes present in the ground truth that no pixel is predicted as
        (mean precision leaves them out, so a map cut down to its cores can read as precise)."""
        m = self.matrices[index]
        unpredicted = int(((m.sum(axis=1) > 0) & (m.sum(axis=0) == 0)).sum())
        return {**self.scores(index).summary(), "threshold": 100.0 * float(self.thresholds[index]),
                "unpredicted": unpredicted}

    def precision_at_recall(self, recall: float) -> float:
        """Mean precision (percent) where this curve's mean recall equals ``recall`` (percent),
        linearly interpolated between grid points; NaN outside the recall the sweep reaches."""
        return precision_at_recall(self.recall * 100, self.precision * 100, recall)

    def pr_auc(self) -> float:
        """Area under the precision-recall curve, in percent, over the recall range the sweep
        covers (:func:`pr_auc`)."""
        return pr_auc(self.recall * 100, self.precision * 100)

    def describe(self) -> dict[str, object]:
        """A summary entry: the best-mIoU scores, the crossover, the area under the
        precision-recall curve, the share of empty class maps and the curve itself (percent,
        two decimals), from which precision at any recall can be read (:func:`precision_at_recall`)."""
        return {**self.best(), "crossover": self.crossover(), "pr_auc": self.pr_auc(), "empty_maps": self.empty_share,
                "curve": {"recall": np.round(100 * self.recall, 2).tolist(),
                          "precision": np.round(100 * self.precision, 2).tolist()}}

    @property
    def empty_share(self) -> float:
        """Percent of the swept class maps that were empty (NaN when none were counted)."""
        return 100.0 * self.empty_maps / self.maps if self.maps else float("nan")

    def best(self) -> dict[str, float]:
        return self.at(self.best_index)

    def seed_quality(self) -> dict[str, np.ndarray]:
        """At each score t, what IRN-style confident labels thresholded at t would hold:
        ``fg_share`` / ``bg_share``, the fraction of labelled pixels marked foreground (CAM
        above t) or background (every CAM at or below t), and ``fg_precision`` /
        ``bg_precision``, the fraction of those that the ground truth agrees with (the right
        class, or background). Pooled over pixels, in [0, 1]; NaN where nothing is marked."""
        m = self.matrices.astype(np.float64)
        total = m.sum(axis=(1, 2))
        bg_marked, bg_right = m[:, :, 0].sum(axis=1), m[:, 0, 0]
        fg_marked = total - bg_marked
        fg_right = np.trace(m, axis1=1, axis2=2) - bg_right
        with np.errstate(divide="ignore", invalid="ignore"):
            return {"threshold": self.thresholds.astype(np.float64),
                    "fg_share": fg_marked / total, "bg_share": bg_marked / total,
                    "fg_precision": np.where(fg_marked > 0, fg_right / fg_marked, np.nan),
                    "bg_precision": np.where(bg_marked > 0, bg_right / bg_marked, np.nan)}

    def crossover(self) -> dict[str, float]:
        return self.at(self.crossover_index)

    def curve(self) -> dict[str, np.ndarray]:
        """Columns for a table or plot: threshold, miou, precision, recall (percent)."""
        return {"threshold": 100 * self.thresholds, "miou": 100 * self.miou,
                "precision": 100 * self.precision, "recall": 100 * self.recall}


def precision_at_recall(recalls: Sequence[float], precisions: Sequence[float], recall: float) -> float:
    """Precision at a given recall along a curve traced over increasing background scores
    (recall falls as the score rises): linear interpolation between the first pair of
    neighbouring points whose recalls bracket ``recall``; NaN when no pair does."""
    r, p = np.asarray(recalls, np.float64), np.asarray(precisions, np.float64)
    for i in range(len(r) - 1):
        lo, hi = sorted((r[i], r[i + 1]))
        if np.isnan(lo) or np.isnan(hi) or not lo <= recall <= hi:
            continue
        if hi == lo:
            return float(max(p[i], p[i + 1]))
        w = (recall - r[i]) / (r[i + 1] - r[i])
        return float(p[i] + w * (p[i + 1] - p[i]))
    return float("nan")


def pr_auc(recalls: Sequence[float], precisions: Sequence[float]) -> float:
    """Area under a precision-recall curve (trapezoids over the points sorted by recall),
    divided by 100 so that a curve of constant precision P over recall 0-100 gives P."""
    r, p = np.asarray(recalls, np.float64), np.asarray(precisions, np.float64)
    keep = ~(np.isnan(r) | np.isnan(p))
    r, p = r[keep], p[keep]
    if r.size < 2:
        return float("nan")
    order = np.argsort(r, kind="stable")
    r, p = r[order], p[order]
    return float(np.sum((r[1:] - r[:-1]) * (p[1:] + p[:-1]) / 2) / 100)


def equal_recall(variant: "SweepResult | dict", baseline: "SweepResult | dict") -> dict[str, float]:
    """The paper's "more precise" read as a precision/recall trade-off: the variant's precision
    at the recall the baseline has at its own best-mIoU score, beside the baseline's precision
    there (percent; ``difference`` NaN when the variant's curve does not reach that recall).
    Takes sweeps or their :meth:`SweepResult.describe` entries."""
    def curve(x: "SweepResult | dict") -> tuple[Sequence[float], Sequence[float]]:
        if isinstance(x, SweepResult):
            return list(100 * x.recall), list(100 * x.precision)
        return x["curve"]["recall"], x["curve"]["precision"]

    base = baseline.best() if isinstance(baseline, SweepResult) else baseline
    at = precision_at_recall(*curve(variant), float(base["recall"]))
    return {"recall": float(base["recall"]), "baseline_precision": float(base["precision"]), "precision": at,
            "difference": at - float(base["precision"])}


class ThresholdSweep:
    """Accumulates, in one pass over the data, the confusion matrix of the CAM mask at
    every background score of a grid.

    Per pixel, a mask at score t is the arg-max class where the largest CAM exceeds t and
    background elsewhere. So one joint histogram of (ground truth, arg-max class,
    bin of the largest CAM) gives every threshold's matrix by cumulative sums.
    """

    def __init__(self, num_classes: int, thresholds: Iterable[float] | None = None):
        self.num_classes = num_classes
        self.thresholds = np.asarray(default_thresholds() if thresholds is None else list(thresholds), dtype=np.float64)
        if self.thresholds.ndim != 1 or self.thresholds.size == 0 or np.any(np.diff(self.thresholds) <= 0):
            raise ValueError("thresholds must be a non-empty increasing sequence")
        # hist[g, p, b]: pixels of ground truth g whose arg-max class is p and whose largest
        # CAM exceeds exactly b of the thresholds.
        self.hist = np.zeros((num_classes, num_classes, self.thresholds.size + 1), dtype=np.int64)
        self.maps = 0
        self.empty_maps = 0

    def update(self, cams: np.ndarray, class_ids: Sequence[int] | np.ndarray, gt: np.ndarray) -> None:
        """cams: (K, H, W); class_ids: (K,); gt: (H, W) with 255 = ignore."""
        cams = np.asarray(cams, dtype=np.float32)
        class_ids = np.asarray(class_ids, dtype=np.int64)
        if cams.shape[1:] != gt.shape or cams.shape[0] != class_ids.shape[0]:
            raise ValueError(f"cams {cams.shape}, class_ids {class_ids.shape} and ground truth {gt.shape} do not fit")
        self.maps += cams.shape[0]
        if cams.shape[0]:
            self.empty_maps += int((cams.reshape(cams.shape[0], -1).max(axis=1) <= 0).sum())
        keep = gt.ravel() != IGNORE_INDEX
        g = gt.ravel()[keep].astype(np.int64)
        if cams.shape[0] == 0:
            p = np.zeros_like(g)
            b = np.zeros_like(g)
        else:
            flat = cams.reshape(cams.shape[0], -1)[:, keep]
            p = class_ids[flat.argmax(axis=0)]
            # number of thresholds strictly below the score: the pixel is foreground at
            # grid index j exactly when j < b.
            b = np.searchsorted(self.thresholds, flat.max(axis=0).astype(np.float64), side="left")
        c, nb = self.num_classes, self.thresholds.size + 1
        if g.size and (g.max() >= c or p.max() >= c):
            raise ValueError(f"class index outside [0, {c})")
        self.hist += np.bincount((g * c + p) * nb + b, minlength=c * c * nb).reshape(c, c, nb)

    def result(self) -> SweepResult:
        t = self.thresholds.size
        # fg[g, p, j]: pixels still assigned to p at threshold j = sum of bins b > j.
        tail = np.cumsum(self.hist[:, :, ::-1], axis=2)[:, :, ::-1]  # tail[..., b] = sum of bins >= b
        fg = tail[:, :, 1 : t + 1]  # (C, C, T)
        total = self.hist.sum(axis=(1, 2))  # (C,) pixels per ground-truth class
        matrices = np.moveaxis(fg, 2, 0).copy()  # (T, C, C)
        matrices[:, :, 0] = 0  # arg-max class is never background; background column rebuilt below
        matrices[:, :, 0] = total[None, :] - matrices.sum(axis=2)
        return SweepResult(self.thresholds.copy(), matrices, self.maps, self.empty_maps)


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class (non-interpolated) average precision of multilabel scores.

    scores, targets: (N, C); returns (C,), NaN for a class without positives.
    AP = mean over the positives of the precision at that positive's rank.
    """
    scores, targets = np.asarray(scores, np.float64), np.asarray(targets) > 0
    out = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        positives = targets[:, c].sum()
        if positives == 0:
            continue
        order = np.argsort(-scores[:, c], kind="stable")
        hits = targets[order, c]
        precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        out[c] = precision_at[hits].sum() / positives
    return out


def multilabel_f1(scores: np.ndarray, targets: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Per-class F1 of ``scores > threshold`` (scores as probabilities); NaN where undefined."""
    pred, targets = np.asarray(scores) > threshold, np.asarray(targets) > 0
    tp = (pred & targets).sum(0).astype(np.float64)
    denom = pred.sum(0) + targets.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, 2 * tp / denom, np.nan)


class ErrorOverlap:
    """How often two predictors make the *same* mistakes, per class.

    For each class c: false-positive pixels of A and of B (predicted c, ground truth not c)
    and how many are shared; likewise false negatives. An ensemble by AND removes exactly
    the false positives the two do not share, so a low shared fraction is what it needs.
    """

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.counts = np.zeros((6, num_classes), dtype=np.int64)  # fp_a, fp_b, fp_both, fn_a, fn_b, fn_both

    def update(self, pred_a: np.ndarray, pred_b: np.ndarray, gt: np.ndarray) -> None:
        keep = gt != IGNORE_INDEX
        a, b, g = pred_a[keep].astype(np.int64), pred_b[keep].astype(np.int64), gt[keep].astype(np.int64)
        c = self.num_classes
        fp_a, fp_b = a != g, b != g
        self.counts[0] += np.bincount(a[fp_a], minlength=c)[:c]
        self.counts[1] += np.bincount(b[fp_b], minlength=c)[:c]
        self.counts[2] += np.bincount(a[fp_a & fp_b & (a == b)], minlength=c)[:c]
        self.counts[3] += np.bincount(g[fp_a], minlength=c)[:c]  # a missed the true class
        self.counts[4] += np.bincount(g[fp_b], minlength=c)[:c]
        self.counts[5] += np.bincount(g[fp_a & fp_b], minlength=c)[:c]

    def table(self) -> dict[str, np.ndarray]:
        """Per class: fp_a, fp_b, fp_shared (pixels) and fp_jaccard = shared / union; the same for fn."""
        fp_a, fp_b, fp_both, fn_a, fn_b, fn_both = self.counts.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            fp_j = np.where(fp_a + fp_b - fp_both > 0, fp_both / (fp_a + fp_b - fp_both), np.nan)
            fn_j = np.where(fn_a + fn_b - fn_both > 0, fn_both / (fn_a + fn_b - fn_both), np.nan)
        return {"fp_a": self.counts[0], "fp_b": self.counts[1], "fp_shared": self.counts[2], "fp_jaccard": fp_j,
                "fn_a": self.counts[3], "fn_b": self.counts[4], "fn_shared": self.counts[5], "fn_jaccard": fn_j}
