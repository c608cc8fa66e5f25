"""Labels CSV: one label per image, joined by SOP Instance UID, file path or Study UID.

Accepted key columns (at least one): ``sop_instance_uid``, ``image`` or ``file``,
and ``study_instance_uid`` (the label then applies to every image of the study).
``image``/``file`` holds a file name (``IM0001.dcm``) or a path relative to the
input folder (``studyA/IM0001.dcm``; ``\\`` and a leading ``./`` are accepted). A
row matches the input files whose path *ends with* those components; the longest
match wins, then the same with the extension dropped so that a
``00000075_000.png`` row also labels its DICOM wrap ``00000075_000.dcm`` (in the
same folder when the row names one). PACS exports repeat file names in every
study folder, so :meth:`Labels.check_unique` refuses a row that matches more than
one input: a label (and its patient_id hint) must never reach another patient.
The label column is ``ingest.label_column``. Optional ``patient_id``, ``age``,
``sex`` and ``view`` columns supply what PNG/JPEG exports cannot carry.

Auxiliary findings: research exports label many findings per report, and the
other findings give the backbone more signal than the scarce target alone. They come from
extra binary columns (``ingest.aux_label_columns``, read like the target: 1 / 0 / empty =
missing) and/or one pipe-separated findings column (``ingest.findings_column``, NIH's
``Atelectasis|Effusion``). A findings cell lists the row's positives, so a non-empty cell
makes every other finding of the column's vocabulary a 0 (``ingest.findings_none``, e.g.
``No Finding``, is a labelled row with every finding 0); an empty cell is all missing, never
negative. The target is not an auxiliary: a finding named like the label column is left out.
Each row's findings travel as a manifest ``aux_labels`` cell (:func:`records.format_aux`).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Sequence

from fibrosis.data.coded import PLACEHOLDERS, SEXES, age_years, coded
from fibrosis.data.records import AUX_SEPARATOR, aux_name_problem, format_aux
from fibrosis.io import csv_rows
from fibrosis.words import plural

logger = logging.getLogger(__name__)

POSITIVE = {"1", "true", "yes", "positive", "pos"}
NEGATIVE = {"0", "false", "no", "negative", "neg"}
HINT_COLUMNS = ("patient_id", "age", "sex", "view")
SHOW_PATHS = 5  # matching paths quoted in an ambiguity error

Key = tuple[str, ...]  # path components, file name last


class LabelsError(ValueError):
    """The labels CSV is unusable (missing columns, bad values, conflicting rows)."""


def parse_label(value: str, where: str) -> str:
    """'1'/'0' for a binary label, '' for unlabeled; anything else is an error."""
    v = value.strip().lower()
    if v == "":
        return ""
    if v in POSITIVE:
        return "1"
    if v in NEGATIVE:
        return "0"
    raise LabelsError(f"{where}: label {value!r}; expected one of {sorted(POSITIVE | NEGATIVE)} or empty")


def path_key(name: str) -> Key:
    """Components of a CSV file entry: Windows separators and ``.`` parts normalised."""
    return tuple(p for p in PurePosixPath(name.replace("\\", "/")).parts if p != ".")


def _stem_key(key: Key) -> Key:
    return key[:-1] + (PurePosixPath(key[-1]).stem,)


@dataclass
class Labels:
    source: str = ""
    by_sop: dict[str, dict[str, str]] = field(default_factory=dict)
    by_path: dict[Key, dict[str, str]] = field(default_factory=dict)
    by_stem: dict[Key, dict[str, str] | None] = field(default_factory=dict)  # None = ambiguous
    by_study: dict[str, dict[str, str]] = field(default_factory=dict)
    depth: int = 1  # most components of any file entry
    aux_names: tuple[str, ...] = ()  # auxiliary findings (columns and findings vocabulary), sorted
    # The findings column's vocabulary. A row keeps only what it lists (``_listed``) and its aux
    # columns (``_auxcols``); its aux_labels cell, 0 for every finding it does not list, is built
    # when an image joins it: rows x findings values never sit in memory at once.
    vocabulary: tuple[str, ...] = ()

    def row_for_file(self, path: str | Path) -> dict[str, str] | None:
        """Row of the longest entry that ``path`` ends with (full name first, then stem)."""
        parts = Path(path).parts
        for k in range(min(self.depth, len(parts)), 0, -1):
            key = parts[-k:]
            row = self.by_path.get(key) or self.by_stem.get(_stem_key(key))
            if row is not None:
                return row
        return None

    def check_unique(self, paths: Iterable[str | Path]) -> None:
        """Refuse a file row that matches several inputs (e.g. IM0001.dcm in every study)."""
        hits: dict[int, tuple[dict[str, str], list[str]]] = {}
        for p in paths:
            row = self.row_for_file(p)
            if row is not None:
                hits.setdefault(id(row), (row, []))[1].append(str(p))
        bad = [(row, ps) for row, ps in hits.values() if len(ps) > 1]
        if not bad:
            return
        lines = [f"{self.source}:{row['_line']}: image {row['_file']!r} matches {len(ps)} input files "
                 f"({', '.join(ps[:SHOW_PATHS])}{', ...' if len(ps) > SHOW_PATHS else ''})" for row, ps in bad]
        raise LabelsError("\n".join(lines[:SHOW_PATHS]) + (f"\n... and {len(bad) - SHOW_PATHS} more rows"
                                                           if len(bad) > SHOW_PATHS else "")
                          + "\nexpected each row to name one image: give its relative path (e.g. "
                            "studyA/IM0001.dcm) or its sop_instance_uid")

    def hints(self, path: str | Path) -> dict[str, Any]:
        """patient_id/age/sex/view for a file, from its row (file join only)."""
        row = self.row_for_file(path)
        return {k: row[k] for k in HINT_COLUMNS if row.get(k)} if row else {}

    def row(self, path: str | Path, sop_uid: str, study_uid: str) -> tuple[dict[str, str] | None, str]:
        """(the row an image joins, how): by SOP Instance UID, then file path, then Study UID."""
        for how, row in (("sop_instance_uid", self.by_sop.get(sop_uid) if sop_uid else None),
                         ("file", self.row_for_file(path)),
                         ("study_instance_uid", self.by_study.get(study_uid) if study_uid else None)):
            if row is not None:
                return row, how
        return None, ""

    def join(self, path: str | Path, sop_uid: str, study_uid: str) -> tuple[str, str, str]:
        """(label, ``aux_labels`` cell, how it was joined); ('', '', '') when no row matches."""
        row, how = self.row(path, sop_uid, study_uid)
        return (row["_label"], self.aux_cell(row), how) if row is not None else ("", "", "")

    def aux_cell(self, row: dict[str, Any]) -> str:
        """The manifest ``aux_labels`` cell of one row (see :attr:`vocabulary`)."""
        return _aux_cell(row, self.vocabulary)

    def label(self, path: str | Path, sop_uid: str, study_uid: str) -> tuple[str, str]:
        """(label, how it was joined); ('', '') when no row matches."""
        label, _, how = self.join(path, sop_uid, study_uid)
        return label, how

    def aux(self, path: str | Path, sop_uid: str, study_uid: str) -> str:
        """The image's manifest ``aux_labels`` cell (joined as :meth:`label` is); "" when no row
        matches or the row labels no auxiliary finding."""
        return self.join(path, sop_uid, study_uid)[1]


def _put(table: dict[Any, dict[str, Any]], key: Any, row: dict[str, Any], where: str, what: str,
         cell: Callable[[dict[str, Any]], str]) -> None:
    old = table.get(key)
    if old is not None and old["_label"] != row["_label"]:
        raise LabelsError(f"{where}: {what} appears twice with labels {old['_label']!r} and {row['_label']!r}")
    if old is not None and _aux_key(old) != _aux_key(row):
        raise LabelsError(f"{where}: {what} appears twice with auxiliary findings {cell(old)!r} "
                          f"(line {old['_line']}) and {cell(row)!r}; expected one set of findings per image")
    table[key] = row


def _aux_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """What a row says of its auxiliary findings, comparable without building its cell."""
    listed = row["_listed"]
    return tuple(sorted(row["_auxcols"].items())), None if listed is None else tuple(sorted(listed))


def _aux_cell(row: dict[str, Any], vocabulary: Sequence[str]) -> str:
    values = dict(row["_auxcols"])
    if row["_listed"] is not None:  # a non-empty findings cell: 1 listed, 0 the rest of the vocabulary
        values.update((name, int(name in row["_listed"])) for name in vocabulary)
    return format_aux(values)


def _findings(cell: str, none: str, where: str) -> list[str]:
    """The names a findings cell lists (stripped; empty entries of ``A||B`` dropped); [] for
    the none token, which must stand alone."""
    names = [n.strip() for n in cell.split(AUX_SEPARATOR) if n.strip()]
    if none in names and len(names) > 1:
        raise LabelsError(f"{where}: {cell!r} lists {none!r} (ingest.findings_none) with other findings; "
                          f"expected {none!r} alone or findings without it")
    return [] if names == [none] else names


def _aux_vocabulary(rows: list[dict[str, str]], path: Path, columns: Sequence[str], label_column: str,
                    aux_columns: Sequence[str], findings_column: str | None, findings_none: str,
                    max_findings: int) -> list[str]:
    """Check the auxiliary settings against the header and return the findings vocabulary:
    every name of the findings column but the none token and the target; more than
    ``max_findings`` names is refused (a column of free text or IDs, not of findings)."""
    for what, col in [*(("auxiliary label column (ingest.aux_label_columns)", c) for c in aux_columns),
                      *([("findings column (ingest.findings_column)", findings_column)] if findings_column else [])]:
        if col not in columns:
            raise LabelsError(f"{path}: {what} {col!r} not in the header {columns}")
        if col == label_column:
            raise LabelsError(f"{path}: {what} {col!r} is the label column (ingest.label_column); "
                              "expected columns of other findings")
    if findings_column in aux_columns:
        raise LabelsError(f"{path}: column {findings_column!r} is both ingest.findings_column and in "
                          "ingest.aux_label_columns; expected one reading of a column")
    for col in aux_columns:
        problem = aux_name_problem(col)
        if problem or aux_columns.count(col) > 1:
            raise LabelsError(f"{path}:1: auxiliary label column {col!r}: "
                              f"{problem or 'listed twice in ingest.aux_label_columns; expected each once'}")
    if not findings_column:
        return []
    vocabulary: dict[str, int] = {}  # name -> first line
    for i, row in enumerate(rows, start=2):
        for name in _findings(row[findings_column], findings_none, f"{path}:{i} column {findings_column!r}"):
            problem = aux_name_problem(name)
            if problem:
                raise LabelsError(f"{path}:{i} column {findings_column!r}: finding {name!r}; {problem}")
            if name not in vocabulary and len(vocabulary) >= max_findings:
                raise LabelsError(f"{path}:{i} column {findings_column!r}: more than {max_findings} distinct "
                                  f"findings (limit ingest.max_findings={max_findings}); expected a findings "
                                  "vocabulary such as NIH's 14: a column of free text or IDs names a new "
                                  "finding on every row (raise the limit if these are findings)")
            vocabulary.setdefault(name, i)
    target = label_column.casefold()
    vocabulary = {n: i for n, i in vocabulary.items() if n.casefold() != target}
    for col in aux_columns:
        clash = next((n for n in vocabulary if n.casefold() == col.casefold()), None)
        if clash is not None:
            raise LabelsError(f"{path}:{vocabulary[clash]}: finding {clash!r} of column {findings_column!r} is "
                              f"also the auxiliary label column {col!r}; expected each finding from one source "
                              "(drop it from ingest.aux_label_columns or rename the column)")
    return sorted(vocabulary)


def _row_aux(row: dict[str, Any], where: str, aux_columns: Sequence[str], findings_column: str | None,
             findings_none: str) -> None:
    """The row's auxiliary findings, kept sparse: ``_auxcols`` (its aux columns, tri-state) and
    ``_listed`` (the findings its findings cell lists; None when the cell is empty)."""
    values = {}
    for col in aux_columns:
        value = parse_label(row[col], f"{where} column {col!r}")
        if value:
            values[col] = int(value)
    row["_auxcols"] = values
    row["_listed"] = (frozenset(_findings(row[findings_column], findings_none, f"{where} column {findings_column!r}"))
                      if findings_column and row[findings_column].strip() else None)


def _view(value: str, views: Iterable[str]) -> str:
    view = coded(value, "ViewPosition", views)
    return "" if view in PLACEHOLDERS else view


def _sex(value: str) -> str:
    sex = coded(value, "PatientSex")
    return sex if sex in SEXES else ""


def _clean_hints(rows: list[dict[str, str]], path: Path, views: Iterable[str]) -> None:
    """age / sex / view of a labels CSV go into the manifest of PNG/JPEG exports: a value that
    cannot be what its column holds (an age that is no number, a formula, a name) is emptied,
    with one warning per column that names the first line but never the value."""
    views = tuple(views)
    checks = (("age", age_years, "an age in years (0-150, or a DICOM age string such as 061Y)"),
              ("sex", _sex, f"a sex code {sorted(SEXES)}"),
              ("view", lambda v: _view(v, views), "a view position code (PA, AP, LL, ...)"))
    for col, clean, expected in checks:
        bad = []
        for i, row in enumerate(rows, start=2):
            value = row.get(col, "")
            if value:
                row[col] = clean(value)
                if not row[col]:
                    bad.append(i)
        if bad:
            logger.warning("%s: column %r: %s %s not %s (first on line %d; not shown): left empty",
                           path, col, plural(len(bad), "value"), "is" if len(bad) == 1 else "are", expected, bad[0])


def load_labels(path: str | Path, label_column: str, aux_columns: Sequence[str] = (),
                findings_column: str | None = None, findings_none: str = "No Finding", *,
                max_findings: int = 256, views: Iterable[str] = ()) -> Labels:
    """Read a labels CSV (module docstring); ``aux_columns``, ``findings_column``,
    ``findings_none`` and ``max_findings`` are ``ingest.aux_label_columns``, ``.findings_column``,
    ``.findings_none`` and ``.max_findings``; ``views``: view codes the config adds
    (``ingest.excluded_views``) to the DICOM defined terms a ``view`` hint may hold."""
    path = Path(path)
    if not path.exists():
        raise LabelsError(f"{path}: labels CSV not found")
    # csv_rows: a FIFO is refused, a field over the csv limit or bytes that are not UTF-8 are one
    # line naming the file and line, and cells are read as written (a user's CSV, not ours)
    with csv_rows(path, decode=False, encoding="utf-8-sig") as reader:
        columns = [c.strip() for c in (reader.fieldnames or [])]
        # DictReader keeps the last of two equal column names: one of two label columns
        # would be dropped silently, so a repeated name is refused.
        repeated = sorted({c for c in columns if c and columns.count(c) > 1})
        if repeated:
            raise LabelsError(f"{path}: column(s) {repeated} appear more than once in the header "
                              f"{columns}; expected each column once")
        rows = []
        for r in reader:
            # Fields beyond the header land under the key None: empty ones are a trailing
            # comma (spreadsheet exports), anything else is a row that does not fit the header.
            extra = r.pop(None, None) or []
            if any(v.strip() for v in extra):
                raise LabelsError(f"{path}:{reader.line_num}: {len(columns) + len(extra)} fields; the header "
                                  f"has {len(columns)} ({columns}); expected at most one value per column")
            rows.append({(k or "").strip(): (v or "").strip() for k, v in r.items()})
    keys = [c for c in ("sop_instance_uid", "image", "file", "study_instance_uid") if c in columns]
    if not keys:
        raise LabelsError(f"{path}: no key column; expected one of sop_instance_uid, image, file, "
                          f"study_instance_uid (columns: {columns})")
    if label_column not in columns:
        raise LabelsError(f"{path}: label column {label_column!r} (ingest.label_column) not in {columns}")
    aux_columns = list(aux_columns)
    vocabulary = _aux_vocabulary(rows, path, columns, label_column, aux_columns, findings_column, findings_none,
                                 max_findings)
    labels = Labels(source=str(path), aux_names=tuple(sorted({*aux_columns, *vocabulary})),
                    vocabulary=tuple(vocabulary))
    _clean_hints(rows, path, views)
    stems: dict[Key, dict[str, str] | None] = {}
    cell = labels.aux_cell
    for i, row in enumerate(rows, start=2):
        where = f"{path}:{i}"
        row["_label"] = parse_label(row[label_column], f"{where} column {label_column!r}")
        row["_line"] = str(i)
        _row_aux(row, where, aux_columns, findings_column, findings_none)
        if row.get("sop_instance_uid"):
            _put(labels.by_sop, row["sop_instance_uid"], row, where,
                 f"sop_instance_uid {row['sop_instance_uid']!r}", cell)
        name = row.get("image") or row.get("file")
        key = path_key(name) if name else ()
        if key:
            row["_file"] = "/".join(key)
            _put(labels.by_path, key, row, where, f"file {row['_file']!r}", cell)
            labels.depth = max(labels.depth, len(key))
            stem = _stem_key(key)
            prev = stems.get(stem, row)  # the same entry twice is not ambiguous
            stems[stem] = row if prev is not None and prev["_file"] == row["_file"] else None
        # A study key labels the whole study only in rows that name no single image.
        if row.get("study_instance_uid") and not (row.get("sop_instance_uid") or key):
            _put(labels.by_study, row["study_instance_uid"], row, where,
                 f"study_instance_uid {row['study_instance_uid']!r}", cell)
    ambiguous = sum(v is None for v in stems.values())
    if ambiguous:
        logger.info("%s: %d file stems appear with several extensions; those join by full name only",
                    path, ambiguous)
    labels.by_stem = {k: v for k, v in stems.items() if v is not None}
    logger.info("%s: %d label rows (%d positive)", path, len(rows), sum(r["_label"] == "1" for r in rows))
    if labels.aux_names:
        n = sum(bool(r["_auxcols"]) or (r["_listed"] is not None and bool(vocabulary)) for r in rows)
        logger.info("%s: %s %s; %d of %d rows label at least one", path,
                    plural(len(labels.aux_names), "auxiliary finding"), list(labels.aux_names), n, len(rows))
    return labels
