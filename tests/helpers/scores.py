"""Rows of a ``scores.csv`` as `fibrosis score` writes them, for the tests of its reader and writer."""
from __future__ import annotations

from pathlib import Path

from fibrosis.score import output as IO


def score_row(path: str, **kw: str) -> dict[str, str]:
    """An ok row of model ``m1`` for ``path``; ``kw`` replaces or adds cells. Short names are read
    as the score file's own: ``probability``, ``logit``, ``decision`` (the renamed columns) and a
    ``status`` of "<kind>: <reason>" (split into status and reason)."""
    kw = {IO.RENAMED.get(k, k): v for k, v in kw.items()}
    if ":" in kw.get("status", ""):
        kind, _, reason = kw["status"].partition(":")
        kw.update(status=kind.strip(), reason=reason.strip())
    return {"path": path, "status": "ok", "study_uid": "S1", "patient_key": "k1", "view_position": "PA",
            "logit_uncalibrated": "0.0", "probability_calibrated": "0.5", "decision_fibrosis": "1",
            "threshold_name": "youden",
            "threshold": "0.4", "model_id": "m1", "engine": "eager", **kw}


def status_text(row: dict[str, str]) -> str:
    """``status`` with its ``reason`` as one line ("error: truncated ..."), for assertions on both."""
    return f"{row['status']}: {row['reason']}" if row.get("reason") else row["status"]


def write_scores(path: Path, rows: list[dict[str, str]]) -> Path:
    w = IO.RowWriter(path)
    for r in rows:
        w.write(r)
    w.close()
    return path
