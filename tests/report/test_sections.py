"""The report's pieces on hand-checkable inputs: number formatting, the participant flow, subgroup
AUCs, coinciding operating points, the decision-curve summary and the configuration appendix."""
from __future__ import annotations

import dataclasses

from helpers.records import data_summary, evaluation_result

from fibrosis.evaluate.decision import DecisionCurve, NetBenefit
from fibrosis.evaluate.operating import ChosenOn, Confusion, MeasuredOperatingPoint, Proportion, SubgroupRow
from fibrosis.evaluate.summary import CacheProvenance, Exclusion, SplitCounts

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
    assert proportion(Proportion(0.5, [0.188, 0.812], 3, 6)) == "50.0% (3/6; 18.8% to 81.2%)"
    assert proportion(Proportion(None, None, 0, 0)) == "n/a (0/0)"
    assert p_value(0.0004) == "< 0.001" and p_value(0.6234) == "0.62"


def _data(**extra):
    def counts(n, n_pos):
        return SplitCounts(n, n_pos, n_pos / n, n)

    provenance = CacheProvenance(
        source="NIH", labels="labels.csv", total=counts(150, 32),
        splits={"train": counts(90, 19), "val": counts(31, 7), "test": counts(29, 6)}, split_method="random",
        exclusions=[Exclusion("excluded", "lateral view", 2), Exclusion("error", "truncated", 1)], n_excluded=3,
        qa=None, manifest_sha256=None, cache={})
    return data_summary(n=29, n_pos=6, n_neg=23, prevalence=6 / 29, n_patients=29,
                        provenance=dataclasses.replace(provenance, **extra))


def test_flow_of_a_tune_run_pools_train_and_val():
    flow = participant_flow(evaluation_result(data=_data(), fit_split="out-of-fold"), pooled=True)
    assert (flow.inputs, flow.excluded, flow.reasons) == (153, 3, ["2 lateral view", "1 truncated"])
    assert [(c.title, c.n, c.n_pos, c.analysed) for c in flow.columns] == [
        ("development (train + val pooled)", 121, 26, False), ("test", 29, 6, True)]
    assert "fitted out of fold" in flow.columns[0].role
    assert flow.analysed.startswith("analysed: 29 images (6 with fibrosis, 23 without)")


def test_flow_of_a_train_run_and_of_a_frozen_evaluation():
    flow = participant_flow(evaluation_result(data=_data(), fit_split="val"), pooled=False)
    assert [(c.title, c.role) for c in flow.columns] == [
        ("train", "trained the model"), ("val", "early stopping; calibration and thresholds"),
        ("test", "reported: analysed")]
    frozen = participant_flow(evaluation_result(data=_data(), fit_split="val", frozen=True), pooled=False)
    assert [c.role for c in frozen.columns][:2] == ["not part of this evaluation"] * 2
    everything = participant_flow(evaluation_result(data=_data(splits={}), split="all", frozen=True), pooled=False)
    assert [c.title for c in everything.columns] == ["all images (no split)"]


def test_subgroup_without_both_classes_has_no_auc():
    def group(n, n_pos, auc):
        return SubgroupRow("sex", "F", n, n_pos, n_pos / n, auc, None, [], False)

    assert subgroup_auc(group(6, 0, None)) == "n/a: one class only"
    assert subgroup_auc(group(6, 6, 0.0)) == "n/a: one class only"
    assert subgroup_auc(group(2, 1, 0.0)) == "0.000 (no CI)"


def test_coinciding_operating_points_share_one_marker():
    def op(name, se, sp):
        undefined = Proportion(None, None, 0, 0)
        return MeasuredOperatingPoint(name, name, 0.5, ChosenOn("val", se, sp), Confusion(0, 0, 0, 0),
                                      Proportion(se, None, 0, 0), Proportion(sp, None, 0, 0), undefined, undefined, None)

    points = coincident_points([op("youden", 0.5, 0.8), op("sensitivity_0.90", 1.0, 0.0),
                                op("sensitivity_0.95", 1.0, 0.0)])
    assert [(xy, names) for xy, names, _ in points] == [((0.2, 0.5), ["Youden"]),
                                                        ((1.0, 1.0), ["sens \u2265 0.90", "sens \u2265 0.95"])]


def test_decision_curve_summary_names_the_useful_ranges():
    curve = NetBenefit(0.1, [0.10, 0.05, 0.02, 0.03, 0.0], [0.10, 0.04, 0.03, -0.1, -0.2])
    dc = DecisionCurve("calibrated", "", [0.01, 0.02, 0.03, 0.04, 0.05], [1.0] * 5, [0.0] * 5, curve, None)
    assert _useful(dc, curve) == "at pt 2%, 4%"
    assert _useful(dc, NetBenefit(0.1, [0.0] * 5, [0.1] * 5)) == "at no threshold in this range"


def test_configuration_shows_differences_and_no_paths():
    config = {"ingest": {"labels_csv": "/data/site/Doe^John/labels.csv", "image_size": 512},
              "train": {"batch_size": 16}}
    rows = non_default(config)
    assert ["ingest.labels_csv", "<path>/labels.csv", "none"] in rows and ["train.batch_size", "16", "32"] in rows
    assert all(r[0] != "ingest.image_size" for r in rows)  # 512 is the default
    text = compact(config)
    assert "Doe^John" not in text and text.splitlines()[0].startswith("ingest: {labels_csv: <path>/labels.csv")
