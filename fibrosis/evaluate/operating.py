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
from fibrosis.evaluate.shape import arr, obj, opt_arr

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


def confusion(y_true: Any, y_score: Any, threshold: float) -> Confusion:
    """Confusion matrix for "positive if score >= threshold"."""
    y, s = check_binary(y_true, y_score, need_both=False)
    if math.isnan(threshold):
        raise ValueError("threshold is NaN; expected a number (or +/-inf)")
    pred = s >= threshold
    return Confusion(int((pred & (y == 1)).sum()), int((pred & (y == 0)).sum()),
                     int((~pred & (y == 0)).sum()), int((~pred & (y == 1)).sum()))


@dataclass(frozen=True, slots=True)
class Confusion:
    """Counts of "positive if score >= threshold" against the labels."""
    tp: int
    fp: int
    tn: int
    fn: int

    def to_json(self) -> dict[str, Any]:
        return {"tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "Confusion":
        d = obj(data, where, ("tp", "fp", "tn", "fn"))
        return cls(d["tp"], d["fp"], d["tn"], d["fn"])


@dataclass(frozen=True, slots=True)
class Proportion:
    """k of n with a Wilson interval; value and ci None when n is 0 (not defined)."""
    value: float | None
    ci: list[float] | None
    k: int
    n: int

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "ci": None if self.ci is None else list(self.ci), "k": self.k, "n": self.n}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "Proportion":
        d = obj(data, where, ("value", "ci", "k", "n"))
        return cls(d["value"], opt_arr(d["ci"], f"{where}.ci"), d["k"], d["n"])


@dataclass(frozen=True, slots=True)
class BinaryMetrics:
    """Sensitivity, specificity, PPV and NPV of one confusion matrix (PPV/NPV at its prevalence)."""
    sensitivity: Proportion
    specificity: Proportion
    ppv: Proportion
    npv: Proportion
    prevalence: float
    level: float

    def to_json(self) -> dict[str, Any]:
        return {"sensitivity": self.sensitivity.to_json(), "specificity": self.specificity.to_json(),
                "ppv": self.ppv.to_json(), "npv": self.npv.to_json(), "prevalence": self.prevalence,
                "level": self.level}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "BinaryMetrics":
        d = obj(data, where, ("sensitivity", "specificity", "ppv", "npv", "prevalence", "level"))
        sens, spec, ppv, npv = (Proportion.from_json(d[k], f"{where}.{k}") for k in ("sensitivity", "specificity",
                                                                                        "ppv", "npv"))
        return cls(sens, spec, ppv, npv, d["prevalence"], d["level"])


@dataclass(frozen=True, slots=True)
class DeploymentValues:
    """PPV and NPV at a deployment prevalence (Bayes' rule); None where sensitivity or
    specificity is undefined, and then without ``method``."""
    prevalence: float
    ppv: float | None
    npv: float | None
    ppv_ci: list[float | None] | None
    npv_ci: list[float | None] | None
    method: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"prevalence": self.prevalence, "ppv": self.ppv, "npv": self.npv,
                               "ppv_ci": None if self.ppv_ci is None else list(self.ppv_ci),
                               "npv_ci": None if self.npv_ci is None else list(self.npv_ci)}
        if self.method is not None:
            out["method"] = self.method
        return out

    @classmethod
    def from_json(cls, data: Any, where: str) -> "DeploymentValues":
        d = obj(data, where, ("prevalence", "ppv", "npv", "ppv_ci", "npv_ci"))
        return cls(d["prevalence"], d["ppv"], d["npv"], opt_arr(d["ppv_ci"], f"{where}.ppv_ci"),
                   opt_arr(d["npv_ci"], f"{where}.npv_ci"), d.get("method"))


