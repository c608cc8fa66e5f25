"""Score files: per-image rows written as they come, resume, rank merge, per-study aggregate.

The per-image CSV is append-only and its rows are written in sorted path order, so a
killed run leaves a sorted prefix (plus possibly one torn last line, which
:func:`open_for_resume` cuts off); the next run appends the rest and the result is
byte-identical to an uninterrupted run. Ranks of a ``torchrun`` job write sorted
part files that rank 0 merges with a streaming k-way merge. No function here ever
holds more than one row per input file (or one summary per study) in memory.
"""
from __future__ import annotations

import csv
import heapq
import io
import logging
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from fibrosis.data.cache import IMAGE_STATS
from fibrosis.io import atomic_write_bytes

logger = logging.getLogger(__name__)

# qa: ';'-joined QA findings of the pixel function (fibrosis.data.pixels.qa_flags), e.g.
# polarity-suspect (kept as shown, or excluded: see status) or polarity-inverted.
COLUMNS: tuple[str, ...] = (
    "path", "status", "qa", "sop_uid", "series_uid", "study_uid", "patient_key", "view_position",
    "logit", "probability", "decision", "threshold_name", "threshold", "model_id", "engine",
    "content_hash",
)
STUDY_COLUMNS: tuple[str, ...] = (
    "study_uid", "patient_key", "n_images", "n_ok", "aggregate", "probability", "decision",
    "threshold_name", "threshold", "model_id",
)
# The side file <out stem>.meta.csv, one row per row of the scores file (joined by path):
# the per-image header fields and cached-image statistics `fibrosis monitor` compares with
# the evaluation's reference. scores.csv keeps its columns (resume checks its header).
# No identifiers: no patient ID, no dates finer than the month, no free-text tags.
META_COLUMNS: tuple[str, ...] = (
    "path", "scored_at", "study_month", "modality", "manufacturer", "model_name", "view_position",
    "pixel_spacing", "rows", "cols", "transfer_syntax", "sex", "age", *IMAGE_STATS,
)
AGGREGATES = ("max", "mean")
# Frontal = PA or AP; "" when the file does not say (PNG/JPEG exports, ViewPosition
# absent): lateral views never reach "ok" because ingestion policy excludes them.
FRONTAL_VIEWS = frozenset({"PA", "AP", ""})


def meta_path(scores: Path) -> Path:
    """``scores.csv`` -> ``scores.meta.csv`` (``x.csv.rank1`` -> ``x.csv.rank1.meta.csv``)."""
    name = scores.name[:-4] if scores.name.endswith(".csv") else scores.name
    return scores.with_name(f"{name}.meta.csv")


def discover_inputs(input_: str | Path, out: Path, gradcam_dir: Path | None,
                    salt_file: Path | None = None) -> list[tuple[str, str]]:
    """Sorted (path, error) entries from :func:`fibrosis.data.discover.discover_entries` (the
    discovery ingest uses: hidden files included, unreadable folders as entries with their
    reason). Our own outputs (and the salt file) are left out when they sit inside the
    input folder: a re-run must not score its own CSV."""
    from fibrosis.data.discover import discover_entries

    skip = {str(p.resolve()) for p in (out, out.with_suffix(".studies.csv"), meta_path(out), salt_file) if p}
    # Also rank parts and the temporary files a killed atomic rewrite leaves (all next to
    # ``out``): hidden files are inputs now, so ``.scores.csv.tmp123`` must be named here.
    names = "|".join(re.escape(n) for n in (out.name, out.with_suffix(".studies.csv").name, meta_path(out).name))
    own = re.compile(rf"(?:{names})\.rank\d+(?:\.meta\.csv)?|\.(?:{names}|{re.escape(out.name)}\.rank\d+\.meta\.csv)\.tmp\d+")
    gc = str(gradcam_dir.resolve()) + os.sep if gradcam_dir else None
    return [(p, err) for p, err in discover_entries([input_])
            if p not in skip and not (Path(p).parent == out.parent.resolve() and own.fullmatch(Path(p).name))
            and not (gc and p.startswith(gc))]


