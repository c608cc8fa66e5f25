"""The reader's labels: one CSV row per labelled image or study, rewritten atomically on each click.

The file is a labels CSV as `fibrosis ingest --labels` and `fibrosis monitor --labels` read it
(:mod:`fibrosis.data.labels`): an image row names its ``sop_instance_uid`` (and, for PNG/JPEG
exports, which have none, its file name in ``image``), a study row only its
``study_instance_uid``, so that the label applies to every image of the study. The label column
(``ingest.label_column``) holds 1 (present), 0 (absent) or nothing (uncertain: no label for
training or monitoring); ``reader_call`` keeps the reader's own word, ``reader`` the reader's
initials or code, ``level`` image or study, ``labelled_at`` the UTC time of the click.

Restarting the server reads the file back (resume); rows of images or studies that are not in
the scores being reviewed are kept as they are. A file that is not ours (another header) is
refused unchanged: ``--labels-out`` may name a user's own labels file by mistake.
"""
from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fibrosis.io import csv_line, iter_csv, open_regular, write_csv
from fibrosis.review.worklist import Level, Worklist

logger = logging.getLogger(__name__)

Call = Literal["present", "absent", "uncertain"]
CALLS: tuple[str, ...] = typing.get_args(Call)
LABEL_VALUE = {"present": "1", "absent": "0", "uncertain": ""}  # the label column ingest reads
READER_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,32}")
DERIVED_UID = "file:"  # the prefix of UIDs `score` derives for PNG/JPEG exports (fibrosis.data.workers)


def columns(label_column: str) -> tuple[str, ...]:
    return ("sop_instance_uid", "image", "study_instance_uid", label_column, "reader_call", "reader", "level",
            "labelled_at")


@dataclass(frozen=True)
class Entry:
    """One label as the page shows it."""

    call: Call
    reader: str
    labelled_at: str
    via_study: bool = False  # an image's label that its study's label gives it


def check_reader(reader: str) -> str:
    if not READER_PATTERN.fullmatch(reader):
        raise ValueError(f"reader {reader!r}; expected the reader's initials or code: 1-32 letters, digits, "
                         "'.', '_' or '-'")
    return reader


class LabelStore:
    """Labels of one reader session, in memory and in ``path``; thread-safe."""

    def __init__(self, path: Path, worklist: Worklist, label_column: str):
        self.path, self.wl, self.label_column = path, worklist, label_column
        self.columns = columns(label_column)
        self._lock = threading.Lock()
        self._rows: dict[tuple[str, str], dict[str, str]] = {}  # (level, UID) -> CSV row, file order
        self._resume()

    def _resume(self) -> None:
        if not self.path.exists():
            return
        with open_regular(self.path, "r", encoding="utf-8", newline="") as fh:
            header = fh.readline()
        if header and header != csv_line(self.columns):
            raise ValueError(f"{self.path}: not a reader labels file of `fibrosis review` with label column "
                             f"{self.label_column!r} (first line {header.strip()[:200]!r}; expected "
                             f"{','.join(self.columns)}); it was left unchanged: choose another --labels-out")
        for line, row in enumerate(iter_csv(self.path), start=2):
            level, call = row["level"], row["reader_call"]
            uid = row["sop_instance_uid"] if level == "image" else row["study_instance_uid"]
            if level not in ("image", "study") or call not in CALLS or not uid:
                raise ValueError(f"{self.path}:{line}: level={level!r}, reader_call={call!r}; expected image or "
                                 f"study, one of {list(CALLS)} and its UID (a file written by `fibrosis review`)")
            self._rows[(level, uid)] = row
        for level in ("image", "study"):  # one pass over the UIDs, not a dict of 100,000 of them
            wanted = {uid for lv, uid in self._rows if lv == level}
            table = self.wl.table(level)
            for i in range(len(table) if wanted else 0):
                if self._uid(typing.cast(Level, level), i) in wanted:
                    table.read[i] = True
        logger.info("%s: %d reader label(s) resumed", self.path, len(self._rows))

    def _uid(self, level: Level, i: int) -> str:
        return self.wl.images.sop_uid[i] if level == "image" else self.wl.studies.study_uid[i]

    def get(self, level: Level, i: int) -> Entry | None:
        row = self._rows.get((level, self._uid(level, i)))
        if row is None:
            return None
        return Entry(typing.cast(Call, row["reader_call"]), row["reader"], row["labelled_at"])

    def __len__(self) -> int:
        return len(self._rows)

    def set(self, level: Level, i: int, call: str, reader: str) -> Entry:
        """Record ``call`` by ``reader`` for row ``i`` of ``level`` and rewrite the file atomically:
        a crash leaves the previous file or the new one, never a torn one."""
        if call not in CALLS:
            raise ValueError(f"call {call!r}; expected one of {list(CALLS)}")
        check_reader(reader)
        uid = self._uid(level, i)
        if not uid:
            raise ValueError(f"this {level} has no UID (the file could not be read); nothing to label it by")
        image = ""
        if level == "image" and uid.startswith(DERIVED_UID):  # PNG/JPEG: ingest joins by file name
            image = Path(self.wl.images.path[i]).name
        row = {"sop_instance_uid": uid if level == "image" else "", "image": image,
               "study_instance_uid": self.wl.images.study_uid[i] if level == "image" else uid,
               self.label_column: LABEL_VALUE[call], "reader_call": call, "reader": reader, "level": level,
               "labelled_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        with self._lock:
            rows = {**self._rows, (level, uid): row}  # kept only once it is on disk
            write_csv(self.path, rows.values(), self.columns)
            self._rows = rows
            self.wl.table(level).read[i] = True
        return Entry(typing.cast(Call, call), reader, row["labelled_at"])