@dataclass(frozen=True, slots=True)
class ChosenOn:
    """Where an operating point's threshold was chosen, and its sensitivity/specificity there
    (None where a stored threshold record lacks them)."""
    split: str | None
    sensitivity: float | None
    specificity: float | None

    def to_json(self) -> dict[str, Any]:
        return {"split": self.split, "sensitivity": self.sensitivity, "specificity": self.specificity}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "ChosenOn":
        d = obj(data, where, ("split", "sensitivity", "specificity"))
        return cls(d["split"], d["sensitivity"], d["specificity"])


@dataclass(frozen=True, slots=True)
class MeasuredOperatingPoint:
    """One threshold rule, chosen on the fit split, measured on the evaluated split (one entry of
    ``operating_points`` in metrics.json)."""
    name: str  # "youden", "sensitivity_0.90", ...
    rule: str
    threshold: float  # on the calibrated probability; positive if prob >= threshold
    chosen_on: ChosenOn
    confusion: Confusion
    sensitivity: Proportion
    specificity: Proportion
    ppv: Proportion
    npv: Proportion
    deployment: DeploymentValues | None  # None: no deployment prevalence configured

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "rule": self.rule, "threshold": self.threshold,
                "chosen_on": self.chosen_on.to_json(), "confusion": self.confusion.to_json(),
                "sensitivity": self.sensitivity.to_json(), "specificity": self.specificity.to_json(),
                "ppv": self.ppv.to_json(), "npv": self.npv.to_json(),
                "deployment": None if self.deployment is None else self.deployment.to_json()}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "MeasuredOperatingPoint":
        d = obj(data, where, ("name", "rule", "threshold", "chosen_on", "confusion", "sensitivity", "specificity",
                              "ppv", "npv", "deployment"))
        sens, spec, ppv, npv = (Proportion.from_json(d[k], f"{where}.{k}") for k in ("sensitivity", "specificity",
                                                                                        "ppv", "npv"))
        return cls(d["name"], d["rule"], d["threshold"], ChosenOn.from_json(d["chosen_on"], f"{where}.chosen_on"),
                   Confusion.from_json(d["confusion"], f"{where}.confusion"), sens, spec, ppv, npv,
                   None if d["deployment"] is None else DeploymentValues.from_json(d["deployment"], f"{where}.deployment"))


def _proportion(k: int, n: int, level: float, name: str) -> Proportion:
    if n == 0:
        warnings.warn(f"{name}: denominator is 0 (no cases in that cell); not defined",
                      MetricWarning, stacklevel=3)
        return Proportion(None, None, k, n)
    lo, hi = wilson_ci(k, n, level)
    return Proportion(k / n, [lo, hi], k, n)


def binary_metrics(cm: Confusion, level: float = 0.95) -> BinaryMetrics:
    """Sensitivity, specificity, PPV, NPV (Wilson CIs) from a confusion matrix.

    PPV and NPV here hold at the prevalence of the evaluated set only.
    """
    tp, fp, tn, fn = cm.tp, cm.fp, cm.tn, cm.fn
    return BinaryMetrics(_proportion(tp, tp + fn, level, "sensitivity"), _proportion(tn, tn + fp, level, "specificity"),
                         _proportion(tp, tp + fp, level, "PPV"), _proportion(tn, tn + fn, level, "NPV"),
                         (tp + fn) / max(1, tp + fp + tn + fn), level)


def _ppv(se: float, sp: float, pi: float) -> float:
    den = se * pi + (1 - sp) * (1 - pi)
    return se * pi / den if den > 0 else float("nan")


def _npv(se: float, sp: float, pi: float) -> float:
    den = (1 - se) * pi + sp * (1 - pi)
    return sp * (1 - pi) / den if den > 0 else float("nan")


