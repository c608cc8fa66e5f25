"""The report's pieces on hand-checkable inputs: number formatting, the participant flow, subgroup
AUCs, coinciding operating points, the decision-curve summary and the configuration appendix."""
from __future__ import annotations

from helpers.records import evaluation_result

from fibrosis.report.format import estimate, num, p_value, pct, proportion
from fibrosis.report.plots import coincident_points
from fibrosis.report.sections.appendix import compact, non_default
from fibrosis.report.sections.data import participant_flow
from fibrosis.report.sections.decisions import _useful
from fibrosis.report.sections.subgroups import subgroup_auc

MINUS = "\u2212"


def test_numbers_have_one_precision_and_a_real_minus():
    assert estimate(0.14, [-0.021, 0.304], "slope") == f"0.14 ({MINUS}0.02 to 0.30)"
    assert estimate(-0.14, [-1.973, 1.691], "intercept") == f"{MINUS}0.14 ({MINUS}1.97 to 1.69)"
    assert estimate(0.7, None, "auc") == "0.700 (no CI)" and estimate(None, [0, 1], "auc") == "n/a"
    assert num(-0.0001, "auc") == "0.000" and num(0.012, "difference", sign=True) == "+0.012"
    assert num(float("nan"), "auc") == "n/a" and pct(None) == "n/a" and pct(0.2069) == "20.7%"
    assert proportion({"value": 0.5, "k": 3, "n": 6, "ci": [0.188, 0.812]}) == "50.0% (3/6; 18.8% to 81.2%)"
    assert proportion({"value": None, "k": 0, "n": 0, "ci": None}) == "n/a (0/0)"
    assert p_value(0.0004) == "< 0.001" and p_value(0.6234) == "0.62"


def _data(**extra):
    return {"n": 29, "n_pos": 6, "n_patients": 29, "n_excluded": 3,
            "total": {"n": 150, "n_pos": 32, "n_patients": 150},
            "exclusions": [{"kind": "excluded", "reason": "lateral view", "count": 2},
                           {"kind": "error", "reason": "truncated", "count": 1}],
            "splits": {"train": {"n": 90, "n_pos": 19}, "val": {"n": 31, "n_pos": 7}, "test": {"n": 29, "n_pos": 6}},
            **extra}


def test_flow_of_a_tune_run_pools_train_and_val():
    flow = participant_flow(evaluation_result(data=_data(), fit_split="out-of-fold"), pooled=True)
    assert (flow["inputs"], flow["excluded"], flow["reasons"]) == (153, 3, ["2 lateral view", "1 truncated"])
    assert [(c["title"], c["n"], c["n_pos"], c["analysed"]) for c in flow["columns"]] == [
        ("development (train + val pooled)", 121, 26, False), ("test", 29, 6, True)]
    assert "fitted out of fold" in flow["columns"][0]["role"]
    assert flow["analysed"].startswith("analysed: 29 images (6 with fibrosis, 23 without)")


def test_flow_of_a_train_run_and_of_a_frozen_evaluation():
    flow = participant_flow(evaluation_result(data=_data(), fit_split="val"), pooled=False)
    assert [(c["title"], c["role"]) for c in flow["columns"]] == [
        ("train", "trained the model"), ("val", "early stopping; calibration and thresholds"),
        ("test", "reported: analysed")]
    frozen = participant_flow(evaluation_result(data=_data(), fit_split="val", frozen=True), pooled=False)
    assert [c["role"] for c in frozen["columns"]][:2] == ["not part of this evaluation"] * 2
    everything = participant_flow(evaluation_result(data=_data(splits={}), split="all", frozen=True), pooled=False)
    assert [c["title"] for c in everything["columns"]] == ["all images (no split)"]


def test_subgroup_without_both_classes_has_no_auc():
    assert subgroup_auc({"n": 6, "n_pos": 0, "auc": None, "ci": None}) == "n/a: one class only"
    assert subgroup_auc({"n": 6, "n_pos": 6, "auc": 0.0, "ci": None}) == "n/a: one class only"
    assert subgroup_auc({"n": 2, "n_pos": 1, "auc": 0.0, "ci": None}) == "0.000 (no CI)"


def test_coinciding_operating_points_share_one_marker():
    def op(name, se, sp):
        return {"name": name, "sensitivity": {"value": se}, "specificity": {"value": sp}}

    points = coincident_points([op("youden", 0.5, 0.8), op("sensitivity_0.90", 1.0, 0.0),
                                op("sensitivity_0.95", 1.0, 0.0)])
    assert [(xy, names) for xy, names, _ in points] == [((0.2, 0.5), ["Youden"]),
                                                        ((1.0, 1.0), ["sens \u2265 0.90", "sens \u2265 0.95"])]


def test_decision_curve_summary_names_the_useful_ranges():
    dc = {"thresholds": [0.01, 0.02, 0.03, 0.04, 0.05]}
    curve = {"model": [0.10, 0.05, 0.02, 0.03, 0.0], "treat_all": [0.10, 0.04, 0.03, -0.1, -0.2]}
    assert _useful(dc, curve) == "at pt 2%, 4%"
    assert _useful(dc, {"model": [0.0] * 5, "treat_all": [0.1] * 5}) == "at no threshold in this range"


def test_configuration_shows_differences_and_no_paths():
    config = {"ingest": {"labels_csv": "/data/site/Doe^John/labels.csv", "image_size": 512},
              "train": {"batch_size": 16}}
    rows = non_default(config)
    assert ["ingest.labels_csv", "<path>/labels.csv", "none"] in rows and ["train.batch_size", "16", "32"] in rows
    assert all(r[0] != "ingest.image_size" for r in rows)  # 512 is the default
    text = compact(config)
    assert "Doe^John" not in text and text.splitlines()[0].startswith("ingest: {labels_csv: <path>/labels.csv")
