"""Performance on a labelled window, beside the validation report's values (pure).

Each metric carries the new value, its interval, the reference value (and interval),
``excludes_reference`` (the new interval does not contain the reference value) and
``changed`` (that, and the reference interval does not contain the new value either).
Windows with fewer than the subgroup minimums (cases, positives, negatives) are
``small``: the numbers are shown, never flagged.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fibrosis.evaluate import metrics as M
from fibrosis.evaluate import operating as O
from fibrosis.evaluate.reference import ECE_RESAMPLES, PerformanceSummary, ece_interval
from fibrosis.numeric import MetricWarning



def _outside(value: Any, ci: Any) -> bool:
    return value is not None and ci is not None and ci[0] is not None and not ci[0] <= value <= ci[1]


@dataclass(frozen=True, slots=True)
class MetricComparison:
    """One metric of a labelled window beside the validation report's value.

    ``excludes_reference``: the new interval excludes the validated value (the flag the
    page shows). ``changed`` (what alerts) also needs the validated interval to exclude the
    new value: the reference is a sample too, and a new interval narrower than the old one
    would otherwise flag a model that merely did as well as validation allowed."""
    value: float | None
    ci: list[float] | None
    reference: float | None
    reference_ci: list[float] | None
    method: str
    excludes_reference: bool
    changed: bool

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "ci": self.ci, "reference": self.reference, "reference_ci": self.reference_ci,
                "method": self.method, "excludes_reference": self.excludes_reference, "changed": self.changed}


@dataclass(frozen=True, slots=True)
class Performance:
    """The metrics of one labelled window (by name, in the order measured); ``small`` windows
    (``flags`` say why) are shown, never flagged."""
    n: int
    n_pos: int
    level: float
    flags: list[str]
    metrics: dict[str, MetricComparison] = field(default_factory=dict)

    @property
    def small(self) -> bool:
        return bool(self.flags)

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "n_pos": self.n_pos, "level": self.level, "flags": list(self.flags),
                "small": self.small, "metrics": {k: m.to_json() for k, m in self.metrics.items()}}


def _metric(value: Any, ci: Any, ref_value: Any, ref_ci: Any, method: str) -> MetricComparison:
    excl = _outside(ref_value, ci)
    return MetricComparison(value, ci, ref_value, ref_ci, method, excl, excl and _outside(value, ref_ci))


def performance(ref_perf: PerformanceSummary, y: Any, logit: Any, prob: Any, decision: Any,
                min_n: int, min_positives: int) -> Performance:
    """AUC (DeLong), calibration intercept and slope, ECE, sensitivity/specificity at the
    frozen threshold (the decisions scoring wrote), against ``ref_perf``."""
    y, z = np.asarray(y, int), np.asarray(logit, float)
    p, d = np.asarray(prob, float), np.asarray(decision, int)
    level = ref_perf.level
    n, n_pos = int(len(y)), int(y.sum())
    flags = [f for f, bad in ((f"n={n} < {min_n}", n < min_n),
                              (f"positives={n_pos} < {min_positives}", n_pos < min_positives),
                              (f"negatives={n - n_pos} < {min_positives}", n - n_pos < min_positives)) if bad]
    out = Performance(n, n_pos, level, flags)
    if n == 0:
        return out
    m = out.metrics
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)  # smallness is carried by the flags
        if 0 < n_pos < n:
            dl = M.auc_delong(y, z, level)
            m["auc"] = _metric(dl["auc"], dl["ci"], ref_perf.auc, ref_perf.auc_ci, "DeLong")
            cs = M.calibration_intercept_slope(y, p, level)
            m["calibration_intercept"] = _metric(cs.intercept, cs.intercept_ci, ref_perf.intercept,
                                                 ref_perf.intercept_ci, "calibration-in-the-large (logistic, offset)")
            m["calibration_slope"] = _metric(cs.slope, cs.slope_ci, ref_perf.slope, ref_perf.slope_ci,
                                             "logistic recalibration slope")
        bins, strategy = ref_perf.ece_bins, ref_perf.ece_strategy
        m["ece"] = _metric(M.expected_calibration_error(y, p, bins, strategy),
                           ece_interval(y, p, bins, strategy, level), ref_perf.ece, ref_perf.ece_ci,
                           f"ECE, {bins} {strategy} bins; percentile bootstrap ({ECE_RESAMPLES})")
        perf = O.binary_metrics(O.confusion(y, d, 0.5), level)
    for name, prop in (("sensitivity", perf.sensitivity), ("specificity", perf.specificity)):
        if prop.value is not None:
            ref = ref_perf.sensitivity if name == "sensitivity" else ref_perf.specificity
            m[name] = _metric(prop.value, prop.ci, ref.value, ref.ci,
                              f"Wilson, at the frozen {ref_perf.operating_point} threshold")
    return out
