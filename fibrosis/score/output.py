"""Score files: per-image rows written as they come, resume, rank merge, per-study aggregate.

The per-image CSV is append-only and its rows are written in sorted path order, so a
killed run leaves a sorted prefix (plus possibly one torn last line, which
:func:`open_for_resume` cuts off); the next run appends the rest and the result is
byte-identical to an uninterrupted run. An existing file is touched only after its
first line proved it is a score file: ``--out`` naming any other file is refused
with the file unchanged. A resumed row is trusted only while its file's content
hash is the same: a file changed under the same path is scored again and its new
row replaces the old one (the last row of a path wins). Ranks of a ``torchrun`` job write sorted
part files that rank 0 merges with a streaming k-way merge. No function here ever
holds more than one row per input file (or one summary per study) in memory.
"""
from __future__ import annotations

import heapq
import io
import itertools
import logging
import os
import re
import tempfile
import typing
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from fibrosis.config import StudyAggregate
from fibrosis.data.cache import IMAGE_STATS
from fibrosis.data.discover import discover_entries
from fibrosis.io import (CsvRows, csv_line, is_no_space, iter_csv, no_space, not_regular, open_regular,
                         write_csv)

logger = logging.getLogger(__name__)

# Every column, its type, values and units: docs/scores.md (tests/score/test_score_dictionary.py
# holds it to these tuples). qa: ';'-joined QA findings of the pixel function
# (fibrosis.data.pixels.qa_flags). The names say what a value is: the logit before calibration,
# the probability after it, the decision for the positive class (1 = fibrosis).
ScoreStatus = Literal["ok", "excluded", "error"]
STATUSES: tuple[str, ...] = typing.get_args(ScoreStatus)  # `status`; why not ok is in `reason`
COLUMNS: tuple[str, ...] = (
    "path", "status", "reason", "qa", "sop_uid", "series_uid", "study_uid", "patient_key", "view_position",
    "logit_uncalibrated", "probability_calibrated", "decision_fibrosis", "threshold_name", "threshold", "model_id",
    "engine", "content_hash",
)
STUDY_COLUMNS: tuple[str, ...] = (
    "study_uid", "patient_key", "n_images", "n_ok", "aggregate", "probability_calibrated", "decision_fibrosis",
    "threshold_name", "threshold", "model_id",
)
# scores.csv as versions before these names wrote it: `status` was "ok" or "<kind>: <reason>",
# and three columns had the names on the left. Read (by `fibrosis monitor`) through migrate_row.
OLD_COLUMNS: tuple[str, ...] = (
    "path", "status", "qa", "sop_uid", "series_uid", "study_uid", "patient_key", "view_position",
    "logit", "probability", "decision", "threshold_name", "threshold", "model_id", "engine", "content_hash",
)
RENAMED = {"logit": "logit_uncalibrated", "probability": "probability_calibrated", "decision": "decision_fibrosis"}
# The side file <out stem>.meta.csv, one row per row of the scores file (joined by path):
# the per-image header fields and cached-image statistics `fibrosis monitor` compares with
# the evaluation's reference. scores.csv keeps its columns (resume checks its header).
# No identifiers: no patient ID, no dates finer than the month, no free-text tags.
META_COLUMNS: tuple[str, ...] = (
    "path", "scored_at", "study_month", "modality", "manufacturer", "model_name", "view_position",
    "pixel_spacing", "rows", "cols", "transfer_syntax", "sex", "age", *IMAGE_STATS,
)
AGGREGATES = typing.get_args(StudyAggregate)
# Frontal = PA or AP; "" when the file does not say (PNG/JPEG exports, ViewPosition
# absent): lateral views never reach "ok" because ingestion policy excludes them.
FRONTAL_VIEWS = frozenset({"PA", "AP", ""})


# A cell of a row to write: text, a count or decision, a statistic; None is an empty cell.
Cell = str | int | float | None


@dataclass(frozen=True, slots=True)
class ScoreRow:
    """One row of scores.csv (COLUMNS); None leaves a cell empty (e.g. the logit of a file not scored)."""
    path: str
    status: str
    content_hash: str
    model_id: str
    threshold_name: str
    threshold: str  # as written: format(threshold, ".10g")
    reason: str | None = None
    qa: str | None = None
    sop_uid: str | None = None
    series_uid: str | None = None
    study_uid: str | None = None
    patient_key: str | None = None
    view_position: str | None = None
    logit_uncalibrated: str | None = None  # "%.6f"
    probability_calibrated: str | None = None  # "%.6f"
    decision_fibrosis: int | None = None
    engine: str | None = None

    def to_csv(self) -> dict[str, Cell]:
        return {c: getattr(self, c) for c in COLUMNS}


