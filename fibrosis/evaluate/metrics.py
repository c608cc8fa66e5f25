"""Discrimination and calibration statistics (pure NumPy/SciPy, no plotting, no I/O).

Conventions used everywhere in this module:

* ``y_true`` is 0/1 (1 = fibrosis), ``y_score`` any real score where higher means
  "more likely positive" (a logit or a probability); functions that need a
  probability say so and check it lies in [0, 1].
* Invalid input raises ``ValueError`` naming the bad value and what is allowed.
  Results that are computable but fragile (tiny sets, degenerate bootstrap
  resamples, non-converged fits) emit a :class:`MetricWarning`; the evaluation
  stage records those warnings next to the numbers, so nothing is silently off.
* Results are frozen records of Python floats/lists (``to_json()`` gives the metrics.json
  section as it is written, ``from_json()`` reads it back). ``auc_delong``,
  ``delong_paired_test`` and ``roc_points`` return plain JSON dicts: model selection and
  benchmarks store them as they are; :class:`DelongAuc` and :class:`RocCurve` type them
  where they enter metrics.json.

References: DeLong, DeLong & Clarke-Pearson (1988) Biometrics 44:837; Sun & Xu (2014)
IEEE Signal Process Lett 21:1389 (midrank algorithm); pROC (Robin et al. 2011) for
reference values; Cox (1958) and Van Calster et al. (2016) for calibration
intercept/slope.
"""
from __future__ import annotations

import logging
import math
import typing
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse, stats

from fibrosis.config import EceStrategy
from fibrosis.evaluate.shape import arr, obj, opt_arr
from fibrosis.numeric import MetricWarning, check_binary, fit_logistic

logger = logging.getLogger(__name__)

ECE_STRATEGIES = typing.get_args(EceStrategy)
_EPS = 1e-12


# ---------------------------------------------------------------- input checks


def _warn_small(n_pos: int, n_neg: int, what: str) -> None:
    if min(n_pos, n_neg) < 10:
        warnings.warn(f"{what}: only {n_pos} positives / {n_neg} negatives; the estimate and its "
                      "interval are unstable -- do not over-read", MetricWarning, stacklevel=3)


