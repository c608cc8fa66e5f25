"""Operating points, proportions with Wilson CIs, prevalence-adjusted PPV/NPV and subgroups.

Thresholds are chosen on one split (validation/calibration) and then applied,
frozen, to another (test): choosing and measuring on the same cases would report
an optimistic sensitivity. Candidate cut-offs are the midpoints between adjacent
distinct scores (as pROC does), so a threshold never sits exactly on a case of the
choosing split; a case is called positive when ``score >= threshold``.
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from fibrosis.evaluate.metrics import auc_delong, wilson_ci

from fibrosis.numeric import MetricWarning, check_binary

logger = logging.getLogger(__name__)


def candidate_thresholds(y_score: np.ndarray) -> np.ndarray:
    """-inf, midpoints between adjacent distinct scores, +inf (ascending)."""
    u = np.unique(y_score)
    return np.r_[-np.inf, (u[:-1] + u[1:]) / 2.0, np.inf]


def _sens_spec_table(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    thr = candidate_thresholds(s)
    pos, neg = np.sort(s[y == 1]), np.sort(s[y == 0])
    sens = 1.0 - np.searchsorted(pos, thr, side="left") / len(pos)  # share of positives >= thr
    spec = np.searchsorted(neg, thr, side="left") / len(neg)  # share of negatives < thr
    return thr, sens, spec


@dataclass(frozen=True, slots=True)
class Cutoff:
    """A threshold chosen on some cases, and the sensitivity/specificity it has on them."""
    rule: str
    threshold: float  # may be -inf (everyone positive) or +inf (no one)
    sensitivity: float
    specificity: float


def threshold_youden(y_true: Any, y_score: Any) -> Cutoff:
    """Cut-off maximising Youden's J = sensitivity + specificity - 1.

    Ties in J go to the lowest cut-off (the most sensitive one): for a screening
    aid, a missed fibrosis costs more than an extra read.
    """
    y, s = check_binary(y_true, y_score)
    thr, sens, spec = _sens_spec_table(y, s)
    j = sens + spec - 1.0
    k = int(np.flatnonzero(j >= j.max() - 1e-12)[0])
    return Cutoff("youden", float(thr[k]), float(sens[k]), float(spec[k]))


def threshold_for_sensitivity(y_true: Any, y_score: Any, target: float) -> Cutoff:
    """Highest cut-off whose sensitivity on these cases is >= target (best specificity at that
    sensitivity)."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity {target!r}; allowed: 0 < target <= 1")
    y, s = check_binary(y_true, y_score)
    thr, sens, spec = _sens_spec_table(y, s)
    k = int(np.flatnonzero(sens >= target - 1e-12)[-1])
    n_pos = int(y.sum())
    if n_pos < 1.0 / (1.0 - target + 1e-12):
        warnings.warn(f"target sensitivity {target:.2f} chosen on only {n_pos} positives: one case "
                      "moves sensitivity by more than the gap to 1.0", MetricWarning, stacklevel=2)
    return Cutoff(f"sensitivity>={target:g}", float(thr[k]), float(sens[k]), float(spec[k]))


def confusion(y_true: Any, y_score: Any, threshold: float) -> dict[str, int]:
    """Confusion matrix for "positive if score >= threshold"."""
    y, s = check_binary(y_true, y_score, need_both=False)
    if math.isnan(threshold):
        raise ValueError("threshold is NaN; expected a number (or +/-inf)")
    pred = s >= threshold
    return {"tp": int((pred & (y == 1)).sum()), "fp": int((pred & (y == 0)).sum()),
            "tn": int((~pred & (y == 0)).sum()), "fn": int((~pred & (y == 1)).sum())}


def _proportion(k: int, n: int, level: float, name: str) -> dict[str, Any]:
    if n == 0:
        warnings.warn(f"{name}: denominator is 0 (no cases in that cell); not defined",
                      MetricWarning, stacklevel=3)
        return {"value": None, "ci": None, "k": k, "n": n}
    lo, hi = wilson_ci(k, n, level)
    return {"value": k / n, "ci": [lo, hi], "k": k, "n": n}


def binary_metrics(cm: Mapping[str, int], level: float = 0.95) -> dict[str, Any]:
    """Sensitivity, specificity, PPV, NPV (Wilson CIs) from a confusion matrix.

    PPV and NPV here hold at the prevalence of the evaluated set only.
    """
    tp, fp, tn, fn = (int(cm[k]) for k in ("tp", "fp", "tn", "fn"))
    return {"sensitivity": _proportion(tp, tp + fn, level, "sensitivity"),
            "specificity": _proportion(tn, tn + fp, level, "specificity"),
            "ppv": _proportion(tp, tp + fp, level, "PPV"),
            "npv": _proportion(tn, tn + fn, level, "NPV"),
            "prevalence": (tp + fn) / max(1, tp + fp + tn + fn), "level": level}


