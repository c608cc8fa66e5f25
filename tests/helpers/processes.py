"""``python ARGS`` in a child process from the repository, bounded in time and address space:
a hang or a memory blow-up fails the test instead of the machine."""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from helpers.paths import REPO


def _limits(mem_gb: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (mem_gb << 30, mem_gb << 30))
    return apply


def run_child(args: list[str], *, timeout: float = 240, mem_gb: int = 8,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python ARGS`` from the repository, bounded in time and address space."""
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
                "FIBROSIS_SALT": "test-salt", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, capture_output=True,
                          text=True, errors="backslashreplace", timeout=timeout, preexec_fn=_limits(mem_gb))


@contextmanager
def deadline(seconds: int = 5, what: str = "") -> Iterator[None]:
    """Fail instead of hanging: a FIFO opened the ordinary way would block forever."""
    def boom(*_: object) -> None:
        raise TimeoutError(what or f"blocked for {seconds} s")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
