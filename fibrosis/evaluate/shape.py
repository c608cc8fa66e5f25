"""Checks for reading the JSON sections of an evaluation's records (metrics.json and its parts).

Every reader passes ``where`` (the file and the key path, e.g. ``RUN/eval/test/metrics.json:
calibration.before``), so a hand-edited or truncated file fails with one line naming the file, the
key and what was expected.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def obj(data: Any, where: str, required: Sequence[str] = ()) -> dict[str, Any]:
    """``data`` as a JSON object holding every key of ``required`` (the raw JSON at the edge of a
    ``from_json``: the record built from it gives the keys their types)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: {type(data).__name__} {_short(data)}; expected a JSON object")
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(f"{where}: without {missing}; expected the keys {list(required)}")
    return data


def arr(data: Any, where: str) -> list[Any]:
    """``data`` as a JSON array."""
    if not isinstance(data, list):
        raise ValueError(f"{where}: {type(data).__name__} {_short(data)}; expected a JSON array")
    return data


def opt_arr(data: Any, where: str) -> list[Any] | None:
    """A JSON array or null."""
    return None if data is None else arr(data, where)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
