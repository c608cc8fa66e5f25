"""Read what the monitor compares: the reference, scores (+ side files) and labels.

Rows are joined by path: ``scores.csv`` gives status, probability and decision; its side
file ``scores.meta.csv`` (written by `fibrosis score`) the header fields, study month,
batch and image statistics; a labels CSV is joined as `fibrosis ingest --labels` joins it
(SOP Instance UID, file name / relative path, Study Instance UID).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fibrosis.data.labels import load_labels
from fibrosis.evaluate.reference import REFERENCE_FILE, REFERENCE_FORMAT
from fibrosis.io import read_csv
from fibrosis.score.output import COLUMNS, meta_path

logger = logging.getLogger(__name__)

HINTS = (("age", "age"), ("sex", "sex"), ("view_position", "view"))  # side-file column, labels column


def find_reference(run: Path, reference: Path | None) -> Path:
    path = reference if reference is not None else run / "eval" / "test" / REFERENCE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no monitoring reference; run `fibrosis evaluate --run {run}` "
                                "(it writes reference.json beside metrics.json), or pass --reference")
    return path


def read_reference(path: Path) -> dict[str, Any]:
    ref = json.loads(path.read_text())
    if ref.get("format") != REFERENCE_FORMAT:
        raise ValueError(f"{path}: reference format={ref.get('format')!r}; this version reads {REFERENCE_FORMAT}")
    return ref


def read_scores(path: Path, model_id: str) -> list[dict[str, Any]]:
    """Rows of one scores file with its side file merged in; refuses another model's scores."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: scores file not found (written by `fibrosis score --out`)")
    rows = read_csv(path)
    if rows and tuple(rows[0]) != COLUMNS:
        raise ValueError(f"{path}: columns {list(rows[0])}; expected {list(COLUMNS)} (a fibrosis scores file)")
    other = sorted({r["model_id"] for r in rows} - {model_id})
    if other:
        raise ValueError(f"{path}: scored by model_id {other}; the reference belongs to model_id {model_id!r} "
                         "(the checkpoint as evaluated): monitor scores against the evaluation of their own model")
    side = meta_path(path)
    meta = {m["path"]: m for m in read_csv(side)} if side.is_file() else {}
    if not meta:
        logger.warning("%s: no side file %s; input shift is measured on the outcomes only "
                       "(re-score with this version for metadata and image statistics)", path, side.name)
    for r in rows:
        m = meta.get(r["path"])
        r.update({k: v for k, v in (m or {}).items() if k != "path"})
        r["_has_meta"] = m is not None
        r["_batch"] = f"{path.stem} {m['scored_at']}" if m and m.get("scored_at") else path.stem
    return rows


def attach_labels(rows: Sequence[dict[str, Any]], labels_csv: Path, label_column: str) -> int:
    """Set ``_label`` (0, 1 or None) on every row; returns how many ok rows got one."""
    labels = load_labels(labels_csv, label_column)
    labels.check_unique(r["path"] for r in rows)
    n = 0
    for r in rows:
        value, _ = labels.label(r["path"], r.get("sop_uid", ""), r.get("study_uid", ""))
        r["_label"] = int(value) if value in ("0", "1") else None
        n += r["_label"] is not None and r["status"] == "ok"
        if r.get("_has_meta"):
            # As ingest does for PNG/JPEG exports (no header): age/sex/view from the labels row,
            # so the reference (built from hinted manifest rows) and the batch read alike.
            # Values the file itself carries win.
            for key, hint in HINTS:
                value = labels.hints(r["path"]).get(hint, "")
                if value and not r.get(key):
                    r[key] = value.upper() if key in ("sex", "view_position") else value
    if n == 0:
        logger.warning("%s: no label joined to any scored image (by sop_instance_uid, image/file or "
                       "study_instance_uid); performance is not measured", labels_csv)
    return n