def _line(row: dict[str, Any], columns: tuple[str, ...]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    return buf.getvalue()


def open_for_resume(path: Path, expect_model: str) -> set[str]:
    """Paths already scored in ``path`` (after cutting a torn last line); refuses a
    file with other columns or rows from another model."""
    if not path.exists() or path.stat().st_size == 0:
        return set()
    with open(path, "rb+") as fh:  # cut back to the last complete line (a kill mid-write)
        data_len = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, data_len - 1))
        if fh.read(1) != b"\n":
            fh.seek(0)
            keep = fh.read().rfind(b"\n") + 1
            fh.truncate(keep)
            logger.warning("%s: cut a torn last line (%d bytes) left by an interrupted run",
                           path, data_len - keep)
    done: set[str] = set()
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            return done
        if tuple(header) != COLUMNS:
            raise ValueError(f"{path}: existing file has columns {header}; expected {list(COLUMNS)} "
                             f"(not a fibrosis score file, or another version): choose a new --out")
        mi = COLUMNS.index("model_id")
        for i, rec in enumerate(reader, start=2):
            if len(rec) != len(COLUMNS):
                raise ValueError(f"{path}: line {i} has {len(rec)} fields; expected {len(COLUMNS)}")
            if rec[mi] != expect_model:
                raise ValueError(f"{path}: line {i} was scored by model_id={rec[mi]!r}; this run "
                                 f"uses {expect_model!r}; scores of two models must not be mixed: "
                                 f"choose a new --out")
            done.add(rec[0])
    return done


def prune_meta(path: Path, done: set[str]) -> None:
    """Before a resume: keep only the side-file rows of paths already in the scores file.
    Meta rows are written before their score rows, so a killed run may leave a few extra
    (and a torn last line); those files are scored again and their rows re-written."""
    if not path.exists() or path.stat().st_size == 0:
        return
    text = path.read_bytes()
    text = text[:text.rfind(b"\n") + 1]  # a torn last line
    rows = list(csv.DictReader(io.StringIO(text.decode("utf-8"))))
    header = text.split(b"\n", 1)[0].decode("utf-8")
    if tuple(next(csv.reader([header]), [])) != META_COLUMNS:
        raise ValueError(f"{path}: existing file has columns {header!r}; expected {list(META_COLUMNS)} "
                         "(not a fibrosis score side file, or another version): choose a new --out")
    _write_rows_atomic(path, (r for r in rows if r["path"] in done), META_COLUMNS)


