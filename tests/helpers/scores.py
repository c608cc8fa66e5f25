"""Rows of a ``scores.csv`` as `fibrosis score` writes them, for the tests of its reader and writer."""
from __future__ import annotations

from pathlib import Path

from fibrosis.score import output as IO


def score_row(path: str, **kw: str) -> dict[str, str]:
    """An ok row of model ``m1`` for ``path``; ``kw`` replaces or adds cells."""
    return {"path": path, "status": "ok", "study_uid": "S1", "patient_key": "k1", "view_position": "PA",
            "logit": "0.0", "probability": "0.5", "decision": "1", "threshold_name": "youden",
            "threshold": "0.4", "model_id": "m1", "engine": "eager", **kw}


def write_scores(path: Path, rows: list[dict[str, str]]) -> Path:
    w = IO.RowWriter(path)
    for r in rows:
        w.write(r)
    w.close()
    return path
