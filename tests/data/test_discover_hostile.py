"""Hostile file-system entries: a file name that is not UTF-8, a FIFO,
a symlink loop, a link to /dev/zero and a socket. Each gets its own reject / status row with the
reason; none is opened, and the rest of the folder is processed.

Commands that could hang or eat memory on a regression run in a child process under a time and
address-space limit, so a failure is a failed test, not a stuck or swapping machine.
"""
from __future__ import annotations

import csv
import os
import socket
from pathlib import Path

import pytest

from helpers.dicom_factory import chest_phantom, make_dicom, to_stored
from helpers.processes import run_child
from helpers.scores import status_text
from fibrosis.config import IngestConfig
from fibrosis.data.discover import LOOP_ERROR, NAME_ERROR, discover_entries
from fibrosis.data.ingest import ingest

BAD_NAME = b"\xe9\xff.dcm"  # Latin-1 'é' + a byte that is never UTF-8
BAD_SHOWN = "\\xe9\\xff.dcm"  # how it is written: the bytes backslash-escaped


def _chest(path: Path, seed: int) -> Path:
    return make_dicom(path, to_stored(chest_phantom(80, 72, seed=seed), 12), bits_stored=12,
                      sop_uid=f"1.2.826.0.1.3680043.10.99.{seed}", study_uid=f"1.2.826.0.1.3680043.10.98.{seed}")


def _bad_name(folder: Path, seed: int) -> Path:
    """A valid DICOM whose file name is the bytes ``\\xe9\\xff.dcm`` (not UTF-8)."""
    good = _chest(folder / f"tmp{seed}.dcm", seed)
    target = os.path.join(os.fsencode(folder), BAD_NAME)
    os.rename(os.fsencode(good), target)
    return Path(os.fsdecode(target))


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:  # strict UTF-8: a surrogate would fail here
        return list(csv.DictReader(fh))


@pytest.fixture
def cfg() -> IngestConfig:
    return IngestConfig(image_size=32, min_side=1, shard_size=4)


@pytest.fixture
def hostile(tmp_path) -> Path:
    """Two good DICOMs, one behind a non-UTF-8 name, and every entry that must not be opened."""
    d = tmp_path / "in"
    d.mkdir()
    _chest(d / "good1.dcm", 1)
    _chest(d / "good2.dcm", 2)
    _bad_name(d, 3)
    os.mkfifo(d / "pipe.dcm")
    os.symlink("loop.dcm", d / "loop.dcm")  # a link to itself
    os.symlink("/dev/zero", d / "zero.dcm")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(d / "sock.dcm"))
    return d


# ---------------------------------------------------------------- discovery


def test_discovery_reports_what_must_not_be_opened(hostile):
    found = dict(discover_entries([hostile]))
    root = str(hostile.resolve())
    assert found[f"{root}/good1.dcm"] == found[f"{root}/good2.dcm"] == ""
    assert found[f"{root}/{BAD_SHOWN}"] == NAME_ERROR
    assert found[f"{root}/loop.dcm"] == LOOP_ERROR
    assert found[f"{root}/pipe.dcm"] == "not a regular file: a FIFO (named pipe); not opened"
    assert found["/dev/zero"] == "not a regular file: a character device; not opened"  # links resolve
    assert found[f"{root}/sock.dcm"] == "not a regular file: a socket; not opened"
    assert len(found) == 7
    for path in found:
        path.encode("utf-8")  # every entry can be written to a UTF-8 CSV


def test_hostile_entries_listed_in_a_csv_or_given_by_name(hostile, tmp_path):
    listing = tmp_path / "list.csv"
    listing.write_text("path\nin/pipe.dcm\nin/loop.dcm\n")
    found = dict(discover_entries([listing, hostile / "zero.dcm"]))
    root = str(hostile.resolve())
    assert found == {f"{root}/pipe.dcm": "not a regular file: a FIFO (named pipe); not opened",
                     f"{root}/loop.dcm": LOOP_ERROR,
                     "/dev/zero": "not a regular file: a character device; not opened"}


# ---------------------------------------------------------------- ingest


@pytest.fixture
def bad_named(tmp_path, monkeypatch) -> Path:
    """A folder with one good chest and one file whose name is not UTF-8."""
    monkeypatch.setenv("FIBROSIS_SALT", "test-salt")
    d = tmp_path / "in"
    d.mkdir()
    _chest(d / "good1.dcm", 1)
    _bad_name(d, 3)
    return d


def test_ingest_accounts_for_a_non_utf8_name_and_ingests_the_rest(bad_named, tmp_path, cfg):
    d = bad_named
    cache = tmp_path / "cache"
    for run in range(2):  # a re-run meets the same name and must account for it the same way
        summary = ingest([d], cache, cfg, workers=1, progress=False)
        assert summary.exit_code == 0 and summary.rejected["error"] == 1
        assert (summary.ingested, summary.skipped) == ((1, 0) if run == 0 else (0, 1))
        (row,) = _read(cache / "manifest.csv")
        (rej,) = _read(cache / "rejects.csv")
        assert row["path"].endswith("/good1.dcm")
        assert rej["path"] == f"{d.resolve()}/{BAD_SHOWN}" and rej["kind"] == "error"
        assert rej["reason"] == NAME_ERROR


