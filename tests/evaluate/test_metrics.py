"""Statistics in fibrosis.evaluate.metrics checked against published reference values.

References
- pROC's own test suite on its ``aSAH`` data (xrobin/pROC, tests/testthat/test-var.R and
  test-roc.test.R) and the pROC documentation: AUC(s100b) = 0.7314, 95% CI 0.6301-0.8326
  (DeLong); DeLong variances of wfns/ndka/s100b; paired roc.test Z/p/CI.
- scikit-learn's roc_auc_score for the AUC itself (including ties).
- A hand-computed DeLong example (arithmetic in the test).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from fibrosis.evaluate import metrics as M
from fibrosis.numeric import MetricWarning

from helpers.asah_data import MARKERS, Y  # pROC aSAH reference data (tests/asah_data.py)


# ---------------------------------------------------------------- AUC and DeLong


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)  # rounding creates many ties
    assert M.auc_delong(y, s)["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    for name, x in MARKERS.items():
        assert M.auc_delong(Y, x)["auc"] == pytest.approx(roc_auc_score(Y, x), abs=1e-12), name


@pytest.mark.parametrize("name,auc,var", [
    ("wfns", 0.823678861788618, 0.00146991470882363),
    ("ndka", 0.611957994579946, 0.0031908105493913),
    ("s100b", 0.731368563685637, 0.00266868245717244),
])
def test_delong_variance_matches_proc(name, auc, var):
    res = M.auc_delong(Y, MARKERS[name])
    assert res["auc"] == pytest.approx(auc, rel=1e-12)
    assert res["variance"] == pytest.approx(var, rel=1e-10)
    assert (res["n_pos"], res["n_neg"]) == (41, 72)


def test_delong_ci_matches_proc_documentation():
    # pROC: roc(aSAH$outcome, aSAH$s100b, ci=TRUE) -> "95% CI: 0.6301-0.8326 (DeLong)"
    lo, hi = M.auc_delong(Y, MARKERS["s100b"])["ci"]
    assert (round(lo, 4), round(hi, 4)) == (0.6301, 0.8326)
    # ci.auc(r.ndka) to full precision (pROC test values)
    assert M.auc_delong(Y, MARKERS["ndka"])["ci"] == pytest.approx(
        [0.501244999271703, 0.722670989888189], rel=1e-10)


def test_delong_hand_computed():
    # positives 0.9, 0.6, 0.4; negatives 0.7, 0.3, 0.2
    # V10 (share of negatives below each positive): 3/3, 2/3, 2/3 -> AUC = 7/9
    # V01 (share of positives above each negative): 1/3, 3/3, 3/3 -> mean 7/9
    # S10 = var(1, 2/3, 2/3; ddof=1) = (4/81 + 1/81 + 1/81) / 2 = 1/27
    # S01 = var(1/3, 1, 1; ddof=1) = (16/81 + 4/81 + 4/81) / 2 = 4/27
    # Var(AUC) = S10/3 + S01/3 = 5/81; SE = sqrt(5)/9 = 0.24845
    y = [1, 1, 1, 0, 0, 0]
    s = [0.9, 0.6, 0.4, 0.7, 0.3, 0.2]
    auc, v10, v01 = M.delong_placements(y, s)
    assert auc == pytest.approx(7 / 9)
    assert v10.tolist() == pytest.approx([1, 2 / 3, 2 / 3])
    assert v01.tolist() == pytest.approx([1 / 3, 1, 1])
    with pytest.warns(MetricWarning, match="only 3 positives"):
        res = M.auc_delong(y, s)
    assert res["variance"] == pytest.approx(5 / 81)
    assert res["se"] == pytest.approx(math.sqrt(5) / 9)
    # a tie between a positive and a negative counts 1/2
    auc_tie, _, _ = M.delong_placements([1, 1, 0, 0], [0.5, 0.9, 0.5, 0.1])
    assert auc_tie == pytest.approx((1 + 0.5 + 1 + 1) / 4)


@pytest.mark.parametrize("a,b,z,p,lo,hi", [
    ("wfns", "s100b", 2.20898359144091, 0.0271757822291882, 0.0104061769564846, 0.174214419249478),
    ("wfns", "ndka", 2.79777591868904, 0.00514557970691098, 0.0634011709339876, 0.3600405634833566),
    ("ndka", "s100b", -1.39077002573558, 0.164295175223054, -0.2876917446341914, 0.0488706064228094),
])
def test_paired_delong_matches_proc_roc_test(a, b, z, p, lo, hi):
    res = M.delong_paired_test(Y, MARKERS[a], MARKERS[b])
    assert res["z"] == pytest.approx(z, rel=1e-10)
    assert res["p"] == pytest.approx(p, rel=1e-10)
    assert res["ci"] == pytest.approx([lo, hi], rel=1e-10)
    rev = M.delong_paired_test(Y, MARKERS[b], MARKERS[a])
    assert rev["z"] == pytest.approx(-z, rel=1e-10) and rev["p"] == pytest.approx(p, rel=1e-10)


def test_paired_delong_identical_scores():
    with pytest.warns(MetricWarning, match="variance is 0"):
        res = M.delong_paired_test(Y, MARKERS["wfns"], MARKERS["wfns"])
    assert res["z"] == 0 and res["p"] == 1.0 and res["difference"] == 0


# ---------------------------------------------------------------- curves and bootstrap


def test_roc_points_match_sklearn():
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(Y, MARKERS["s100b"], drop_intermediate=False)
    pts = M.roc_points(Y, MARKERS["s100b"])
    assert pts["fpr"] == pytest.approx(fpr.tolist()) and pts["tpr"] == pytest.approx(tpr.tolist())
    assert np.trapezoid(pts["tpr"], pts["fpr"]) == pytest.approx(0.731368563685637)


def test_pr_curve_average_precision():
    res = M.pr_curve(Y, MARKERS["s100b"])
    assert res.average_precision == pytest.approx(average_precision_score(Y, MARKERS["s100b"]))
    assert res.prevalence == pytest.approx(41 / 113)


def test_bootstrap_seeded_and_close_to_delong():
    s = MARKERS["s100b"]
    a = M.bootstrap_roc(Y, s, n_resamples=2000, seed=3)
    b = M.bootstrap_roc(Y, s, n_resamples=2000, seed=3)
    assert a.ci == b.ci and a.n_used == 2000
    lo, hi = a.ci
    assert lo < 0.7314 < hi
    # percentile bootstrap and DeLong agree to ~0.01 on 113 cases (0.630-0.833)
    assert lo == pytest.approx(0.630, abs=0.02) and hi == pytest.approx(0.833, abs=0.02)
    band = a.band
    assert all(lo_ <= hi_ for lo_, hi_ in zip(band.tpr_lower, band.tpr_upper))
    assert band.tpr_upper[-1] == 1.0


def test_bootstrap_resamples_patients_not_images():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 80)
    s = rng.normal(size=80) + y
    single = M.bootstrap_roc(y, s, groups=np.arange(80), n_resamples=500, seed=7)
    # every patient imaged 4 times with identical scores: the information is the same,
    # so a patient-clustered bootstrap must give exactly the same interval ...
    y4, s4, g4 = np.repeat(y, 4), np.repeat(s, 4), np.repeat(np.arange(80), 4)
    clustered = M.bootstrap_roc(y4, s4, groups=g4, n_resamples=500, seed=7)
    assert clustered.ci == pytest.approx(single.ci, abs=1e-12)
    assert clustered.n_patients == 80
    # ... whereas resampling images pretends to have 4x the data and is too narrow.
    naive = M.bootstrap_roc(y4, s4, groups=None, n_resamples=500, seed=7)
    width = lambda r: r.ci[1] - r.ci[0]  # noqa: E731
    assert width(naive) < 0.7 * width(clustered)


def test_bootstrap_weighted_auc_matches_direct_resample():
    # The vectorised weighted AUC equals the AUC of the explicitly resampled data set.
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 40)
    s = np.round(rng.normal(size=40) + y, 1)
    g = np.arange(40) // 2  # 20 patients, 2 images each
    res = M.bootstrap_roc(y, s, groups=g, n_resamples=1, seed=11, chunk=1)
    counts = np.random.default_rng(11).multinomial(20, np.full(20, 1 / 20))
    idx = np.concatenate([np.flatnonzero(g == p).repeat(c) for p, c in enumerate(counts)])
    assert res.ci[0] == pytest.approx(roc_auc_score(y[idx], s[idx]), abs=1e-12)


# ---------------------------------------------------------------- calibration


def _calibrated(n=200_000, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.001, 0.999, n)
    return (rng.uniform(size=n) < p).astype(int), p


def test_perfectly_calibrated_predictor():
    y, p = _calibrated()
    rel = M.reliability_curve(y, p, n_bins=10)
    assert rel.ece < 0.005
    assert "10 equal-width bins" in rel.binning
    assert sum(b.count for b in rel.bins) == len(y)
    cal = M.calibration_intercept_slope(y, p)
    assert cal.slope == pytest.approx(1.0, abs=0.03)
    assert cal.intercept == pytest.approx(0.0, abs=0.02)
    lo, hi = cal.slope_ci
    assert lo < cal.slope < hi and hi - lo < 0.05  # n = 200k: a tight Wald interval


def test_overconfident_predictor_has_slope_below_one():
    y, p = _calibrated()
    logit = np.log(p / (1 - p))
    over = 1 / (1 + np.exp(-2 * logit))  # logits doubled: too extreme
    assert M.calibration_intercept_slope(y, over).slope == pytest.approx(0.5, abs=0.02)
    assert M.expected_calibration_error(y, over) > 0.05


def test_ece_hand_computed_and_quantile_bins():
    # bin [0.1,0.2): p 0.1, 0.1 with y 0, 1 -> |0.1 - 0.5| * 2/4; bin [0.9,1]: p 0.9, 1.0 y 1, 1
    # -> |0.95 - 1| * 2/4. ECE = 0.2 + 0.025 = 0.225
    y, p = [0, 1, 1, 1], [0.1, 0.1, 0.9, 1.0]
    assert M.expected_calibration_error(y, p, n_bins=10) == pytest.approx(0.225)
    assert M.brier_score(y, p) == pytest.approx((0.01 + 0.81 + 0.01 + 0) / 4)
    rel = M.reliability_curve(y, p, n_bins=2, strategy="quantile")
    assert rel.strategy == "quantile" and sum(b.count for b in rel.bins) == 4


def test_score_histogram_counts():
    h = M.score_histogram([0, 0, 1, 1], [0.01, 0.5, 0.51, 1.0], n_bins=2)
    assert h.negatives == [1, 1] and h.positives == [0, 2]


# ---------------------------------------------------------------- edge cases


def test_nan_score_is_a_clear_error():
    with pytest.raises(ValueError, match=r"y_score\[2\] = nan: 1 non-finite"):
        M.auc_delong([0, 1, 1], [0.1, 0.2, float("nan")])


def test_one_class_is_a_clear_error():
    with pytest.raises(ValueError, match="only one class .0 positives, 3 negatives"):
        M.auc_delong([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="only one class"):
        M.bootstrap_roc([1, 1], [0.1, 0.2])


def test_bad_labels_and_probabilities_named():
    with pytest.raises(ValueError, match=r"y_true\[1\] = 2; allowed labels: \{0, 1\}"):
        M.auc_delong([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"prob\[0\] = 1.5: probabilities must lie in \[0, 1\]"):
        M.brier_score([1], [1.5])
    with pytest.raises(ValueError, match="binning strategy 'kmeans'; allowed"):
        M.reliability_curve([0, 1], [0.2, 0.8], strategy="kmeans")
    with pytest.raises(ValueError, match="equal lengths"):
        M.auc_delong([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="confidence level 95"):
        M.auc_delong([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], level=95)


def test_tiny_set_warns_and_gives_no_ci():
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = M.auc_delong([0, 0, 1], [0.1, 0.2, 0.3])
    messages = [str(w.message) for w in rec if issubclass(w.category, MetricWarning)]
    assert any("only 1 positives / 2 negatives" in msg for msg in messages)
    assert any("DeLong variance needs >= 2 positives" in msg for msg in messages)
    assert res["auc"] == 1.0 and res["ci"] is None


def test_separated_classes_slope_warns_not_silent():
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = M.calibration_intercept_slope([0] * 20 + [1] * 20, [0.2] * 20 + [0.8] * 20)
    assert res.slope is None
    assert any("did not converge" in str(w.message) for w in rec)


def test_bootstrap_degenerate_resamples_are_counted():
    # 1 positive among 30 patients: ~37% of resamples lack it -> refuse rather than report
    y = np.r_[1, np.zeros(29, int)]
    with pytest.raises(ValueError, match="contained both classes"), warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        M.bootstrap_roc(y, np.linspace(0, 1, 30), n_resamples=200)


def _metric_messages(rec) -> list[str]:
    return [str(w.message) for w in rec if issubclass(w.category, MetricWarning)]


def test_paired_delong_zero_variance_with_a_difference_is_not_p_one():
    # perfect separator vs a collapsed (constant) model: difference 0.5 with no DeLong variance
    y = np.r_[np.ones(15, int), np.zeros(15, int)]
    perfect, constant = np.r_[np.linspace(2, 3, 15), np.linspace(-3, -2, 15)], np.zeros(30)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = M.delong_paired_test(y, perfect, constant)
    assert res["difference"] == 0.5 and res["se"] == 0.0
    assert res["p"] == 0.0 and res["z"] is None
    assert any("variance is 0" in msg for msg in _metric_messages(rec))
    json_safe = [v for v in res.values() if isinstance(v, float)]
    assert all(math.isfinite(v) for v in json_safe)


def test_paired_delong_zero_variance_and_zero_difference_warns():
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = M.delong_paired_test(Y, MARKERS["wfns"], MARKERS["wfns"])
    assert res["p"] == 1.0 and res["z"] == 0
    assert any("variance is 0" in msg for msg in _metric_messages(rec))


def test_single_auc_zero_variance_warns():
    y = np.r_[np.ones(15, int), np.zeros(15, int)]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = M.auc_delong(y, np.r_[np.linspace(2, 3, 15), np.linspace(-3, -2, 15)])
    assert res["auc"] == 1.0 and res["se"] == 0.0 and res["ci"] == [1.0, 1.0]
    assert any("variance is 0" in msg and "understates" in msg for msg in _metric_messages(rec))


# ---------------------------------------------------------------- records (metrics.json sections)

DELONG = {"auc": 0.75, "variance": 0.01, "se": 0.1, "ci": [0.55, 0.95], "level": 0.95, "method": "DeLong",
          "n_pos": 2, "n_neg": 2}
BOOT = {"auc": 0.75, "ci": [0.5, 1.0], "level": 0.95, "method": "patient-clustered percentile bootstrap",
        "n_resamples": 10, "n_used": 9, "n_degenerate": 1, "n_patients": 4, "seed": 0, "se": 0.125,
        "band": {"fpr": [0.0, 1.0], "tpr_lower": [0.0, 1.0], "tpr_upper": [0.5, 1.0]}}
DISCRIMINATION = {"score": "model logit", "auc": 0.75, "delong": DELONG, "bootstrap": BOOT,
                  "auc_after_calibration": None,
                  "roc": {"fpr": [0.0, 0.5, 1.0], "tpr": [0.0, 1.0, 1.0], "thresholds": [None, 0.5, -1.0]},
                  "pr": {"precision": [0.5, 1.0], "recall": [1.0, 0.5], "average_precision": 0.75,
                         "prevalence": 0.5, "n_pos": 2, "n": 4}}


def test_discrimination_json_is_the_file_layout_and_reads_back():
    disc = M.Discrimination(
        "model logit", 0.75, M.DelongAuc(0.75, 0.01, 0.1, [0.55, 0.95], 0.95, "DeLong", 2, 2),
        M.BootstrapAuc(0.75, [0.5, 1.0], 0.95, M.BOOTSTRAP_METHOD, 10, 9, 1, 4, 0, 0.125,
                       M.RocBand([0.0, 1.0], [0.0, 1.0], [0.5, 1.0])),
        None, M.RocCurve([0.0, 0.5, 1.0], [0.0, 1.0, 1.0], [None, 0.5, -1.0]),
        M.PrCurve([0.5, 1.0], [1.0, 0.5], 0.75, 0.5, 2, 4))
    assert disc.to_json() == DISCRIMINATION and list(disc.to_json()["bootstrap"]) == list(BOOT)
    assert M.Discrimination.from_json(DISCRIMINATION, "metrics.json: discrimination") == disc
    with pytest.raises(ValueError, match=r"metrics.json: discrimination.delong: without \['se'\]"):
        M.Discrimination.from_json({**DISCRIMINATION, "delong": {k: v for k, v in DELONG.items() if k != "se"}},
                                   "metrics.json: discrimination")


def test_bootstrap_not_reported_keeps_its_own_layout():
    boot = M.BootstrapAuc.not_reported("too few positives", level=0.95, n_resamples=10, n_patients=4, seed=0)
    assert boot.to_json() == {"auc": None, "ci": None, "band": None, "level": 0.95,
                              "method": "patient-clustered percentile bootstrap", "n_resamples": 10, "n_used": None,
                              "n_patients": 4, "seed": 0, "error": "too few positives"}
    assert list(boot.to_json())[:3] == ["auc", "ci", "band"]
    assert M.BootstrapAuc.from_json(boot.to_json(), "metrics.json: discrimination.bootstrap") == boot


BLOCK = {"reliability": {"bins": [{"lower": 0.0, "upper": 0.5, "count": 2, "mean_predicted": 0.25, "observed": 0.5,
                                   "observed_ci": [0.1, 0.9]}],
                         "ece": 0.25, "n_bins": 2, "strategy": "uniform", "binning": "2 equal-width bins", "n": 2,
                         "level": 0.95},
         "brier": 0.125,
         "intercept_slope": {"level": 0.95, "method": "logistic recalibration on logit(p)", "slope": None,
                             "slope_ci": None, "intercept": 0.5, "intercept_ci": [-1.0, 2.0]},
         "histogram": {"edges": [0.0, 0.5, 1.0], "positives": [1, 0], "negatives": [1, 0]}}


def test_calibration_json_is_the_file_layout_and_reads_back():
    block = M.CalibrationBlock(
        M.Reliability([M.ReliabilityBin(0.0, 0.5, 2, 0.25, 0.5, [0.1, 0.9])], 0.25, 2, "uniform",
                      "2 equal-width bins", 2, 0.95),
        0.125, M.InterceptSlope(0.95, "logistic recalibration on logit(p)", None, None, 0.5, [-1.0, 2.0]),
        M.ScoreHistogram([0.0, 0.5, 1.0], [1, 0], [1, 0]))
    cal = M.CalibrationSummary("platt", {"format": 1, "method": "platt", "params": {"a": 1.0, "b": 0.0}}, block, block)
    data = {"method": "platt", "calibrator": {"format": 1, "method": "platt", "params": {"a": 1.0, "b": 0.0}},
            "before": BLOCK, "after": BLOCK}
    assert cal.to_json() == data and list(cal.to_json()["after"]["intercept_slope"]) == list(BLOCK["intercept_slope"])
    assert M.CalibrationSummary.from_json(data, "metrics.json: calibration") == cal
    with pytest.raises(ValueError, match=r"metrics.json: calibration.before.reliability.bins\[0\]: without"):
        M.CalibrationSummary.from_json(
            {**data, "before": {**BLOCK, "reliability": {**BLOCK["reliability"], "bins": [{"lower": 0.0}]}}},
            "metrics.json: calibration")
