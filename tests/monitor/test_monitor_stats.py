"""The monitor's pure parts: two-sample tests, alert rules, small windows, the score side file."""
from __future__ import annotations

import numpy as np
import pytest

from fibrosis.monitor import stattests as T
from fibrosis.evaluate.reference import Reference
from helpers.monitor import reference, reference_file
from fibrosis.monitor.compute import monitor_result
from fibrosis.monitor.load import ScoredImage
from fibrosis.monitor.performance import performance


def test_category_test_names_unseen_values_and_picks_the_valid_test():
    big = T.categorical_test({"PA": 300, "AP": 100}, {"PA": 150, "AP": 50})
    assert big.test.startswith("chi-squared") and big.p > 0.5 and big.unseen == []
    small = T.categorical_test({"ACME": 33}, {"ACME": 30, "NEWCO": 3})
    assert small.test.startswith("Fisher exact") and small.unseen == ["NEWCO"]
    assert (small.n_reference, small.n_batch) == (33, 33)
    same = T.categorical_test({"PA": 33}, {"PA": 40})
    assert same.p == 1.0 and same.test.startswith("none")
    assert same.to_json() == {"n_reference": 33, "n_batch": 40, "reference": {"PA": 33}, "batch": {"PA": 40},
                              "unseen": [], "test": "none (one category in both samples)", "statistic": None,
                              "p": 1.0}


def test_psi_and_ks():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 2000), rng.normal(0, 1, 2000)
    assert T.psi(a, b) < 0.05 and T.continuous_test(a, b).p > 0.01
    assert T.continuous_test([], [1.0]).to_json() == {
        "test": "Kolmogorov-Smirnov two-sample; PSI", "n_reference": 0, "n_batch": 1, "statistic": None, "p": None,
        "psi": None, "reference_quartiles": None, "batch_quartiles": None}
    assert T.psi(a, rng.normal(1.5, 1, 2000)) > 1.0
    # a constant reference (one image size) still separates a different value
    assert T.psi([96.0] * 50, [96.0] * 50) == 0.0 and T.psi([96.0] * 50, [128.0] * 50) > 5


def test_rate_test_has_wilson_intervals():
    r = T.rate_test(10, 100, 40, 100, 0.95)
    assert r.p is not None and r.p < 1e-4 and r.reference.value == 0.1
    assert r.batch.ci is not None and r.batch.ci[0] < 0.4 < r.batch.ci[1]
    assert T.rate_test(0, 0, 1, 4, 0.95).to_json() == {
        "test": "Fisher exact (two-sided)", "n_reference": 0, "n_batch": 4,
        "reference": {"k": 0, "n": 0, "value": None, "ci": None},
        "batch": {"k": 1, "n": 4, "value": 0.25, "ci": list(T.wilson_ci(1, 4, 0.95))}, "statistic": None, "p": None}


def _rows(n: int, vendor: str, seed: int = 2) -> list[ScoredImage]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        p = float(rng.uniform(0, 1))
        rows.append({"path": f"/x/{i}.dcm", "status": "ok", "probability_calibrated": f"{p:.6f}",
                     "logit_uncalibrated": f"{np.log(p / (1 - p)):.6f}", "decision_fibrosis": int(p >= 0.5), "manufacturer": vendor, "view_position": "PA", "modality": "DX",
                     "transfer_syntax": "1.2.840.10008.1.2.1", "sex": "FM"[i % 2], "age": "50",
                     **{k: f"{rng.normal(0.5, 0.05):.5f}" for k in
                        ("pixel_spacing", "rows", "cols", "img_mean", "img_std", "img_p05", "img_p50", "img_p95")}})
    return [ScoredImage(r, f"s.csv:{i + 2}", "b1", True) for i, r in enumerate(rows)]


def test_unseen_vendor_alerts_in_a_full_batch_but_a_small_batch_is_only_flagged():
    ref = reference()
    full = monitor_result(ref, _rows(40, "NEWCO"))
    assert full.to_json()["status"] == "alert" and any("manufacturer" in a and "'NEWCO'" in a for a in full.alerts)
    same = monitor_result(ref, _rows(40, "ACME"))
    assert same.to_json()["status"] == "ok", same.alerts
    small = monitor_result(ref, _rows(12, "NEWCO"))
    assert small.alerts == [] and small.windows[0].small
    assert any("small batch" in n and "n=12 scored ok < 30" in n for n in small.notes)
    check = next(c for c in small.windows[0].checks if c.check == "manufacturer")
    assert list(check.to_json()) == ["family", "check", "kind", "n_reference", "n_batch", "reference", "batch",
                                     "unseen", "test", "statistic", "p", "summary", "alpha_corrected", "alert"]
    assert list(small.to_json()) == ["format", "window_mode", "alpha", "psi_alert", "rules", "windows", "alerts",
                                     "notes", "status"]


def test_windows_by_month_when_dated():
    rows = _rows(70, "ACME")
    for i, r in enumerate(rows):
        r.cells["study_month"] = "2026-01" if i < 35 else "2026-02"
    res = monitor_result(reference(), rows)
    assert res.window_mode == "month" and [w.name for w in res.windows] == ["all", "2026-01", "2026-02"]


