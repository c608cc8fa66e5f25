"""Two-sample tests of a batch against the reference (pure NumPy/SciPy; one record per test).

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
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from fibrosis.evaluate.metrics import wilson_ci

PSI_BINS = 10
PSI_FLOOR = 1e-4  # share given to an empty bin, so a value never seen counts instead of dividing by 0
COCHRAN_MIN_EXPECTED = 5.0


@dataclass(frozen=True, slots=True)
class CategoricalTest:
    """Category mix of the batch against the reference's, and the test that compared them."""
    n_reference: int
    n_batch: int
    reference: dict[str, int]  # category -> images
    batch: dict[str, int]
    unseen: list[str]  # categories of the batch the reference never had
    test: str
    statistic: float | None
    p: float

    psi = None  # a category shift has no size beside its p-value

    def to_json(self) -> dict[str, Any]:
        return {"n_reference": self.n_reference, "n_batch": self.n_batch, "reference": dict(self.reference),
                "batch": dict(self.batch), "unseen": list(self.unseen), "test": self.test,
                "statistic": self.statistic, "p": self.p}


@dataclass(frozen=True, slots=True)
class ContinuousTest:
    """Kolmogorov-Smirnov and PSI of a continuous value; all None when a sample is empty."""
    n_reference: int
    n_batch: int
    statistic: float | None
    p: float | None
    psi: float | None
    reference_quartiles: list[float] | None
    batch_quartiles: list[float] | None
    test: str = "Kolmogorov-Smirnov two-sample; PSI"

    def to_json(self) -> dict[str, Any]:
        return {"test": self.test, "n_reference": self.n_reference, "n_batch": self.n_batch,
                "statistic": self.statistic, "p": self.p, "psi": self.psi,
                "reference_quartiles": self.reference_quartiles, "batch_quartiles": self.batch_quartiles}


@dataclass(frozen=True, slots=True)
class Proportion:
    """k of n with its Wilson interval (value and ci None when n is 0)."""
    k: int
    n: int
    value: float | None
    ci: list[float] | None

    def to_json(self) -> dict[str, Any]:
        return {"k": self.k, "n": self.n, "value": self.value, "ci": self.ci}


@dataclass(frozen=True, slots=True)
class RateTest:
    """Two proportions and Fisher's exact test (statistic: the odds ratio, None when infinite)."""
    n_reference: int
    n_batch: int
    reference: Proportion
    batch: Proportion
    statistic: float | None
    p: float | None
    test: str = "Fisher exact (two-sided)"

    psi = None

    def to_json(self) -> dict[str, Any]:
        return {"test": self.test, "n_reference": self.n_reference, "n_batch": self.n_batch,
                "reference": self.reference.to_json(), "batch": self.batch.to_json(),
                "statistic": self.statistic, "p": self.p}


TestResult = CategoricalTest | ContinuousTest | RateTest


def categorical_test(reference: Mapping[str, int], batch: Mapping[str, int]) -> CategoricalTest:
    """Does the batch's category mix differ from the reference's? New categories are named."""
    cats = sorted(set(reference) | set(batch))
    ref = np.array([reference.get(c, 0) for c in cats], float)
    new = np.array([batch.get(c, 0) for c in cats], float)
    n_ref, n_new = int(ref.sum()), int(new.sum())
    counts = (n_ref, n_new, {c: int(v) for c, v in zip(cats, ref)}, {c: int(v) for c, v in zip(cats, new)},
              [c for c in cats if reference.get(c, 0) == 0 and batch.get(c, 0) > 0])
    if n_ref == 0 or n_new == 0 or len(cats) < 2:
        return CategoricalTest(*counts, "none (one category in both samples)", None, 1.0)
    table = np.vstack([ref, new])
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    if expected.min() >= COCHRAN_MIN_EXPECTED:
        chi2, p, dof, _ = stats.chi2_contingency(table, correction=False)
        return CategoricalTest(*counts, f"chi-squared ({dof} df)", float(chi2), float(p))
    # scipy-stubs ask fisher_exact for an ndarray; it takes any array-like (as documented)
    ps = [stats.fisher_exact([[r, n_ref - r], [b, n_new - b]])[1]  # type: ignore[arg-type]
          for r, b in zip(ref, new)]
    return CategoricalTest(*counts, f"Fisher exact per category, Bonferroni x{len(cats)} (expected counts < 5)",
                           None, float(min(1.0, len(cats) * min(ps))))


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


def continuous_test(reference: Sequence[float], batch: Sequence[float]) -> ContinuousTest:
    """Kolmogorov-Smirnov two-sample test and PSI, with both samples' quartiles."""
    ref, new = np.asarray(reference, float), np.asarray(batch, float)
    if len(ref) == 0 or len(new) == 0:
        return ContinuousTest(int(len(ref)), int(len(new)), None, None, None, None, None)
    with warnings.catch_warnings():
        # ties (e.g. image sizes) make SciPy fall back from the exact to the asymptotic p-value;
        # that is the documented behaviour, not a problem to print on every run
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ks_2samp(ref, new)
    q = (0.25, 0.5, 0.75)
    return ContinuousTest(int(len(ref)), int(len(new)), float(res.statistic), float(res.pvalue), psi(ref, new),
                          np.quantile(ref, q).tolist(), np.quantile(new, q).tolist())


def proportion(k: int, n: int, level: float) -> Proportion:
    return Proportion(int(k), int(n), k / n if n else None, list(wilson_ci(int(k), int(n), level)) if n else None)


def rate_test(k_ref: int, n_ref: int, k_new: int, n_new: int, level: float) -> RateTest:
    """Fisher's exact test of two proportions, each with its Wilson interval."""
    pair = (int(n_ref), int(n_new), proportion(k_ref, n_ref, level), proportion(k_new, n_new, level))
    if n_ref == 0 or n_new == 0:
        return RateTest(*pair, None, None)
    # scipy-stubs ask fisher_exact for an ndarray; it takes any array-like (as documented)
    odds, p = stats.fisher_exact([[k_ref, n_ref - k_ref], [k_new, n_new - k_new]])  # type: ignore[arg-type]
    return RateTest(*pair, None if not math.isfinite(odds) else float(odds), float(p))
