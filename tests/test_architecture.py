"""The package's shape: stages import downwards only, no module imports another's private names, and no
modules import each other in a circle (within a stage too)."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path
from helpers.paths import REPO

PKG = REPO / "fibrosis"


def test_import_contracts_hold():
    """import-linter contracts in pyproject.toml: a back-reference between stages fails CI."""
    # In a subprocess: import-linter reconfigures logging, which would mute other tests' caplog.
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is a dev dependency (pip install -e '.[dev]')"
    res = subprocess.run([exe, "--config", str(PKG.parent / "pyproject.toml"), "--no-cache"],
                         cwd=PKG.parent, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]


def _private_imports() -> list[str]:
    bad = []
    for path in PKG.rglob("*.py"):
        module = ".".join(path.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fibrosis"):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__") and node.module != module:
                        bad.append(f"{module} imports {node.module}.{alias.name}")
    return bad


def test_no_module_imports_another_modules_private_names():
    assert _private_imports() == []


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__")


MODULES = {_module_name(p): p for p in PKG.rglob("*.py")}


def _imports(module: str) -> set[str]:
    """The fibrosis modules ``module`` imports, at the top or inside a function (a function-local
    import is still a dependency: it only hides the arrow)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        out |= {n for n in names if n in MODULES and n != module}
    return out


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_on_hand_checkable_graphs():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert import_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}}) == [["a", "b", "c"]]


def test_no_import_circle_between_modules_even_within_a_stage():
    """Package faces (__init__.py) only hand names on, so they are left out: a module importing its
    own package's face is not a circle of code."""
    graph = {m: {i for i in _imports(m) if not MODULES[i].name == "__init__.py"}
             for m in MODULES if MODULES[m].name != "__init__.py"}
    assert import_cycles(graph) == []


def test_test_modules_never_import_each_other():
    """What tests share lives in tests/helpers; a test module importing another runs its fixtures'
    module-level code twice and ties the two files' private names together."""
    bad = []
    for path in (PKG.parent / "tests").rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{path.name} imports {n}" for n in names if n.split(".")[-1].startswith("test_")]
    assert bad == []


def _top_level_imports(module: str) -> set[str]:
    """Every module name ``module`` imports when it is imported: outside functions and outside
    ``if TYPE_CHECKING`` (third-party and fibrosis alike)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_FunctionDef(self, node: ast.AST) -> None:
            pass  # runs later, if at all

        visit_AsyncFunctionDef = visit_Lambda = visit_FunctionDef

        def visit_If(self, node: ast.If) -> None:
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            out.update(a.name for a in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            base = _absolute(node, package)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)

    Visitor().visit(ast.parse(path.read_text()))
    return out


def _absolute(node: ast.ImportFrom, package: str) -> str:
    base = node.module or ""
    if node.level:
        parts = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
    return base


def _is_heavy(name: str) -> bool:
    from fibrosis._exports import HEAVY

    return any(name == h or name.startswith(h + ".") for h in HEAVY)


def _with_packages(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _heavy_modules() -> set[str]:
    """fibrosis modules whose import (at the top, transitively) loads a HEAVY library."""
    # importing a.b.c runs a/__init__ and a/b/__init__ first
    top = {m: {p for n in _top_level_imports(m) for p in _with_packages(n)} for m in MODULES}
    heavy = {m for m, names in top.items() if any(_is_heavy(n) for n in names)}
    changed = True
    while changed:
        changed = False
        for m, names in top.items():
            if m not in heavy and any(n in heavy for n in names):
                heavy.add(m)
                changed = True
    return heavy


def _function_local_imports() -> list[tuple[str, int, str]]:
    out = []
    for module, path in MODULES.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    out += [(module, node.lineno, a.name) for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    base = _absolute(node, package)
                    out += [(module, node.lineno, f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
                            for a in node.names]
    return out


def test_imports_inside_functions_only_defer_heavy_modules():
    """fibrosis._exports states the rule: a function-local import defers a HEAVY library, or a
    fibrosis module that loads one; any other belongs at the top of the module."""
    heavy = _heavy_modules()
    bad = sorted({f"{m}:{line} imports {name} inside a function" for m, line, name in _function_local_imports()
                  if not _is_heavy(name) and name not in heavy})
    assert bad == []


def test_the_command_line_starts_without_any_heavy_library():
    """What the rule above buys: `fibrosis --help`, a config error or `split` answer before torch,
    pydicom or matplotlib have loaded. In a child: this process has loaded them already."""
    code = ("import sys, fibrosis.cli.main\nfrom fibrosis._exports import HEAVY\n"
            "print(sorted(m for m in sys.modules if m in HEAVY))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[]"
