"""Two-sample tests of a batch against the reference (pure NumPy/SciPy; plain dicts out).

Every result names its test and both sample sizes, so a reader can judge the p-value:

* categories: Pearson's chi-squared on the reference-vs-batch table when every expected
  count is >= 5 (Cochran's rule), else Fisher's exact test per category (that category
  against the rest), Bonferroni-corrected over the categories;
* continuous values: the two-sample Kolmogorov-Smirnov test, with the population
  stability index (PSI, 10 reference-quantile bins) as the size of the shift;
* proportions (positive rate, excluded share): Fisher's exact test, Wilson intervals.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from fibrosis.evaluate.metrics import wilson_ci

PSI_BINS = 10
PSI_FLOOR = 1e-4  # share given to an empty bin, so a value never seen counts instead of dividing by 0
COCHRAN_MIN_EXPECTED = 5.0


def categorical_test(reference: Mapping[str, int], batch: Mapping[str, int]) -> dict[str, Any]:
    """Does the batch's category mix differ from the reference's? New categories are named."""
    cats = sorted(set(reference) | set(batch))
    ref = np.array([reference.get(c, 0) for c in cats], float)
    new = np.array([batch.get(c, 0) for c in cats], float)
    n_ref, n_new = int(ref.sum()), int(new.sum())
    out: dict[str, Any] = {"n_reference": n_ref, "n_batch": n_new,
                           "reference": {c: int(v) for c, v in zip(cats, ref)},
                           "batch": {c: int(v) for c, v in zip(cats, new)},
                           "unseen": [c for c in cats if reference.get(c, 0) == 0 and batch.get(c, 0) > 0]}
    if n_ref == 0 or n_new == 0 or len(cats) < 2:
        return {**out, "test": "none (one category in both samples)", "statistic": None, "p": 1.0}
    table = np.vstack([ref, new])
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    if expected.min() >= COCHRAN_MIN_EXPECTED:
        chi2, p, dof, _ = stats.chi2_contingency(table, correction=False)
        return {**out, "test": f"chi-squared ({dof} df)", "statistic": float(chi2), "p": float(p)}
    # scipy-stubs ask fisher_exact for an ndarray; it takes any array-like (as documented)
    ps = [stats.fisher_exact([[r, n_ref - r], [b, n_new - b]])[1]  # type: ignore[arg-type]
          for r, b in zip(ref, new)]
    return {**out, "test": f"Fisher exact per category, Bonferroni x{len(cats)} (expected counts < 5)",
            "statistic": None, "p": float(min(1.0, len(cats) * min(ps)))}


def psi(reference: Sequence[float] | np.ndarray, batch: Sequence[float] | np.ndarray, n_bins: int = PSI_BINS) -> float:
    """Population stability index over reference-quantile bins; a value equal to a cut
    point gets a bin of its own, so a constant reference still separates other values."""
    ref, new = np.asarray(reference, float), np.asarray(batch, float)
    cuts = np.unique(np.quantile(ref, np.linspace(0, 1, n_bins + 1)[1:-1]))

    def shares(x: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(cuts, x, "left") + np.searchsorted(cuts, x, "right")
        return np.maximum(np.bincount(idx, minlength=2 * len(cuts) + 1) / len(x), PSI_FLOOR)

    r, b = shares(ref), shares(new)
    return float(np.sum((b - r) * np.log(b / r)))


def continuous_test(reference: Sequence[float], batch: Sequence[float]) -> dict[str, Any]:
    """Kolmogorov-Smirnov two-sample test and PSI, with both samples' quartiles."""
    ref, new = np.asarray(reference, float), np.asarray(batch, float)
    out: dict[str, Any] = {"test": "Kolmogorov-Smirnov two-sample; PSI", "n_reference": int(len(ref)),
                           "n_batch": int(len(new))}
    if len(ref) == 0 or len(new) == 0:
        return {**out, "statistic": None, "p": None, "psi": None, "reference_quartiles": None,
                "batch_quartiles": None}
    with warnings.catch_warnings():
        # ties (e.g. image sizes) make SciPy fall back from the exact to the asymptotic p-value;
        # that is the documented behaviour, not a problem to print on every run
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ks_2samp(ref, new)
    q = (0.25, 0.5, 0.75)
    return {**out, "statistic": float(res.statistic), "p": float(res.pvalue), "psi": psi(ref, new),
            "reference_quartiles": np.quantile(ref, q).tolist(), "batch_quartiles": np.quantile(new, q).tolist()}


def proportion(k: int, n: int, level: float) -> dict[str, Any]:
    return {"k": int(k), "n": int(n), "value": k / n if n else None,
            "ci": list(wilson_ci(int(k), int(n), level)) if n else None}


def rate_test(k_ref: int, n_ref: int, k_new: int, n_new: int, level: float) -> dict[str, Any]:
    """Fisher's exact test of two proportions, each with its Wilson interval."""
    out = {"test": "Fisher exact (two-sided)", "n_reference": int(n_ref), "n_batch": int(n_new),
           "reference": proportion(k_ref, n_ref, level), "batch": proportion(k_new, n_new, level)}
    if n_ref == 0 or n_new == 0:
        return {**out, "statistic": None, "p": None}
    # scipy-stubs ask fisher_exact for an ndarray; it takes any array-like (as documented)
    odds, p = stats.fisher_exact([[k_ref, n_ref - k_ref], [k_new, n_new - k_new]])  # type: ignore[arg-type]
    return {**out, "statistic": None if not math.isfinite(odds) else float(odds), "p": float(p)}