class RowWriter:
    """Appends rows to a score CSV (header first when new); ``flush`` after each batch."""

    def __init__(self, path: Path, columns: tuple[str, ...] = COLUMNS):
        self.path, self.columns = path, columns
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists() or path.stat().st_size == 0
        self.fh = open(path, "a", newline="", encoding="utf-8")
        if new:
            self.fh.write(_line(dict(zip(columns, columns)), columns))

    def write(self, row: dict[str, Any]) -> None:
        self.fh.write(_line(row, self.columns))

    def flush(self) -> None:
        # The OS buffer survives a killed process; fsync would only add power-loss
        # safety at a large cost per batch.
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def iter_rows(path: Path) -> Iterator[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        yield from csv.DictReader(fh)


def is_sorted(path: Path) -> bool:
    prev = None
    for row in iter_rows(path):
        if prev is not None and row["path"] <= prev:
            return False
        prev = row["path"]
    return True


def _write_rows_atomic(path: Path, rows: Iterable[dict[str, str]], columns: tuple[str, ...] = COLUMNS) -> int:
    """Stream rows to a temporary file, then rename over ``path``; returns the row count."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    n = 0
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            fh.write(_line(dict(zip(columns, columns)), columns))
            for row in rows:
                fh.write(_line(row, columns))
                n += 1
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def _dedupe(rows: Iterable[dict[str, str]]) -> Iterator[dict[str, str]]:
    prev = None
    for row in rows:
        if row["path"] != prev:
            yield row
        prev = row["path"]


def sort_in_place(path: Path, columns: tuple[str, ...] = COLUMNS) -> None:
    """Rewrite ``path`` sorted by path (needed only when the inputs changed between a
    killed run and its resume; holds the rows, not images, in memory)."""
    rows = sorted(iter_rows(path), key=lambda r: r["path"])
    _write_rows_atomic(path, _dedupe(rows), columns)
    logger.info("%s: rows re-sorted by path (inputs changed since the interrupted run)", path)


def merge_parts(out: Path, parts: list[Path], columns: tuple[str, ...] = COLUMNS) -> int:
    """k-way merge of sorted part files (and an existing ``out``) into ``out``; removes the parts.

    A path present in two sources (a kill between the rename and the clean-up)
    is written once.
    """
    sources = [p for p in ([out] if out.exists() else []) + parts if p.exists()]
    for p in sources:
        if not is_sorted(p):
            sort_in_place(p, columns)
    n = _write_rows_atomic(out, _dedupe(heapq.merge(*(iter_rows(p) for p in sources),
                                                    key=lambda r: r["path"])), columns)
    for p in parts:
        p.unlink(missing_ok=True)
    return n


def study_rows(path: Path, aggregate: str) -> list[dict[str, Any]]:
    """Per-study aggregate of calibrated probabilities over frontal ``ok`` images.

    ``max`` (default) flags a study when any frontal image is positive -- the same
    operating point as per image; ``mean`` smooths over repeat images but its
    decision at the image-level threshold was not validated as such.
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"study aggregate {aggregate!r}; allowed: {list(AGGREGATES)}")
    studies: dict[str, dict[str, Any]] = {}
    for row in iter_rows(path):
        if row["status"] != "ok" or not row["study_uid"]:
            continue
        s = studies.setdefault(row["study_uid"], {"keys": set(), "probs": [], "decisions": [], "n_ok": 0,
                                                  "threshold_name": row["threshold_name"],
                                                  "threshold": row["threshold"],
                                                  "model_id": row["model_id"]})
        s["n_ok"] += 1
        s["keys"].add(row["patient_key"])
        if row["view_position"] in FRONTAL_VIEWS:
            s["probs"].append(float(row["probability"]))
            s["decisions"].append(int(row["decision"]))
    out = []
    for uid in sorted(studies):
        s = studies[uid]
        if len(s["keys"]) > 1:
            logger.warning("study %s: images carry %d different patient keys", uid, len(s["keys"]))
        probs = s["probs"]
        if not probs:
            prob = decision = None
        elif aggregate == "max":  # positive iff an image is: exactly the image-level decisions
            prob, decision = max(probs), max(s["decisions"])
        else:
            prob = sum(probs) / len(probs)
            decision = int(prob >= float(s["threshold"]))
        out.append({"study_uid": uid, "patient_key": "|".join(sorted(s["keys"])),
                    "n_images": len(probs), "n_ok": s["n_ok"], "aggregate": aggregate,
                    "probability": "" if prob is None else f"{prob:.6f}",
                    "decision": "" if decision is None else decision,
                    "threshold_name": s["threshold_name"], "threshold": s["threshold"],
                    "model_id": s["model_id"]})
    return out


def write_studies(scores: Path, out: Path, aggregate: str) -> int:
    rows = study_rows(scores, aggregate)
    atomic_write_bytes(out, "".join([_line(dict(zip(STUDY_COLUMNS, STUDY_COLUMNS)), STUDY_COLUMNS)]
                                    + [_line(r, STUDY_COLUMNS) for r in rows]).encode("utf-8"))
    return len(rows)
