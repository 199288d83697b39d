"""Rules that set a score from the CAMs alone, never from masks (issue 23).

A weakly supervised pipeline has image labels and nothing else while it shapes its artifacts:
every threshold, offset or background score it computes from data must come from a rule that
reads no mask. The statistic here is the one a background score acts on: per pixel, the
largest score over the image's labelled classes (a pixel is foreground at background score t
exactly when it exceeds t). Pooled over a split into a histogram, it gives:

- ``otsu``: Otsu's threshold of that histogram, the score that best splits it into two groups
  (between-group variance at its maximum). Parameter-free; it reads the CAMs only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from ..core.errors import ConfigError
from ..core.registry import Registry

BINS = 100  # the sweeps' grid: scores 0.00, 0.01, ..., 0.99

ScoreRule = Callable[[np.ndarray], float]  # a top-score histogram -> a background score


def top_score_histogram(items: Iterable[tuple[np.ndarray, np.ndarray]], bins: int = BINS) -> np.ndarray:
    """Histogram over [0, 1] (``bins`` equal bins) of every pixel's largest score over the
    image's labelled classes; ``items``: (cams (K, H, W), class ids) of each image. Images
    without a labelled class have no foreground score and are left out."""
    hist = np.zeros(bins, dtype=np.int64)
    for cams, ids in items:
        if len(ids) == 0:
            continue
        top = np.asarray(cams, dtype=np.float32).max(axis=0).ravel()
        hist += np.bincount(np.clip((top * bins).astype(np.int64), 0, bins - 1), minlength=bins)
    return hist


def otsu_threshold(hist: np.ndarray) -> float:
    """Otsu's threshold of a histogram of scores over [0, 1]: the bin edge ``t`` that maximises
    the between-group variance of {bins below t} and {bins from t on}; the first such edge on
    ties. Bin ``i`` stands for the score (i + 0.5) / bins. A histogram with fewer than two
    occupied bins has nothing to split: a ConfigError."""
    hist = np.asarray(hist, dtype=np.float64)
    bins = hist.size
    if np.count_nonzero(hist) < 2:
        raise ConfigError("Otsu's threshold needs scores in at least two bins; the maps are constant or empty")
    centres = (np.arange(bins) + 0.5) / bins
    w0 = np.cumsum(hist)[:-1]  # pixels below edge i + 1
    w1 = hist.sum() - w0
    s0 = np.cumsum(hist * centres)[:-1]
    s1 = (hist * centres).sum() - s0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = np.where((w0 > 0) & (w1 > 0), w0 * w1 * (s0 / w0 - s1 / w1) ** 2, -1.0)
    return float(np.round((int(np.argmax(between)) + 1) / bins, 6))


SCORE_RULES: Registry[ScoreRule] = Registry("score rule")
SCORE_RULES.add("otsu", otsu_threshold, label="Otsu's threshold of the top scores")


def operating_point(items: Iterable[tuple[np.ndarray, np.ndarray]], rule: str = "otsu") -> float:
    """The background score a registered mask-free ``rule`` sets for these CAMs."""
    if rule not in SCORE_RULES:
        raise ConfigError(f"unknown score rule {rule!r}; known: {', '.join(SCORE_RULES)}")
    return float(SCORE_RULES.get(rule)(top_score_histogram(items)))
