"""Decision-curve analysis (Vickers & Elkin 2006): the net benefit of acting on the model's flag.

At a threshold probability ``pt`` a reader accepts ``pt / (1 - pt)`` false positives per true
positive; flagging every image with calibrated probability >= ``pt`` then has net benefit

    NB(pt) = sens(pt) * pi - (1 - spec(pt)) * (1 - pi) * pt / (1 - pt)

where ``pi`` is the prevalence. At the evaluated prevalence this is TP/n - FP/n * pt/(1 - pt);
at another prevalence (``evaluate.deployment_prevalence``) the same sensitivity and specificity
are weighted by that prevalence instead. "Treat all" flags everyone (sens 1, spec 0); "treat
none" flags no one and has net benefit 0 at every threshold.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fibrosis.evaluate.shape import arr, obj
from fibrosis.numeric import check_binary

# 1% to 50%: a flag for a radiologist's second look is worth at most one true case per one false
# alarm; a threshold above 50% would mean a false alarm costs more than a missed case.
THRESHOLDS = tuple(round(0.01 * k, 2) for k in range(1, 51))


def net_benefit(sensitivity: float, specificity: float, prevalence: float, pt: float) -> float:
    """Net benefit of a rule with this sensitivity and specificity at prevalence ``prevalence``."""
    if not 0.0 < pt < 1.0:
        raise ValueError(f"threshold probability {pt!r}; expected 0 < pt < 1")
    return sensitivity * prevalence - (1.0 - specificity) * (1.0 - prevalence) * pt / (1.0 - pt)


@dataclass(frozen=True, slots=True)
class NetBenefit:
    """Net benefit of the model and of treat-all at one prevalence, one value per threshold."""
    prevalence: float
    model: list[float]
    treat_all: list[float]

    def to_json(self) -> dict[str, Any]:
        return {"prevalence": self.prevalence, "model": list(self.model), "treat_all": list(self.treat_all)}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "NetBenefit":
        d = obj(data, where, ("prevalence", "model", "treat_all"))
        return cls(d["prevalence"], arr(d["model"], f"{where}.model"), arr(d["treat_all"], f"{where}.treat_all"))


@dataclass(frozen=True, slots=True)
class DecisionCurve:
    """The ``decision_curve`` section of metrics.json (treat-none is 0 everywhere, not stored)."""
    probability: str  # which probability the thresholds apply to ("calibrated")
    formula: str
    thresholds: list[float]
    sensitivity: list[float]
    specificity: list[float]
    evaluated: NetBenefit  # at the evaluated split's prevalence
    deployment: NetBenefit | None  # at evaluate.deployment_prevalence; None when not set

    def to_json(self) -> dict[str, Any]:
        return {"probability": self.probability, "formula": self.formula, "thresholds": list(self.thresholds),
                "sensitivity": list(self.sensitivity), "specificity": list(self.specificity),
                "evaluated": self.evaluated.to_json(),
                "deployment": None if self.deployment is None else self.deployment.to_json()}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "DecisionCurve":
        d = obj(data, where, ("probability", "formula", "thresholds", "sensitivity", "specificity", "evaluated",
                              "deployment"))
        return cls(d["probability"], d["formula"], arr(d["thresholds"], f"{where}.thresholds"),
                   arr(d["sensitivity"], f"{where}.sensitivity"), arr(d["specificity"], f"{where}.specificity"),
                   NetBenefit.from_json(d["evaluated"], f"{where}.evaluated"),
                   None if d["deployment"] is None else NetBenefit.from_json(d["deployment"], f"{where}.deployment"))


def _curve(sens: np.ndarray, spec: np.ndarray, prevalence: float, pts: np.ndarray) -> NetBenefit:
    odds = pts / (1.0 - pts)
    return NetBenefit(float(prevalence), (sens * prevalence - (1.0 - spec) * (1.0 - prevalence) * odds).tolist(),
                      (prevalence - (1.0 - prevalence) * odds).tolist())


def decision_curve(y_true: Any, prob: Any, deployment_prevalence: float | None = None,
                   thresholds: tuple[float, ...] = THRESHOLDS) -> DecisionCurve:
    """Net benefit of the model, treat-all and treat-none at each threshold probability.

    ``prob`` must be calibrated probabilities (the threshold is read as a risk). Returns
    ``thresholds``, the sensitivity and specificity of "flag if prob >= pt" at each, and the
    curves at the evaluated prevalence (``evaluated``) and, when given, at
    ``deployment_prevalence`` (``deployment``; else None).
    """
    y, p = check_binary(y_true, prob, score_name="calibrated probability")
    pts = np.asarray(thresholds, dtype=float)
    if pts.size == 0 or np.any((pts <= 0) | (pts >= 1)):
        raise ValueError(f"decision-curve thresholds {list(thresholds)}; expected values in (0, 1)")
    pos, neg = y == 1, y == 0
    flagged = p[None, :] >= pts[:, None]
    sens = (flagged & pos).sum(axis=1) / pos.sum()
    spec = 1.0 - (flagged & neg).sum(axis=1) / neg.sum()
    return DecisionCurve(
        "calibrated", "net benefit = sens * prevalence - (1 - spec) * (1 - prevalence) * pt / (1 - pt)",
        pts.tolist(), sens.tolist(), spec.tolist(), _curve(sens, spec, float(pos.mean()), pts),
        None if deployment_prevalence is None else _curve(sens, spec, float(deployment_prevalence), pts))
