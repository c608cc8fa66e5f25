"""The cache's two tables as records: a ``manifest.csv`` row (:class:`ManifestRow`) and a
``rejects.csv`` row (:class:`RejectRow`), with the one reader and one writer of each.

The dataclass fields are the columns: ``MANIFEST_COLUMNS`` and ``REJECT_COLUMNS`` are
derived from them, in field order, which is the files' column order. A value is parsed
once, when its row is read (a shard number is an ``int``, a label ``0 | 1 | None``), and
written back as the same text: reading a manifest this package wrote and writing it again
gives the same bytes. Rows are updated with :func:`dataclasses.replace`, never in place.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from fibrosis.data.records import FileStamp, RejectKind, parse_aux, parse_label
from fibrosis.io import csv_rows, write_csv

UNPLACED = -1  # shard / index of a row not yet committed: CacheWriter.write_shard places it


@dataclass(frozen=True, slots=True)
class ManifestRow:
    """One cached image: where its pixels are, its keys, header values, label and split."""
    path: str = ""
    content_hash: str = ""  # sha256 of the file's bytes
    shard: int = UNPLACED  # shards/shard-<shard>.npy
    index: int = UNPLACED  # row of the image in that shard
    source_format: str = ""  # dicom | acr-nema | png | jpeg (synthetic in tests)
    patient_key: str = ""  # salted pseudonym of PatientID (data.identity), never the ID itself
    study_uid: str = ""
    series_uid: str = ""
    sop_uid: str = ""
    view_position: str = ""
    body_part: str = ""
    modality: str = ""
    manufacturer: str = ""
    model_name: str = ""
    sex: str = ""
    age: str = ""  # as the header or labels CSV gave it (61, 061Y): evaluate.subgroups reads it
    pixel_spacing: str = ""
    rows: int | None = None  # None: not known (a cell left empty)
    cols: int | None = None
    transfer_syntax: str = ""
    photometric: str = ""
    steps: tuple[str, ...] = ()  # what the pixel path did, '|'-joined in the file
    label: int | None = None  # 1, 0, or None when unlabelled (records.parse_label)
    split: str = ""  # train | val | test | calib from `fibrosis split`; "" before it
    # Appended after the columns above so an older manifest keeps its columns' places; one
    # without them reads as before and is filled on the next ingest/split.
    dhash: str = ""  # hex 256-bit dHash of the cached image: split finds near-duplicates without pixels
    # records.file_stamp of the file when it was read: a re-run skips it unread if unchanged
    file_size: int | None = None
    file_mtime_ns: int | None = None
    file_id: str = ""
    # Last for the same reason; a manifest without it reads as "" (no auxiliary finding
    # known) and is filled on the next ingest with a labels CSV.
    aux_labels: str = ""  # other findings of the labels CSV: records.format_aux, e.g. "Effusion=1|Mass=0"

    def cells(self) -> dict[str, str]:
        """The row's CSV cells by column, as the manifest stores them."""
        return {name: getattr(self, name) if text is None else text(getattr(self, name)) for name, text in _CELLS}

    def cell(self, name: str) -> str:
        """One column's stored text (a column named by a user, e.g. a subgroup attribute)."""
        value, text = getattr(self, name), _TEXT.get(name)
        return value if text is None else text(value)  # a str field's value is its cell

    @classmethod
    def from_cells(cls, cells: Mapping[str, str | None]) -> ManifestRow:
        """A row from its cells by column (a missing or None cell reads as empty); ValueError
        naming the column of a cell that is not what it holds."""
        get = cells.get
        values: list[Any] = [(get(name) or "") if parse is None else parse(get(name) or "", name)
                             for name, parse in _PLAN]
        return cls(*values)

    def stamp(self) -> FileStamp | None:
        """The file's stamp recorded with the row; None where it has none (a row of an older
        version, or a file read while it was still being written)."""
        if self.file_size is None or self.file_mtime_ns is None or not self.file_id:
            return None
        return FileStamp(self.file_size, self.file_mtime_ns, self.file_id)

    def stamped(self, stamp: FileStamp | None) -> ManifestRow:
        """The row with ``stamp`` recorded (None: the row as it is)."""
        if stamp is None:
            return self
        return dataclasses.replace(self, file_size=stamp.size, file_mtime_ns=stamp.mtime_ns, file_id=stamp.id)

    def labels(self) -> RowLabels:
        return RowLabels(self.label, self.aux_labels)

    def relabelled(self, labels: RowLabels) -> ManifestRow:
        """The row with the label columns ``labels`` holds."""
        return dataclasses.replace(self, label=labels.label, aux_labels=labels.aux_labels)

    def aux(self) -> dict[str, int]:
        """``{finding: 0 | 1}`` of the ``aux_labels`` cell (ValueError naming the row's path)."""
        return parse_aux(self.aux_labels, self.path or "manifest row")


@dataclass(frozen=True, slots=True)
class RowLabels:
    """The columns of a row that a labels CSV sets (re-joined on every ingest that has one)."""
    label: int | None = None
    aux_labels: str = ""


MANIFEST_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ManifestRow))
LABEL_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RowLabels))
# Columns a manifest may lack: the appended ones (a manifest of an older version) and ``split``
# (a cache never split, e.g. another site's, evaluated as a whole).
OPTIONAL_COLUMNS: frozenset[str] = frozenset(
    ("split", *MANIFEST_COLUMNS[MANIFEST_COLUMNS.index("dhash"):]))


