"""The package's shape: stages import downwards only, and never each other's private names."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "fibrosis"


def test_import_contracts_hold():
    """import-linter contracts in pyproject.toml: a back-reference between stages fails CI."""
    # In a subprocess: import-linter reconfigures logging, which would mute other tests' caplog.
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is a dev dependency (pip install -e '.[dev]')"
    res = subprocess.run([exe, "--config", str(PKG.parent / "pyproject.toml"), "--no-cache"],
                         cwd=PKG.parent, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]


def _stage(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])  # fibrosis.data, fibrosis.model, fibrosis.io, ...


def _private_imports() -> list[str]:
    bad = []
    for path in PKG.rglob("*.py"):
        module = ".".join(path.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fibrosis"):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__") and _stage(node.module) != _stage(module):
                        bad.append(f"{module} imports {node.module}.{alias.name}")
    return bad


def test_no_stage_imports_another_stages_private_names():
    assert _private_imports() == []
