"""Core file I/O shared by every stage: atomic writes, CSV, JSON, sha256, package versions.

Atomic (temp file + fsync + rename) because every output of this tool may be read
by a later stage while a run is killed half-way: a file either exists whole or not.
A write that fails (a full disk above all) removes its temporary file and raises one
:class:`NoSpaceError` line naming the file system and the path, instead of a short-write
message that names neither.

Every CSV the tool writes goes through :func:`csv_cell`: a cell a spreadsheet would run
as a formula (OWASP: one that starts with ``=``, ``+``, ``-``, ``@``, tab or carriage
return, unless it is a plain number) is written with a leading ``'``, and our own readers
(:func:`iter_csv`) remove it again, so what a stage reads back is what was written.
Files this tool reads or appends to are opened by :func:`open_regular`, which refuses a
FIFO or a device instead of blocking on it.
"""
from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import platform
import re
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import numpy as np

# ---------------------------------------------------------------- regular files

FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
              (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


class NotRegularFileError(ValueError):
    """A path the tool would read or write is a FIFO, device, socket or folder: never opened."""


def not_regular(mode: int) -> str:
    """'' for a regular file, else why it is not read ('not a regular file: a FIFO ...')."""
    if stat.S_ISREG(mode):
        return ""
    kind = next((name for test, name in FILE_KINDS if test(mode)), f"file type {stat.S_IFMT(mode):o}")
    return f"not a regular file: {kind}; not opened"


def open_regular(path: str | Path, mode: str = "r", **kwargs: Any) -> IO[Any]:
    """``open(path, mode)`` for ``r``/``rb``/``a``/``ab``, refusing anything but a regular file.

    Opened with O_NONBLOCK, so a FIFO (or a path swapped for one after a stat) cannot make
    the open block; its type is then checked on the descriptor itself."""
    if mode.rstrip("b") == "r":
        flags = os.O_RDONLY
    elif mode.rstrip("b") == "a":
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    else:
        raise ValueError(f"open_regular mode {mode!r}; allowed: r, rb, a, ab")
    flags |= os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if exc.errno != errno.ENXIO:  # ENXIO: a FIFO opened for writing with no reader
            raise
        raise NotRegularFileError(f"{path}: {not_regular(os.stat(path).st_mode)}; expected a regular file") from None
    try:
        why = not_regular(os.fstat(fd).st_mode)
        if why:
            raise NotRegularFileError(f"{path}: {why}; expected a regular file")
        os.set_blocking(fd, True)
        return open(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise


def read_text(path: str | Path) -> str:
    """The UTF-8 text of a regular file (:func:`open_regular`: a FIFO is refused, not waited on)."""
    with open_regular(path, "r", encoding="utf-8") as fh:
        return fh.read()


# ---------------------------------------------------------------- disk full

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class NoSpaceError(OSError):
    """Writing ``path`` failed for want of space (full file system, quota, file size limit)."""


def mount_point(path: str | Path) -> str:
    """The mount point of the file system ``path`` is (or would be) on."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return str(p)


def no_space(exc: OSError | None, path: str | Path) -> NoSpaceError:
    """One line: what ran out, on which file system, while writing which file."""
    code = exc.errno if exc is not None and exc.errno in NO_SPACE_ERRNOS else errno.ENOSPC
    where = mount_point(path)
    if code == errno.EFBIG:
        what = f"file size limit reached (ulimit -f, or the largest file {where} allows)"
    elif code == errno.EDQUOT:
        what = f"disk quota exceeded on {where}"
    else:
        try:
            st = os.statvfs(where)
            free = f"{st.f_bavail * st.f_frsize / (1 << 20):.1f} MiB free"
        except OSError:
            free = "free space unknown"
        what = f"no space left on {where} ({free})"
    return NoSpaceError(code, f"{what} writing {path}; free space (or raise the limit) and run again: "
                              "nothing partial was kept")


def is_no_space(exc: BaseException) -> bool:
    """An OSError of a full disk, or SQLite's own words for one."""
    if isinstance(exc, OSError):
        return exc.errno in NO_SPACE_ERRNOS
    return type(exc).__name__ in ("OperationalError", "DatabaseError") and "disk is full" in str(exc)


def tmp_path(path: Path) -> Path:
    """The temporary name a file is written under before its atomic rename (hidden, per process)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


@contextmanager
def atomic_target(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that takes a file name (a PDF renderer, an
    exporter); renamed onto ``path`` when the block succeeds and removed when it fails. A full
    disk becomes :class:`NoSpaceError` naming ``path``."""
    path = Path(path)
    tmp = tmp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if is_no_space(exc):
            raise no_space(exc if isinstance(exc, OSError) else None, path) from None
        raise


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
    """A file object whose content replaces ``path`` atomically (fsync'ed, then renamed) when
    the block succeeds; nothing of it remains when it fails."""
    with atomic_target(path) as tmp:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` (same bytes), atomically and through Python's file object: numpy writes a
    contiguous array with C fwrite, whose short write on a full disk is reported without errno."""
    array = np.ascontiguousarray(array)
    with atomic_open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, np.lib.format.header_data_from_array_1_0(array))
        fh.write(array.data.cast("B"))


# ---------------------------------------------------------------- CSV

# OWASP CSV injection: a cell starting with one of these is run by a spreadsheet as a formula.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
CELL_ESCAPE = "'"
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def csv_cell(value: Any) -> str:
    """The text of one CSV cell: ``'`` before a value a spreadsheet would execute (a plain
    number such as ``-0.5`` is left alone), and before a value starting with ``'`` itself,
    so that :func:`csv_value` reverses it exactly."""
    text = "" if value is None else str(value)
    if text.startswith(CELL_ESCAPE) or (text.startswith(FORMULA_START) and not _NUMBER.fullmatch(text)):
        return CELL_ESCAPE + text
    return text


def csv_value(cell: str) -> str:
    """The value of a cell :func:`csv_cell` wrote."""
    return cell[1:] if cell.startswith(CELL_ESCAPE) else cell


def _field(text: str) -> str:
    """csv's minimal quoting, plus a carriage return: the csv writer with a ``\\n`` line end
    leaves a lone ``\\r`` unquoted, and every reader then ends the record there."""
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\r\n') else text


def csv_line(values: Iterable[Any]) -> str:
    """One CSV record, cells neutralised (:func:`csv_cell`), ended by ``\\n``: what ``csv.writer``
    writes, except that a cell holding ``\\r`` is quoted too."""
    line = ",".join(_field(csv_cell(v)) for v in values)
    return (line or '""') + "\n"  # one empty cell: quoted, or the record would read as a blank line


def write_csv(path: Path, rows: Iterable[dict[str, Any]], columns: tuple[str, ...]) -> int:
    """Write rows atomically; missing keys become empty cells, keys beyond ``columns`` are left
    out. Rows are streamed to the temporary file (``rows`` may be a generator): a manifest of a
    million rows is never also held as one string. Returns the number of rows written."""
    n = 0
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(csv_line(columns))
        for row in rows:
            fh.write(csv_line(row.get(k) for k in columns))
            n += 1
    return n


class CsvFormatError(ValueError):
    """A CSV that cannot be parsed (a field over the size limit, bad quoting, not UTF-8)."""


class CsvRows:
    """``csv.DictReader`` over an open file whose errors name the file and line: a field
    over the csv module's limit (131,072 characters), a NUL byte or text that is not UTF-8
    is a :class:`CsvFormatError`, not a traceback. ``decode`` undoes :func:`csv_cell` (our
    own files); a CSV a user wrote is read as it is."""

    def __init__(self, fh: IO[str], path: str | Path, decode: bool):
        self.path, self.decode = path, decode
        self.escaped = False  # a line read since the last record holds CELL_ESCAPE
        self.reader = csv.DictReader(self._lines(fh))

    def _lines(self, fh: IO[str]) -> Iterator[str]:
        # csv reads exactly the lines of one record before returning it: a record none of whose
        # lines holds a ' has no cell to decode (almost every row), and is passed on as read.
        for line in fh:
            if CELL_ESCAPE in line:
                self.escaped = True
            yield line

    def _error(self, exc: Exception) -> CsvFormatError:
        if isinstance(exc, UnicodeDecodeError):
            return CsvFormatError(f"{self.path}: not UTF-8 text (byte {exc.start} of a read block: "
                                  f"{exc.reason}); expected a UTF-8 CSV")
        text = str(exc)
        m = re.search(r"field larger than field limit \((\d+)\)", text)
        what = (f"a field longer than {m.group(1)} characters" if m else text)
        return CsvFormatError(f"{self.path}:{self.reader.line_num + 1}: {what}; expected a CSV of short "
                              "values (is this the right file?)")

    @property
    def fieldnames(self) -> list[str]:
        try:
            names = self.reader.fieldnames
        except (csv.Error, UnicodeDecodeError) as exc:
            raise self._error(exc) from None
        return [csv_value(n) if self.decode else n for n in (names or [])]

    @property
    def line_num(self) -> int:
        return self.reader.line_num

    def __iter__(self) -> Iterator[dict[Any, Any]]:
        names = self.fieldnames
        if self.decode:
            self.reader.fieldnames = names
        while True:
            try:
                row = next(self.reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as exc:
                raise self._error(exc) from None
            if self.decode and self.escaped:
                row = {k: (csv_value(v) if isinstance(v, str) else v) for k, v in row.items()}
            self.escaped = False
            yield row


@contextmanager
def csv_rows(path: str | Path, *, decode: bool = True, encoding: str = "utf-8") -> Iterator[CsvRows]:
    """:class:`CsvRows` of a regular file (a FIFO is refused, not waited on)."""
    with open_regular(path, "r", newline="", encoding=encoding) as fh:
        yield CsvRows(fh, path, decode)


def read_csv(path: Path) -> list[dict[str, str]]:
    return list(iter_csv(path))


def iter_csv(path: Path, *, decode: bool = True) -> Iterator[dict[str, str]]:
    """The rows of a CSV one at a time (a manifest of a million rows is never a list). Our
    own files are read back as written (``decode``); a CSV a user gave is read with
    ``decode=False``."""
    with csv_rows(path, decode=decode) as rows:
        yield from rows


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open_regular(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def write_json(path: Path, data: dict[str, Any], *, allow_nan: bool = False) -> None:
    """The one JSON writer: atomic (a kill mid-write leaves the old file or none, never half of
    one), numpy values as plain numbers. NaN and infinities are refused, since a standard JSON
    reader cannot parse them, unless ``allow_nan`` (state read back only by this package)."""
    text = json.dumps(data, indent=1, default=_json_default, allow_nan=allow_nan)
    atomic_write_bytes(path, text.encode("utf-8"))


PACKAGES = ("fibrosis", "torch", "torchvision", "monai", "numpy", "scipy", "scikit-learn",
            "pydicom", "albumentations", "opencv-python-headless", "matplotlib")


def package_versions() -> dict[str, str]:
    # imported here: importlib.metadata (email, zipfile...) is ~20 ms of every command that
    # touches the cache, half of a no-op re-split, and only checkpoints and reports need it
    import importlib.metadata

    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
