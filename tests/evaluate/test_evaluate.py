"""fibrosis.evaluate.run (pure core on synthetic predictions; one end-to-end run) and fibrosis.evaluate.compare."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from helpers.asah_data import MARKERS, Y  # pROC aSAH reference data
from helpers.checkpoints import checkpoint_of
from helpers.manifest import row, rows
from fibrosis.model.calibration import CalibrationRecord, FittedOn, calibrator_from_record
from fibrosis.evaluate.compare import compare_predictions, compare_runs
from fibrosis.config import ConfigError, EvaluateConfig, load_config
from fibrosis.evaluate.result import EvaluationResult
from fibrosis.evaluate.run import Predictions, evaluate_predictions, evaluate_run, resolve_fit_split
from fibrosis.evaluate.subgroups import age_band


def _preds(n: int, seed: int, split: str, prev: float = 0.15, images_per_patient: int = 2) -> Predictions:
    """Overconfident logits (temperature ~2) of a moderately good model."""
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=n) < prev).astype(int)
    z = 2.0 * (rng.normal(size=n) + 1.8 * y - 2.2)
    cells = [{"patient_key": f"SECRET-PATIENT-{seed}-{i // images_per_patient}", "label": str(y[i]),
             "content_hash": f"hash{seed}-{i}", "path": f"/data/Doe^John/{i}.dcm",
             "sex": "FM"[i % 2], "age": f"{20 + i % 70:03d}Y", "view_position": "PA" if i % 4 else "AP",
             "manufacturer": "ACME"} for i in range(n)]
    return Predictions.from_rows(rows(cells), z, split)


@pytest.fixture(scope="module")
def evaluated():
    # temperature explicitly: these tests check its fit, whatever the configured default is
    cfg = EvaluateConfig(bootstrap_resamples=500, deployment_prevalence=0.015, calibration="temperature")
    fit, test = _preds(400, 1, "val"), _preds(500, 2, "test")
    return fit, test, cfg, evaluate_predictions(fit, test, cfg)


def test_calibration_and_thresholds_come_from_the_fit_split_only(evaluated):
    fit, test, cfg, (res, cal, threshold, cases) = evaluated
    assert cal.fitted_on == FittedOn("val", 400, int(fit.labels.sum()))
    assert cal.temperature == pytest.approx(2.0, rel=0.35)
    # same fit split with a different test split -> identical calibrator and thresholds
    _, cal2, thr2, _ = evaluate_predictions(fit, _preds(300, 9, "test"), cfg)
    assert thr2.points == threshold.points and cal2.to_dict() == cal.to_dict()
    # the frozen thresholds, applied to the test split, give the reported confusion matrices
    prob = np.array([c["prob"] for c in cases])
    for op in res.operating_points:
        pred = prob >= op.threshold
        assert op.confusion.tp == int((pred & (test.labels == 1)).sum())
        assert op.confusion.fp == int((pred & (test.labels == 0)).sum())
        assert op.chosen_on.split == "val"
        assert op.sensitivity.ci[0] <= op.sensitivity.value <= op.sensitivity.ci[1]
        assert op.deployment.prevalence == 0.015
    assert [op.name for op in res.operating_points] == ["youden", "sensitivity_0.90", "sensitivity_0.95"]
    assert threshold.points is not None and threshold.value == threshold.points["youden"]


def test_calibration_improves_overconfident_logits(evaluated):
    _, _, _, (res, _, _, _) = evaluated
    before, after = res.calibration.before, res.calibration.after
    assert after.reliability.ece < before.reliability.ece
    assert before.intercept_slope.slope < 0.8  # overconfident
    assert after.intercept_slope.slope == pytest.approx(1.0, abs=0.3)


def test_metrics_are_json_and_identifier_free(evaluated, tmp_path):
    _, _, _, (res, cal, threshold, cases) = evaluated
    res.write(tmp_path / "m.json")  # standard JSON: no NaN/inf slipped through
    text = (tmp_path / "m.json").read_text()
    assert "SECRET-PATIENT" not in text and "Doe^John" not in text and "hash2-" not in text
    back = CalibrationRecord.from_json(json.loads(json.dumps(cal.to_dict())), "m.json")
    assert calibrator_from_record(back).predict([0.0])[0] == 0.5
    # per-case rows keep the pseudonymous key (for the run folder) but never the path
    assert "path" not in cases[0] and cases[0]["patient_key"].startswith("SECRET-PATIENT")
    boot = res.discrimination.bootstrap
    assert boot.n_patients == 250 and boot.n_resamples == 500
    assert "bootstrap: 500 resamples (< 2000): CI is coarse" in res.warnings


def test_subgroups_ordered_and_flagged(evaluated):
    _, _, _, (res, _, _, _) = evaluated
    ages = [g.value for g in res.subgroups if g.attribute == "age_band"]
    assert ages == ["<40", "40-59", "60-79", ">=80"]
    for g in res.subgroups:
        assert g.small == (g.n < 30 or g.n_pos < 5 or g.n - g.n_pos < 5), g
    assert {g.attribute for g in res.subgroups} == {"sex", "age_band", "view_position", "manufacturer"}


def test_small_sets_are_warned_not_silent():
    res, *_ = evaluate_predictions(_preds(40, 3, "val", prev=0.3), _preds(40, 4, "test", prev=0.2),
                                   EvaluateConfig(bootstrap_resamples=200))
    assert any("unstable" in w for w in res.warnings)
    assert any(w.startswith("thresholds (val)") for w in res.warnings)
    assert all(g.small for g in res.subgroups)  # 40 images, 4 positives: every group is flagged


def test_nan_logits_and_missing_labels_are_errors():
    fit = _preds(50, 5, "val")
    bad = _preds(50, 6, "test")
    bad.logits[3] = np.nan
    with pytest.raises(ValueError, match=r"test logits\[3\] = nan"):
        evaluate_predictions(fit, bad, EvaluateConfig(bootstrap_resamples=100))
    with pytest.raises(ValueError, match="label=''; expected 0 or 1"):
        Predictions.from_rows([row(patient_key="a", label="")], [0.1], "test")
    with pytest.raises(ValueError, match="without patient_key"):
        Predictions.from_rows([row(patient_key="", label="1")], [0.1], "test")
    with pytest.raises(ValueError, match="calibration method 'beta'"):
        evaluate_predictions(fit, _preds(50, 7, "test"), EvaluateConfig(calibration="beta"))


@pytest.mark.parametrize("raw,band", [("061Y", "60-79"), ("45", "40-59"), ("80.0", ">=80"), ("006M", "<40"),
                                      ("", "unknown"), ("abc", "unknown"), ("999Y", "unknown")])
def test_age_band(raw, band):
    assert age_band(raw) == band


def test_fit_split_resolution():
    some = [row(split="train"), row(split="val"), row(split="test")]
    assert resolve_fit_split(some, "auto") == "val"
    assert resolve_fit_split(some + [row(split="calib")], "auto") == "calib"
    assert resolve_fit_split(some, "val") == "val"
    with pytest.raises(ConfigError, match=r"evaluate.fit_split: 'test' is not one of \['auto', 'val', 'calib'\]"):
        load_config(None, ["evaluate.fit_split=test"])  # refused at load, before any evaluation


# ------------------------------------------------------------------ compare


def test_compare_reproduces_proc_paired_test():
    a = {f"c{i}": (int(Y[i]), float(MARKERS["wfns"][i])) for i in range(len(Y))}
    b = {f"c{i}": (int(Y[i]), float(MARKERS["s100b"][i])) for i in range(len(Y))}
    res = compare_predictions(a, b, names=("wfns", "s100b"))
    assert res.z == pytest.approx(2.20898359144091, rel=1e-10)  # pROC roc.test(r.wfns, r.s100b)
    assert res.p == pytest.approx(0.0271757822291882, rel=1e-10)
    assert list(res.to_json()) == ["auc_a", "auc_b", "difference", "se", "z", "p", "ci", "level", "correlation",
                                   "n_pos", "n_neg", "method", "warnings", "run_a", "run_b", "n"]
    b.pop("c0")
    with pytest.raises(ValueError, match="different cases: 1 only in wfns"):
        compare_predictions(a, b, names=("wfns", "s100b"))


def test_compare_runs_reads_prediction_files(tmp_path):
    from fibrosis.io import write_csv

    for name, marker in (("run_a", "wfns"), ("run_b", "ndka")):
        rows = [{"content_hash": f"c{i}", "label": int(Y[i]), "logit": float(MARKERS[marker][i])}
                for i in range(len(Y))]
        (tmp_path / name / "eval" / "test").mkdir(parents=True)
        write_csv(tmp_path / name / "eval" / "test" / "predictions.csv", rows, ("content_hash", "label", "logit"))
    res = compare_runs(tmp_path / "run_a", tmp_path / "run_b")
    assert res.z == pytest.approx(2.79777591868904, rel=1e-10)  # pROC roc.test(r.wfns, r.ndka)
    saved = json.loads((tmp_path / "run_a" / "eval" / "test" / "compare_run_b.json").read_text())
    assert saved == res.to_json() and list(saved)[-4:] == ["evaluation_a", "evaluation_b", "split", "split_b"]
    with pytest.raises(FileNotFoundError, match="run `fibrosis evaluate"):
        compare_runs(tmp_path / "run_a", tmp_path / "missing")


# ------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_evaluate_run_end_to_end(tmp_path):
    """Synthetic cache -> real training (tiny) -> evaluate_run -> report; checkpoint updated."""
    from fibrosis.model.cam import load_panels
    from fibrosis.model.checkpoint import load_checkpoint, load_model
    from fibrosis.config import config_from_dict
    from fibrosis.report.build import build_blocks, make_figures
    from fibrosis.report.render import render_html
    from fibrosis.data.synthetic import make_synthetic_cache
    from fibrosis.train.loop import train

    cache = make_synthetic_cache(tmp_path / "cache", n=120, size=64, pos_frac=0.3, seed=0)
    cfg = config_from_dict({
        "model": {"arch": "resnet18", "weights": "none", "input_size": 64},
        "train": {"preset": None, "stages": [{"name": "head", "epochs": 2, "lr": 0.01}], "batch_size": 16,
                  "num_workers": 0, "amp": False, "channels_last": False},
        "evaluate": {"bootstrap_resamples": 300, "deployment_prevalence": 0.015, "data_source": "synthetic"}})
    run = tmp_path / "run"
    train(cfg, cache, run, device="cpu")
    metrics_path = evaluate_run(run, cache, "test", device="cpu")
    m = json.loads(metrics_path.read_text())
    assert m["split"] == "test" and m["fit_split"] == "val"
    assert m["data"]["splits"]["test"]["n"] == m["data"]["n"] == 24
    # baseline per split and label, from the manifest rows; decision curve at both prevalences
    assert [(c["name"], c["n"]) for c in m["baseline"]["columns"]][2:] == [
        ("test", 24), ("fibrosis", m["data"]["n_pos"]), ("no fibrosis", 24 - m["data"]["n_pos"])]
    assert m["decision_curve"]["deployment"]["prevalence"] == 0.015 and m["format"] == 2
    assert m["run"]["pretrained"] is False and m["run"]["arch"] == "resnet18"
    assert m["run"]["stages_run"] == [{"name": "head", "epochs": 2, "lr_peak": m["run"]["stages_run"][0]["lr_peak"],
                                       "best_val_auc": m["run"]["stages_run"][0]["best_val_auc"]}]
    # the run's own config was used (cfg=None): its evaluate section travelled in the checkpoint
    assert m["evaluate_config"]["bootstrap_resamples"] == 300
    preds = (run / "eval" / "test" / "predictions.csv").read_text()
    assert preds.splitlines()[0].startswith("case,content_hash,patient_key,split,label,logit,")
    panels, per_kind = load_panels(run / "eval" / "test" / "gradcam.npz")
    assert [(p["kind"], p["prob"], p["label"]) for p in panels] == \
        [(c["kind"], c["prob"], c["label"]) for c in m["gradcam"]["cases"]] and m["gradcam"]["cases"]
    ckpt = load_checkpoint(run / "best.pt")  # weights_only load
    assert ckpt.calibration is not None and ckpt.threshold is not None
    assert ckpt.calibration.method == m["evaluate_config"]["calibration"]
    assert ckpt.calibration.fitted_on is not None and ckpt.calibration.fitted_on.split == "val"
    assert ckpt.threshold.value == m["operating_points"][0]["threshold"]
    # the stored calibration reproduces the evaluated probabilities exactly
    model, _ = load_model(run / "best.pt")
    cal = calibrator_from_record(ckpt.calibration)
    rows = [line.split(",") for line in preds.splitlines()[1:]]
    logits, probs = np.array([float(r[5]) for r in rows]), np.array([float(r[7]) for r in rows])
    assert cal.predict(logits) == pytest.approx(probs, abs=1e-12)
    # report content from this real evaluation (figure rendering itself is covered in test_report)
    record = EvaluationResult.read(metrics_path)
    figs = make_figures(record, run / "eval" / "test")  # the report draws Grad-CAM from the panels
    html = render_html(build_blocks(record, set(figs)), {"gradcam": figs["gradcam"]}, "t")
    assert html.count("data:image/png;base64,") == 1 and "7. Grad-CAM examples" in html
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)  # keys could occur in base64 by chance
    assert "p000" not in text and "synthetic/0" not in text  # patient keys and paths of the cache


def test_degenerate_bootstrap_is_reported_not_fatal(tmp_path):
    """2 positives among 30 single-image patients: ~13% of resamples lack a positive."""
    from fibrosis.report.build import build_blocks, make_figures

    test = _preds(30, 11, "test", prev=0.0, images_per_patient=1)
    test.labels[:2] = 1
    res, *_ = evaluate_predictions(_preds(200, 10, "val"), test, EvaluateConfig(bootstrap_resamples=400))
    boot = res.discrimination.bootstrap
    assert boot.ci is None and "contained both classes" in boot.error
    assert any("bootstrap CI not reported" in w for w in res.warnings)
    assert res.discrimination.delong.ci is not None
    res.write(tmp_path / "m.json")
    m = EvaluationResult.read(tmp_path / "m.json")
    figs = make_figures(m, tmp_path)  # the ROC figure is drawn without a band
    assert "n/a by patient-clustered bootstrap" in json.dumps(build_blocks(m, set(figs)))


def test_compare_zero_variance_is_recorded_not_p_one(tmp_path):
    from fibrosis.io import write_csv

    y = [1] * 15 + [0] * 15
    perfect = list(np.r_[np.linspace(2, 3, 15), np.linspace(-3, -2, 15)])
    for name, scores in (("run_a", perfect), ("run_b", [0.0] * 30)):
        rows = [{"content_hash": f"c{i}", "label": y[i], "logit": scores[i]} for i in range(30)]
        (tmp_path / name / "eval" / "test").mkdir(parents=True)
        write_csv(tmp_path / name / "eval" / "test" / "predictions.csv", rows, ("content_hash", "label", "logit"))
    res = compare_runs(tmp_path / "run_a", tmp_path / "run_b")
    assert res.p == 0.0 and res.z is None and res.difference == 0.5
    assert any("variance is 0" in w for w in res.warnings)
    saved = json.loads((tmp_path / "run_a" / "eval" / "test" / "compare_run_b.json").read_text())
    assert saved["warnings"] == res.warnings and saved["z"] is None


# ------------------------------------------------------------------ run-level guards (tiny random model)


def _split_keys(rows, split):
    mine = [r for r in rows if r["split"] == split]
    return {"patients": sorted({r["patient_key"] for r in mine}), "images": sorted({r["content_hash"] for r in mine})}


def _tiny_run(tmp_path, *, evaluate=None, with_split_keys=True, splits=None):
    """A real (randomly initialised) resnet18 checkpoint over a 32px synthetic cache: no training."""
    import torch

    from fibrosis.data.cache import manifest_hash

    from fibrosis.io import read_csv
    from fibrosis.model.checkpoint import save_checkpoint, update_checkpoint
    from fibrosis.config import config_from_dict
    from fibrosis.model.net import build_model
    from fibrosis.data.synthetic import make_synthetic_cache

    cache = make_synthetic_cache(tmp_path / "cache", n=80, size=32, pos_frac=0.3, seed=0,
                                 splits=splits or {"train": 0.5, "val": 0.25, "test": 0.25})
    torch.manual_seed(0)
    model = build_model("resnet18", "none", input_size=32)
    cfg = config_from_dict({"model": {"arch": "resnet18", "weights": "none", "input_size": 32},
                            "evaluate": {"bootstrap_resamples": 200, "gradcam_per_kind": 0, **(evaluate or {})}})
    run = tmp_path / "run"
    save_checkpoint(run / "best.pt", checkpoint_of(model, cfg, manifest_hash=manifest_hash(cache)))
    if with_split_keys:  # what train.py records
        rows = read_csv(cache / "manifest.csv")
        update_checkpoint(run / "best.pt", split_keys={s: _split_keys(rows, s) for s in ("train", "val")})
    return run, cache


def _rewrite_manifest(cache, change):
    from fibrosis.data.cache import MANIFEST_COLUMNS
    from fibrosis.io import read_csv, write_csv

    rows = read_csv(cache / "manifest.csv")
    change(rows)
    write_csv(cache / "manifest.csv", rows, tuple(c for c in MANIFEST_COLUMNS if c in rows[0]))


def test_split_isolation_pure_check():
    from fibrosis.evaluate.checks import check_split_isolation

    keys = {"train": {"patients": ["a", "b"], "images": ["ha", "hb"]}, "val": {"patients": ["v"], "images": ["hv"]}}
    clean = [row(patient_key="t", content_hash="ht")]
    check_split_isolation(keys, "test", clean, "val", [row(patient_key="v", content_hash="hv")])  # by design
    with pytest.raises(ValueError, match=r"split 'test'.*2 of 3 patient\(s\) and 1 of 3 image\(s\).*train or val"
                                         r".*original seed.*fresh cache"):
        check_split_isolation(keys, "test", clean + [row(patient_key="a", content_hash="new"),
                                                     row(patient_key="v", content_hash="hb")], "val", [])
    with pytest.raises(ValueError, match=r"fit split 'calib'.*1 of 1 patient\(s\) and 0 of 1 image\(s\).*train"):
        check_split_isolation(keys, "test", clean, "calib", [row(patient_key="b", content_hash="x")])
    check_split_isolation(keys, "all", clean, None, None)  # frozen: no fit split


def test_resplit_after_training_is_refused(tmp_path):
    run, cache = _tiny_run(tmp_path)

    def move_train_to_test(rows):
        for r in [r for r in rows if r["split"] == "train"][:5]:
            r["split"] = "test"
    _rewrite_manifest(cache, move_train_to_test)
    with pytest.raises(ValueError, match=r"split 'test': 5 of 25 patient\(s\) and 5 of 25 image\(s\)"):
        evaluate_run(run, cache, "test", gradcam=False, device="cpu")
    assert __import__("fibrosis.model.checkpoint").model.checkpoint.load_checkpoint(run / "best.pt").calibration is None


@pytest.mark.slow
def test_old_checkpoint_manifest_change_is_a_recorded_warning(tmp_path):
    from fibrosis.report.build import build_blocks

    run, cache = _tiny_run(tmp_path, with_split_keys=False)
    _rewrite_manifest(cache, lambda rows: rows.reverse())  # same split assignment, different file
    m = EvaluationResult.read(evaluate_run(run, cache, "test", gradcam=False, device="cpu"))
    warning = next(w for w in m.warnings if "manifest differs" in w)
    assert "cannot verify" in warning and "'test'" in warning
    assert warning in json.dumps(build_blocks(m, set()))


@pytest.mark.parametrize("split,match", [("train", "split='train' was used to fit the model"),
                                         ("val", "split='val' is also the calibration/threshold split"),
                                         ("all", "split='all' .* only with frozen=True")])
def test_evaluated_split_must_be_held_out(tmp_path, split, match):
    run, cache = _tiny_run(tmp_path)
    with pytest.raises(ValueError, match=match):
        evaluate_run(run, cache, split, gradcam=False, device="cpu")


@pytest.mark.slow
def test_overrides_go_on_top_of_the_checkpoint_config(tmp_path):
    run, cache = _tiny_run(tmp_path, evaluate={"calibration": "platt", "target_sensitivities": [0.8]})
    m = json.loads(evaluate_run(run, cache, "test", overrides=["evaluate.deployment_prevalence=0.015"],
                                gradcam=False, device="cpu").read_text())
    ec = m["evaluate_config"]
    assert (ec["calibration"], ec["target_sensitivities"], ec["deployment_prevalence"]) == ("platt", [0.8], 0.015)
    assert [o["name"] for o in m["operating_points"]] == ["youden", "sensitivity_0.80"]
    with pytest.raises(ValueError, match=r"train.batch_size=8.*allowed: evaluate\.\*"):
        evaluate_run(run, cache, "test", overrides=["train.batch_size=8"], gradcam=False, device="cpu")


@pytest.mark.slow
def test_frozen_external_validation_leaves_the_checkpoint_untouched(tmp_path):
    import hashlib

    from fibrosis.model.checkpoint import load_checkpoint
    from fibrosis.data.synthetic import make_synthetic_cache

    run, cache = _tiny_run(tmp_path)
    with pytest.raises(ValueError, match="no calibration/threshold stored"):
        evaluate_run(run, cache, "test", frozen=True, gradcam=False, device="cpu")
    evaluate_run(run, cache, "test", gradcam=False, device="cpu")
    stored = load_checkpoint(run / "best.pt")
    before = hashlib.sha256((run / "best.pt").read_bytes()).hexdigest()

    ext = make_synthetic_cache(tmp_path / "site_b", n=40, size=32, pos_frac=0.3, seed=5, splits={"test": 1.0})

    def other_site(rows):
        for r in rows:
            r["patient_key"] = "siteB-" + r["patient_key"]
            del r["split"]  # an external cache need not be split at all
    _rewrite_manifest(ext, other_site)
    m = json.loads(evaluate_run(run, ext, "all", frozen=True, overrides=["evaluate.calibration=isotonic"],
                                gradcam=False, device="cpu").read_text())
    assert hashlib.sha256((run / "best.pt").read_bytes()).hexdigest() == before
    assert m["frozen"] is True and m["split"] == "all" and m["data"]["n"] == 40
    assert m["fit_split"] == "val" and m["calibration"]["calibrator"] == stored.calibration.to_json()
    assert m["calibration"]["method"] == stored.calibration.method != "isotonic"  # stored one, not --set
    assert {o["name"]: o["threshold"] for o in m["operating_points"]} == stored.threshold.points
    cases = (run / "eval" / "frozen-site_b-all" / "predictions.csv").read_text().splitlines()
    assert len(cases) == 41
    assert not (run / "eval" / "all").exists()

    def same_patients(rows):  # site B's cache holds training patients: refused like a re-split
        rows[0]["patient_key"] = stored.split_keys["train"]["patients"][0]
    _rewrite_manifest(ext, same_patients)
    with pytest.raises(ValueError, match=r"split 'all': 1 of 40 patient\(s\)"):
        evaluate_run(run, ext, "all", frozen=True, gradcam=False, device="cpu")