@dataclass(frozen=True, slots=True)
class RejectRow:
    """An input that is not in the manifest, and why (``rejects.csv``)."""
    path: str
    kind: RejectKind
    reason: str
    transfer_syntax: str = ""

    def cells(self) -> dict[str, str]:
        return {"path": self.path, "kind": self.kind, "reason": self.reason, "transfer_syntax": self.transfer_syntax}

    @classmethod
    def from_cells(cls, cells: Mapping[str, str | None]) -> RejectRow:
        kind = cells.get("kind") or ""
        if kind not in REJECT_KINDS:
            raise ValueError(f"kind {kind!r}; expected one of {list(REJECT_KINDS)}")
        return cls(cells.get("path") or "", typing.cast(RejectKind, kind), cells.get("reason") or "",
                   cells.get("transfer_syntax") or "")


REJECT_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RejectRow))
REJECT_KINDS: tuple[str, ...] = typing.get_args(RejectKind)


# ---------------------------------------------------------------- cells <-> values

def _int(text: str, name: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or str(value) != text:  # " 7", "07", "1_0": text that would not be written back as read
        raise ValueError(f"{name}={text!r}; expected a whole number")
    return value


def _opt_int(text: str, name: str) -> int | None:
    return None if text == "" else _int(text, name)


def _opt_int_text(value: int | None) -> str:
    return "" if value is None else str(value)


def _label(text: str, name: str) -> int | None:
    try:
        return parse_label(text)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def _steps(text: str, name: str) -> tuple[str, ...]:
    return tuple(text.split("|")) if text else ()


_PARSE: dict[str, Callable[[str, str], Any]] = {
    "shard": _int, "index": _int, "rows": _opt_int, "cols": _opt_int, "file_size": _opt_int,
    "file_mtime_ns": _opt_int, "label": _label, "steps": _steps}
_TEXT: dict[str, Callable[[Any], str]] = {
    "shard": str, "index": str, "rows": _opt_int_text, "cols": _opt_int_text, "file_size": _opt_int_text,
    "file_mtime_ns": _opt_int_text, "label": _opt_int_text, "steps": "|".join}
assert set(_PARSE) == set(_TEXT) <= set(MANIFEST_COLUMNS)
_PLAN = [(name, _PARSE.get(name)) for name in MANIFEST_COLUMNS]  # field order: positional arguments
_CELLS = [(name, _TEXT.get(name)) for name in MANIFEST_COLUMNS]


# ---------------------------------------------------------------- files


def check_header(path: Path, header: Iterable[str], expected: tuple[str, ...], optional: Iterable[str] = (),
                 required: Iterable[str] = (), why: str = "") -> None:
    """Refuse a header with a column not in ``expected``, or without one that is neither
    ``optional`` nor (when ``required`` names it) allowed to be missing: one line naming the
    file, the column and the expected set (and ``why``, what to do about a missing column)."""
    names = list(header)
    unknown = [c for c in names if c not in expected]
    may_lack = set(optional) - set(required)
    missing = [c for c in expected if c not in names and c not in may_lack]
    if unknown or missing:
        what = f"unknown column {unknown[0]!r}" if unknown else f"no column {missing[0]!r}"
        raise ValueError(f"{path}: {what}; expected the columns {', '.join(expected)}"
                         f"{f' ({len(may_lack)} of them optional)' if may_lack else ''}"
                         f"{f'; {why}' if why and not unknown else ''}")


def iter_manifest(path: str | Path, *, required: Iterable[str] = (), why: str = "") -> Iterator[ManifestRow]:
    """The rows of a manifest (or of a part) one at a time. A column of OPTIONAL_COLUMNS may be
    missing (its cells read as empty) unless ``required`` names it (``why``: what to do then);
    a cell that is not what its column holds is a ValueError naming the file and line."""
    path = Path(path)
    with csv_rows(path) as reader:
        check_header(path, reader.fieldnames, MANIFEST_COLUMNS, OPTIONAL_COLUMNS, required, why)
        for cells in reader:
            try:
                row = ManifestRow.from_cells(cells)
            except ValueError as exc:
                raise ValueError(f"{path}:{reader.line_num}: {exc}") from None
            yield row


def read_manifest(path: str | Path, *, required: Iterable[str] = (), why: str = "") -> list[ManifestRow]:
    """Every row of a manifest (:func:`iter_manifest`)."""
    return list(iter_manifest(path, required=required, why=why))


def write_manifest(path: Path, rows: Iterable[ManifestRow]) -> int:
    """Write rows atomically, streamed (``rows`` may be a generator); returns their number."""
    return write_csv(path, (r.cells() for r in rows), MANIFEST_COLUMNS)


def read_rejects(path: str | Path) -> list[RejectRow]:
    """Every row of a rejects file (``rejects.csv`` or a part's), checked as the manifest is."""
    path = Path(path)
    out = []
    with csv_rows(path) as reader:
        check_header(path, reader.fieldnames, REJECT_COLUMNS)
        for cells in reader:
            try:
                out.append(RejectRow.from_cells(cells))
            except ValueError as exc:
                raise ValueError(f"{path}:{reader.line_num}: {exc}") from None
    return out


def write_rejects(path: Path, rows: Iterable[RejectRow]) -> int:
    return write_csv(path, (r.cells() for r in rows), REJECT_COLUMNS)


def aux_names(rows: Iterable[ManifestRow]) -> list[str]:
    """Sorted names of every auxiliary finding labelled in any of a manifest's rows."""
    names: set[str] = set()
    for row in rows:
        names.update(row.aux())
    return sorted(names)