def _z(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level {level!r}; allowed: 0 < level < 1 (e.g. 0.95)")
    return float(stats.norm.ppf(0.5 + level / 2.0))


# ---------------------------------------------------------------- DeLong


def delong_placements(y_true: Any, y_score: Any) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and the DeLong structural components (placement values) via midranks.

    V10[i] = fraction of negatives scored below positive i (ties count 1/2);
    V01[j] = fraction of positives scored above negative j. AUC = mean(V10) = mean(V01).
    """
    y, s = check_binary(y_true, y_score)
    x, z = s[y == 1], s[y == 0]
    m, n = len(x), len(z)
    tz = stats.rankdata(np.concatenate([x, z]))  # midranks handle ties exactly
    tx, ty = stats.rankdata(x), stats.rankdata(z)
    v10 = (tz[:m] - tx) / n
    v01 = 1.0 - (tz[m:] - ty) / m
    return float(v10.mean()), v10, v01


@dataclass(frozen=True, slots=True)
class DelongAuc:
    """AUC with its DeLong variance and Wald interval (None where fewer than 2 per class)."""
    auc: float
    variance: float | None
    se: float | None
    ci: list[float] | None
    level: float
    method: str
    n_pos: int
    n_neg: int

    def to_json(self) -> dict[str, Any]:
        return {"auc": self.auc, "variance": self.variance, "se": self.se,
                "ci": None if self.ci is None else list(self.ci), "level": self.level,
                "method": self.method, "n_pos": self.n_pos, "n_neg": self.n_neg}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "DelongAuc":
        d = obj(data, where, ("auc", "variance", "se", "ci", "level", "method", "n_pos", "n_neg"))
        return cls(d["auc"], d["variance"], d["se"], opt_arr(d["ci"], f"{where}.ci"), d["level"], d["method"],
                   d["n_pos"], d["n_neg"])


def auc_delong(y_true: Any, y_score: Any, level: float = 0.95) -> dict[str, Any]:
    """AUC with DeLong variance and a Wald CI clipped to [0, 1] (as pROC's ``ci.auc``)."""
    z = _z(level)
    auc, v10, v01 = delong_placements(y_true, y_score)
    m, n = len(v10), len(v01)
    _warn_small(m, n, "AUC")
    if m < 2 or n < 2:
        warnings.warn(f"DeLong variance needs >= 2 positives and >= 2 negatives (have {m}/{n}); "
                      "no CI", MetricWarning, stacklevel=2)
        return {"auc": auc, "variance": None, "se": None, "ci": None, "level": level,
                "method": "DeLong", "n_pos": m, "n_neg": n}
    var = float(np.var(v10, ddof=1) / m + np.var(v01, ddof=1) / n)
    se = math.sqrt(var)
    if var <= _EPS:
        # Happens with perfect separation (AUC 1 or 0) or all-tied scores: the sample
        # gives no spread, not certainty; the zero-width interval must not pass unremarked.
        warnings.warn(f"DeLong variance is 0 (AUC = {auc:.3f}, {m} positives / {n} negatives): the "
                      f"zero-width CI understates the uncertainty; read it as 'no interval'",
                      MetricWarning, stacklevel=2)
    return {"auc": auc, "variance": var, "se": se,
            "ci": [max(0.0, auc - z * se), min(1.0, auc + z * se)], "level": level,
            "method": "DeLong", "n_pos": m, "n_neg": n}


def delong_paired_test(y_true: Any, score_a: Any, score_b: Any, level: float = 0.95) -> dict[str, Any]:
    """Two-sided DeLong test of AUC(a) == AUC(b) on the same cases (correlated ROC curves)."""
    z_crit = _z(level)
    y, a = check_binary(y_true, score_a, score_name="score_a")
    _, b = check_binary(y_true, score_b, score_name="score_b")
    auc_a, v10a, v01a = delong_placements(y, a)
    auc_b, v10b, v01b = delong_placements(y, b)
    m, n = len(v10a), len(v01a)
    if m < 2 or n < 2:
        raise ValueError(f"paired DeLong test needs >= 2 positives and >= 2 negatives; have {m}/{n}")
    _warn_small(m, n, "paired DeLong test")
    s10 = np.cov(np.vstack([v10a, v10b]))
    s01 = np.cov(np.vstack([v01a, v01b]))
    cov = s10 / m + s01 / n
    diff = auc_a - auc_b
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    zstat: float | None
    if var <= _EPS:
        # No sampling variance of the difference (identical rankings, or e.g. a perfect
        # separator against a constant score). z is undefined: p = 1 is only right when
        # there is no difference at all; any difference then counts as certain (p = 0),
        # flagged because the zero-width interval understates the real uncertainty.
        se = 0.0
        zstat, p = (0.0, 1.0) if diff == 0.0 else (None, 0.0)
        warnings.warn(f"paired DeLong: variance is 0 (AUC {auc_a:.3f} vs {auc_b:.3f}, difference "
                      f"{diff:.3f}); z is undefined and p = {p:g} is a degenerate limit, not a test",
                      MetricWarning, stacklevel=2)
    else:
        se = math.sqrt(var)
        zstat = diff / se
        p = float(2 * stats.norm.sf(abs(zstat)))
    return {"auc_a": auc_a, "auc_b": auc_b, "difference": diff, "se": se, "z": zstat, "p": p,
            "ci": [diff - z_crit * se, diff + z_crit * se], "level": level,
            "correlation": float(cov[0, 1] / math.sqrt(cov[0, 0] * cov[1, 1]))
            if cov[0, 0] > 0 and cov[1, 1] > 0 else None,
            "n_pos": m, "n_neg": n, "method": "DeLong paired (two-sided)"}


# ---------------------------------------------------------------- ROC / PR curves


@dataclass(frozen=True, slots=True)
class RocCurve:
    """Empirical ROC points; ``thresholds[0]`` is None (nobody positive)."""
    fpr: list[float]
    tpr: list[float]
    thresholds: list[float | None]

    def to_json(self) -> dict[str, Any]:
        return {"fpr": list(self.fpr), "tpr": list(self.tpr), "thresholds": list(self.thresholds)}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "RocCurve":
        d = obj(data, where, ("fpr", "tpr", "thresholds"))
        return cls(arr(d["fpr"], f"{where}.fpr"), arr(d["tpr"], f"{where}.tpr"),
                   arr(d["thresholds"], f"{where}.thresholds"))


def roc_points(y_true: Any, y_score: Any) -> dict[str, list[float]]:
    """Empirical ROC: one point per distinct threshold, from (0, 0) to (1, 1).

    ``thresholds[k]`` is the cut-off "positive if score >= t" producing point k; the
    first point (nobody positive) has threshold None, so the result stays valid JSON.
    """
    y, s = check_binary(y_true, y_score)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted) != 0), len(s_sorted) - 1]  # end of each tie group
    tp = np.cumsum(y_sorted)[last]
    fp = (last + 1) - tp
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    return {"fpr": [0.0, *(fp / n_neg).tolist()], "tpr": [0.0, *(tp / n_pos).tolist()],
            "thresholds": [None, *s_sorted[last].tolist()]}