@dataclass(frozen=True, slots=True)
class StudyRow:
    """One row of the per-study aggregate (STUDY_COLUMNS); probability and decision None when
    no frontal image of the study was scored."""
    study_uid: str
    patient_key: str  # '|'-joined when the images disagree
    n_images: int  # frontal ok images aggregated
    n_ok: int
    aggregate: str
    probability: float | None
    decision_fibrosis: int | None
    threshold_name: str
    threshold: str
    model_id: str

    @property
    def probability_calibrated(self) -> str:
        """As written: "%.6f", "" for none."""
        return "" if self.probability is None else f"{self.probability:.6f}"

    def to_csv(self) -> dict[str, Cell]:
        return {"study_uid": self.study_uid, "patient_key": self.patient_key, "n_images": self.n_images,
                "n_ok": self.n_ok, "aggregate": self.aggregate, "probability_calibrated": self.probability_calibrated,
                "decision_fibrosis": "" if self.decision_fibrosis is None else self.decision_fibrosis,
                "threshold_name": self.threshold_name, "threshold": self.threshold, "model_id": self.model_id}


def status_cells(kind: str, reason: str) -> dict[str, str]:
    """``status`` and ``reason`` of a file that was not scored: the code, and the reason on one line."""
    if kind not in STATUSES or kind == "ok":
        raise ValueError(f"status {kind!r}; expected one of {[s for s in STATUSES if s != 'ok']}")
    return {"status": kind, "reason": " ".join(str(reason).split())}


def iter_score_rows(path: Path) -> Iterator[dict[str, str]]:
    """The rows of a scores file with this version's columns, one at a time: the one reader of
    `monitor`, `review` and review's reader-vs-model summary. An OLD_COLUMNS file is migrated row by
    row (:func:`migrate_row`) with one note; any other header is refused, naming the file."""
    rows = iter_csv(path)
    for line, r in enumerate(rows, start=2):
        if line == 2 and tuple(r) == OLD_COLUMNS:
            logger.info("%s: a scores file of an earlier version (status 'kind: reason'; logit, probability, "
                        "decision): read as status + reason, logit_uncalibrated, probability_calibrated, "
                        "decision_fibrosis", path)
            yield migrate_row(r)
            yield from (migrate_row(o) for o in rows)
            return
        if line == 2 and tuple(r) != COLUMNS:
            raise ValueError(f"{path}: columns {list(r)}; expected {list(COLUMNS)} (a fibrosis scores file)")
        yield r


def migrate_row(row: dict[str, str]) -> dict[str, str]:
    """A row of an OLD_COLUMNS file with this version's columns: "<kind>: <reason>" split into
    ``status`` and ``reason``, the renamed columns under their new names."""
    kind, _, reason = row.get("status", "").partition(":")
    out = {RENAMED.get(k, k): v for k, v in row.items()}
    out.update(status=kind.strip(), reason=reason.strip())
    return {c: out.get(c, "") for c in COLUMNS}


def _side_path(scores: Path, kind: str) -> Path:
    name = scores.name[:-4] if scores.name.endswith(".csv") else scores.name
    return scores.with_name(f"{name}.{kind}.csv")


def aux_path(scores: Path) -> Path:
    """``scores.csv`` -> ``scores.aux.csv``: the auxiliary findings' outputs (``--aux``)."""
    return _side_path(scores, "aux")


