"""The codebase keeps its shape: small modules and functions, layers that import one way, no
import cycles among the project's modules (imports inside functions count too).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("mdgate", "flows", "registry")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def _imports(module: str, path: Path) -> set[str]:
    """The project modules ``module`` imports anywhere in its file (outside ``TYPE_CHECKING`` blocks)."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if m.split(".")[0] in PACKAGES}


def test_no_file_over_400_lines_and_no_function_over_60() -> None:
    long_files, long_functions = [], []
    for module, path in _modules():
        text = path.read_text()
        if len(text.splitlines()) > MAX_FILE_LINES:
            long_files.append(f"{module}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{module}.{node.name}: {n} lines")
    assert not long_files and not long_functions, long_files + long_functions


def test_no_import_cycle_among_the_project_modules() -> None:
    modules = dict(_modules())
    graph = {m: {i for i in _imports(m, p) if i in modules and i != m} for m, p in modules.items()}
    # A package's __init__ importing its own submodules is how packages work, not a cycle.
    graph = {m: {i for i in deps if not (modules[m].name == "__init__.py" and i.startswith(m + "."))}
             for m, deps in graph.items()}
    cycles, state = [], dict.fromkeys(graph, 0)

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for dep in sorted(graph[m]):
            if state[dep] == 1:
                cycles.append(" → ".join([*stack[stack.index(dep):], dep]))
            elif state[dep] == 0:
                visit(dep, [*stack, dep])
        state[m] = 2

    for m in sorted(graph):
        if state[m] == 0:
            visit(m, [m])
    assert not cycles, cycles


@pytest.mark.parametrize("forbidden", ["prefect", "mlflow"])
def test_the_engine_imports_neither_prefect_nor_mlflow_at_module_level(forbidden: str) -> None:
    offenders = []
    for module, path in _modules():
        if not module.startswith("mdgate"):
            continue
        for node in ast.parse(path.read_text()).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{module}: {n}" for n in names if n.split(".")[0] == forbidden]
    assert not offenders, offenders
