"""Baseline characteristics of the evaluated cache (TRIPOD+AI 14, STARD 20): age, sex, view and
manufacturer, with missing values counted, per split and, on the reported split, per label.

Aggregates only (counts and age quartiles): nothing that identifies a patient leaves here.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fibrosis.data.manifest import ManifestRow
from fibrosis.evaluate.shape import arr, obj
from fibrosis.evaluate.subgroups import age_years

CATEGORICAL = ("sex", "view_position", "manufacturer")
MISSING = "missing"
SPLIT_ORDER = ("train", "val", "calib", "test")


@dataclass(frozen=True, slots=True)
class BaselineColumn:
    """One column of the table: a split (``by`` "split") or the reported split's rows with or
    without fibrosis (``by`` "label", ``within`` that split)."""
    name: str
    by: str
    n: int
    n_patients: int
    within: str | None = None  # only for by="label"

    def to_json(self) -> dict[str, Any]:
        head: dict[str, Any] = {"name": self.name, "by": self.by}
        if self.within is not None:
            head["within"] = self.within
        return {**head, "n": self.n, "n_patients": self.n_patients}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "BaselineColumn":
        d = obj(data, where, ("name", "by", "n", "n_patients"))
        return cls(d["name"], d["by"], d["n"], d["n_patients"], d.get("within"))


@dataclass(frozen=True, slots=True)
class AgeSummary:
    """Median and quartiles of age in years (None when no row has an age), and how many lack one."""
    median: float | None
    q1: float | None
    q3: float | None
    missing: int

    def to_json(self) -> dict[str, Any]:
        return {"median": self.median, "q1": self.q1, "q3": self.q3, "missing": self.missing}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "AgeSummary":
        d = obj(data, where, ("median", "q1", "q3", "missing"))
        return cls(d["median"], d["q1"], d["q3"], d["missing"])


@dataclass(frozen=True, slots=True)
class BaselineLevel:
    """Counts of one value of an attribute, one per column."""
    value: str
    counts: list[int]

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "counts": list(self.counts)}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "BaselineLevel":
        d = obj(data, where, ("value", "counts"))
        return cls(d["value"], arr(d["counts"], f"{where}.counts"))


@dataclass(frozen=True, slots=True)
class BaselineAttribute:
    """Levels of one categorical attribute (sex, view, manufacturer)."""
    attribute: str
    levels: list[BaselineLevel]

    def to_json(self) -> dict[str, Any]:
        return {"attribute": self.attribute, "levels": [lv.to_json() for lv in self.levels]}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "BaselineAttribute":
        d = obj(data, where, ("attribute", "levels"))
        return cls(d["attribute"], [BaselineLevel.from_json(lv, f"{where}.levels[{i}]")
                                    for i, lv in enumerate(arr(d["levels"], f"{where}.levels"))])


@dataclass(frozen=True, slots=True)
class BaselineTable:
    """The ``baseline`` section of metrics.json: ``age`` and each attribute's ``counts`` run
    parallel to ``columns``."""
    columns: list[BaselineColumn]
    age: list[AgeSummary]
    categorical: list[BaselineAttribute]

    def to_json(self) -> dict[str, Any]:
        return {"columns": [c.to_json() for c in self.columns], "age": [a.to_json() for a in self.age],
                "categorical": [c.to_json() for c in self.categorical]}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "BaselineTable":
        d = obj(data, where, ("columns", "age", "categorical"))
        return cls([BaselineColumn.from_json(c, f"{where}.columns[{i}]")
                    for i, c in enumerate(arr(d["columns"], f"{where}.columns"))],
                   [AgeSummary.from_json(a, f"{where}.age[{i}]") for i, a in enumerate(arr(d["age"], f"{where}.age"))],
                   [BaselineAttribute.from_json(c, f"{where}.categorical[{i}]")
                    for i, c in enumerate(arr(d["categorical"], f"{where}.categorical"))])


def _value(row: ManifestRow, name: str) -> str:
    text = row.cell(name).strip().upper()
    return MISSING if text in ("", "UNKNOWN") else text


def _age(rows: Sequence[ManifestRow]) -> AgeSummary:
    years = [a for a in (age_years(r.age) for r in rows) if a is not None]
    if not years:
        return AgeSummary(None, None, None, len(rows))
    q1, med, q3 = np.percentile(years, [25, 50, 75])
    return AgeSummary(float(med), float(q1), float(q3), len(rows) - len(years))


def _levels(columns: list[list[ManifestRow]], name: str, max_levels: int) -> list[BaselineLevel]:
    """Counts per value and column: the ``max_levels`` most common values, the rest pooled as
    'other', then 'missing' (only where some value is missing)."""
    per_col = [Counter(_value(r, name) for r in rows) for rows in columns]
    total = sum(per_col, Counter())
    named = [v for v, _ in sorted(total.items(), key=lambda kv: (-kv[1], kv[0])) if v != MISSING]
    keep, rest = named[:max_levels], set(named[max_levels:])
    out = [BaselineLevel(v, [c[v] for c in per_col]) for v in keep]
    if rest:
        out.append(BaselineLevel(f"other ({len(rest)} value{'s' if len(rest) > 1 else ''})",
                                 [sum(c[v] for v in rest) for c in per_col]))
    if total[MISSING]:
        out.append(BaselineLevel(MISSING, [c[MISSING] for c in per_col]))
    return out


def baseline_table(rows: Sequence[ManifestRow], split: str, *, max_levels: int = 5) -> BaselineTable:
    """Columns: every split of ``rows`` (in train, val, calib, test order), then the reported
    ``split``'s rows with and without fibrosis ("all": every row). Each column has n, patients,
    age (median, quartiles, missing) and counts per value of sex, view and manufacturer."""
    splits: dict[str, list[ManifestRow]] = {}
    for r in rows:
        splits.setdefault(r.split or "unassigned", []).append(r)
    order = {name: i for i, name in enumerate(SPLIT_ORDER)}
    named = sorted(splits, key=lambda s: (order.get(s, len(order)), s))
    reported = list(rows) if split == "all" else splits.get(split, [])
    columns: list[tuple[tuple[str, str, str | None], list[ManifestRow]]] = [
        ((s, "split", None), splits[s]) for s in named]
    for value, name in ((1, "fibrosis"), (0, "no fibrosis")):
        columns.append(((name, "label", split), [r for r in reported if r.label == value]))
    groups = [rows_ for _, rows_ in columns]
    return BaselineTable(
        [BaselineColumn(name, by, len(rs), len({r.patient_key for r in rs}), within)
         for (name, by, within), rs in columns],
        [_age(rs) for rs in groups],
        [BaselineAttribute(name, _levels(groups, name, max_levels)) for name in CATEGORICAL])
