"""Subgroup attributes of a manifest row: its own columns, and age bands derived from ``age``."""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from fibrosis.data.manifest import MANIFEST_COLUMNS, ManifestRow

AGE_BANDS = ((0, 40, "<40"), (40, 60, "40-59"), (60, 80, "60-79"), (80, 200, ">=80"))
DERIVED_ATTRIBUTES = ("age_band",)


def age_years(value: Any) -> float | None:
    """'61', '61.0' or DICOM AS '061Y' -> 61.0; '018M' -> 1.5; missing or implausible -> None."""
    text = str(value or "").strip().upper()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([DWMY]?)", text)
    if not m:
        return None
    years = float(m.group(1)) / {"": 1, "Y": 1, "M": 12, "W": 52.18, "D": 365.25}[m.group(2)]
    return None if years > 130 else years


def age_band(value: Any) -> str:
    """'61', '61.0' or DICOM AS '061Y' -> '60-79'; months/weeks/days -> '<40'; bad -> 'unknown'."""
    years = age_years(value)
    if years is None:
        return "unknown"
    return next(name for lo, hi, name in AGE_BANDS if lo <= years < hi)


def attribute_values(rows: Sequence[ManifestRow], name: str) -> list[str]:
    if name == "age_band":
        return [age_band(r.age) for r in rows]
    if name not in MANIFEST_COLUMNS:
        raise ValueError(f"evaluate.subgroups: unknown attribute {name!r}; allowed: "
                         f"{sorted(set(MANIFEST_COLUMNS) | set(DERIVED_ATTRIBUTES))}")
    # the column's stored text, as the manifest holds it (a label of 0 is "0", not missing)
    return [r.cell(name).strip().upper() or "unknown" for r in rows]