def predictive_values_at_prevalence(sensitivity: Proportion, specificity: Proportion,
                                    prevalence: float) -> DeploymentValues:
    """PPV/NPV by Bayes' rule at a deployment prevalence.

    The interval combines the Wilson bounds of sensitivity and specificity (both
    PPV and NPV increase in each), a conservative approximation, not an exact CI.
    """
    if not 0.0 < prevalence < 1.0:
        raise ValueError(f"deployment prevalence {prevalence!r}; allowed: 0 < prevalence < 1 "
                         "(e.g. 0.015 for 1.5%)")
    se, sp = sensitivity.value, specificity.value
    if se is None or sp is None or sensitivity.ci is None or specificity.ci is None:
        return DeploymentValues(prevalence, None, None, None, None)
    (se_lo, se_hi), (sp_lo, sp_hi) = sensitivity.ci, specificity.ci

    def clean(v: float) -> float | None:
        return None if math.isnan(v) else v

    return DeploymentValues(prevalence, clean(_ppv(se, sp, prevalence)), clean(_npv(se, sp, prevalence)),
                            [clean(_ppv(se_lo, sp_lo, prevalence)), clean(_ppv(se_hi, sp_hi, prevalence))],
                            [clean(_npv(se_lo, sp_lo, prevalence)), clean(_npv(se_hi, sp_hi, prevalence))],
                            "Bayes' rule; interval from the Wilson bounds of sensitivity and specificity")


@dataclass(frozen=True, slots=True)
class SubgroupRow:
    """n, prevalence and AUC (DeLong CI) of one value of one attribute (one entry of
    ``subgroups`` in metrics.json); ``flags`` say why a group is too small to read."""
    attribute: str
    value: str
    n: int
    n_pos: int
    prevalence: float
    auc: float | None
    ci: list[float] | None
    flags: list[str]
    small: bool

    def to_json(self) -> dict[str, Any]:
        return {"attribute": self.attribute, "value": self.value, "n": self.n, "n_pos": self.n_pos,
                "prevalence": self.prevalence, "auc": self.auc, "ci": None if self.ci is None else list(self.ci),
                "flags": list(self.flags), "small": self.small}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "SubgroupRow":
        d = obj(data, where, ("attribute", "value", "n", "n_pos", "prevalence", "auc", "ci", "flags", "small"))
        return cls(d["attribute"], d["value"], d["n"], d["n_pos"], d["prevalence"], d["auc"],
                   opt_arr(d["ci"], f"{where}.ci"), arr(d["flags"], f"{where}.flags"), d["small"])


def subgroup_table(y_true: Any, y_score: Any, attributes: Mapping[str, Sequence[Any]], *,
                   min_n: int = 30, min_positives: int = 5, level: float = 0.95,
                   value_order: Mapping[str, Sequence[str]] | None = None) -> list[SubgroupRow]:
    """n, prevalence and AUC (DeLong CI) per value of each attribute.

    Groups with fewer than ``min_n`` cases or ``min_positives`` positives (or
    negatives) are flagged ``small`` with the reason; their AUC is still given when
    computable but must not be read as evidence of a difference. Values are listed in
    ``value_order[attribute]`` order when given (e.g. age bands), else alphabetically;
    "unknown" comes last.
    """
    y, s = check_binary(y_true, y_score, need_both=False)
    rows: list[SubgroupRow] = []
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
            flags: list[str] = []
            auc: float | None = None
            ci: list[float] | None = None
            if n < min_n:
                flags.append(f"n={n} < {min_n}")
            if n_pos < min_positives:
                flags.append(f"positives={n_pos} < {min_positives}")
            if n - n_pos < min_positives:
                flags.append(f"negatives={n - n_pos} < {min_positives}")
            if 0 < n_pos < n:
                with warnings.catch_warnings():
                    # small-group warnings are carried by the flags column instead
                    warnings.simplefilter("ignore", MetricWarning)
                    res = auc_delong(ys, ss, level)
                auc, ci = res["auc"], res["ci"]
            else:
                flags.append("one class only: AUC undefined")
            rows.append(SubgroupRow(attr, value, n, n_pos, n_pos / n, auc, ci, flags, bool(flags)))
    return rows
