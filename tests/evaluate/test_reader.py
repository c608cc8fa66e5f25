"""Reader versus model: hand-checkable cases through the project's own interval functions."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fibrosis.evaluate.metrics import auc_delong, wilson_ci
from fibrosis.evaluate.reader import ReaderVsModel, reader_cases, reader_vs_model
from fibrosis.io import write_csv
from helpers.scores import score_row, write_scores

from fibrosis.score.output import iter_score_rows

pytestmark = pytest.mark.filterwarnings("ignore::fibrosis.numeric.MetricWarning")  # the tests' own small AUCs
NAN = float("nan")
#            10 cases: truth, reader (NaN = uncertain), model probability
TRUTH = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], float)
READER = np.array([1, 1, 0, NAN, 0, 0, 1, 0, 0, NAN])
PROB = np.array([0.9, 0.8, 0.4, 0.7, 0.3, 0.2, 0.6, 0.1, 0.5, 0.05])


def test_reader_point_and_model_auc_on_the_same_cases():
    res = reader_vs_model(PROB, 0.45, READER, TRUTH)
    assert (res.n_cases, res.n_uncertain, res.n_reader_positive) == (10, 2, 3)
    t = res.against_truth
    assert t is not None and t.reader is not None and t.model is not None and t.auc is not None and t.roc is not None
    # reader against truth, uncertain left out: sensitivity 2/3, specificity 4/5
    se, sp = t.reader.sensitivity, t.reader.specificity
    assert (se.k, se.n, sp.k, sp.n) == (2, 3, 4, 5) and t.n_reader_called == 8
    assert se.ci == pytest.approx(list(wilson_ci(2, 3))) and sp.ci == pytest.approx(list(wilson_ci(4, 5)))
    # the model on all 10 cases with a reference label: its own AUC and ROC
    assert t.auc.auc == pytest.approx(auc_delong(TRUTH.astype(int), PROB)["auc"])
    assert t.roc.fpr[0] == 0.0 and t.roc.tpr[-1] == 1.0
    assert (t.model.sensitivity.k, t.model.specificity.k) == (3, 4)  # p >= 0.45: 0.4 missed; 0.6 and 0.5 false positives
    # the model against the reader's 8 calls (3 present: 0.9, 0.8, 0.6; 5 absent)
    r = res.against_reader
    called = ~np.isnan(READER)
    assert r.n == 8 and r.n_pos == 3 and r.auc is not None and r.warnings is not None
    assert r.auc.auc == pytest.approx(auc_delong(READER[called].astype(int), PROB[called])["auc"])
    assert any("only 3 positives / 5 negatives" in w for w in r.warnings)  # kept for the report
    # reader.json: the layout of its parts, and the record reads back from it
    data = res.to_json()
    assert list(data) == ["format", "level", "threshold", "n_cases", "n_uncertain", "n_reader_positive",
                          "against_reader", "against_truth"]
    assert list(data["against_truth"]) == ["n", "n_pos", "auc", "model", "warnings", "roc", "reader", "n_reader_called"]
    assert list(data["against_reader"]) == ["n", "n_pos", "auc", "model", "warnings"]
    assert ReaderVsModel.from_json(data, "reader.json") == res


def test_without_a_reference_only_agreement_is_measured():
    res = reader_vs_model(PROB, 0.45, READER)
    assert res.against_truth is None and res.against_reader.auc is not None and res.against_reader.auc.auc > 0.5


def test_one_class_is_reported_not_computed():
    res = reader_vs_model(PROB[:3], 0.45, np.ones(3))
    assert res.against_reader.auc is None and "needs both classes" in (res.against_reader.why or "")
    assert res.to_json()["against_reader"] == {"n": 3, "n_pos": 3, "auc": None,
                                               "why": "3 case(s) with the reader's labels, 3 positive: an AUC needs "
                                                      "both classes"}
    written = dataclasses.replace(res, scores="scores.csv", reader_labels="reader.csv", truth=None,
                                  created="2026-12-08T00:00:00+00:00")
    assert list(written.to_json())[-4:] == ["scores", "reader_labels", "truth", "created"]
    assert ReaderVsModel.from_json(written.to_json(), "reader.json") == written
    with pytest.raises(ValueError, match=r"reader.json: format=2; this version reads 1"):
        ReaderVsModel.from_json({**written.to_json(), "format": 2}, "reader.json")


def test_cases_are_the_scored_images_the_reader_labelled(tmp_path):
    rows = [score_row("/in/a.dcm", sop_uid="1.1", study_uid="S1", probability="0.9"),
            score_row("/in/b.dcm", sop_uid="1.2", study_uid="S1", probability="0.7"),
            score_row("/in/c.dcm", sop_uid="1.3", study_uid="S2", probability="0.2"),
            score_row("/in/d.dcm", sop_uid="1.4", study_uid="S3", status="excluded: lateral", probability="",
                      logit="", decision=""),
            score_row("/in/e.dcm", sop_uid="1.5", study_uid="S4", probability="0.3")]
    scores = write_scores(tmp_path / "scores.csv", rows)
    cols = ("sop_instance_uid", "image", "study_instance_uid", "fibrosis", "reader_call", "reader", "level",
            "labelled_at")
    write_csv(tmp_path / "reader.csv", [
        {"study_instance_uid": "S1", "fibrosis": "1", "reader_call": "present", "level": "study"},
        {"sop_instance_uid": "1.3", "study_instance_uid": "S2", "fibrosis": "", "reader_call": "uncertain",
         "level": "image"},
        {"study_instance_uid": "S3", "fibrosis": "0", "reader_call": "absent", "level": "study"}], cols)
    write_csv(tmp_path / "truth.csv", [{"image": "a.dcm", "fibrosis": "1"}, {"image": "c.dcm", "fibrosis": "0"}],
              ("image", "fibrosis"))
    prob, thr, calls, ref = reader_cases(scores, iter_score_rows(scores), tmp_path / "reader.csv", "fibrosis",
                                   tmp_path / "truth.csv")
    # S1's label reaches both its images; S3's only image was not scored; e.dcm was not labelled
    assert prob.tolist() == [0.9, 0.7, 0.2] and thr == 0.4
    assert calls[:2].tolist() == [1.0, 1.0] and np.isnan(calls[2])
    assert ref[0] == 1.0 and np.isnan(ref[1]) and ref[2] == 0.0
