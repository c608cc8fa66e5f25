"""MLflow runs for `fibrosis tune` and `fibrosis evaluate` (`train` logs its own, per epoch:
fibrosis.train.runlog), made when ``train.mlflow_uri`` is set: the stage's settings as params, its
results as metrics, its JSON (and predictions) as artefacts. mlflow is an optional dependency,
imported only then."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fibrosis import artefacts
from fibrosis.evaluate.result import EvaluationResult
from fibrosis.train.runlog import MlflowTracker
from fibrosis.evaluate.tune_record import TuneResult


def numbers(tree: Any, prefix: str = "") -> dict[str, float]:
    """The finite numeric leaves of a JSON tree, keyed by their dotted path (lists by index)."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    out: dict[str, float] = {}
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, (dict, list)):
            out.update(numbers(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def log_tune(uri: str, run: Path, result: TuneResult) -> str:
    """One MLflow run for a finished tune: its settings, each arm's pooled OOF AUC, the chosen arm's
    selection-adjusted AUC, tune.json. Returns the MLflow run id."""
    params = {"tune": result.tune_config, "arch": result.arch, "chosen": result.chosen,
              "n_dev": result.n_dev, "n_dev_pos": result.n_dev_pos}
    tracker = MlflowTracker(uri, f"{run.name} tune", params, None)
    try:
        metrics = {f"arm.{a.name}.oof_auc": float(auc) for a in result.arms
                   if (auc := a.score.auc) is not None and math.isfinite(auc)}
        adjusted = result.selection_adjusted.to_json() if result.selection_adjusted else {}
        metrics.update({f"selection_adjusted.{k}": v for k, v in numbers(adjusted).items()})
        tracker.log_summary(metrics, {"fibrosis.command": "tune", "fibrosis.run": str(run)})
        tracker.log_artifact(run / artefacts.TUNE)
        return tracker.run_id
    finally:
        tracker.close()


def log_evaluation(uri: str, metrics_path: Path) -> str:
    """One MLflow run for an evaluation: its settings, the numbers of its discrimination and
    calibration, metrics.json and predictions.csv. Returns the MLflow run id."""
    folder = metrics_path.parent
    result = EvaluationResult.read(metrics_path)
    params: dict[str, Any] = {"split": result.split, "fit_split": result.fit_split, "frozen": result.frozen,
                              "deployment_prevalence": result.deployment_prevalence,
                              "evaluate": result.evaluate_config}
    run = folder.parent.parent
    tracker = MlflowTracker(uri, f"{run.name} evaluate {folder.name}", params, None)
    try:
        metrics = {**numbers(result.discrimination, "discrimination."),
                   **numbers(result.calibration, "calibration.")}
        tracker.log_summary(metrics, {"fibrosis.command": "evaluate", "fibrosis.run": str(run),
                                      "fibrosis.evaluation": folder.name})
        for name in (artefacts.METRICS, artefacts.PREDICTIONS):
            if (folder / name).is_file():
                tracker.log_artifact(folder / name)
        return tracker.run_id
    finally:
        tracker.close()
