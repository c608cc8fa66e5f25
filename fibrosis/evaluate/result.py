"""``metrics.json``: the record of one evaluation (:class:`EvaluationResult`), its one writer and
its one reader.

`fibrosis evaluate` writes it; `fibrosis report` reads it (and copies it beside the report). The
top level is typed here. The sections below it stay JSON-shaped as their compute functions return
them, each described where it is made, because the report shows them whole and a reader outside
Python (R, a spreadsheet) reads the same file:

- ``data``: counts, prevalence, the fit split's counts, then the cache's provenance
  (:func:`fibrosis.evaluate.summary.data_summary`);
- ``discrimination``: AUC with its DeLong and bootstrap intervals, ROC and PR curves
  (:func:`fibrosis.evaluate.run.evaluate_predictions`, :mod:`fibrosis.evaluate.metrics`);
- ``calibration``: the calibrator and reliability before/after it;
- ``operating_points``: one entry per threshold rule (:mod:`fibrosis.evaluate.operating`);
- ``subgroups``: AUC and counts per attribute value;
- ``run``: the model, weights and schedule (:func:`fibrosis.evaluate.summary.run_summary`);
- ``gradcam``: the panels shown in the report, when made;
- ``baseline``: age, sex, view and manufacturer per split and per label
  (:func:`fibrosis.evaluate.baseline.baseline_table`);
- ``decision_curve``: net benefit against treat-all / treat-none
  (:func:`fibrosis.evaluate.decision.decision_curve`).

Schema 1 files (written before ``baseline`` and ``decision_curve`` existed) are read with both
set to None; the report then says they were not computed for that evaluation.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fibrosis.artefacts import check_schema
from fibrosis.io import read_text, write_json

# The file's own key is "format", as every evaluation so far wrote it.
METRICS_SCHEMA = 2
# Sections each schema added: absent from an older file, read as None.
ADDED_IN = {2: ("baseline", "decision_curve")}


@dataclass(frozen=True)
class EvaluationResult:
    """One split of one cache, measured with one model, calibration and set of thresholds."""
    split: str  # the evaluated split ("all": every row, external validation)
    fit_split: str | None  # where calibration and thresholds were fitted (val, calib, out-of-fold)
    frozen: bool  # True: calibration and thresholds applied as stored, nothing refitted
    created: str  # UTC, ISO 8601
    evaluate_config: dict[str, Any]
    data: dict[str, Any]
    discrimination: dict[str, Any]
    calibration: dict[str, Any]
    operating_points: list[dict[str, Any]]
    deployment_prevalence: float | None
    subgroups: list[dict[str, Any]]
    warnings: list[str]  # what qualifies the numbers, most serious first
    run: dict[str, Any] = field(default_factory=dict)
    gradcam: dict[str, Any] | None = None
    baseline: dict[str, Any] | None = None  # None: schema 1, or the rows were not at hand
    decision_curve: dict[str, Any] | None = None  # None: schema 1
    schema: int = dataclasses.field(default=METRICS_SCHEMA, compare=False)  # the schema it was read as

    @property
    def auc(self) -> float:
        return float(self.discrimination["auc"])

    @property
    def run_name(self) -> str:
        return str(self.run.get("name", ""))

    @property
    def pretrained(self) -> bool:
        return bool(self.run.get("pretrained", False))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": METRICS_SCHEMA}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "schema":
                continue  # written as "format", always the current one
            if f.name == "gradcam" and value is None:
                continue  # no panels made: the key is absent, as readers of older files expect
            out[f.name] = value
        return out

    def write(self, path: Path) -> None:
        """The one writer: standard JSON (a quantity that does not exist is null, never NaN)."""
        write_json(path, self.to_json())

    @classmethod
    def read(cls, path: str | Path) -> "EvaluationResult":
        """The one reader: refuses a newer schema, a file without one, or one missing a section;
        migrates schema 1 (its missing sections are None)."""
        data = json.loads(read_text(path))
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object written by `fibrosis evaluate`")
        schema = check_schema(path, data.pop("format", None), METRICS_SCHEMA, oldest=1)
        later = [n for version, added in ADDED_IN.items() if version > schema for n in added]
        if any(n in data for n in later):
            raise ValueError(f"{path}: metrics.json of schema {schema} with {sorted(n for n in later if n in data)}, "
                             f"which only schema {METRICS_SCHEMA} has")
        data.update({n: None for n in later})
        names = [f.name for f in dataclasses.fields(cls) if f.name != "schema"]
        required = names[:12] + [n for added in ADDED_IN.values() for n in added]
        missing = [n for n in required if n not in data]
        unknown = sorted(set(data) - set(names))
        if missing or unknown:
            raise ValueError(f"{path}: metrics.json " + "; ".join(
                ([f"without {missing}"] if missing else []) + ([f"with unknown keys {unknown}"] if unknown else []))
                + f"; schema {METRICS_SCHEMA} has {names}")
        return cls(**data, schema=schema)
