"""Performance on a labelled window, beside the validation report's values (pure).

Each metric carries the new value, its interval, the reference value (and interval),
``excludes_reference`` (the new interval does not contain the reference value) and
``changed`` (that, and the reference interval does not contain the new value either).
Windows with fewer than the subgroup minimums (cases, positives, negatives) are
``small``: the numbers are shown, never flagged.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from fibrosis.evaluate import metrics as M
from fibrosis.evaluate import operating as O
from fibrosis.evaluate.reference import ECE_RESAMPLES, ece_interval
from fibrosis.numeric import MetricWarning



def _outside(value: Any, ci: Any) -> bool:
    return value is not None and ci is not None and ci[0] is not None and not ci[0] <= value <= ci[1]


def _metric(value: Any, ci: Any, ref_value: Any, ref_ci: Any, method: str) -> dict[str, Any]:
    """``excludes_reference``: the new interval excludes the validated value (the flag the
    page shows). ``changed`` (what alerts) also needs the validated interval to exclude the
    new value: the reference is a sample too, and a new interval narrower than the old one
    would otherwise flag a model that merely did as well as validation allowed."""
    excl = _outside(ref_value, ci)
    return {"value": value, "ci": ci, "reference": ref_value, "reference_ci": ref_ci,
            "method": method, "excludes_reference": excl, "changed": excl and _outside(value, ref_ci)}


def performance(ref_perf: dict[str, Any], y: Any, logit: Any, prob: Any, decision: Any,
                min_n: int, min_positives: int) -> dict[str, Any]:
    """AUC (DeLong), calibration intercept and slope, ECE, sensitivity/specificity at the
    frozen threshold (the decisions scoring wrote), against ``ref_perf``."""
    y, z = np.asarray(y, int), np.asarray(logit, float)
    p, d = np.asarray(prob, float), np.asarray(decision, int)
    level = ref_perf["level"]
    n, n_pos = int(len(y)), int(y.sum())
    flags = [f for f, bad in ((f"n={n} < {min_n}", n < min_n),
                              (f"positives={n_pos} < {min_positives}", n_pos < min_positives),
                              (f"negatives={n - n_pos} < {min_positives}", n - n_pos < min_positives)) if bad]
    out: dict[str, Any] = {"n": n, "n_pos": n_pos, "level": level, "flags": flags, "small": bool(flags),
                           "metrics": {}}
    if n == 0:
        return out
    m = out["metrics"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)  # smallness is carried by the flags
        if 0 < n_pos < n:
            dl = M.auc_delong(y, z, level)
            m["auc"] = _metric(dl["auc"], dl["ci"], ref_perf["auc"], ref_perf["auc_ci"], "DeLong")
            cs = M.calibration_intercept_slope(y, p, level)
            m["calibration_intercept"] = _metric(cs.intercept, cs.intercept_ci, ref_perf["intercept"],
                                                 ref_perf["intercept_ci"], "calibration-in-the-large (logistic, offset)")
            m["calibration_slope"] = _metric(cs.slope, cs.slope_ci, ref_perf["slope"], ref_perf["slope_ci"],
                                             "logistic recalibration slope")
        bins, strategy = ref_perf["ece_bins"], ref_perf["ece_strategy"]
        m["ece"] = _metric(M.expected_calibration_error(y, p, bins, strategy),
                           ece_interval(y, p, bins, strategy, level), ref_perf["ece"], ref_perf.get("ece_ci"),
                           f"ECE, {bins} {strategy} bins; percentile bootstrap ({ECE_RESAMPLES})")
        perf = O.binary_metrics(O.confusion(y, d, 0.5), level)
    for name, prop in (("sensitivity", perf.sensitivity), ("specificity", perf.specificity)):
        if prop.value is not None:
            m[name] = _metric(prop.value, prop.ci, ref_perf[name]["value"],
                              ref_perf[name]["ci"], f"Wilson, at the frozen {ref_perf['operating_point']} threshold")
    return out