def test_ingest_cli_with_every_hostile_entry(hostile, tmp_path):
    """Exit 0 (something was ingested), no traceback, every entry exactly once."""
    cache = tmp_path / "cache"
    res = run_child(["-m", "fibrosis.cli.main", "ingest", str(hostile), "--cache", str(cache), "--workers", "2",
                     "--no-progress", "--set", "ingest.image_size=32", "--set", "ingest.min_side=1"],
                    timeout=180, mem_gb=6)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    rows, rejects = _read(cache / "manifest.csv"), _read(cache / "rejects.csv")
    assert sorted(Path(r["path"]).name for r in rows) == ["good1.dcm", "good2.dcm"]
    reasons = {Path(r["path"]).name: r["reason"] for r in rejects}
    assert reasons == {BAD_SHOWN: NAME_ERROR, "loop.dcm": LOOP_ERROR,
                       "pipe.dcm": "not a regular file: a FIFO (named pipe); not opened",
                       "zero": "not a regular file: a character device; not opened",
                       "sock.dcm": "not a regular file: a socket; not opened"}


# ---------------------------------------------------------------- score


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    from helpers.checkpoints import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("run") / "best.pt",
                           ingest=IngestConfig(image_size=32, min_side=1))


def test_score_writes_a_status_row_for_a_non_utf8_name(ckpt, bad_named, tmp_path):
    from fibrosis.score import run as S

    d = bad_named
    out = tmp_path / "scores.csv"
    summary = S.score(ckpt.parent, d, out, device="cpu", progress=False)
    rows = {Path(r["path"]).name: r for r in _read(out)}
    assert rows["good1.dcm"]["status"] == "ok"
    assert status_text(rows[BAD_SHOWN]) == f"error: {NAME_ERROR}"
    assert summary.counts == {"ok": 1, "error": 1} and not summary.ok()


def test_score_cli_with_every_hostile_entry(ckpt, hostile, tmp_path):
    out = tmp_path / "scores.csv"
    res = run_child(["-m", "fibrosis.cli.main", "score", "--run", str(ckpt.parent), "--input", str(hostile),
                     "--out", str(out), "--workers", "2", "--device", "cpu", "--no-progress"],
                    timeout=240, mem_gb=10)
    assert res.returncode == 1, res.stderr[-3000:]  # README: 1 when any file failed
    assert "Traceback" not in res.stderr
    status = {Path(r["path"]).name: status_text(r) for r in _read(out)}
    assert status == {"good1.dcm": "ok", "good2.dcm": "ok", BAD_SHOWN: f"error: {NAME_ERROR}",
                      "loop.dcm": f"error: {LOOP_ERROR}",
                      "pipe.dcm": "error: not a regular file: a FIFO (named pipe); not opened",
                      "zero": "error: not a regular file: a character device; not opened",
                      "sock.dcm": "error: not a regular file: a socket; not opened"}


def test_a_walked_folder_gives_what_file_entry_gives_each_file(hostile, tmp_path):
    """The walk resolves each folder once and lstats each file: for every kind of entry (and
    through a symlinked input folder, a nested folder and a link to a file elsewhere) it must
    give exactly the path and reason that resolving the file alone gives."""
    from fibrosis.data.discover import file_entry, iter_entries

    (hostile / "sub").mkdir()
    _chest(hostile / "sub" / "deep.dcm", 4)
    _chest(tmp_path / "elsewhere.dcm", 5)
    os.symlink(tmp_path / "elsewhere.dcm", hostile / "sub" / "link.dcm")
    os.symlink(hostile, tmp_path / "linked-input")
    walked = list(iter_entries([tmp_path / "linked-input"]))
    listed = [os.path.join(r, f) for r, _, fs in os.walk(tmp_path / "linked-input") for f in fs]
    assert sorted(walked) == sorted(file_entry(p) for p in listed)
    assert (str((tmp_path / "elsewhere.dcm").resolve()), "") in walked
    assert (str(hostile.resolve() / "sub" / "deep.dcm"), "") in walked


def test_a_symlink_followed_by_dotdot_is_resolved_as_the_kernel_does(tmp_path):
    """``x/up/../real`` with ``x/up -> ../real``: the kernel follows ``up`` before ``..``
    (naming ``base/real``); folding ``up/..`` as text would name ``x/real``, which does not exist."""
    from fibrosis.data.discover import file_entry, iter_entries

    base = tmp_path / "base"
    (base / "real").mkdir(parents=True)
    (base / "x").mkdir()
    _chest(base / "real" / "a.dcm", 6)
    os.mkfifo(base / "real" / "p.dcm")
    os.symlink("../real", base / "x" / "up")
    given = os.path.join(base, "x", "up", "..", "real")
    real = str((base / "real").resolve())
    assert sorted(iter_entries([given])) == [(f"{real}/a.dcm", ""), (f"{real}/p.dcm", "not a regular file: a FIFO (named pipe); not opened")]
    assert file_entry(os.path.join(given, "a.dcm")) == (f"{real}/a.dcm", "")
