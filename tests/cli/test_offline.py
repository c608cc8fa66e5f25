"""No network call the user did not ask for: every module imported, and the commands a
site runs unattended (ingest, split, score, listen), each in a fresh interpreter whose
network is unreachable; a Python audit hook in every process of the run (sitecustomize,
so the decode workers and their fork server too) records any attempt to resolve a name
or connect anywhere but loopback."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.dicom_factory import chest_phantom, make_dicom, to_stored
from fibrosis.config import IngestConfig
from helpers.checkpoints import make_checkpoint
from helpers.paths import REPO

pytestmark = pytest.mark.timeout(300)

# Runs in every interpreter of the command (PYTHONPATH), before any other import.
HOOK = r'''
import os, sys
_log = os.environ["FIBROSIS_NET_LOG"]
def _local(addr):
    if isinstance(addr, (str, bytes)):  # AF_UNIX path
        return True
    host = str(addr[0]) if isinstance(addr, tuple) and addr else ""
    return host.startswith("127.") or host in ("::1", "localhost", "0.0.0.0", "")
def _hook(event, args):
    bad = None
    if event == "socket.connect" and not _local(args[1]):
        bad = args[1]
    elif event in ("socket.getaddrinfo", "socket.gethostbyname") and not _local((args[0],)):
        bad = args[0]
    elif event == "urllib.Request":
        bad = args[0]
    if bad is not None:
        with open(_log, "a") as fh:
            fh.write(f"{os.getpid()} {event} {bad!r}\n")
sys.addaudithook(_hook)
'''


def _isolated() -> list[str]:
    """A network namespace with loopback only (root on Linux), else the host's network:
    the audit hook sees an attempt either way."""
    if os.geteuid() == 0 and shutil.which("unshare") and shutil.which("ip"):
        probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
        if probe.returncode == 0:
            return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
    return []


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    (site / "sitecustomize.py").write_text(HOOK)
    log = site / "net.log"
    base = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}  # the package sets it
    return {**base, "PYTHONPATH": f"{site}{os.pathsep}{REPO}", "FIBROSIS_NET_LOG": str(log),
            "FIBROSIS_SALT": "offline"}, log


def _run(env, args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(_isolated() + [sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=240, **kw)


def _attempts(log: Path) -> str:
    return log.read_text() if log.exists() else ""


def test_the_hook_sees_an_attempt(env):
    """The check itself: a lookup of a public name is recorded."""
    environ, log = env
    _run(environ, ["-c", "import socket\ntry: socket.getaddrinfo('pypi.org', 443)\nexcept OSError: pass"])
    assert "pypi.org" in _attempts(log)
    log.unlink()


def test_importing_every_module_makes_no_network_call(env):
    environ, log = env
    code = ("import pkgutil, importlib, fibrosis\n"
            "for m in pkgutil.walk_packages(fibrosis.__path__, 'fibrosis.'):\n"
            "    if not m.name.endswith('__main__'):\n"
            "        importlib.import_module(m.name)\n"
            "import albumentations, monai, torchvision\n")
    res = _run(environ, ["-c", code])
    assert res.returncode == 0, res.stderr[-2000:]
    assert _attempts(log) == "", _attempts(log)
    assert "Error fetching version info" not in res.stderr


def test_ingest_split_score_listen_make_no_network_call(env, tmp_path):
    environ, log = env
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        make_dicom(src / f"{i}.dcm", to_stored(chest_phantom(96, 80, seed=i), 12), bits_stored=12,
                   study_uid=f"1.2.3.{i // 2}", sop_uid=f"1.2.3.{i // 2}.{i}", patient_id=f"P{i}")
    ckpt = make_checkpoint(tmp_path / "run" / "best.pt", ingest=IngestConfig(image_size=64))
    cli = ["-m", "fibrosis.cli"]
    for args in (["ingest", str(src), "--cache", str(tmp_path / "cache"), "--workers", "2", "--no-progress",
                  "--set", "ingest.image_size=64", "--set", "ingest.min_side=1"],
                 ["split", "--cache", str(tmp_path / "cache")],
                 ["score", "--run", str(ckpt), "--input", str(src), "--out", str(tmp_path / "s.csv"),
                  "--workers", "2", "--no-progress", "--sr-out", str(tmp_path / "sr")]):
        res = _run(environ, cli + args)
        assert res.returncode == 0, (args[0], res.stderr[-2000:])
        assert "Error fetching version info" not in res.stderr
    proc = subprocess.Popen(_isolated() + [sys.executable, *cli, "listen", "--run", str(ckpt), "--workdir",
                                           str(tmp_path / "node"), "--port", "0", "--idle", "1"],
                            env=environ, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line or "listening on" in line:
                break
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert _attempts(log) == "", _attempts(log)
