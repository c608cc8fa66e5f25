"""Operating points, Wilson intervals, prevalence-adjusted PPV/NPV and the subgroup table."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from fibrosis.evaluate import operating as O
from fibrosis.evaluate.metrics import wilson_ci
from fibrosis.numeric import MetricWarning
from helpers.asah_data import MARKERS, Y  # pROC aSAH reference data (tests/asah_data.py)


@pytest.mark.parametrize("k,n,lo,hi", [
    # Newcombe (1998) Stat Med 17:857, Table I, method 3 (Wilson score, no continuity correction)
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0000, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_matches_newcombe(k, n, lo, hi):
    got = wilson_ci(k, n)
    assert (round(got[0], 4), round(got[1], 4)) == (lo, hi)


def test_wilson_rejects_bad_counts():
    with pytest.raises(ValueError, match="k=5; allowed: 0 <= k <= n=3"):
        wilson_ci(5, 3)
    with pytest.raises(ValueError, match="n=0; allowed: n >= 1"):
        wilson_ci(0, 0)


def test_youden_matches_proc():
    # pROC coords(r.s100b, "best"): threshold 0.205, specificity 0.8056, sensitivity 0.6341
    best = O.threshold_youden(Y, MARKERS["s100b"])
    assert best.threshold == pytest.approx(0.205)
    assert best.specificity == pytest.approx(29 / 36)
    assert best.sensitivity == pytest.approx(26 / 41)


def test_target_sensitivity_is_highest_cutoff_reaching_it():
    s = MARKERS["s100b"]
    op = O.threshold_for_sensitivity(Y, s, 0.90)
    assert op.sensitivity >= 0.90
    cm = O.confusion(Y, s, op.threshold)
    assert cm.tp / (cm.tp + cm.fn) == pytest.approx(op.sensitivity)
    # the next higher distinct score would drop below the target
    higher = np.min(s[s > op.threshold])
    cm2 = O.confusion(Y, s, higher + 1e-9)
    assert cm2.tp / 41 < 0.90


def test_threshold_frozen_on_other_split():
    # chosen on one half, applied unchanged to the other
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    s = rng.normal(size=400) + 1.5 * y
    op = O.threshold_youden(y[:200], s[:200])
    cm = O.confusion(y[200:], s[200:], op.threshold)
    assert cm.tp + cm.fp + cm.tn + cm.fn == 200
    m = O.binary_metrics(cm)
    assert m.sensitivity.k == cm.tp and m.sensitivity.n == cm.tp + cm.fn
    assert m.sensitivity.ci is not None and m.sensitivity.value is not None
    assert m.sensitivity.ci[0] < m.sensitivity.value < m.sensitivity.ci[1]


def test_binary_metrics_hand_computed():
    m = O.binary_metrics(O.Confusion(tp=9, fp=10, tn=80, fn=1))
    assert m.sensitivity.value == 0.9 and m.specificity.value == pytest.approx(80 / 90)
    assert m.ppv.value == pytest.approx(9 / 19) and m.npv.value == pytest.approx(80 / 81)
    assert m.prevalence == 0.1
    assert m.sensitivity == O.Proportion(0.9, m.sensitivity.ci, 9, 10)
    with pytest.warns(MetricWarning, match="PPV: denominator is 0"):
        empty = O.binary_metrics(O.Confusion(tp=0, fp=0, tn=7, fn=3))
    assert empty.ppv == O.Proportion(None, None, 0, 0)
    assert empty.to_json()["ppv"] == {"value": None, "ci": None, "k": 0, "n": 0}


def test_predictive_values_at_deployment_prevalence():
    # sens 0.9, spec 0.9 at 1.5% prevalence: PPV = .9*.015 / (.9*.015 + .1*.985) = 0.12053
    se = O.Proportion(0.9, [0.8, 0.95], 90, 100)
    sp = O.Proportion(0.9, [0.85, 0.94], 90, 100)
    res = O.predictive_values_at_prevalence(se, sp, 0.015)
    assert res.ppv == pytest.approx(0.0135 / (0.0135 + 0.0985))
    assert res.npv == pytest.approx(0.9 * 0.985 / (0.1 * 0.015 + 0.9 * 0.985))
    assert res.ppv_ci is not None and res.ppv_ci[0] < res.ppv < res.ppv_ci[1]
    assert list(res.to_json()) == ["prevalence", "ppv", "npv", "ppv_ci", "npv_ci", "method"]
    undefined = O.predictive_values_at_prevalence(O.Proportion(None, None, 0, 0), sp, 0.015)
    assert undefined.to_json() == {"prevalence": 0.015, "ppv": None, "npv": None, "ppv_ci": None, "npv_ci": None}
    with pytest.raises(ValueError, match="deployment prevalence 1.5; allowed: 0 < prevalence < 1"):
        O.predictive_values_at_prevalence(se, sp, 1.5)


def test_subgroups_flag_small_groups():
    rng = np.random.default_rng(0)
    n = 200
    y = (rng.uniform(size=n) < 0.2).astype(int)
    s = rng.normal(size=n) + y
    sex = np.where(np.arange(n) < 180, "F", "M")
    view = np.where(np.arange(n) < 195, "PA", "AP")
    y[195:] = 0  # the AP group has no positives
    rows = O.subgroup_table(y, s, {"sex": sex, "view_position": view}, min_n=30, min_positives=5)
    by = {(r.attribute, r.value): r for r in rows}
    f = by[("sex", "F")]
    assert f.n == 180 and not f.small
    assert f.ci is not None and f.auc is not None and f.ci[0] < f.auc < f.ci[1]
    assert by[("sex", "M")].small and "n=20 < 30" in by[("sex", "M")].flags
    ap = by[("view_position", "AP")]
    assert ap.auc is None and "one class only: AUC undefined" in ap.flags
    assert sum(r.n for r in rows if r.attribute == "sex") == n


def test_subgroup_unknown_values_and_length_check():
    rows = O.subgroup_table([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8], {"sex": ["F", "", None, "F"]},
                            min_n=1, min_positives=1)
    assert {r.value for r in rows} == {"F", "unknown"}
    with pytest.raises(ValueError, match="'sex' has 1 values; expected 4"):
        O.subgroup_table([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8], {"sex": ["F"]})


def test_small_positive_count_for_target_sensitivity_warns():
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        O.threshold_for_sensitivity([1, 1, 1, 0, 0, 0], [0.9, 0.8, 0.3, 0.4, 0.2, 0.1], 0.9)
    assert any("only 3 positives" in str(w.message) for w in rec)


@pytest.mark.parametrize("n", [1, 3, 7, 77, 1000])
def test_wilson_contains_observed_proportion_at_the_ends(n):
    assert wilson_ci(0, n)[0] == 0.0 and wilson_ci(n, n)[1] == 1.0


POINT = {"name": "youden", "rule": "youden", "threshold": 0.25,
         "chosen_on": {"split": "val", "sensitivity": 0.8, "specificity": 0.7},
         "confusion": {"tp": 2, "fp": 1, "tn": 3, "fn": 0},
         "sensitivity": {"value": 1.0, "ci": [0.34, 1.0], "k": 2, "n": 2},
         "specificity": {"value": 0.75, "ci": [0.3, 0.95], "k": 3, "n": 4},
         "ppv": {"value": None, "ci": None, "k": 0, "n": 0},
         "npv": {"value": 1.0, "ci": [0.44, 1.0], "k": 3, "n": 3},
         "deployment": {"prevalence": 0.015, "ppv": None, "npv": None, "ppv_ci": None, "npv_ci": None}}


def test_operating_point_json_is_the_file_layout_and_reads_back():
    point = O.MeasuredOperatingPoint(
        "youden", "youden", 0.25, O.ChosenOn("val", 0.8, 0.7), O.Confusion(2, 1, 3, 0),
        O.Proportion(1.0, [0.34, 1.0], 2, 2), O.Proportion(0.75, [0.3, 0.95], 3, 4), O.Proportion(None, None, 0, 0),
        O.Proportion(1.0, [0.44, 1.0], 3, 3), O.DeploymentValues(0.015, None, None, None, None))
    assert point.to_json() == POINT and list(point.to_json()) == list(POINT)
    assert O.MeasuredOperatingPoint.from_json(POINT, "metrics.json: operating_points[0]") == point
    with pytest.raises(ValueError, match=r"metrics.json: operating_points\[0\].confusion: without \['fn'\]"):
        O.MeasuredOperatingPoint.from_json({**POINT, "confusion": {"tp": 2, "fp": 1, "tn": 3}},
                                           "metrics.json: operating_points[0]")


def test_subgroup_row_json_is_the_file_layout_and_reads_back():
    data = {"attribute": "sex", "value": "F", "n": 4, "n_pos": 2, "prevalence": 0.5, "auc": 0.75,
            "ci": [0.2, 1.0], "flags": ["n=4 < 30"], "small": True}
    row = O.SubgroupRow("sex", "F", 4, 2, 0.5, 0.75, [0.2, 1.0], ["n=4 < 30"], True)
    assert row.to_json() == data and list(row.to_json()) == list(data)
    assert O.SubgroupRow.from_json(data, "metrics.json: subgroups[0]") == row
