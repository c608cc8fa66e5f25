"""The operating points a checkpoint stores: :class:`ThresholdRecord` (key ``threshold``).

`fibrosis evaluate` (or `fibrosis tune`, out of fold) chooses the thresholds on the
calibrated probability of its fit split and writes this record; `fibrosis score` applies
its ``default`` point and a frozen evaluation re-applies all of them. It lives beside the
checkpoint, not in ``evaluate``, because scoring reads it and must not import evaluation.

Records written before the fit split was described lack ``details`` and ``fit_data``;
hand-made ones may carry only ``scale``, ``default`` and ``value``. Absent keys stay
absent (None here), so rewriting a checkpoint leaves its record as it was.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

FORMAT = 1
SCALE = "calibrated probability"
RULE = "positive if calibrated probability >= threshold"
DEFAULT = "youden"  # the first point chosen: what scoring applies


def _number(value: Any, where: str, key: str, *, optional: bool = False, kind: type = float) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: {key}={value!r}; expected a number")
    return kind(value)


def _text(value: Any, where: str, key: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{where}: {key}={value!r}; expected a string")
    return value


def _mapping(value: Any, where: str, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: {key}={value!r}; expected a mapping")
    return value


@dataclass(frozen=True, slots=True)
class OperatingPointSpec:
    """One operating point as chosen: its cut-off and what it achieved on the fit split
    (sensitivity/specificity None where an older record did not keep them)."""
    name: str
    rule: str
    threshold: float
    sensitivity: float | None
    specificity: float | None


@dataclass(frozen=True, slots=True)
class FitData:
    """The split the calibrator and thresholds were fitted on (None where a record lacks it)."""
    split: str | None
    n: int | None
    n_pos: int | None
    n_patients: int | None

    def to_json(self) -> dict[str, Any]:
        return {"split": self.split, "n": self.n, "n_pos": self.n_pos, "n_patients": self.n_patients}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "FitData":
        d = _mapping(data, where, "fit_data")
        return cls(_text(d.get("split"), where, "fit_data.split", optional=True),
                   *(_number(d.get(k), where, f"fit_data.{k}", optional=True, kind=int)
                     for k in ("n", "n_pos", "n_patients")))


@dataclass(frozen=True, slots=True)
class PointDetail:
    """How a stored point was chosen and what it achieved on the fit split."""
    rule: str
    sensitivity: float | None
    specificity: float | None

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "sensitivity": self.sensitivity, "specificity": self.specificity}


@dataclass(frozen=True, slots=True)
class ThresholdRecord:
    """The checkpoint's ``threshold``: cut-offs on the calibrated probability, by name."""
    scale: str
    default: str  # the point scoring applies
    value: float  # its threshold
    points: dict[str, float] | None = None  # name -> threshold, in the order chosen
    calibration: str | None = None  # the calibration method the thresholds sit on
    chosen_on: str | None = None  # the fit split ("out-of-fold" for tune)
    details: dict[str, PointDetail] | None = None
    fit_data: FitData | None = None
    rule: str | None = None

    @classmethod
    def of(cls, points: Sequence[OperatingPointSpec], calibration: str, fit_data: FitData) -> "ThresholdRecord":
        """The record of freshly chosen points; the first is the default."""
        return cls(scale=SCALE, default=DEFAULT, value=points[0].threshold,
                   points={p.name: p.threshold for p in points}, calibration=calibration,
                   chosen_on=str(fit_data.split),
                   details={p.name: PointDetail(p.rule, p.sensitivity, p.specificity) for p in points},
                   fit_data=fit_data, rule=RULE)

    def operating_points(self) -> list[OperatingPointSpec]:
        """The stored points, described as far as the record allows."""
        details = self.details or {}
        return [OperatingPointSpec(name, d.rule if d else f"stored threshold {name!r}", value,
                                   d.sensitivity if d else None, d.specificity if d else None)
                for name, value in (self.points or {}).items() for d in (details.get(name),)]

    def fit(self) -> FitData:
        """The fit split as far as the record knows it (older records: the split name only)."""
        return self.fit_data or FitData(self.chosen_on, None, None, None)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": FORMAT, "scale": self.scale}
        for key in ("calibration", "chosen_on"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out.update({"default": self.default, "value": self.value})
        if self.points is not None:
            out["points"] = dict(self.points)
        if self.details is not None:
            out["details"] = {name: d.to_json() for name, d in self.details.items()}
        if self.fit_data is not None:
            out["fit_data"] = self.fit_data.to_json()
        if self.rule is not None:
            out["rule"] = self.rule
        return out

    @classmethod
    def from_json(cls, data: Any, where: str) -> "ThresholdRecord":
        """Validate a stored record; errors name ``where`` (the checkpoint) and the key."""
        where = f"{where}: threshold"
        d = _mapping(data, where, "record")
        if d.get("format") != FORMAT:
            raise ValueError(f"{where} format={d.get('format')!r}; this version reads {FORMAT}")
        known = {"format", "scale", "calibration", "chosen_on", "default", "value", "points", "details",
                 "fit_data", "rule"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; expected {sorted(known)}")
        for key in ("scale", "default", "value"):
            if key not in d:
                raise ValueError(f"{where}: no {key!r} (written by fibrosis.evaluate.run)")
        points = details = None
        if "points" in d:
            points = {str(k): _number(v, where, f"points.{k}") for k, v in _mapping(d["points"], where, "points").items()}
        if "details" in d:
            details = {}
            for name, v in _mapping(d["details"], where, "details").items():
                v = _mapping(v, where, f"details.{name}")
                details[str(name)] = PointDetail(
                    str(_text(v.get("rule"), where, f"details.{name}.rule")),
                    _number(v.get("sensitivity"), where, f"details.{name}.sensitivity", optional=True),
                    _number(v.get("specificity"), where, f"details.{name}.specificity", optional=True))
        return cls(scale=str(_text(d["scale"], where, "scale")), default=str(_text(d["default"], where, "default")),
                   value=_number(d["value"], where, "value"), points=points,
                   calibration=_text(d.get("calibration"), where, "calibration", optional=True),
                   chosen_on=_text(d.get("chosen_on"), where, "chosen_on", optional=True), details=details,
                   fit_data=FitData.from_json(d["fit_data"], where) if "fit_data" in d else None,
                   rule=_text(d.get("rule"), where, "rule", optional=True))
