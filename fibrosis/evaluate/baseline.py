"""Baseline characteristics of the evaluated cache (TRIPOD+AI 14, STARD 20): age, sex, view and
manufacturer, with missing values counted, per split and, on the reported split, per label.

Aggregates only (counts and age quartiles): nothing that identifies a patient leaves here.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from fibrosis.data.manifest import ManifestRow
from fibrosis.evaluate.subgroups import age_years

CATEGORICAL = ("sex", "view_position", "manufacturer")
MISSING = "missing"
SPLIT_ORDER = ("train", "val", "calib", "test")


def _value(row: ManifestRow, name: str) -> str:
    text = row.cell(name).strip().upper()
    return MISSING if text in ("", "UNKNOWN") else text


def _age(rows: Sequence[ManifestRow]) -> dict[str, Any]:
    years = [a for a in (age_years(r.age) for r in rows) if a is not None]
    if not years:
        return {"median": None, "q1": None, "q3": None, "missing": len(rows)}
    q1, med, q3 = np.percentile(years, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "missing": len(rows) - len(years)}


def _levels(columns: list[list[ManifestRow]], name: str, max_levels: int) -> list[dict[str, Any]]:
    """Counts per value and column: the ``max_levels`` most common values, the rest pooled as
    'other', then 'missing' (only where some value is missing)."""
    per_col = [Counter(_value(r, name) for r in rows) for rows in columns]
    total = sum(per_col, Counter())
    named = [v for v, _ in sorted(total.items(), key=lambda kv: (-kv[1], kv[0])) if v != MISSING]
    keep, rest = named[:max_levels], set(named[max_levels:])
    out = [{"value": v, "counts": [c[v] for c in per_col]} for v in keep]
    if rest:
        out.append({"value": f"other ({len(rest)} value{'s' if len(rest) > 1 else ''})", "counts": [sum(c[v] for v in rest) for c in per_col]})
    if total[MISSING]:
        out.append({"value": MISSING, "counts": [c[MISSING] for c in per_col]})
    return out


def baseline_table(rows: Sequence[ManifestRow], split: str, *, max_levels: int = 5) -> dict[str, Any]:
    """Columns: every split of ``rows`` (in train, val, calib, test order), then the reported
    ``split``'s rows with and without fibrosis ("all": every row). Each column has n, patients,
    age (median, quartiles, missing) and counts per value of sex, view and manufacturer."""
    splits: dict[str, list[ManifestRow]] = {}
    for r in rows:
        splits.setdefault(r.split or "unassigned", []).append(r)
    order = {name: i for i, name in enumerate(SPLIT_ORDER)}
    named = sorted(splits, key=lambda s: (order.get(s, len(order)), s))
    reported = list(rows) if split == "all" else splits.get(split, [])
    columns: list[tuple[dict[str, Any], list[ManifestRow]]] = [
        ({"name": s, "by": "split"}, splits[s]) for s in named]
    for value, name in ((1, "fibrosis"), (0, "no fibrosis")):
        columns.append(({"name": name, "by": "label", "within": split},
                        [r for r in reported if r.label == value]))
    groups = [rows_ for _, rows_ in columns]
    return {
        "columns": [{**head, "n": len(rs), "n_patients": len({r.patient_key for r in rs})}
                    for head, rs in columns],
        "age": [_age(rs) for rs in groups],
        "categorical": [{"attribute": name, "levels": _levels(groups, name, max_levels)} for name in CATEGORICAL],
    }
