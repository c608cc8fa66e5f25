"""Run-directory records of a training run: train.log, metrics.csv/jsonl, config.yaml, MLflow.

The metric files are rewritten whole from the history stored in the checkpoint after
every epoch, so after a crash and ``--resume`` they hold exactly the epochs the
checkpoint knows about: no duplicated or orphaned rows.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from fibrosis import artefacts
from fibrosis.io import atomic_write_bytes, write_csv

logger = logging.getLogger(__name__)



@dataclass(frozen=True, slots=True)
class EpochRow:
    """One epoch of `fibrosis train`: a row of metrics.csv/jsonl and of the checkpoint's run history."""
    epoch: int  # over all stages
    stage: int
    stage_name: str
    epoch_in_stage: int
    lr: float
    train_loss: float
    val_loss: float
    val_auc: float
    best_val_auc: float
    improved: bool
    n_trainable: int
    cached_features: bool
    seconds: float
    train_images_per_s: float

    def to_json(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in METRIC_COLUMNS}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "EpochRow":
        if not isinstance(data, dict) or set(data) != set(METRIC_COLUMNS):
            raise ValueError(f"{where}: history row {str(data)[:200]!r}; expected exactly the keys {list(METRIC_COLUMNS)}")
        return cls(**data)


METRIC_COLUMNS = tuple(f.name for f in dataclasses.fields(EpochRow))


def attach_file_log(path: Path) -> logging.Handler:
    """Send the package's log records to ``path`` too (appending: a resume continues it)."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    pkg = logging.getLogger("fibrosis")
    pkg.addHandler(handler)
    # train.log wants INFO records even when the package logger is quieter: lower its
    # level for the duration of the run (restored by detach_file_log).
    handler.previous_level = pkg.level  # type: ignore[attr-defined]
    if pkg.getEffectiveLevel() > logging.INFO:
        pkg.setLevel(logging.INFO)
    return handler


def detach_file_log(handler: logging.Handler) -> None:
    pkg = logging.getLogger("fibrosis")
    pkg.removeHandler(handler)
    pkg.setLevel(getattr(handler, "previous_level", pkg.level))
    handler.close()


class _OnlyWarnings(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith(self.prefix)


@contextmanager
def console_warnings_only(prefix: str) -> Iterator[None]:
    """While inside, the root handlers (the console, ``--log-file``) show only warnings of the
    ``prefix`` loggers; the run's own train.log keeps every line. `fibrosis tune` runs
    `fibrosis train` once per fold: its per-epoch lines would bury the arms' one-line
    summaries. With ``-v`` (root at DEBUG) nothing is hidden."""
    root = logging.getLogger()
    if root.getEffectiveLevel() <= logging.DEBUG:
        yield
        return
    only = _OnlyWarnings(prefix)
    handlers = list(root.handlers)
    for h in handlers:
        h.addFilter(only)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(only)


def write_metrics(out_dir: Path, history: list[EpochRow]) -> None:
    rows = [row.to_json() for row in history]
    write_csv(out_dir / artefacts.EPOCHS_CSV, rows, METRIC_COLUMNS)
    text = "".join(json.dumps(row) + "\n" for row in rows)
    atomic_write_bytes(out_dir / artefacts.EPOCHS_JSONL, text.encode("utf-8"))


def write_config(out_dir: Path, cfg_dict: dict[str, Any], extra: dict[str, Any]) -> None:
    """The resolved config as YAML (loadable by fibrosis.config.load_config), extras as comments."""
    head = "".join(f"# {k}: {v}\n" for k, v in extra.items())
    body = yaml.safe_dump(cfg_dict, sort_keys=False)
    atomic_write_bytes(out_dir / "config.yaml", (head + body).encode("utf-8"))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


class MlflowTracker:
    """Optional MLflow tracking (imported only when a tracking URI is configured)."""

    def __init__(self, uri: str, run_name: str, params: dict[str, Any], run_id: str | None):
        try:
            import mlflow  # noqa: PLC0415 - optional dependency
        except ImportError as exc:
            raise RuntimeError(f"train.mlflow_uri={uri!r} but mlflow is not installed; "
                               f"`pip install mlflow` or set train.mlflow_uri: null") from exc
        self.mlflow = mlflow
        mlflow.set_tracking_uri(uri)
        self.run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name)
        if run_id is None:
            flat = {k: str(v)[:500] for k, v in _flatten(params).items()}
            mlflow.log_params(flat)

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def log_epoch(self, row: EpochRow) -> None:
        metrics = {k: float(v) for k, v in row.to_json().items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.mlflow.log_metrics(metrics, step=row.epoch)

    def log_artifact(self, path: Path) -> None:
        self.mlflow.log_artifact(str(path))

    def log_summary(self, metrics: dict[str, float], tags: dict[str, str]) -> None:
        """Metrics of a whole stage (no step) and tags that say which command and folder made it."""
        self.mlflow.set_tags(tags)
        self.mlflow.log_metrics(metrics)

    def close(self) -> None:
        self.mlflow.end_run()
