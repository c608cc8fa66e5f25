"""``tune.json``: what `fibrosis tune` decided and why (:class:`TuneResult`), its one writer and its
one reader. The tune workflow (:mod:`fibrosis.pipeline.tune`) writes it; the report reads it.

``arms`` stays one JSON-shaped row per arm, as the report's table shows it: the arm's recipe
(:meth:`fibrosis.train.tune.results.ArmResult.to_dict`), its pooled out-of-fold AUC with CI and ROC,
the paired comparisons of :func:`fibrosis.evaluate.selection.select_arm`, the AUC of every repeat and
its cost. ``replication`` is the list of checks :func:`fibrosis.evaluate.selection.replicated_choice`
made, ``selection_adjusted`` the Tibshirani & Tibshirani estimate.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fibrosis.artefacts import check_schema
from fibrosis.io import read_text, write_json

# 0: files written before tune.json carried a schema number; the same fields, read as they are.
TUNE_SCHEMA = 1


@dataclass(frozen=True)
class TuneResult:
    """The arms compared, the choice and its evidence, for one `fibrosis tune` run."""
    level: float  # confidence level of every interval
    rule: str  # tune.selection: best | replicated
    n: int  # development images (pooled out of fold)
    n_pos: int
    arms: list[dict[str, Any]]  # one row per arm, reference first
    best: str  # the arm with the highest pooled OOF AUC
    random_control: str | None
    reference: str | None
    chosen: str  # the arm packaged into best.pt
    reason: str  # why, in words
    warnings: list[str]
    created: str  # UTC, ISO 8601
    tune_config: dict[str, Any]
    arch: str
    folds: int
    repeats: int
    finalist_repeats: int
    n_dev: int
    n_dev_pos: int
    n_dev_patients: int
    features: dict[str, Any]  # minutes spent on frozen features and augmented views
    final: str  # tune.final: ensemble | refit
    checkpoint: str  # the file name of the packaged model, beside tune.json
    first_choice: str  # before replication
    replication: list[dict[str, Any]]
    selection_adjusted: dict[str, Any]
    skipped_arms: dict[str, str]  # arm -> why it was not run
    aux: dict[str, Any]  # auxiliary findings: heads and their labels
    minutes_total: float

    def write(self, path: Path) -> None:
        """Standard JSON: a quantity that does not exist (a failed arm's AUC) is null."""
        write_json(path, {"schema": TUNE_SCHEMA, **dataclasses.asdict(self)})

    @classmethod
    def read(cls, path: Path) -> "TuneResult":
        data = json.loads(read_text(path))
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object written by `fibrosis tune`")
        check_schema(path, data.pop("schema", 0), TUNE_SCHEMA, oldest=0)
        names = [f.name for f in dataclasses.fields(cls)]
        missing, unknown = [n for n in names if n not in data], sorted(set(data) - set(names))
        if missing or unknown:
            raise ValueError(f"{path}: tune.json " + "; ".join(
                ([f"without {missing}"] if missing else []) + ([f"with unknown keys {unknown}"] if unknown else []))
                + f"; schema {TUNE_SCHEMA} has {names}")
        return cls(**data)
