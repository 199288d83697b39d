"""Small statistics for the precision-vs-mIoU chapter: ordinary least squares with
standard errors, so a fitted relation is shown with its uncertainty."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def ols(y: Sequence[float], columns: dict[str, Sequence[float]]) -> dict[str, object]:
    """Fit y = b0 + sum_k b_k x_k. Returns {"coef": {name: b}, "se": {name: standard error},
    "r2", "n", "dof"}, with "intercept" among the names. Standard errors are NaN when the
    fit has no residual degrees of freedom."""
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
    return {"coef": dict(zip(names, map(float, coef))), "se": dict(zip(names, map(float, se))),
            "r2": r2, "n": int(n), "dof": int(dof)}
