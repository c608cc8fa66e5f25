"""Input discovery, shared by `fibrosis ingest` and `fibrosis score`.

Both promise that every input path appears exactly once in their output, so both
list inputs the same way: folders recursively -- hidden files and folders
included (``.IM0001`` from a PACS export or ``.snap/`` is an input like any other
and gets a reject / status row if it is not an image) -- single files as given,
and ``*.csv`` files as lists of paths. A folder that cannot be listed is not
walked past: it becomes an entry of its own with the reason, so it is reported.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

from fibrosis.io import read_csv

logger = logging.getLogger(__name__)

FOLDER_ERROR = "cannot list folder"

Entry = tuple[str, str]  # (absolute path, "" for a file | why the folder could not be listed)


def _walk(folder: Path, found: dict[str, str]) -> None:
    def onerror(exc: OSError) -> None:
        found[str(Path(exc.filename).resolve())] = f"{FOLDER_ERROR}: {exc.strerror or exc}"

    for root, dirs, files in os.walk(folder, onerror=onerror):
        dirs.sort()
        for f in files:
            found.setdefault(str(Path(root, f).resolve()), "")


def _csv_list(path: Path, found: dict[str, str]) -> None:
    """Column ``path``, else the first column; relative paths resolve against the CSV's folder.
    A listed path that does not exist is kept: the caller rejects it by name."""
    rows = read_csv(path)
    if not rows:
        return
    col = "path" if "path" in rows[0] else next(iter(rows[0]))
    for row in rows:
        value = (row.get(col) or "").strip()
        if value:
            q = Path(value)
            found.setdefault(str((q if q.is_absolute() else path.parent / q).resolve()), "")


def discover_entries(inputs: Iterable[str | Path]) -> list[Entry]:
    """Sorted, de-duplicated (path, error) entries: files with error "", unreadable
    folders with ``"cannot list folder: <reason>"``. Sorted by the string, not by
    Path: Path orders by components ("b" < "b-c"), the CSV checks and merges of
    score compare strings ("b-c/x" < "b/x")."""
    found: dict[str, str] = {}
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            _walk(p, found)
        elif p.is_file() and p.suffix.lower() == ".csv":
            _csv_list(p, found)
        elif p.is_file():
            found.setdefault(str(p.resolve()), "")
        else:
            raise FileNotFoundError(f"{p}: input not found (expected a folder, a file or a CSV of paths)")
    errors = sum(bool(e) for e in found.values())
    if errors:
        logger.warning("%d folder(s) could not be listed; each is reported as an input with its reason", errors)
    return sorted(found.items())
