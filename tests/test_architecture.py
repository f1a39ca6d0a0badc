"""The house's rules, read from the source: no import cycle between project modules, no module over
500 lines, no function over 60, and the packages import only downwards (see docs/architecture.md)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("app", "adapters", "agents", "tables", "scp", "scu", "domain", "infra", "web")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
# What each package may import from the project (besides itself). ``app.settings`` (the one
# configuration object) is readable from everywhere; ``domain`` imports nothing but itself.
MAY_IMPORT = {
    "domain": set(),
    "tables": {"domain"},
    "adapters": {"domain"},
    "infra": {"domain", "adapters"},
    "scu": {"domain"},
    "scp": {"domain", "adapters"},
    "agents": {"domain", "adapters", "tables"},
    "web": {"domain", "adapters", "tables", "agents"},
    "app": set(PACKAGES),
}
SETTINGS_MODULES = {"app.settings", "app.dicom_settings", "app.topology"}  # configuration: readable everywhere


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports (at any depth of the file, lazily imported ones too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in known}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_between_project_modules() -> None:
    edges = graph()
    assert len(edges) > 50  # the scan sees the project
    assert cycles(edges) == []


def test_packages_import_only_what_their_layer_may() -> None:
    wrong = []
    for module, targets in graph().items():
        package = module.split(".")[0]
        for target in targets:
            other = target.split(".")[0]
            if other != package and target not in SETTINGS_MODULES and other not in MAY_IMPORT[package]:
                wrong.append(f"{module} -> {target}")
    assert sorted(wrong) == []


def test_no_module_over_500_lines_and_no_function_over_60() -> None:
    long_modules, long_functions = [], []
    for name, path in modules().items():
        source = path.read_text()
        if source.count("\n") > MAX_MODULE_LINES:
            long_modules.append(name)
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{name}.{node.name} ({length})")
    assert (long_modules, long_functions) == ([], [])


def test_every_module_imports_without_a_broker_or_a_fhir_server() -> None:
    """No work at import: with nothing listening where the settings point, every module still imports."""
    names = sorted(modules())
    env = {
        **os.environ,
        "STUDYSTREAM_BROKER_URL": "kafka://127.0.0.1:9",  # discard port: nothing answers
        "STUDYSTREAM_FHIR_BASE_URL": "http://127.0.0.1:9/fhir",
    }
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\nprint('imported')"
    done = subprocess.run(
        [sys.executable, "-c", script, *names], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "imported", done.stderr[-2000:]
