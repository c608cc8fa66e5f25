"""A scored folder for `fibrosis review`: DICOM studies (one with a lateral view, which policy
excludes, one with two frontal images), a PNG export and a truncated file, scored for real by
`fibrosis score` with the small checkpoint of helpers.checkpoints (and the monitoring reference
of helpers.monitor, so `monitor --labels` can read the reader's labels)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fibrosis.io import read_csv
from fibrosis.score.run import score
from helpers.checkpoints import make_checkpoint
from helpers.dicom_factory import chest_phantom, make_dicom, make_png, to_stored, truncate
from helpers.monitor import evaluated_run
from helpers.paths import REPO

PATIENT_ID, PATIENT_NAME = "PAT-SECRET-4711", "Doe^Jane"  # must never reach a URL or a log
N_STUDIES = 8  # studies with at least one scored image (six single, one pair, one PA + lateral)


@dataclass(frozen=True)
class Scored:
    run: Path
    scores: Path
    inputs: Path
    study_uids: list[str]


def scored_folder(root: Path) -> Scored:
    ckpt = make_checkpoint(root / "run" / "best.pt")
    evaluated_run(ckpt)
    inputs = root / "in" / f"{PATIENT_NAME}"  # a folder named after the patient, as PACS exports do
    inputs.mkdir(parents=True)
    uids = [f"1.2.826.0.1.3680043.10.999.{i}" for i in range(1, 8)]
    for i, uid in enumerate(uids):
        img = to_stored(chest_phantom(96, 80, seed=i))
        make_dicom(inputs / f"IM{i:04d}.dcm", img, study_uid=uid, patient_id=f"{PATIENT_ID}-{i % 3}",
                   patient_name=PATIENT_NAME)
    make_dicom(inputs / "IM0100.dcm", to_stored(chest_phantom(96, 80, seed=9)), study_uid=uids[0],
               patient_id=f"{PATIENT_ID}-0", patient_name=PATIENT_NAME)  # a second frontal image of study 1
    make_dicom(inputs / "IM0101.dcm", to_stored(chest_phantom(96, 80, seed=10)), study_uid=uids[1], view="LL",
               patient_id=f"{PATIENT_ID}-1", patient_name=PATIENT_NAME)  # lateral: excluded by policy
    make_png(inputs / "export.png", (chest_phantom(96, 80, seed=11) * 255).astype(np.uint8))
    truncate(make_dicom(inputs / "IM0200.dcm", to_stored(chest_phantom(96, 80, seed=12))), 0.3)
    out = root / "scores.csv"
    score(ckpt.parent, inputs, out, device="cpu", progress=False, workers=1)
    return Scored(ckpt.parent, out, inputs, uids)


def statuses(scores: Path) -> dict[str, str]:
    return {Path(r["path"]).name: r["status"].split(":")[0] for r in read_csv(scores)}


class Server:
    """`fibrosis review ARGS` in a child process on a free port; ``url`` once it listens, ``log`` its
    stderr (drained by a thread, so the pipe never fills)."""

    def __init__(self, args: list[str], timeout: float = 60):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
        self.proc = subprocess.Popen([sys.executable, "-m", "fibrosis.cli", "review", "--port", "0", *args], cwd=REPO,
                                     env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.lines: list[str] = []
        self.url = ""
        ready = threading.Event()

        def drain() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.lines.append(line)
                if "review: open http://" in line and not self.url:
                    self.url = line.split("review: open ", 1)[1].split()[0]
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        end = time.monotonic() + timeout
        while not ready.wait(0.1) and time.monotonic() < end:
            pass
        if not self.url:
            self.stop()
            raise RuntimeError("`fibrosis review` did not start:\n" + "".join(self.lines[-20:]))

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def chromium(playwright: object) -> object:
    """Debian's chromium under Playwright (no browser download). Where it or Playwright is missing the
    test skips on a user's machine but FAILS in CI (where .ci/run installs both)."""
    exe = shutil.which("chromium")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium not installed in CI (apt-get install chromium)")
        pytest.skip("Debian's chromium not installed")
    return playwright.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])  # type: ignore[attr-defined]


def sync_playwright() -> object:
    """playwright.sync_api.sync_playwright, or skip (FAIL in CI) where the package is missing."""
    try:
        from playwright.sync_api import sync_playwright as start
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("playwright not installed in CI (a dev dependency: pip install -e '.[dev]')")
        pytest.skip("playwright not installed (pip install playwright; no browser download needed)")
    return start()
