"""MLflow runs for tune and evaluate (train.mlflow_uri): params, metrics, tags and artefacts land in
a real MLflow file store. mlflow is an optional extra: skipped where it is not installed."""
from __future__ import annotations


import pytest

from fibrosis.evaluate.tune_record import SelectionAdjusted
from helpers.records import evaluation_result, judged_arms, tune_arm, tune_result

from fibrosis.cli.tracking import log_evaluation, log_tune, numbers
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
                      evaluate_config={"ci_level": 0.95},
                      discrimination={"auc": 0.71, "delong": {"ci": [0.6, 0.82]}},
                      calibration={"slope": 0.9, "intercept": -0.1, "ece": None}).write(folder / "metrics.json")
    write_csv(folder / "predictions.csv", [{"content_hash": "h", "label": 1, "logit": 0.3}], ("content_hash", "label", "logit"))
    run_id = log_evaluation(store, folder / "metrics.json")
    run = _client(store).get_run(run_id)
    assert run.data.metrics == {"discrimination.auc": 0.71, "discrimination.delong.ci.0": 0.6,
                                "discrimination.delong.ci.1": 0.82, "calibration.slope": 0.9,
                                "calibration.intercept": -0.1}
    assert run.data.params["frozen"] == "True" and run.data.params["evaluate.ci_level"] == "0.95"
    assert run.data.tags["fibrosis.command"] == "evaluate" and run.data.tags["fibrosis.evaluation"] == folder.name
    assert run.data.tags["mlflow.runName"] == "r1 evaluate frozen-site2-all"
    assert sorted(a.path for a in _client(store).list_artifacts(run_id)) == ["metrics.json", "predictions.csv"]


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
