"""The package's shape: every module imports on its own in a fresh interpreter (an import cycle shows up as a module
that cannot be imported first), and no module grows past MAX_LINES (DESIGN.md: files under ~400 lines)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import asrkit

PACKAGE = Path(asrkit.__file__).parent
MAX_LINES = 450

# Imports each module first, i.e. with no asrkit module loaded (third-party ones such as torch stay, for speed).
IMPORT_EACH = """
import importlib, pkgutil, sys, traceback
import asrkit
names = ["asrkit"] + [m.name for m in pkgutil.walk_packages(asrkit.__path__, "asrkit.")
                      if m.name != "asrkit.__main__"]  # importing __main__ runs the command line
for name in names:
    for loaded in [m for m in sys.modules if m == "asrkit" or m.startswith("asrkit.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except BaseException as err:
        print(f"{name}: {type(err).__name__}: {err}")
        traceback.print_exc(limit=-3, file=sys.stdout)
print(f"imported {len(names)} modules")
"""


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.slow  # a fresh interpreter that imports torch, then each of ~60 modules first: ~5-8 s
def test_every_module_imports_first_without_a_cycle() -> None:
    done = subprocess.run([sys.executable, "-c", IMPORT_EACH], capture_output=True, text=True, timeout=300,
                          cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr
    count = len([p for p in modules() if p.name != "__main__.py"])
    assert done.stdout.strip() == f"imported {count} modules", done.stdout  # and no failure printed above it


def test_every_module_is_at_most_max_lines() -> None:
    long = {str(p.relative_to(PACKAGE.parent)): n for p in modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (move a cohesive part into a module of its own): {long}"


def _imports(path: Path, known: set[str]) -> set[str]:
    """The asrkit modules `path` imports anywhere: top level, inside a function, under TYPE_CHECKING."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found.update(n for n in names if n in known)
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_cycle_even_through_imports_inside_functions() -> None:
    """A lazy import (inside a function) hides a cycle from the fresh-interpreter test above; this one reads the
    source: module A importing B anywhere (TYPE_CHECKING imports too) while B imports A anywhere is a cycle."""
    paths = {_module_name(p): p for p in modules()}
    graph = {name: _imports(path, set(paths)) - {name} for name, path in paths.items()}
    cycles = []
    for start in graph:  # depth-first search for a path back to `start`
        stack, seen = [(start, (start,))], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(" -> ".join((*trail, start)))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, (*trail, nxt)))
    assert not cycles, "import cycles (move the shared part into a module both can import):\n" + "\n".join(
        sorted(set(cycles)))