@dataclass(frozen=True, slots=True)
class PrCurve:
    """Precision-recall curve and average precision."""
    precision: list[float]
    recall: list[float]
    average_precision: float
    prevalence: float
    n_pos: int
    n: int

    def to_json(self) -> dict[str, Any]:
        return {"precision": list(self.precision), "recall": list(self.recall),
                "average_precision": self.average_precision, "prevalence": self.prevalence,
                "n_pos": self.n_pos, "n": self.n}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "PrCurve":
        d = obj(data, where, ("precision", "recall", "average_precision", "prevalence", "n_pos", "n"))
        return cls(arr(d["precision"], f"{where}.precision"), arr(d["recall"], f"{where}.recall"),
                   d["average_precision"], d["prevalence"], d["n_pos"], d["n"])


def pr_curve(y_true: Any, y_score: Any) -> PrCurve:
    """Precision-recall curve and average precision (step-wise, as scikit-learn)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y, s = check_binary(y_true, y_score)
    precision, recall, _ = precision_recall_curve(y, s)
    return PrCurve(precision.tolist(), recall.tolist(), float(average_precision_score(y, s)),
                   float(y.mean()), int(y.sum()), int(len(y)))


# ---------------------------------------------------------------- clustered bootstrap


def _cluster_ids(groups: Any, n: int) -> np.ndarray:
    if groups is None:
        return np.arange(n)
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups has shape {g.shape}; expected ({n},), one patient key per case")
    if any(k is None or (isinstance(k, float) and math.isnan(k)) or k == "" for k in g.tolist()):
        raise ValueError("groups contains empty/None patient keys; every case needs a patient key "
                         "(the bootstrap resamples patients, not images)")
    return np.unique(g, return_inverse=True)[1].ravel()


@dataclass(frozen=True, slots=True)
class RocBand:
    """Pointwise percentile band of the bootstrap ROC curves on a fixed FPR grid."""
    fpr: list[float]
    tpr_lower: list[float]
    tpr_upper: list[float]

    def to_json(self) -> dict[str, Any]:
        return {"fpr": list(self.fpr), "tpr_lower": list(self.tpr_lower), "tpr_upper": list(self.tpr_upper)}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "RocBand":
        d = obj(data, where, ("fpr", "tpr_lower", "tpr_upper"))
        return cls(arr(d["fpr"], f"{where}.fpr"), arr(d["tpr_lower"], f"{where}.tpr_lower"),
                   arr(d["tpr_upper"], f"{where}.tpr_upper"))


BOOTSTRAP_METHOD = "patient-clustered percentile bootstrap"


@dataclass(frozen=True, slots=True)
class BootstrapAuc:
    """The clustered bootstrap's AUC interval and ROC band, or, when too few resamples held both
    classes, a "not reported" record: ``error`` says why and the numbers are None."""
    auc: float | None
    ci: list[float] | None
    level: float
    method: str
    n_resamples: int
    n_used: int | None
    n_degenerate: int | None  # None in a "not reported" record
    n_patients: int
    seed: int
    se: float | None
    band: RocBand | None
    error: str | None = None

    @classmethod
    def not_reported(cls, error: str, *, level: float, n_resamples: int, n_patients: int,
                     seed: int) -> "BootstrapAuc":
        return cls(None, None, level, BOOTSTRAP_METHOD, n_resamples, None, None, n_patients, seed, None, None, error)

    def to_json(self) -> dict[str, Any]:
        ci = None if self.ci is None else list(self.ci)
        band = None if self.band is None else self.band.to_json()
        if self.error is not None:  # the "not reported" layout, as written since it existed
            return {"auc": self.auc, "ci": ci, "band": band, "level": self.level, "method": self.method,
                    "n_resamples": self.n_resamples, "n_used": self.n_used, "n_patients": self.n_patients,
                    "seed": self.seed, "error": self.error}
        return {"auc": self.auc, "ci": ci, "level": self.level, "method": self.method,
                "n_resamples": self.n_resamples, "n_used": self.n_used, "n_degenerate": self.n_degenerate,
                "n_patients": self.n_patients, "seed": self.seed, "se": self.se, "band": band}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "BootstrapAuc":
        error = obj(data, where).get("error")
        d = obj(data, where, ("auc", "ci", "band", "level", "method", "n_resamples", "n_used", "n_patients", "seed")
                + (() if error is not None else ("n_degenerate", "se")))
        return cls(d["auc"], opt_arr(d["ci"], f"{where}.ci"), d["level"], d["method"], d["n_resamples"],
                   d["n_used"], d.get("n_degenerate"), d["n_patients"], d["seed"], d.get("se"),
                   None if d["band"] is None else RocBand.from_json(d["band"], f"{where}.band"), error)


def bootstrap_roc(y_true: Any, y_score: Any, groups: Any = None, *, n_resamples: int = 2000,
                  level: float = 0.95, seed: int = 0, fpr_grid: int = 101,
                  chunk: int = 250) -> BootstrapAuc:
    """Patient-clustered percentile bootstrap of the AUC and of the ROC curve (vertical band).

    Patients (``groups``) are drawn with replacement and carry all their images,
    so correlated images of one patient never make the interval look tighter than
    it is. Each resample is evaluated exactly (ties count 1/2) through per-patient
    count weights, vectorised over resamples. Resamples without a positive or
    without a negative are dropped and counted (``n_degenerate``).
    """
    _z(level)
    if n_resamples < 1:
        raise ValueError(f"n_resamples={n_resamples!r}; allowed: an integer >= 1 (>= 2000 recommended)")
    y, s = check_binary(y_true, y_score)
    cid = _cluster_ids(groups, len(y))
    n_clusters = int(cid.max()) + 1
    if n_clusters < 10:
        warnings.warn(f"bootstrap over only {n_clusters} patients: the interval is unreliable",
                      MetricWarning, stacklevel=2)
    uniq, gid = np.unique(s, return_inverse=True)
    gid = gid.ravel()
    n_u = len(uniq)
    ones = np.ones(len(y))
    # (patients x score-groups) counts of positive and negative images
    m_pos = sparse.csr_matrix((ones * y, (cid, gid)), shape=(n_clusters, n_u))
    m_neg = sparse.csr_matrix((ones * (1 - y), (cid, gid)), shape=(n_clusters, n_u))
    rng = np.random.default_rng(seed)
    grid = np.linspace(0.0, 1.0, fpr_grid)
    aucs, bands = [], []
    degenerate = 0
    todo = n_resamples
    while todo > 0:
        b = min(chunk, todo)
        todo -= b
        counts = rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=b).astype(float)
        npos = np.asarray((m_pos.T @ counts.T).T)  # (b, n_u), ascending score order
        nneg = np.asarray((m_neg.T @ counts.T).T)
        tot_p, tot_n = npos.sum(1), nneg.sum(1)
        ok = (tot_p > 0) & (tot_n > 0)
        degenerate += int((~ok).sum())
        npos, nneg, tot_p, tot_n = npos[ok], nneg[ok], tot_p[ok], tot_n[ok]
        neg_below = np.cumsum(nneg, axis=1) - nneg
        aucs.append((npos * (neg_below + 0.5 * nneg)).sum(1) / (tot_p * tot_n))
        # ROC points from the highest threshold down; keep the top TPR per FPR value.
        tpr = np.cumsum(npos[:, ::-1], axis=1) / tot_p[:, None]
        fpr = np.cumsum(nneg[:, ::-1], axis=1) / tot_n[:, None]
        for fr, tr in zip(fpr, tpr):
            fr = np.r_[0.0, fr]
            tr = np.r_[0.0, tr]
            keep = np.r_[fr[1:] != fr[:-1], True]
            bands.append(np.interp(grid, fr[keep], tr[keep]))
    auc_boot = np.concatenate(aucs)
    if degenerate:
        warnings.warn(f"{degenerate}/{n_resamples} bootstrap resamples had only one class and were "
                      "dropped", MetricWarning, stacklevel=2)
    if len(auc_boot) < 0.9 * n_resamples:
        raise ValueError(f"only {len(auc_boot)}/{n_resamples} bootstrap resamples contained both classes; "
                         "too few positives (or negatives) for a bootstrap CI")
    alpha = (1.0 - level) / 2.0
    band = np.vstack(bands)
    auc, _, _ = delong_placements(y, s)
    return BootstrapAuc(auc, np.quantile(auc_boot, [alpha, 1 - alpha]).tolist(), level, BOOTSTRAP_METHOD,
                        n_resamples, int(len(auc_boot)), degenerate, n_clusters, seed,
                        float(auc_boot.std(ddof=1)) if len(auc_boot) > 1 else None,
                        RocBand(grid.tolist(), np.quantile(band, alpha, axis=0).tolist(),
                                np.quantile(band, 1 - alpha, axis=0).tolist()))


@dataclass(frozen=True, slots=True)
class Discrimination:
    """The ``discrimination`` section of metrics.json: AUC on the model logit with its DeLong and
    bootstrap intervals, ROC and PR curves."""
    score: str  # what the AUC ranks (the logit: temperature/Platt leave it unchanged)
    auc: float
    delong: DelongAuc
    bootstrap: BootstrapAuc
    auc_after_calibration: float | None  # only where calibration can reorder cases (isotonic)
    roc: RocCurve
    pr: PrCurve

    def to_json(self) -> dict[str, Any]:
        return {"score": self.score, "auc": self.auc, "delong": self.delong.to_json(),
                "bootstrap": self.bootstrap.to_json(), "auc_after_calibration": self.auc_after_calibration,
                "roc": self.roc.to_json(), "pr": self.pr.to_json()}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "Discrimination":
        d = obj(data, where, ("score", "auc", "delong", "bootstrap", "auc_after_calibration", "roc", "pr"))
        return cls(d["score"], d["auc"], DelongAuc.from_json(d["delong"], f"{where}.delong"),
                   BootstrapAuc.from_json(d["bootstrap"], f"{where}.bootstrap"), d["auc_after_calibration"],
                   RocCurve.from_json(d["roc"], f"{where}.roc"), PrCurve.from_json(d["pr"], f"{where}.pr"))


# ---------------------------------------------------------------- calibration


def brier_score(y_true: Any, prob: Any) -> float:
    y, p = check_binary(y_true, prob, score_name="prob", probability=True, need_both=False)
    return float(np.mean((p - y) ** 2))


def _bin_edges(p: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins={n_bins!r}; allowed: an integer >= 1")
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    if strategy == "quantile":
        edges = np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1))
        edges[0], edges[-1] = 0.0, 1.0
        return np.unique(edges)
    raise ValueError(f"binning strategy {strategy!r}; allowed: {list(ECE_STRATEGIES)}")


@dataclass(frozen=True, slots=True)
class ReliabilityBin:
    """One non-empty probability bin: mean predicted vs observed frequency (Wilson CI)."""
    lower: float
    upper: float
    count: int
    mean_predicted: float
    observed: float
    observed_ci: list[float]

    def to_json(self) -> dict[str, Any]:
        return {"lower": self.lower, "upper": self.upper, "count": self.count,
                "mean_predicted": self.mean_predicted, "observed": self.observed,
                "observed_ci": list(self.observed_ci)}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "ReliabilityBin":
        d = obj(data, where, ("lower", "upper", "count", "mean_predicted", "observed", "observed_ci"))
        return cls(d["lower"], d["upper"], d["count"], d["mean_predicted"], d["observed"],
                   arr(d["observed_ci"], f"{where}.observed_ci"))


@dataclass(frozen=True, slots=True)
class Reliability:
    """Reliability bins and the expected calibration error (ECE) over them."""
    bins: list[ReliabilityBin]
    ece: float
    n_bins: int
    strategy: str
    binning: str  # the binning and the ECE in words, for the report
    n: int
    level: float

    def to_json(self) -> dict[str, Any]:
        return {"bins": [b.to_json() for b in self.bins], "ece": self.ece, "n_bins": self.n_bins,
                "strategy": self.strategy, "binning": self.binning, "n": self.n, "level": self.level}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "Reliability":
        d = obj(data, where, ("bins", "ece", "n_bins", "strategy", "binning", "n", "level"))
        return cls([ReliabilityBin.from_json(b, f"{where}.bins[{i}]") for i, b in enumerate(arr(d["bins"], f"{where}.bins"))],
                   d["ece"], d["n_bins"], d["strategy"], d["binning"], d["n"], d["level"])


def reliability_curve(y_true: Any, prob: Any, n_bins: int = 10, strategy: str = "uniform",
                      level: float = 0.95) -> Reliability:
    """Per-bin mean predicted probability vs observed frequency (Wilson CI), and the ECE.

    ECE = sum_b (n_b / n) * |mean predicted_b - observed frequency_b| over non-empty
    bins of the positive-class probability; bins are right-open except the last.
    """


    y, p = check_binary(y_true, prob, score_name="prob", probability=True, need_both=False)
    edges = _bin_edges(p, n_bins, strategy)
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
    bins = []
    ece = 0.0
    for b in range(len(edges) - 1):
        sel = idx == b
        k = int(sel.sum())
        if k == 0:
            continue
        conf, freq = float(p[sel].mean()), float(y[sel].mean())
        lo, hi = wilson_ci(int(y[sel].sum()), k, level)
        ece += k / len(p) * abs(conf - freq)
        bins.append(ReliabilityBin(float(edges[b]), float(edges[b + 1]), k, conf, freq, [lo, hi]))
    return Reliability(bins, float(ece), n_bins, strategy,
                       f"{n_bins} {'equal-width' if strategy == 'uniform' else 'equal-count'} bins on "
                       "[0, 1]; ECE = count-weighted mean |mean predicted - observed| "
                       "of the positive-class probability", int(len(p)), level)


def expected_calibration_error(y_true: Any, prob: Any, n_bins: int = 10,
                               strategy: str = "uniform") -> float:
    return reliability_curve(y_true, prob, n_bins, strategy).ece


@dataclass(frozen=True, slots=True)
class InterceptSlope:
    """Calibration intercept and slope with Wald intervals; None where the fit did not converge."""
    level: float
    method: str
    slope: float | None
    slope_ci: list[float] | None
    intercept: float | None
    intercept_ci: list[float] | None

    def to_json(self) -> dict[str, Any]:
        return {"level": self.level, "method": self.method, "slope": self.slope,
                "slope_ci": None if self.slope_ci is None else list(self.slope_ci), "intercept": self.intercept,
                "intercept_ci": None if self.intercept_ci is None else list(self.intercept_ci)}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "InterceptSlope":
        d = obj(data, where, ("level", "method", "slope", "slope_ci", "intercept", "intercept_ci"))
        return cls(d["level"], d["method"], d["slope"], opt_arr(d["slope_ci"], f"{where}.slope_ci"),
                   d["intercept"], opt_arr(d["intercept_ci"], f"{where}.intercept_ci"))


def calibration_intercept_slope(y_true: Any, prob: Any, level: float = 0.95) -> InterceptSlope:
    """Logistic recalibration on logit(p): slope from ``y ~ a + b*logit(p)``, intercept
    (calibration-in-the-large) from ``y ~ a + offset(logit(p))``. Ideal: 0 and 1."""
    z = _z(level)
    y, p = check_binary(y_true, prob, score_name="prob", probability=True)
    _warn_small(int(y.sum()), int(len(y) - y.sum()), "calibration slope")
    lp = np.log(np.clip(p, 1e-7, 1 - 1e-7)) - np.log1p(-np.clip(p, 1e-7, 1 - 1e-7))
    beta2, cov2, ok2 = fit_logistic(lp, y)
    beta1, cov1, ok1 = fit_logistic(lp, y, offset=lp, slope=False)
    slope: float | None = None
    slope_ci: list[float] | None = None
    intercept: float | None = None
    intercept_ci: list[float] | None = None
    if ok2:
        se = math.sqrt(cov2[1, 1])
        slope, slope_ci = float(beta2[1]), [float(beta2[1] - z * se), float(beta2[1] + z * se)]
    else:
        warnings.warn("calibration slope: the logistic fit did not converge or the slope is extreme "
                      "(|slope| > 50: classes separated, or predictions nearly constant); not reported",
                      MetricWarning, stacklevel=2)
    if ok1:
        se = math.sqrt(cov1[0, 0])
        intercept, intercept_ci = float(beta1[0]), [float(beta1[0] - z * se), float(beta1[0] + z * se)]
    else:
        warnings.warn("calibration intercept: fit did not converge; not reported",
                      MetricWarning, stacklevel=2)
    return InterceptSlope(level, "logistic recalibration on logit(p)", slope, slope_ci, intercept, intercept_ci)


@dataclass(frozen=True, slots=True)
class ScoreHistogram:
    """Counts of predicted probabilities per class on fixed bins (``edges`` has one more entry)."""
    edges: list[float]
    positives: list[int]
    negatives: list[int]

    def to_json(self) -> dict[str, Any]:
        return {"edges": list(self.edges), "positives": list(self.positives), "negatives": list(self.negatives)}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "ScoreHistogram":
        d = obj(data, where, ("edges", "positives", "negatives"))
        return cls(arr(d["edges"], f"{where}.edges"), arr(d["positives"], f"{where}.positives"),
                   arr(d["negatives"], f"{where}.negatives"))


def score_histogram(y_true: Any, prob: Any, n_bins: int = 20) -> ScoreHistogram:
    """Counts of predicted probabilities per class on fixed [0, 1] bins (for the histogram figure)."""
    y, p = check_binary(y_true, prob, score_name="prob", probability=True, need_both=False)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return ScoreHistogram(edges.tolist(), np.histogram(p[y == 1], edges)[0].tolist(),
                          np.histogram(p[y == 0], edges)[0].tolist())


@dataclass(frozen=True, slots=True)
class CalibrationBlock:
    """Calibration of one set of probabilities (before or after the calibrator)."""
    reliability: Reliability
    brier: float
    intercept_slope: InterceptSlope
    histogram: ScoreHistogram

    def to_json(self) -> dict[str, Any]:
        return {"reliability": self.reliability.to_json(), "brier": self.brier,
                "intercept_slope": self.intercept_slope.to_json(), "histogram": self.histogram.to_json()}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "CalibrationBlock":
        d = obj(data, where, ("reliability", "brier", "intercept_slope", "histogram"))
        return cls(Reliability.from_json(d["reliability"], f"{where}.reliability"), d["brier"],
                   InterceptSlope.from_json(d["intercept_slope"], f"{where}.intercept_slope"),
                   ScoreHistogram.from_json(d["histogram"], f"{where}.histogram"))


@dataclass(frozen=True, slots=True)
class CalibrationSummary:
    """The ``calibration`` section of metrics.json: the calibrator, and calibration before and
    after it (ECE, Brier, intercept/slope, reliability bins, score histogram)."""
    method: str
    # The calibrator's own stored record (fibrosis.model.calibration writes and reads it): its
    # parameters differ per method, and the checkpoint holds the same record.
    calibrator: dict[str, Any]
    before: CalibrationBlock
    after: CalibrationBlock

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "calibrator": self.calibrator, "before": self.before.to_json(),
                "after": self.after.to_json()}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "CalibrationSummary":
        d = obj(data, where, ("method", "calibrator", "before", "after"))
        return cls(d["method"], obj(d["calibrator"], f"{where}.calibrator"),
                   CalibrationBlock.from_json(d["before"], f"{where}.before"),
                   CalibrationBlock.from_json(d["after"], f"{where}.after"))


def wilson_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k successes out of n (Newcombe 1998, method 3)."""
    if n <= 0:
        raise ValueError(f"Wilson CI: n={n!r}; allowed: n >= 1")
    if not 0 <= k <= n:
        raise ValueError(f"Wilson CI: k={k!r}; allowed: 0 <= k <= n={n}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level {level!r}; allowed: 0 < level < 1")
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # exact ends: rounding must not put an observed 0/n or n/n outside its own interval
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))
