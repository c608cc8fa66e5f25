"""MLflow runs for `fibrosis tune` and `fibrosis evaluate` (`train` logs its own, per epoch:
fibrosis.train.runlog), made when ``train.mlflow_uri`` is set: the stage's settings as params, its
results as metrics, its JSON (and predictions) as artefacts. An evaluation's run is recorded beside
it (``mlflow.json``: :class:`MlflowLink`), so that `fibrosis report` adds the report to that same
run. mlflow is an optional dependency, imported only then."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fibrosis import artefacts
from fibrosis.artefacts import check_schema
from fibrosis.io import read_text, write_json
from fibrosis.train.runlog import MlflowTracker
from fibrosis.evaluate.tune_record import TuneResult

LINK_SCHEMA = 1


@dataclass(frozen=True)
class MlflowLink:
    """The MLflow run an evaluation was logged to: ``RUN/eval/<name>/mlflow.json``."""
    uri: str  # the tracking URI, a relative path made absolute (`report` may run elsewhere)
    run_id: str

    def write(self, path: Path) -> None:
        write_json(path, {"schema": LINK_SCHEMA, "uri": self.uri, "run_id": self.run_id})

    @classmethod
    def read(cls, path: Path) -> "MlflowLink":
        data = json.loads(read_text(path))
        if not isinstance(data, dict) or not isinstance(data.get("uri"), str) or not isinstance(data.get("run_id"), str):
            raise ValueError(f"{path}: expected a JSON object with 'uri' and 'run_id' (written by `fibrosis evaluate`)")
        check_schema(path, data.get("schema"), LINK_SCHEMA)
        return cls(data["uri"], data["run_id"])


def pinned_uri(uri: str) -> str:
    """``uri`` with a relative file-store or SQLite path made absolute; any other URI as given."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    if uri.startswith("file:") and not uri.startswith("file://"):
        return "file:" + str(Path(uri[len("file:"):]).resolve())
    if ":" not in uri:  # a plain folder: MLflow's file store
        return str(Path(uri).resolve())
    return uri


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
    calibration, metrics.json and predictions.csv; its id goes to mlflow.json beside them.
    Returns the MLflow run id."""
    from fibrosis.evaluate.result import EvaluationResult  # its section records load scipy

    folder = metrics_path.parent
    result = EvaluationResult.read(metrics_path)
    params: dict[str, Any] = {"split": result.split, "fit_split": result.fit_split, "frozen": result.frozen,
                              "deployment_prevalence": result.deployment_prevalence,
                              "evaluate": result.evaluate_config}
    run = folder.parent.parent
    tracker = MlflowTracker(uri, f"{run.name} evaluate {folder.name}", params, None)
    try:
        metrics = {**numbers(result.discrimination.to_json(), "discrimination."),
                   **numbers(result.calibration.to_json(), "calibration.")}
        tracker.log_summary(metrics, {"fibrosis.command": "evaluate", "fibrosis.run": str(run),
                                      "fibrosis.evaluation": folder.name})
        for name in (artefacts.METRICS, artefacts.PREDICTIONS):
            if (folder / name).is_file():
                tracker.log_artifact(folder / name)
        MlflowLink(pinned_uri(uri), tracker.run_id).write(folder / artefacts.MLFLOW_RUN)
        return tracker.run_id
    finally:
        tracker.close()


def attach_report(eval_dir: Path, report_dir: Path) -> MlflowLink | None:
    """Add report.html and report.pdf of ``report_dir`` to the MLflow run ``eval_dir``'s evaluation
    was logged to; None (nothing done) when it was not tracked."""
    path = eval_dir / artefacts.MLFLOW_RUN
    if not path.is_file():
        return None
    link = MlflowLink.read(path)
    tracker = MlflowTracker(link.uri, "", {}, link.run_id)
    try:
        for name in (artefacts.REPORT_HTML, artefacts.REPORT_PDF):
            if (report_dir / name).is_file():
                tracker.log_artifact(report_dir / name)
        return link
    finally:
        tracker.close()
