"""``kill -9`` of a run leaves no helper process behind: the fork server,
the resource tracker and the decode workers all go away with it -- also a worker stuck in
native code that never releases the GIL (only a kernel signal can end that one).

The run is a small script driving :func:`fibrosis.data.workers.ordered_map` (the pool both ingest and
score use) with a task that takes long enough to be killed mid-run.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.paths import REPO

JOB = '''
import os, re, sys, time
from fibrosis.config import IngestConfig
from fibrosis.data.workers import ordered_map


def sleeps(task, cfg):
    time.sleep(0.3)
    return {"path": task[0], "status": "skip", "hash": ""}


def holds_the_gil(task, cfg):
    re.match(r"(a+)+$", "a" * 40 + "b")  # catastrophic backtracking inside one C call: hours
    return {"path": task[0], "status": "skip", "hash": ""}


if __name__ == "__main__":
    fn = globals()[sys.argv[1]]
    for i, _ in enumerate(ordered_map(fn, [(str(i), "", {}) for i in range(1000)], IngestConfig(), 2)):
        print("result", i, flush=True)
    print("started", flush=True)  # holds_the_gil never gets here: the parent waits on the pool
'''


def _children() -> dict[int, list[int]]:
    """ppid -> pids of live (non-zombie) processes, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if state != "Z":
            tree.setdefault(int(ppid), []).append(int(entry))
    return tree


def _descendants(pid: int) -> set[int]:
    tree, found, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG is Linux-only")
@pytest.mark.parametrize("task", ["sleeps", "holds_the_gil"])
def test_kill_9_of_the_run_ends_fork_server_tracker_and_workers(tmp_path, task):
    script = tmp_path / "job.py"
    script.write_text(JOB)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.Popen([sys.executable, str(script), task], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    helpers: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait for fork server + tracker + 2 busy workers
            helpers = _descendants(run.pid)
            if len(helpers) >= 4:
                break
            time.sleep(0.1)
        assert len(helpers) >= 4, f"helpers of the run: {helpers}"
        time.sleep(1.0)  # workers mid-task
        helpers = _descendants(run.pid)
        run.send_signal(signal.SIGKILL)
        run.wait(10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(p) for p in helpers):
            time.sleep(0.2)
        left = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in helpers if _alive(p)}
        assert not left, f"still running 20 s after kill -9 of the run: {left}"
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        for p in helpers:  # what a regression leaves behind: this test's own processes, by pid
            if _alive(p):
                os.kill(p, signal.SIGKILL)
