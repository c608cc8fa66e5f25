"""Labels CSV: one label per image, joined by SOP Instance UID, file name or Study UID.

Accepted key columns (at least one): ``sop_instance_uid``, ``image`` or ``file``
(file name; matched on the name, then on the name without extension so that a
``00000075_000.png`` row also labels its DICOM wrap ``00000075_000.dcm``), and
``study_instance_uid`` (the label then applies to every image of the study).
The label column is ``ingest.label_column``. Optional ``patient_id``, ``age``,
``sex`` and ``view`` columns supply what PNG/JPEG exports cannot carry.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

POSITIVE = {"1", "true", "yes", "positive", "pos"}
NEGATIVE = {"0", "false", "no", "negative", "neg"}
HINT_COLUMNS = ("patient_id", "age", "sex", "view")


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


@dataclass
class Labels:
    by_sop: dict[str, dict[str, str]] = field(default_factory=dict)
    by_file: dict[str, dict[str, str]] = field(default_factory=dict)
    by_stem: dict[str, dict[str, str] | None] = field(default_factory=dict)  # None = ambiguous
    by_study: dict[str, dict[str, str]] = field(default_factory=dict)

    def row_for_file(self, path: str | Path) -> dict[str, str] | None:
        p = Path(path)
        row = self.by_file.get(p.name)
        if row is None:
            row = self.by_stem.get(p.stem)
        return row

    def hints(self, path: str | Path) -> dict[str, Any]:
        """patient_id/age/sex/view for a file, from its row (file-name join only)."""
        row = self.row_for_file(path)
        return {k: row[k] for k in HINT_COLUMNS if row and row.get(k)} if row else {}

    def label(self, path: str | Path, sop_uid: str, study_uid: str) -> tuple[str, str]:
        """(label, how it was joined); ('', '') when no row matches."""
        for how, row in (("sop_instance_uid", self.by_sop.get(sop_uid) if sop_uid else None),
                         ("file", self.row_for_file(path)),
                         ("study_instance_uid", self.by_study.get(study_uid) if study_uid else None)):
            if row is not None:
                return row["_label"], how
        return "", ""


def _put(table: dict[str, dict[str, str]], key: str, row: dict[str, str], where: str, col: str) -> None:
    old = table.get(key)
    if old is not None and old["_label"] != row["_label"]:
        raise LabelsError(f"{where}: {col}={key!r} appears twice with labels "
                          f"{old['_label']!r} and {row['_label']!r}")
    table[key] = row


def load_labels(path: str | Path, label_column: str) -> Labels:
    path = Path(path)
    if not path.is_file():
        raise LabelsError(f"{path}: labels CSV not found")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    keys = [c for c in ("sop_instance_uid", "image", "file", "study_instance_uid") if c in columns]
    if not keys:
        raise LabelsError(f"{path}: no key column; expected one of sop_instance_uid, image, file, "
                          f"study_instance_uid (columns: {columns})")
    if label_column not in columns:
        raise LabelsError(f"{path}: label column {label_column!r} (ingest.label_column) not in {columns}")
    labels = Labels()
    for i, row in enumerate(rows, start=2):
        where = f"{path}:{i}"
        row["_label"] = parse_label(row[label_column], f"{where} column {label_column!r}")
        if row.get("sop_instance_uid"):
            _put(labels.by_sop, row["sop_instance_uid"], row, where, "sop_instance_uid")
        name = row.get("image") or row.get("file")
        if name:
            name = Path(name).name
            _put(labels.by_file, name, row, where, "file name")
            stem = Path(name).stem
            labels.by_stem[stem] = None if stem in labels.by_stem else row
        # A study key labels the whole study only in rows that name no single image.
        if row.get("study_instance_uid") and not (row.get("sop_instance_uid") or name):
            _put(labels.by_study, row["study_instance_uid"], row, where, "study_instance_uid")
    ambiguous = sum(v is None for v in labels.by_stem.values())
    if ambiguous:
        logger.info("%s: %d file stems appear with several extensions; those join by full name only",
                    path, ambiguous)
    labels.by_stem = {k: v for k, v in labels.by_stem.items() if v is not None}
    logger.info("%s: %d label rows (%d positive)", path, len(rows),
                sum(r["_label"] == "1" for r in rows))
    return labels
