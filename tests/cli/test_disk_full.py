"""A full disk, for real: every command says "no space left on <file system> writing <file>" in one
line, exits 2 and leaves no temporary file behind (fibrosis.io.atomic_target, NoSpaceError).

The file system is a tmpfs of a few hundred KB, mounted in a private user + mount namespace
(``unshare -rm``: no root needed, nothing visible outside); where the kernel or a container forbids
that, those tests skip, and the file-size limit (``ulimit -f``, EFBIG on the same write paths)
still runs everywhere.
"""
from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.dicom_factory import chest_phantom, make_dicom, to_stored
from helpers.paths import REPO

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "FIBROSIS_SALT": "test-salt"}


def _can_unshare() -> bool:
    exe = shutil.which("unshare")
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "--user", "--map-root-user", "--mount", "true"], capture_output=True,
                              timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


needs_tmpfs = pytest.mark.skipif(not _can_unshare(), reason="unshare --user --mount not permitted here")


def on_full_disk(mount: Path, size_kb: int, argv: list[str], timeout: float = 240) -> tuple[int, str, list[str]]:
    """Run ``fibrosis ARGV`` with a ``size_kb`` tmpfs at ``mount``; (exit status, stderr, files left on it)."""
    mount.mkdir(parents=True, exist_ok=True)
    script = ('mount -t tmpfs -o size="$1"k tmpfs "$2" || exit 99; m="$2"; shift 2; "$@"; rc=$?; '
              'find "$m" -mindepth 1 -type f -printf "LEFT=%P\\n" >&2; exit $rc')
    res = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh",
                          str(size_kb), str(mount), sys.executable, "-m", "fibrosis.cli.main", *argv],
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert res.returncode != 99, res.stderr
    left = [line[5:] for line in res.stderr.splitlines() if line.startswith("LEFT=")]
    return res.returncode, res.stderr, left


def _no_space_line(err: str, mount: Path, written: Path) -> str:
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if " ERROR " in line]
    assert len(lines) == 1, err[-3000:]
    assert f"no space left on {mount} (" in lines[0] and f"writing {written}" in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("in")
    for i in range(12):
        make_dicom(d / f"im{i:02d}.dcm", to_stored(chest_phantom(96, 80, seed=i), 12), bits_stored=12)
    return d


INGEST = ["--no-progress", "--workers", "1", "--set", "ingest.min_side=1", "--set", "ingest.shard_size=4",
          "--set", "ingest.image_size=256"]


@needs_tmpfs
def test_ingest_on_a_full_disk(images, tmp_path):
    """Not numpy's "OSError: 2097152 requested and 950144 written" (no path), and no .shard-*.tmp*.npy left."""
    mount = tmp_path / "disk"
    rc, err, left = on_full_disk(mount, 400, ["ingest", str(images), "--cache", str(mount / "c"), *INGEST])
    assert rc == 2
    _no_space_line(err, mount, mount / "c")
    assert not [f for f in left if ".tmp" in f or "index.sqlite" in f], left
    # what was committed stands whole: each shard has its part (the commit marker)
    shards = {Path(f).stem for f in left if f.startswith("c/shards/")}
    assert shards <= {Path(f).stem for f in left if f.startswith("c/parts/shard-")}


@needs_tmpfs
def test_report_on_a_full_disk_leaves_no_truncated_page(tmp_path):
    """report.html is written atomically: a full disk leaves no page cut off."""
    from helpers.runs import make_run

    run = make_run(tmp_path, pretrained=True)
    mount = tmp_path / "disk"
    rc, err, left = on_full_disk(mount, 64, ["report", "--run", str(run), "--out", str(mount / "rep")])
    assert rc == 2
    _no_space_line(err, mount, mount / "rep" / "report.html")
    assert left == [], left


@needs_tmpfs
def test_monitor_on_a_full_disk_logs_its_alerts_and_leaves_nothing(tmp_path):
    """No .monitor.json.tmpPID left behind."""
    from helpers.checkpoints import make_checkpoint
    from helpers.monitor import evaluated_run, scores_file

    run = evaluated_run(make_checkpoint(tmp_path / "run" / "best.pt"))
    scores = scores_file(run, tmp_path / "s.csv", vendor="NeverSeen")
    mount = tmp_path / "disk"
    rc, err, left = on_full_disk(mount, 4, ["monitor", "--run", str(run), "--scores", str(scores),
                                            "--out", str(mount / "mon")])
    assert rc == 2
    _no_space_line(err, mount, mount / "mon" / "monitor.json")
    assert " ALERT " in err and "manufacturer" in err  # logged before any file is written
    assert left == [], left


def _file_size_limit(nbytes: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return apply


def test_ingest_past_the_file_size_limit(images, tmp_path):
    """The same write paths under ``ulimit -f`` (EFBIG), where no tmpfs can be mounted."""
    cache = tmp_path / "c"
    res = subprocess.run([sys.executable, "-m", "fibrosis.cli.main", "ingest", str(images), "--cache", str(cache),
                          *INGEST], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=240,
                         preexec_fn=_file_size_limit(200_000))
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    (line,) = [x for x in res.stderr.splitlines() if " ERROR " in x]
    assert "file size limit reached" in line and f"writing {cache}/shards/shard-000000.npy" in line, line
    assert not [p for p in cache.rglob("*") if ".tmp" in p.name or "index.sqlite" in p.name]
