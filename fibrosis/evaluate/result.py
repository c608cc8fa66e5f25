"""``metrics.json``: the record of one evaluation (:class:`EvaluationResult`), its one writer and
its one reader.

`fibrosis evaluate` writes it; `fibrosis report` reads it (and copies it beside the report). Each
section is a frozen record declared beside the code that computes it; ``to_json()`` gives the
section exactly as the file holds it (a reader outside Python, R or a spreadsheet, reads the same
file) and ``from_json()`` reads it back, naming the file and key on a bad value:

- ``data``: counts, prevalence, the fit split's counts, then the cache's provenance
  (:class:`fibrosis.evaluate.summary.DataSummary`);
- ``discrimination``: AUC with its DeLong and bootstrap intervals, ROC and PR curves
  (:class:`fibrosis.evaluate.metrics.Discrimination`);
- ``calibration``: the calibrator and reliability before/after it
  (:class:`fibrosis.evaluate.metrics.CalibrationSummary`);
- ``operating_points``: one entry per threshold rule
  (:class:`fibrosis.evaluate.operating.MeasuredOperatingPoint`);
- ``subgroups``: AUC and counts per attribute value (:class:`fibrosis.evaluate.operating.SubgroupRow`);
- ``run``: the model, weights and schedule (:class:`fibrosis.evaluate.summary.RunSummary`);
- ``gradcam``: the panels shown in the report, when made (:class:`GradcamSummary`);
- ``baseline``: age, sex, view and manufacturer per split and per label
  (:class:`fibrosis.evaluate.baseline.BaselineTable`);
- ``decision_curve``: net benefit against treat-all / treat-none
  (:class:`fibrosis.evaluate.decision.DecisionCurve`).

Schema 1 files (written before ``baseline`` and ``decision_curve`` existed) are read with both
set to None; the report then says they were not computed for that evaluation.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fibrosis.artefacts import check_schema
from fibrosis.evaluate.baseline import BaselineTable
from fibrosis.evaluate.decision import DecisionCurve
from fibrosis.evaluate.metrics import CalibrationSummary, Discrimination
from fibrosis.evaluate.operating import MeasuredOperatingPoint, SubgroupRow
from fibrosis.evaluate.shape import arr, obj
from fibrosis.evaluate.summary import DataSummary, RunSummary
from fibrosis.io import read_text, write_json

# The file's own key is "format", as every evaluation so far wrote it.
METRICS_SCHEMA = 2
# Sections each schema added: absent from an older file, read as None.
ADDED_IN = {2: ("baseline", "decision_curve")}


@dataclass(frozen=True, slots=True)
class GradcamCase:
    """One panel: its kind (TP, FP, FN, TN), calibrated probability and label; no identifiers."""
    kind: str
    prob: float
    label: int

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "prob": self.prob, "label": self.label}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "GradcamCase":
        d = obj(data, where, ("kind", "prob", "label"))
        return cls(d["kind"], d["prob"], d["label"])


@dataclass(frozen=True, slots=True)
class GradcamSummary:
    """The ``gradcam`` section: what :func:`fibrosis.model.cam.gradcam_panels` computed (the
    arrays are in gradcam.npz beside metrics.json; the report draws ``image`` from them)."""
    image: str
    threshold: float
    layer: str
    method: str
    cases: list[GradcamCase]
    missing_kinds: list[str]  # kinds with no case on this split

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image, "threshold": self.threshold, "layer": self.layer, "method": self.method,
                "cases": [c.to_json() for c in self.cases], "missing_kinds": list(self.missing_kinds)}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "GradcamSummary":
        d = obj(data, where, ("image", "threshold", "layer", "method", "cases", "missing_kinds"))
        return cls(d["image"], d["threshold"], d["layer"], d["method"],
                   [GradcamCase.from_json(c, f"{where}.cases[{i}]") for i, c in enumerate(arr(d["cases"], f"{where}.cases"))],
                   arr(d["missing_kinds"], f"{where}.missing_kinds"))


@dataclass(frozen=True)
class EvaluationResult:
    """One split of one cache, measured with one model, calibration and set of thresholds."""
    split: str  # the evaluated split ("all": every row, external validation)
    fit_split: str | None  # where calibration and thresholds were fitted (val, calib, out-of-fold)
    frozen: bool  # True: calibration and thresholds applied as stored, nothing refitted
    created: str  # UTC, ISO 8601
    # The evaluate settings as plain data (fibrosis.config owns their shape and defaults).
    evaluate_config: dict[str, Any]
    data: DataSummary
    discrimination: Discrimination
    calibration: CalibrationSummary
    operating_points: list[MeasuredOperatingPoint]
    deployment_prevalence: float | None
    subgroups: list[SubgroupRow]
    warnings: list[str]  # what qualifies the numbers, most serious first
    run: RunSummary | None = None  # None: not described yet (written as {})
    gradcam: GradcamSummary | None = None
    baseline: BaselineTable | None = None  # None: schema 1, or the rows were not at hand
    decision_curve: DecisionCurve | None = None  # None: schema 1
    schema: int = dataclasses.field(default=METRICS_SCHEMA, compare=False)  # the schema it was read as

    @property
    def auc(self) -> float:
        return float(self.discrimination.auc)

    @property
    def run_name(self) -> str:
        return "" if self.run is None else self.run.name

    @property
    def pretrained(self) -> bool:
        return False if self.run is None else self.run.pretrained

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": METRICS_SCHEMA, "split": self.split, "fit_split": self.fit_split, "frozen": self.frozen,
            "created": self.created, "evaluate_config": self.evaluate_config, "data": self.data.to_json(),
            "discrimination": self.discrimination.to_json(), "calibration": self.calibration.to_json(),
            "operating_points": [p.to_json() for p in self.operating_points],
            "deployment_prevalence": self.deployment_prevalence,
            "subgroups": [g.to_json() for g in self.subgroups], "warnings": list(self.warnings),
            "run": {} if self.run is None else self.run.to_json()}
        if self.gradcam is not None:  # no panels made: the key is absent, as readers of older files expect
            out["gradcam"] = self.gradcam.to_json()
        out["baseline"] = None if self.baseline is None else self.baseline.to_json()
        out["decision_curve"] = None if self.decision_curve is None else self.decision_curve.to_json()
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
        return cls.from_json(data, schema, str(path))

    @classmethod
    def from_json(cls, data: dict[str, Any], schema: int, path: str) -> "EvaluationResult":
        """The sections of a checked file (every required key present) as records."""
        def at(name: str) -> str:
            return f"{path}: {name}"

        def rows(name: str) -> list[Any]:
            return arr(data[name], at(name))

        return cls(
            split=data["split"], fit_split=data["fit_split"], frozen=data["frozen"], created=data["created"],
            evaluate_config=obj(data["evaluate_config"], at("evaluate_config")),
            data=DataSummary.from_json(data["data"], at("data")),
            discrimination=Discrimination.from_json(data["discrimination"], at("discrimination")),
            calibration=CalibrationSummary.from_json(data["calibration"], at("calibration")),
            operating_points=[MeasuredOperatingPoint.from_json(p, at(f"operating_points[{i}]"))
                              for i, p in enumerate(rows("operating_points"))],
            deployment_prevalence=data["deployment_prevalence"],
            subgroups=[SubgroupRow.from_json(g, at(f"subgroups[{i}]")) for i, g in enumerate(rows("subgroups"))],
            warnings=rows("warnings"),
            run=RunSummary.from_json(data["run"], at("run")) if data.get("run") else None,
            gradcam=None if data.get("gradcam") is None else GradcamSummary.from_json(data["gradcam"], at("gradcam")),
            baseline=None if data["baseline"] is None else BaselineTable.from_json(data["baseline"], at("baseline")),
            decision_curve=(None if data["decision_curve"] is None
                            else DecisionCurve.from_json(data["decision_curve"], at("decision_curve"))),
            schema=schema)
