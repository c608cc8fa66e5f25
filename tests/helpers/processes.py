"""``python ARGS`` in a child process from the repository, bounded in time and address space:
a hang or a memory blow-up fails the test instead of the machine."""
from __future__ import annotations

import os
import resource
import subprocess
import sys

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
