"""MLflow runs for tune and evaluate (train.mlflow_uri): params, metrics, tags and artefacts land in
a real MLflow file store. mlflow is an optional extra: skipped where it is not installed."""
from __future__ import annotations


import pytest

from fibrosis.evaluate.tune_record import SelectionAdjusted
from helpers.records import evaluation_result, judged_arms, tune_arm, tune_result
from helpers.runs import make_run

from fibrosis.cli.main import main
from fibrosis.cli.tracking import MlflowLink, attach_report, log_evaluation, log_tune, numbers, pinned_uri
from fibrosis.io import write_csv


def test_numbers_takes_the_finite_numeric_leaves():
    tree = {"auc": 0.7, "ci": [0.6, 0.8], "n": 3, "ok": True, "name": "x", "bad": float("nan"), "sub": {"p": 1e-3}}
    assert numbers(tree, "d.") == {"d.auc": 0.7, "d.ci.0": 0.6, "d.ci.1": 0.8, "d.n": 3.0, "d.sub.p": 1e-3}


@pytest.fixture
def store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="mlflow is an optional extra (pip install mlflow)")
    # MLflow 3 keeps the file store for those who ask for it; a database store needs SQLAlchemy.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return f"file:{tmp_path / 'mlruns'}"


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def test_an_evaluation_is_an_mlflow_run(tmp_path, store):
    folder = tmp_path / "runs" / "r1" / "eval" / "frozen-site2-all"
    folder.mkdir(parents=True)
    evaluation_result(split="all", fit_split="stored", frozen=True, deployment_prevalence=0.015,
                      evaluate_config={"ci_level": 0.95}).write(folder / "metrics.json")
    write_csv(folder / "predictions.csv", [{"content_hash": "h", "label": 1, "logit": 0.3}], ("content_hash", "label", "logit"))
    run_id = log_evaluation(store, folder / "metrics.json")
    run = _client(store).get_run(run_id)
    metrics = run.data.metrics
    assert (metrics["discrimination.auc"], metrics["discrimination.delong.ci.0"], metrics["discrimination.delong.ci.1"],
            metrics["calibration.after.intercept_slope.slope"], metrics["calibration.after.brier"]) == (
        0.75, 0.55, 0.95, 0.9, 0.125)
    assert all(k.startswith(("discrimination.", "calibration.")) for k in metrics)
    # null leaves (the bootstrap here was not reported) are left out, not logged as numbers
    assert not any(k.startswith("discrimination.bootstrap.ci") for k in metrics)
    assert "discrimination.bootstrap.n_patients" in metrics
    assert run.data.params["frozen"] == "True" and run.data.params["evaluate.ci_level"] == "0.95"
    assert run.data.tags["fibrosis.command"] == "evaluate" and run.data.tags["fibrosis.evaluation"] == folder.name
    assert run.data.tags["mlflow.runName"] == "r1 evaluate frozen-site2-all"
    assert sorted(a.path for a in _client(store).list_artifacts(run_id)) == ["metrics.json", "predictions.csv"]
    assert MlflowLink.read(folder / "mlflow.json") == MlflowLink(store, run_id)  # for `fibrosis report`


def test_report_adds_itself_to_the_evaluations_mlflow_run(tmp_path, store, capsys):
    run = make_run(tmp_path, pretrained=True)
    run_id = log_evaluation(store, run / "eval" / "test" / "metrics.json")
    assert main(["report", "--run", str(run), "--out", str(tmp_path / "report")]) == 0
    assert f"report added to MLflow run {run_id}" in capsys.readouterr().err
    assert sorted(a.path for a in _client(store).list_artifacts(run_id)) == ["metrics.json", "report.html",
                                                                            "report.pdf"]


def test_an_evaluation_not_tracked_adds_nothing(tmp_path):
    assert attach_report(tmp_path / "eval" / "test", tmp_path / "report") is None


def test_a_relative_store_is_recorded_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert pinned_uri("file:./mlruns") == f"file:{tmp_path / 'mlruns'}"
    assert pinned_uri("mlruns") == str(tmp_path / "mlruns")
    assert pinned_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert pinned_uri("sqlite:////abs/mlflow.db") == "sqlite:////abs/mlflow.db"
    assert pinned_uri("https://mlflow.example.org") == "https://mlflow.example.org"


def test_a_tune_is_an_mlflow_run(tmp_path, store):
    run_dir = tmp_path / "t1"
    run_dir.mkdir()
    result = tune_result(tune_config={"folds": 3, "arms": ["head-only", "last1"]}, arch="mobilenet_v2", chosen="last1",
                         n_dev=121, n_dev_pos=26, arms=[tune_arm(a) for a in judged_arms([
                             {"name": "head-only", "auc": 0.62, "depth": 0, "lr_ratio": 1.0},
                             {"name": "last1", "auc": 0.66, "depth": 1, "lr_ratio": 10.0},
                             {"name": "random-init", "auc": None, "depth": 1, "lr_ratio": 1.0, "failed": "constant"}])],
                         selection_adjusted=SelectionAdjusted(0.63, 0.66, 0.03, 3, 2, "Tibshirani & Tibshirani 2009"))
    result.write(run_dir / "tune.json")
    run_id = log_tune(store, run_dir, result)
    run = _client(store).get_run(run_id)
    assert run.data.metrics == {"arm.head-only.oof_auc": 0.62, "arm.last1.oof_auc": 0.66,
                                "selection_adjusted.auc": 0.63, "selection_adjusted.pooled_auc": 0.66,
                                "selection_adjusted.bias": 0.03, "selection_adjusted.folds": 3.0,
                                "selection_adjusted.arms": 2.0}
    assert run.data.params["chosen"] == "last1" and run.data.params["tune.folds"] == "3"
    assert run.data.tags["fibrosis.command"] == "tune"
    assert [a.path for a in _client(store).list_artifacts(run_id)] == ["tune.json"]