def _ppv(se: float, sp: float, pi: float) -> float:
    den = se * pi + (1 - sp) * (1 - pi)
    return se * pi / den if den > 0 else float("nan")


def _npv(se: float, sp: float, pi: float) -> float:
    den = (1 - se) * pi + sp * (1 - pi)
    return sp * (1 - pi) / den if den > 0 else float("nan")


def predictive_values_at_prevalence(sensitivity: Mapping[str, Any], specificity: Mapping[str, Any],
                                    prevalence: float) -> dict[str, Any]:
    """PPV/NPV by Bayes' rule at a deployment prevalence.

    The interval combines the Wilson bounds of sensitivity and specificity (both
    PPV and NPV increase in each), a conservative approximation, not an exact CI.
    """
    if not 0.0 < prevalence < 1.0:
        raise ValueError(f"deployment prevalence {prevalence!r}; allowed: 0 < prevalence < 1 "
                         "(e.g. 0.015 for 1.5%)")
    se, sp = sensitivity.get("value"), specificity.get("value")
    if se is None or sp is None:
        return {"prevalence": prevalence, "ppv": None, "npv": None, "ppv_ci": None, "npv_ci": None}
    (se_lo, se_hi), (sp_lo, sp_hi) = sensitivity["ci"], specificity["ci"]

    def clean(v: float) -> float | None:
        return None if math.isnan(v) else v

    return {"prevalence": prevalence, "ppv": clean(_ppv(se, sp, prevalence)),
            "npv": clean(_npv(se, sp, prevalence)),
            "ppv_ci": [clean(_ppv(se_lo, sp_lo, prevalence)), clean(_ppv(se_hi, sp_hi, prevalence))],
            "npv_ci": [clean(_npv(se_lo, sp_lo, prevalence)), clean(_npv(se_hi, sp_hi, prevalence))],
            "method": "Bayes' rule; interval from the Wilson bounds of sensitivity and specificity"}


def subgroup_table(y_true: Any, y_score: Any, attributes: Mapping[str, Sequence[Any]], *,
                   min_n: int = 30, min_positives: int = 5, level: float = 0.95,
                   value_order: Mapping[str, Sequence[str]] | None = None) -> list[dict[str, Any]]:
    """n, prevalence and AUC (DeLong CI) per value of each attribute.

    Groups with fewer than ``min_n`` cases or ``min_positives`` positives (or
    negatives) are flagged ``small`` with the reason; their AUC is still given when
    computable but must not be read as evidence of a difference. Values are listed in
    ``value_order[attribute]`` order when given (e.g. age bands), else alphabetically;
    "unknown" comes last.
    """
    y, s = check_binary(y_true, y_score, need_both=False)
    rows: list[dict[str, Any]] = []
    for attr, values in attributes.items():
        vals = np.asarray(["unknown" if v in (None, "") else str(v) for v in values], dtype=object)
        if len(vals) != len(y):
            raise ValueError(f"subgroup attribute {attr!r} has {len(vals)} values; expected {len(y)}")
        order = list((value_order or {}).get(attr, ()))
        rank = {v: i for i, v in enumerate(order)}
        for value in sorted(set(vals.tolist()), key=lambda v: (v == "unknown", rank.get(v, len(order)), v)):
            sel = vals == value
            ys, ss = y[sel], s[sel]
            n, n_pos = int(sel.sum()), int(ys.sum())
            row: dict[str, Any] = {"attribute": attr, "value": value, "n": n, "n_pos": n_pos,
                                   "prevalence": n_pos / n, "auc": None, "ci": None, "flags": []}
            if n < min_n:
                row["flags"].append(f"n={n} < {min_n}")
            if n_pos < min_positives:
                row["flags"].append(f"positives={n_pos} < {min_positives}")
            if n - n_pos < min_positives:
                row["flags"].append(f"negatives={n - n_pos} < {min_positives}")
            if 0 < n_pos < n:
                with warnings.catch_warnings():
                    # small-group warnings are carried by the flags column instead
                    warnings.simplefilter("ignore", MetricWarning)
                    res = auc_delong(ys, ss, level)
                row["auc"], row["ci"] = res["auc"], res["ci"]
            else:
                row["flags"].append("one class only: AUC undefined")
            row["small"] = bool(row["flags"])
            rows.append(row)
    return rows