def aux_columns(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Side file of the auxiliary heads: one uncalibrated probability per finding (``p_<name>``).
    Never in scores.csv: those findings were not validated, and resume checks its header."""
    return ("path", "model_id", *(f"p_{n}" for n in names))


def meta_path(scores: Path) -> Path:
    """``scores.csv`` -> ``scores.meta.csv`` (``x.csv.rank1`` -> ``x.csv.rank1.meta.csv``)."""
    return _side_path(scores, "meta")


def studies_path(scores: Path) -> Path:
    """``scores.csv`` -> ``scores.studies.csv``: the per-study aggregate."""
    return scores.with_suffix(".studies.csv")


def side_files(scores: Path, aux_columns: tuple[str, ...] | None = None) -> list[tuple[Path, tuple[str, ...]]]:
    """(path, columns) of every file written beside ``scores``: each gets the checks ``--out``
    gets (:func:`check_ours`), since a FIFO or a foreign file there would block or be lost the same way."""
    files = [(studies_path(scores), STUDY_COLUMNS), (meta_path(scores), META_COLUMNS)]
    return files + ([(aux_path(scores), aux_columns)] if aux_columns else [])


def discover_inputs(input_: str | Path, out: Path, gradcam_dir: Path | None,
                    salt_file: Path | None = None) -> list[tuple[str, str]]:
    """Sorted (path, error) entries from :func:`fibrosis.data.discover.discover_entries` (the
    discovery ingest uses: hidden files included, unreadable folders as entries with their
    reason). Our own outputs (and the salt file) are left out when they sit inside the
    input folder: a re-run must not score its own CSV."""

    ours = (out, studies_path(out), meta_path(out), aux_path(out))
    skip = {str(p.resolve()) for p in (*ours, salt_file) if p}
    # Also rank parts and the temporary files a killed atomic rewrite leaves (all next to
    # ``out``): hidden files are inputs now, so ``.scores.csv.tmp123`` must be named here.
    names = "|".join(re.escape(p.name) for p in ours)
    rank_side = rf"{re.escape(out.name)}\.rank\d+\.(?:meta|aux)\.csv"
    own = re.compile(rf"(?:{names})\.rank\d+(?:\.(?:meta|aux)\.csv)?|\.(?:{names}|{rank_side})\.tmp\d+")
    gc = str(gradcam_dir.resolve()) + os.sep if gradcam_dir else None
    return [(p, err) for p, err in discover_entries([input_])
            if p not in skip and not (Path(p).parent == out.parent.resolve() and own.fullmatch(Path(p).name))
            and not (gc and p.startswith(gc))]


def _line(row: Mapping[str, Cell], columns: tuple[str, ...]) -> str:
    return csv_line(row.get(c) for c in columns)


def check_ours(path: Path, columns: tuple[str, ...] = COLUMNS) -> bool:
    """False when ``path`` is absent or empty; True when it is a regular file whose first
    line is exactly our header for ``columns``. Anything else raises ValueError *before*
    a byte of it is changed: ``--out`` may name a DICOM, a labels CSV or a device by
    mistake, and such a file must come out of the run as it went in."""
    if not path.exists():
        return False
    why = not_regular(path.stat().st_mode)
    if why:
        raise ValueError(f"{path}: {why}; expected a fibrosis score file or a new path: choose a new --out")
    header = _line(dict(zip(columns, columns)), columns).encode("utf-8")
    with open_regular(path, "rb") as fh:
        first = fh.read(len(header))
    if not first:
        return False
    if first != header:
        raise ValueError(f"{path}: existing file does not start with the fibrosis score header (columns "
                         f"{list(columns)}): not a score file of this version; it was left unchanged: "
                         "choose a new --out")
    return True


def _cut_torn_line(path: Path) -> None:
    """Cut back to the last complete line (a kill mid-write), reading backwards from the
    end in blocks rather than the whole file."""
    with open(path, "rb+") as fh:
        size = end = fh.seek(0, os.SEEK_END)
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        keep = 0
        while end > 0:
            start = max(0, end - (1 << 16))
            fh.seek(start)
            nl = fh.read(end - start).rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            end = start
        fh.truncate(keep)
    logger.warning("%s: cut a torn last line (%d bytes) left by an interrupted run", path, size - keep)


def open_for_resume(path: Path, expect_model: str) -> dict[str, str]:
    """Path -> content hash of the rows already in ``path`` (the last row of a path wins),
    after cutting a torn last line; refuses, leaving it unchanged, a file that is not a
    score file (:func:`check_ours`), and rows of another model."""
    if not check_ours(path):
        return {}
    _cut_torn_line(path)
    done: dict[str, str] = {}
    for i, rec in enumerate(iter_csv(path), start=2):  # the header was checked above
        if None in rec or None in rec.values():
            # csv puts a row's surplus fields under the key None, a missing field's value is None
            extra = cast("dict[str | None, Any]", rec).get(None)
            n = len(COLUMNS) + len(extra or ()) - sum(v is None for k, v in rec.items() if k is not None)
            raise ValueError(f"{path}: line {i} has {n} fields; expected {len(COLUMNS)}")
        if rec["model_id"] != expect_model:
            raise ValueError(f"{path}: line {i} was scored by model_id={rec['model_id']!r}; this run "
                             f"uses {expect_model!r}; scores of two models must not be mixed: "
                             f"choose a new --out")
        done[rec["path"]] = rec["content_hash"]
    return done


def prune_meta(path: Path, done: Container[str], columns: tuple[str, ...] = META_COLUMNS) -> None:
    """Before a resume: keep only the side-file rows of paths already in the scores file.
    Side rows are written before their score rows, so a killed run may leave a few extra
    (and a torn last line); those files are scored again and their rows re-written."""
    if not check_ours(path, columns):  # a FIFO or a foreign file: refused, left as it is
        return
    with open_regular(path, "rb") as fh:
        text = fh.read()
    text = text[:text.rfind(b"\n") + 1]  # a torn last line
    try:
        rows = list(CsvRows(io.StringIO(text.decode("utf-8")), path, decode=True))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}); expected a fibrosis score side file") from None
    _write_rows_atomic(path, (r for r in rows if r["path"] in done), columns)


class RowWriter:
    """Appends rows to a score CSV (header first when new); ``flush`` after each batch."""

    def __init__(self, path: Path, columns: tuple[str, ...] = COLUMNS):
        self.path, self.columns = path, columns
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open_regular(path, "a", newline="", encoding="utf-8")  # a FIFO is refused, not waited on
        if self.fh.tell() == 0:
            self._do(self.fh.write, _line(dict(zip(columns, columns)), columns))

    def _do(self, op: Any, *args: Any) -> None:
        """``op(*args)``; a full disk is one line naming the file (a torn last line is cut on resume)."""
        try:
            op(*args)
        except OSError as exc:
            if is_no_space(exc):
                raise no_space(exc, self.path) from None
            raise

    def write(self, row: Mapping[str, Cell]) -> None:
        self._do(self.fh.write, _line(row, self.columns))

    def flush(self) -> None:
        # The OS buffer survives a killed process; fsync would only add power-loss
        # safety at a large cost per batch.
        self._do(self.fh.flush)

    def close(self) -> None:
        try:
            self._do(self.fh.close)
        except OSError:
            if not self.fh.closed:
                raise


def iter_rows(path: Path) -> Iterator[dict[str, str]]:
    return iter_csv(path)


def is_sorted(path: Path) -> bool:
    prev = None
    for row in iter_rows(path):
        if prev is not None and row["path"] <= prev:
            return False
        prev = row["path"]
    return True


def _write_rows_atomic(path: Path, rows: Iterable[dict[str, str]], columns: tuple[str, ...] = COLUMNS) -> int:
    """:func:`fibrosis.io.write_csv` of ``rows`` cut to ``columns`` (rows read back from a file of
    another version may hold more); the row count."""
    return write_csv(path, rows, columns)


def _dedupe(rows: Iterable[dict[str, str]]) -> Iterator[dict[str, str]]:
    """One row per path of path-sorted rows: the last, since a file scored again (its
    content changed) has its new row after the old one (stable sorts and merges)."""
    prev: dict[str, str] | None = None
    for row in rows:
        if prev is not None and row["path"] != prev["path"]:
            yield prev
        prev = row
    if prev is not None:
        yield prev


def sort_in_place(path: Path, columns: tuple[str, ...] = COLUMNS) -> None:
    """Rewrite ``path`` sorted by path (needed only when the inputs changed between a
    killed run and its resume; holds the rows, not images, in memory)."""
    rows = sorted(iter_rows(path), key=lambda r: r["path"])
    _write_rows_atomic(path, _dedupe(rows), columns)
    logger.info("%s: rows re-sorted by path (inputs added or changed since the last run)", path)


def merge_parts(out: Path, parts: list[Path], columns: tuple[str, ...] = COLUMNS) -> int:
    """k-way merge of sorted part files (and an existing ``out``) into ``out``; removes the parts.

    A path present in two sources (a kill between the rename and the clean-up, or a
    file scored again because it changed) is written once, from the last source.
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


def study_rows(path: Path, aggregate: str) -> Iterator[StudyRow]:
    """Per-study aggregate of calibrated probabilities over frontal ``ok`` images, by study UID.

    ``max`` (default) flags a study when any frontal image is positive -- the same
    operating point as per image; ``mean`` smooths over repeat images but its
    decision at the image-level threshold was not validated as such.

    The rows are sorted by path, not study, so they are grouped in a scratch SQLite file,
    read back one study at a time: a dict per study was ~1.5 KB each, 781 MB for the 500k
    studies of a 1M-image archive. Each study's images are taken in file order.
    """
    if aggregate not in AGGREGATES:  # refused now, not when the rows are first read
        raise ValueError(f"study aggregate {aggregate!r}; allowed: {list(AGGREGATES)}")
    return _study_rows(path, aggregate)


def _study_rows(path: Path, aggregate: str) -> Iterator[StudyRow]:
    import sqlite3

    fd, name = tempfile.mkstemp(prefix="fibrosis-studies-", suffix=".sqlite")
    os.close(fd)
    try:
        yield from _grouped(path, name, aggregate)
    except (OSError, sqlite3.Error) as exc:
        if is_no_space(exc):  # the scratch table of a large archive filled the temporary folder
            raise no_space(exc if isinstance(exc, OSError) else None, name) from None
        raise
    finally:
        os.unlink(name)


def _grouped(path: Path, name: str, aggregate: str) -> Iterator[StudyRow]:
    """The study rows of ``path``, grouped in the SQLite file ``name``."""
    import sqlite3

    db = sqlite3.connect(name, isolation_level=None)
    try:
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-4096", "temp_store=FILE"):
            db.execute(f"PRAGMA {pragma}")
        db.execute("CREATE TABLE img (study TEXT, key TEXT, frontal INTEGER, prob REAL, decision INTEGER, "
                   "threshold_name TEXT, threshold TEXT, model_id TEXT)")
        db.execute("BEGIN")
        batch: list[tuple[Any, ...]] = []
        for row in iter_rows(path):
            if row["status"] != "ok" or not row["study_uid"]:
                continue
            frontal = row["view_position"] in FRONTAL_VIEWS
            batch.append((row["study_uid"], row["patient_key"], frontal,
                          float(row["probability_calibrated"]) if frontal else None,
                          int(row["decision_fibrosis"]) if frontal else None,
                          row["threshold_name"], row["threshold"], row["model_id"]))
            if len(batch) >= 4096:
                db.executemany("INSERT INTO img VALUES (?,?,?,?,?,?,?,?)", batch)
                batch.clear()
        db.executemany("INSERT INTO img VALUES (?,?,?,?,?,?,?,?)", batch)
        db.execute("CREATE INDEX by_study ON img (study)")  # entries end in rowid: file order within a study
        db.execute("COMMIT")
        # SQLite compares UTF-8 bytes: the order of Python's sorted() on str
        cur = db.execute("SELECT study, key, frontal, prob, decision, threshold_name, threshold, model_id "
                         "FROM img INDEXED BY by_study ORDER BY study, rowid")
        for uid, images in itertools.groupby(cur, key=lambda r: r[0]):
            yield _study_row(uid, list(images), aggregate)
    finally:
        db.close()


def _study_row(uid: str, images: list[tuple[Any, ...]], aggregate: str) -> StudyRow:
    """One study's aggregate from its images (study, key, frontal, prob, decision, threshold
    name, threshold, model id), in file order: the first image's threshold and model."""
    keys = sorted({im[1] for im in images})
    if len(keys) > 1:
        logger.warning("study %s: images carry %d different patient keys", uid, len(keys))
    probs = [im[3] for im in images if im[2]]
    _, _, _, _, _, threshold_name, threshold, model_id = images[0]
    if not probs:
        prob = decision = None
    elif aggregate == "max":  # positive iff an image is: exactly the image-level decisions
        prob, decision = max(probs), max(im[4] for im in images if im[2])
    else:
        prob = sum(probs) / len(probs)
        decision = int(prob >= float(threshold))
    return StudyRow(uid, "|".join(keys), len(probs), len(images), aggregate, prob, decision, threshold_name,
                    threshold, model_id)


def write_studies(scores: Path, out: Path, aggregate: str) -> int:
    """``out``: one row per study (:func:`study_rows`), streamed to disk; returns their number."""
    return write_csv(out, (r.to_csv() for r in study_rows(scores, aggregate)), STUDY_COLUMNS)