def test_reference_reads_back_as_written():
    data = reference_file()
    ref = Reference.from_json(data, "reference.json")
    assert ref.to_json() == data and list(ref.to_json()) == ["format", "split", "frozen", "model_id", "created", "n",
                                                             "threshold", "probabilities", "positive", "categories",
                                                             "continuous", "outcomes", "performance", "minimums"]
    with pytest.raises(ValueError, match="reference.json: reference format=2; this version reads 1"):
        Reference.from_json({**data, "format": 2}, "reference.json")
    with pytest.raises(ValueError, match="reference.json: outcomes: no 'error'"):
        Reference.from_json({**data, "outcomes": {"n": 1, "ok": 1, "excluded": 0, "reasons": {}}}, "reference.json")


def test_performance_flags_versus_alerts():
    ref = reference().performance
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(200), np.zeros(200)].astype(int)
    z = np.where(y == 1, 1.66, 0.0) + rng.normal(0, 1, 400)  # AUC about 0.88: within the validated CI
    p = 1 / (1 + np.exp(-(z - 0.83)))
    res = performance(ref, y, z, p, (p >= 0.5).astype(int), 30, 5)
    auc = res.metrics["auc"]
    assert auc.excludes_reference and not auc.changed  # 0.8 outside the new CI, 0.88 inside the old
    flipped = performance(ref, 1 - y, z, p, (p >= 0.5).astype(int), 30, 5)
    assert flipped.metrics["auc"].changed and flipped.metrics["sensitivity"].changed
    tiny = performance(ref, y[:3], z[:3], p[:3], (p[:3] >= 0.5).astype(int), 30, 5)
    assert tiny.small and tiny.flags == ["n=3 < 30", "positives=3 < 5", "negatives=0 < 5"]
    assert list(tiny.to_json()) == ["n", "n_pos", "level", "flags", "small", "metrics"]
    assert list(tiny.to_json()["metrics"]["ece"]) == ["value", "ci", "reference", "reference_ci", "method",
                                                      "excludes_reference", "changed"]


def test_side_file_resume_keeps_only_scored_paths(tmp_path):
    from fibrosis.score.output import META_COLUMNS, RowWriter, iter_rows, meta_path, prune_meta

    path = meta_path(tmp_path / "scores.csv")
    assert path.name == "scores.meta.csv"
    w = RowWriter(path, META_COLUMNS)
    for name in ("a", "b", "c"):
        w.write({"path": name, "scored_at": "t"})
    w.close()
    with open(path, "a") as fh:
        fh.write("d,t,2026-0")  # torn by a kill
    prune_meta(path, {"a", "b"})
    assert [r["path"] for r in iter_rows(path)] == ["a", "b"]
    path.write_text("path,other\n")
    with pytest.raises(ValueError, match="scores.meta.csv: existing file does not start with the fibrosis score header"):
        prune_meta(path, set())


def test_study_month_from_dicom_dates():
    from fibrosis.data.dicom import _month

    assert _month("20260314") == "2026-03" and _month("2026") == "" and _month("20261314") == ""


def test_labels_join_as_ingest_and_fill_what_png_exports_lack(tmp_path):
    from fibrosis.monitor.load import attach_labels

    labels = tmp_path / "labels.csv"
    labels.write_text("image,fibrosis,age,sex,view\na.png,1,61,f,PA\nb.dcm,0,40,M,PA\n")
    rows = [ScoredImage(cells, f"s.csv:{i + 2}", "s", True) for i, cells in enumerate([
        {"path": "/in/a.png", "status": "ok", "view_position": "", "sex": "", "age": ""},
        {"path": "/in/b.dcm", "status": "ok", "view_position": "AP", "sex": "F", "age": "70"},
        {"path": "/in/c.dcm", "status": "error", "reason": "truncated"}])]
    assert attach_labels(rows, labels, "fibrosis") == 2
    assert [r.label for r in rows] == [1, 0, None]
    assert (rows[0].cells["view_position"], rows[0].cells["sex"], rows[0].cells["age"]) == ("PA", "F", "61")
    assert (rows[1].cells["view_position"], rows[1].cells["sex"], rows[1].cells["age"]) == ("AP", "F", "70")  # the file wins


def test_reference_and_batch_read_values_alike():
    from fibrosis.evaluate.reference import category_value, continuous_value, reason_class

    # a float 0.0 (reference side) and the text "0.0" (side file) are the same value
    assert continuous_value({"img_p05": 0.0}, "img_p05") == continuous_value({"img_p05": "0.0"}, "img_p05") == 0.0
    assert continuous_value({"pixel_spacing": "0.143\\0.143"}, "pixel_spacing") == 0.143
    assert continuous_value({"rows": ""}, "rows") is None and continuous_value({"rows": "0"}, "rows") is None
    assert category_value({"age": "061Y"}, "age_band") == "60-79" and category_value({}, "sex") == "unknown"
    assert reason_class(" (0018,5101) ViewPosition='LL' is an excluded view") == "(0018,5101) ViewPosition"
    assert reason_class("polarity suspect (mediastinum-lungs=-0.2)") == "polarity suspect"
