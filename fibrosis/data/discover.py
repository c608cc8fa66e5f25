"""Input discovery, shared by `fibrosis ingest` and `fibrosis score`.

Both promise that every input path appears exactly once in their output, so both
list inputs the same way: folders recursively -- hidden files and folders
included (``.IM0001`` from a PACS export or ``.snap/`` is an input like any other
and gets a reject / status row if it is not an image) -- single files as given,
and ``*.csv`` files as lists of paths. A folder that cannot be listed is not
walked past: it becomes an entry of its own with the reason, so it is reported.

Entries that must never be opened are reported the same way, with the reason
instead of "": a FIFO would block the reader forever, a device such as
``/dev/zero`` never ends, and a symlink loop cannot be resolved. A file name
that is not valid UTF-8 (Linux names are bytes) cannot be written to the UTF-8
CSVs: its entry carries the name with the bad bytes backslash-escaped
(``os.fsencode`` + ``backslashreplace``) and is reported, not opened.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path
from typing import Iterable, Iterator

from fibrosis.io import iter_csv, not_regular
from fibrosis.words import plural

logger = logging.getLogger(__name__)

FOLDER_ERROR = "cannot list folder"
LOOP_ERROR = "symbolic link loop (too many levels of symbolic links); not followed"
NAME_ERROR = ("file name is not valid UTF-8 (bytes shown as \\xNN); not read: rename the file, "
              "since its path could not be written to the manifest or scores")

Entry = tuple[str, str]  # (absolute path, "" for a file | why it is reported instead of read)


def text_path(path: str) -> str:
    """``path`` if it is valid UTF-8 text; else its bytes with the invalid ones escaped
    (``\\xe9``), so the name can be written to a UTF-8 CSV and read by a person."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:  # surrogate escapes from undecodable bytes of a file name
        return os.fsencode(path).decode("utf-8", "backslashreplace")


def file_entry(path: str | Path) -> Entry:
    """(resolved path, reason it is not to be read or "") of one file, checked with stat()
    only: nothing is opened here, so a FIFO or a device cannot block or flood the caller.
    A path that does not exist is "" too: the reader rejects it by name."""
    # absolute(), not abspath(): abspath folds "link/.." as text, but the kernel (and resolve()
    # below) follows the link first, so "x/up/../real" with up -> ../real names base/real
    absolute = str(Path(path).absolute())
    try:
        st = os.stat(absolute)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return text_path(absolute), LOOP_ERROR
        st = None
    try:
        resolved = str(Path(absolute).resolve())
    except (RuntimeError, OSError):  # Python < 3.13 raises RuntimeError on a symlink loop
        return text_path(absolute), LOOP_ERROR
    if text_path(resolved) != resolved:
        return text_path(resolved), NAME_ERROR
    return resolved, not_regular(st.st_mode) if st is not None else ""


def _walk(folder: Path) -> Iterator[Entry]:
    errors: list[Entry] = []

    def onerror(exc: OSError) -> None:
        errors.append((text_path(str(Path(exc.filename).resolve())), f"{FOLDER_ERROR}: {exc.strerror or exc}"))

    for root, dirs, files in os.walk(folder, onerror=onerror):
        yield from errors
        errors.clear()
        dirs.sort()
        real_root = str(Path(root).resolve())  # os.walk does not follow links: root is a real folder
        for f in files:
            yield _walked_entry(real_root, os.path.join(root, f), f)
    yield from errors


def _walked_entry(real_root: str, path: str, name: str) -> Entry:
    """:func:`file_entry` of a file listed in a folder whose resolved path is ``real_root``, with
    one lstat: a name that is not a symbolic link resolves to ``real_root/name``. (resolve()
    lstats every component of the path again, file by file: it was a third of a no-op re-ingest
    of 10k files.) A link, or a file gone since the listing, takes the full path."""
    try:
        st = os.lstat(path)
    except OSError:
        return file_entry(path)
    if stat.S_ISLNK(st.st_mode):
        return file_entry(path)
    resolved = os.path.join(real_root, name)
    if text_path(resolved) != resolved:
        return text_path(resolved), NAME_ERROR
    return resolved, not_regular(st.st_mode)


def _csv_list(path: Path) -> Iterator[Entry]:
    """Column ``path``, else the first column; relative paths resolve against the CSV's folder.
    A listed path that does not exist is kept: the caller rejects it by name."""
    col = None
    for row in iter_csv(path, decode=False):  # a list a user wrote: read as it is
        if col is None:
            col = "path" if "path" in row else next(iter(row))
        value = (row.get(col) or "").strip()
        if value:
            q = Path(value)
            yield file_entry(q if q.is_absolute() else path.parent / q)


def check_inputs(inputs: Iterable[str | Path]) -> None:
    """Raise for an input that does not exist, before anything is listed or written."""
    for item in inputs:
        p = Path(item)
        if not (p.is_dir() or p.is_file() or os.path.lexists(p)):
            raise FileNotFoundError(f"{text_path(str(p))}: input not found (expected a folder, a file "
                                    "or a CSV of paths)")


def iter_entries(inputs: Iterable[str | Path]) -> Iterator[Entry]:
    """(path, error) entries as they are found: unsorted, and a path may come more than once.
    The first entry of a path stands, except that a folder that cannot be listed always reports
    that (``FOLDER_ERROR``). For a caller that keeps them out of memory (ingest)."""
    for item in inputs:
        check_inputs([item])
        p = Path(item)
        if p.is_dir():
            yield from _walk(p)
        elif p.is_file() and p.suffix.lower() == ".csv":
            yield from _csv_list(p)
        else:  # a file, or a FIFO or a loop given by name: reported too
            yield file_entry(p)


def log_discovery(folder_errors: int, others: int) -> None:
    if folder_errors:
        logger.warning("%s could not be listed; each is reported as an input with its reason",
                       plural(folder_errors, "folder"))
    if others:
        logger.warning("%s not read (not a regular file, symlink loop or non-UTF-8 name); "
                       "each is reported with its reason", plural(others, "input"))


def discover_entries(inputs: Iterable[str | Path]) -> list[Entry]:
    """Sorted, de-duplicated (path, error) entries: files with error "", unreadable
    folders with ``"cannot list folder: <reason>"``, and FIFOs, devices, sockets,
    symlink loops and non-UTF-8 names with why they are not read. Sorted by the string, not by
    Path: Path orders by components ("b" < "b-c"), the CSV checks and merges of
    score compare strings ("b-c/x" < "b/x")."""
    found: dict[str, str] = {}
    for path, error in iter_entries(inputs):
        if error.startswith(FOLDER_ERROR):
            found[path] = error
        else:
            found.setdefault(path, error)
    errors = sum(e.startswith(FOLDER_ERROR) for e in found.values())
    log_discovery(errors, sum(bool(e) for e in found.values()) - errors)
    return sorted(found.items())
