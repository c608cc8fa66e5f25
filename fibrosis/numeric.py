"""Small numeric core shared by calibration (model) and metrics (evaluate): the logistic
function, binary-input checks, an unpenalised logistic fit and the warning category
for numbers that must be read with care."""
from __future__ import annotations

from typing import Any

import numpy as np


def sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, float)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])  # no overflow for very negative logits
    out[~pos] = e / (1.0 + e)
    return out


class MetricWarning(UserWarning):
    """A metric was computed but should be read with care (small n, degenerate resamples...)."""


def check_binary(y_true: Any, y_score: Any, *, score_name: str = "y_score",
                 probability: bool = False, need_both: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert labels/scores; raise ValueError naming the first bad value."""
    y = np.asarray(y_true)
    s = np.asarray(y_score, dtype=float)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"y_true shape {y.shape} and {score_name} shape {s.shape}: expected 1-D arrays")
    if len(y) != len(s):
        raise ValueError(f"y_true has {len(y)} values but {score_name} has {len(s)}; expected equal lengths")
    if len(y) == 0:
        raise ValueError("no cases: y_true is empty")
    try:
        yf = y.astype(float)
    except (TypeError, ValueError):
        raise ValueError(f"y_true has non-numeric labels (e.g. {y[0]!r}); allowed: {{0, 1}}") from None
    bad = ~np.isin(yf, (0.0, 1.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"y_true[{i}] = {y[i].item()!r}; allowed labels: {{0, 1}} "
                         f"({int(bad.sum())} invalid label(s))")
    nonfinite = ~np.isfinite(s)
    if nonfinite.any():
        i = int(np.flatnonzero(nonfinite)[0])
        raise ValueError(f"{score_name}[{i}] = {s[i].item()!r}: {int(nonfinite.sum())} non-finite score(s); "
                         "scores must be finite numbers (check the model output)")
    if probability and ((s < 0) | (s > 1)).any():
        i = int(np.flatnonzero((s < 0) | (s > 1))[0])
        raise ValueError(f"{score_name}[{i}] = {s[i].item()!r}: probabilities must lie in [0, 1]")
    yi = yf.astype(np.int8)
    if need_both:
        n_pos = int(yi.sum())
        if n_pos == 0 or n_pos == len(yi):
            raise ValueError(f"y_true has only one class ({n_pos} positives, {len(yi) - n_pos} negatives); "
                             "discrimination needs at least one positive and one negative")
    return yi, s


def fit_logistic(x: np.ndarray, y: np.ndarray, offset: np.ndarray | None = None,
                 slope: bool = True, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray, bool]:
    """Unpenalised logistic regression ``logit P(y=1) = a [+ b x] [+ offset]`` by Newton-Raphson.

    Returns (params, covariance, converged). Used for the calibration intercept/slope
    and for Platt scaling; non-convergence (separation) is reported, not hidden.
    """
    x = np.asarray(x, float)
    design = np.column_stack([np.ones_like(x), x]) if slope else np.ones((len(x), 1))
    off = np.zeros_like(x) if offset is None else np.asarray(offset, float)
    beta = np.zeros(design.shape[1])
    converged = False
    for _ in range(max_iter):
        eta = design @ beta + off
        mu = 1.0 / (1.0 + np.exp(-eta))
        w = np.clip(mu * (1 - mu), 1e-12, None)
        hess = design.T @ (design * w[:, None])
        grad = design.T @ (y - mu)
        step = np.linalg.solve(hess + 1e-12 * np.eye(len(beta)), grad)
        beta = beta + step
        if np.max(np.abs(step)) < 1e-10:
            converged = True
            break
    eta = design @ beta + off
    mu = 1.0 / (1.0 + np.exp(-eta))
    hess = design.T @ (design * (mu * (1 - mu))[:, None])
    try:
        cov = np.linalg.inv(hess)
    except np.linalg.LinAlgError:
        cov = np.full((len(beta), len(beta)), np.nan)
        converged = False
    if not np.all(np.isfinite(beta)) or np.max(np.abs(beta)) > 50:
        converged = False
    return beta, cov, converged
