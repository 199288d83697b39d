"""Small statistics shared by the chapters that compare runs: ordinary least squares with
standard errors, and the paired difference of two settings over the same seeds, so a
fitted relation or a gain is always shown with its uncertainty, computed one way."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as _scipy_stats


def _t_statistic(estimate: float, se: float) -> float:
    """estimate / se; a zero standard error (identical values, no spread to test against) gives
    +-inf, or NaN for a zero estimate."""
    if se > 0:
        return estimate / se
    return float("nan") if estimate == 0 else math.copysign(math.inf, estimate)


def _t_interval(estimate: float, se: float, df: int | float, confidence: float) -> tuple[float, float, float]:
    """(low, high, p) of an estimate with standard error ``se`` on ``df`` degrees of freedom
    (Student's t): the ``confidence`` interval and the two-sided p-value of estimate = 0. A zero
    standard error gives a zero-width interval and p = 0 (or NaN for a zero estimate); no
    degrees of freedom or a NaN standard error give NaN."""
    nan = float("nan")
    if not df or df <= 0 or math.isnan(se):
        return nan, nan, nan
    t = _t_statistic(estimate, se)
    p = float(2 * _scipy_stats.t.sf(abs(t), df)) if not math.isnan(t) else nan
    half = float(_scipy_stats.t.ppf(0.5 + confidence / 2, df)) * se
    return estimate - half, estimate + half, p


def ols(y: Sequence[float], columns: dict[str, Sequence[float]], confidence: float = 0.95) -> dict[str, Any]:
    """Fit y = b0 + sum_k b_k x_k. Returns {"coef": {name: b}, "se": {name: standard error},
    "low"/"high": {name: bound of the ``confidence`` interval}, "p": {name: two-sided p of
    b = 0}, "r2", "n", "dof", "confidence"}, with "intercept" among the names. The interval
    and p use Student's t with the residual degrees of freedom (n - 1 - k); standard errors,
    intervals and p are NaN when the fit has none."""
    y_arr = np.asarray(y, dtype=np.float64)
    names = ["intercept", *columns]
    X = np.column_stack([np.ones_like(y_arr)] + [np.asarray(v, dtype=np.float64) for v in columns.values()])
    if X.shape[0] != y_arr.shape[0]:
        raise ValueError(f"{y_arr.shape[0]} responses but {X.shape[0]} rows of predictors")
    if np.linalg.matrix_rank(X) < X.shape[1]:
        raise ValueError(f"predictors {list(columns)} are collinear (or too few distinct points) to fit")
    coef, *_ = np.linalg.lstsq(X, y_arr, rcond=None)
    resid = y_arr - X @ coef
    n, p = X.shape
    dof = n - p
    ss_tot = float(((y_arr - y_arr.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else float("nan")
    if dof > 0:
        sigma2 = float((resid**2).sum()) / dof
        se = np.sqrt(np.diag(sigma2 * np.linalg.inv(X.T @ X)))
    else:
        se = np.full(p, np.nan)
    tests = [_t_interval(float(b), float(e), dof, confidence) for b, e in zip(coef, se)]
    return {"coef": dict(zip(names, map(float, coef))), "se": dict(zip(names, map(float, se))),
            "low": {k: t[0] for k, t in zip(names, tests)}, "high": {k: t[1] for k, t in zip(names, tests)},
            "p": {k: t[2] for k, t in zip(names, tests)}, "r2": r2, "n": int(n), "dof": int(dof), "confidence": confidence}


def paired_difference(a: Sequence[float] | Mapping[Any, float], b: Sequence[float] | Mapping[Any, float],
                      confidence: float = 0.95) -> dict[str, float]:
    """The paired difference ``b - a`` of two settings run with the same seeds.

    ``a`` and ``b`` are sequences in the same seed order, or mappings ``{seed: value}`` (paired
    on the seeds both hold). Returns ``{"n", "mean", "se", "t", "df", "p", "low", "high"}``:
    the number of pairs, the mean difference, its standard error (the sample standard
    deviation of the differences over sqrt(n)), the t statistic, its n - 1 degrees of freedom,
    the two-sided p-value of Student's t and the ``confidence`` interval of the mean. With
    fewer than two pairs everything but ``n`` and ``mean`` is NaN (one seed has no spread).
    """
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        seeds = sorted(set(a) & set(b))
        xa, xb = [a[s] for s in seeds], [b[s] for s in seeds]
    elif isinstance(a, Mapping) or isinstance(b, Mapping):
        raise TypeError("give both settings as sequences or both as {seed: value} mappings")
    else:
        xa, xb = list(a), list(b)
        if len(xa) != len(xb):
            raise ValueError(f"paired values need one of each per seed: {len(xa)} against {len(xb)}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    d = np.asarray(xb, dtype=np.float64) - np.asarray(xa, dtype=np.float64)
    n = int(d.size)
    nan = float("nan")
    if n == 0:
        return {"n": 0, "mean": nan, "se": nan, "t": nan, "df": nan, "p": nan, "low": nan, "high": nan}
    mean = float(d.mean())
    if n < 2:
        return {"n": n, "mean": mean, "se": nan, "t": nan, "df": nan, "p": nan, "low": nan, "high": nan}
    df = n - 1
    se = float(d.std(ddof=1) / math.sqrt(n))
    low, high, p = _t_interval(mean, se, df, confidence)
    return {"n": n, "mean": mean, "se": se, "t": _t_statistic(mean, se), "df": df, "p": p, "low": low, "high": high}


def format_p(p: float) -> str:
    """A p-value as prose: two decimals, three below 0.01, and "p < 0.001" below that (two
    decimals would print a small p as "p = 0.00")."""
    if math.isnan(p):
        return "p undefined"
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"


def describe_difference(diff: Mapping[str, float], unit: str = "points") -> str:
    """One line of prose for a :func:`paired_difference`: the mean with its standard error,
    the t-test and the interval, or why there is no uncertainty to give."""
    if diff["n"] == 0:
        return "no seed was run with both settings: nothing to compare"
    if diff["n"] < 2:
        return f"{diff['mean']:+.1f} {unit} from {diff['n']} seed: no spread to judge it by"
    if math.isnan(diff["t"]):
        return f"{diff['mean']:+.1f} {unit}, identical on all {diff['n']} seeds"
    verdict = ("the seeds separate the two" if diff["p"] < 0.05 else
               "the seeds do not separate the two")
    return (f"{diff['mean']:+.1f} ± {diff['se']:.1f} {unit} (standard error over {diff['n']} paired seeds; "
            f"t = {diff['t']:.2f}, {diff['df']} degree{'s' if diff['df'] != 1 else ''} of freedom, {format_p(diff['p'])}; "
            f"95 % interval {diff['low']:+.1f} to {diff['high']:+.1f}): {verdict}")
