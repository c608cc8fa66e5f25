"""Decision curve: net benefit by hand on five cases, the treat-all line, and dcurves when installed."""
from __future__ import annotations

import numpy as np
import pytest

from fibrosis.evaluate.decision import DecisionCurve, NetBenefit, decision_curve, net_benefit

Y = [1, 1, 0, 0, 0]
P = [0.9, 0.4, 0.6, 0.2, 0.1]


def test_net_benefit_by_hand():
    d = decision_curve(Y, P, deployment_prevalence=0.1, thresholds=(0.3, 0.5, 0.95))
    # pt 0.3: flagged 0.9, 0.4, 0.6 -> TP 2, FP 1: 2/5 - 1/5 * 0.3/0.7
    # pt 0.5: flagged 0.9, 0.6 -> TP 1, FP 1: 1/5 - 1/5 * 1; pt 0.95: nobody -> 0
    assert d.evaluated.model == pytest.approx([0.4 - 0.2 * 3 / 7, 0.0, 0.0])
    assert d.evaluated.treat_all == pytest.approx([0.4 - 0.6 * 3 / 7, 0.4 - 0.6, 0.4 - 0.6 * 19])
    assert d.sensitivity == pytest.approx([1.0, 0.5, 0.0])
    assert d.specificity == pytest.approx([2 / 3, 2 / 3, 1.0])
    # at 10% prevalence: sens * 0.1 - (1 - spec) * 0.9 * odds
    dep = d.deployment
    assert dep is not None
    assert dep.prevalence == 0.1
    assert dep.model == pytest.approx([0.1 - 0.3 * 3 / 7, 0.05 - 0.3, 0.0])
    assert dep.treat_all == pytest.approx([0.1 - 0.9 * 3 / 7, 0.1 - 0.9, 0.1 - 0.9 * 19])
    assert decision_curve(Y, P).deployment is None


def test_net_benefit_formula_and_bad_thresholds():
    assert net_benefit(0.8, 0.9, 0.2, 0.2) == pytest.approx(0.16 - 0.1 * 0.8 * 0.25)
    with pytest.raises(ValueError, match="expected 0 < pt < 1"):
        net_benefit(0.8, 0.9, 0.2, 1.0)
    with pytest.raises(ValueError, match=r"thresholds \[0.0, 0.5\]; expected values in \(0, 1\)"):
        decision_curve(Y, P, thresholds=(0.0, 0.5))


def test_agrees_with_dcurves():
    dcurves = pytest.importorskip("dcurves")
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    y = (rng.uniform(size=200) < 0.25).astype(int)
    p = np.clip(0.25 + 0.3 * (y - 0.25) + rng.normal(scale=0.15, size=200), 0.001, 0.999)
    pts = tuple(round(0.01 * k, 2) for k in range(1, 51))
    ours = decision_curve(y, p, thresholds=pts).evaluated.to_json()
    theirs = dcurves.dca(data=pd.DataFrame({"y": y, "p": p}), outcome="y", modelnames=["p"],
                         thresholds=np.array(pts))
    for name, key in (("p", "model"), ("all", "treat_all")):
        nb = theirs[theirs["model"] == name].sort_values("threshold")["net_benefit"].to_numpy()
        assert nb == pytest.approx(ours[key], abs=1e-9), name


CURVE = {"probability": "calibrated", "formula": "net benefit = ...", "thresholds": [0.1, 0.2],
         "sensitivity": [1.0, 0.5], "specificity": [0.5, 1.0],
         "evaluated": {"prevalence": 0.5, "model": [0.25, 0.25], "treat_all": [0.5 - 0.5 / 9, 0.5 - 0.5 / 4]},
         "deployment": None}


def test_curve_json_is_the_file_layout_and_reads_back():
    curve = DecisionCurve("calibrated", "net benefit = ...", [0.1, 0.2], [1.0, 0.5], [0.5, 1.0],
                          NetBenefit(0.5, [0.25, 0.25], [0.5 - 0.5 / 9, 0.5 - 0.5 / 4]), None)
    assert curve.to_json() == CURVE and list(curve.to_json()) == list(CURVE)
    assert DecisionCurve.from_json(CURVE, "metrics.json: decision_curve") == curve
    with pytest.raises(ValueError, match=r"metrics.json: decision_curve.evaluated.model: str 'x'; expected a JSON array"):
        DecisionCurve.from_json({**CURVE, "evaluated": {**CURVE["evaluated"], "model": "x"}},
                                "metrics.json: decision_curve")
