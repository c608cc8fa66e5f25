"""Read what the monitor compares: the reference, scores (+ side files) and labels.

Rows are joined by path: ``scores.csv`` gives status, probability and decision (an older
file's columns are migrated on reading, with a note: :func:`fibrosis.score.output.migrate_row`); its side
file ``scores.meta.csv`` (written by `fibrosis score`) the header fields, study month,
batch and image statistics; a labels CSV is joined as `fibrosis ingest --labels` joins it
(SOP Instance UID, file name / relative path, Study Instance UID).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fibrosis import artefacts
from fibrosis.data.labels import load_labels
from fibrosis.evaluate.reference import Reference
from fibrosis.io import read_csv, read_text
from fibrosis.score.output import STATUSES, iter_score_rows, meta_path

logger = logging.getLogger(__name__)

HINTS = (("age", "age"), ("sex", "sex"), ("view_position", "view"))  # side-file column, labels column


@dataclass(frozen=True, slots=True)
class ScoredImage:
    """One scored image as the monitor compares it: its scores.csv row joined with its side-file row."""
    # The scores row's cells with the side file's merged in (header fields, study month, image
    # statistics) and, for images with a side-file row, the labels' hints where it had none.
    # Which columns there are depends on the scoring version (read by name, absent = "").
    cells: dict[str, str]
    where: str  # file:line, for messages
    batch: str  # the scoring batch: file stem and scored_at
    has_meta: bool  # a side-file row was joined
    label: int | None = None  # from --labels; None: no label (or not labelled)

    @property
    def status(self) -> str:
        return str(self.cells.get("status", ""))


def find_reference(run: Path, reference: Path | None) -> Path:
    path = reference if reference is not None else run / "eval" / "test" / artefacts.REFERENCE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no monitoring reference; run `fibrosis evaluate --run {run}` "
                                "(it writes reference.json beside metrics.json), or pass --reference")
    return path


def read_reference(path: Path) -> Reference:
    return Reference.from_json(json.loads(read_text(path)), str(path))


_NUMBER_LIKE = re.compile(r"[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|inf(?:inity)?|nan)?", re.IGNORECASE)


def _shown(value: str) -> str:
    """A cell for a message: quoted when it is a number (nan, 1e999, -5), else only its length."""
    return repr(value) if len(value) <= 32 and _NUMBER_LIKE.fullmatch(value) else f"<{len(value)} characters, not shown>"


def _finite(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def row_problem(row: Mapping[str, str]) -> str:
    """Why a scores row cannot be what `fibrosis score` writes ("" when it can): an ``ok`` row
    carries a finite logit, a calibrated probability in [0, 1] and a decision of 0 or 1."""
    status = str(row.get("status") or "")
    if status not in STATUSES:
        return f"status={_shown(status)}; expected one of {list(STATUSES)}"
    if status != "ok":
        return ""
    p, z, d = (str(row.get(k) or "") for k in ("probability_calibrated", "logit_uncalibrated", "decision_fibrosis"))
    prob = _finite(p)
    if prob is None or not 0.0 <= prob <= 1.0:
        return f"probability_calibrated={_shown(p)}; expected a calibrated probability in [0, 1]"
    if _finite(z) is None:
        return f"logit_uncalibrated={_shown(z)}; expected a finite number"
    if d not in ("0", "1"):
        return f"decision_fibrosis={_shown(d)}; expected 0 or 1 (the decision at the frozen threshold)"
    return ""


def read_scores(path: Path, model_id: str) -> list[ScoredImage]:
    """Rows of one scores file with its side file merged in; refuses another model's scores and
    any row `fibrosis score` could not have written (naming the file and line)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: scores file not found (written by `fibrosis score --out`)")
    # a FIFO, an over-long field or non-UTF-8 bytes: one line naming the file
    rows = list(iter_score_rows(path))
    for line, r in enumerate(rows, start=2):
        problem = row_problem(r)
        if problem:
            raise ValueError(f"{path}:{line}: {problem} (a scores file written by `fibrosis score`)")
    other = sorted({r["model_id"] for r in rows} - {model_id})
    if other:
        raise ValueError(f"{path}: scored by model_id {other}; the reference belongs to model_id {model_id!r} "
                         "(the checkpoint as evaluated): monitor scores against the evaluation of their own model")
    side = meta_path(path)
    meta = {m["path"]: m for m in read_csv(side)} if side.exists() else {}
    if not meta:
        logger.warning("%s: no side file %s; input shift is measured on the outcomes only "
                       "(re-score with this version for metadata and image statistics)", path, side.name)
    out = []
    for line, r in enumerate(rows, start=2):
        m = meta.get(r["path"])
        out.append(ScoredImage({**r, **{k: v for k, v in (m or {}).items() if k != "path"}}, f"{path}:{line}",
                               f"{path.stem} {m['scored_at']}" if m and m.get("scored_at") else path.stem,
                               m is not None))
    return out


def read_all_scores(paths: Sequence[Path], model_id: str) -> list[ScoredImage]:
    """:func:`read_scores` of every file, each image counted once: the same file given twice, or
    one image (path and content) in two rows, would double its weight in every test."""
    rows: list[ScoredImage] = []
    files: dict[Path, Path] = {}
    seen: dict[tuple[str, str], str] = {}
    for path in paths:
        real = Path(path).resolve()
        if real in files:
            raise ValueError(f"{path}: given twice as --scores (also as {files[real]}); expected each "
                             "scores file once")
        files[real] = Path(path)
        for r in read_scores(Path(path), model_id):
            key = (r.cells["path"], r.cells.get("content_hash") or "")
            if key in seen:
                raise ValueError(f"{r.where}: the image of {seen[key]} again (same path and content "
                                 "hash); expected each scored image once over all --scores files")
            seen[key] = r.where
            rows.append(r)
    return rows


def attach_labels(rows: list[ScoredImage], labels_csv: Path, label_column: str,
                  views: Sequence[str] = ()) -> int:
    """Replace every row by its labelled self (``label`` 0, 1 or None); returns how many ok rows got
    one. ``views``: the view codes the model's ingest config adds (``ingest.excluded_views``)."""
    labels = load_labels(labels_csv, label_column, views=views)
    labels.check_unique(r.cells["path"] for r in rows)
    n = 0
    for i, r in enumerate(rows):
        value, _ = labels.label(r.cells["path"], r.cells.get("sop_uid", ""), r.cells.get("study_uid", ""))
        label = int(value) if value in ("0", "1") else None
        n += label is not None and r.status == "ok"
        cells = r.cells
        if r.has_meta:
            cells = dict(cells)
            # As ingest does for PNG/JPEG exports (no header): age/sex/view from the labels row,
            # so the reference (built from hinted manifest rows) and the batch read alike.
            # Values the file itself carries win.
            for key, hint in HINTS:
                value = labels.hints(r.cells["path"]).get(hint, "")
                if value and not cells.get(key):
                    cells[key] = value.upper() if key in ("sex", "view_position") else value
        rows[i] = dataclasses.replace(r, cells=cells, label=label)
    if n == 0:
        logger.warning("%s: no label joined to any scored image (by sop_instance_uid, image/file or "
                       "study_instance_uid); performance is not measured", labels_csv)
    return n
