"""Imports go downward: stages → library packages → config/params_file/errors/files. The library never imports a
stage, a stage never imports another, and no library modules import each other in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIBRARY = sorted((REPO / "gptpipe").rglob("*.py"))
STAGE_FILES = sorted((REPO / "stages").glob("*.py"))


def _module(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path) -> set[str]:
    """Every module of ours `path` imports, at any depth of the file (lazy imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    known = {_module(p) for p in LIBRARY + STAGE_FILES}
    return {name for name in found if name in known}


def test_the_library_never_imports_a_stage():
    offenders = {_module(p): sorted(i for i in _imports(p) if i.startswith("stages")) for p in LIBRARY}
    assert not {m: i for m, i in offenders.items() if i}


def test_a_stage_imports_only_the_library():
    offenders = {_module(p): sorted(i for i in _imports(p) if i.startswith("stages")) for p in STAGE_FILES}
    assert not {m: i for m, i in offenders.items() if i}


def test_config_errors_and_files_sit_at_the_bottom():
    for name, allowed in (("config", {"gptpipe.errors", "gptpipe.params_file"}), ("params_file", {"gptpipe.errors"}),
                          ("errors", set()), ("files", set())):
        assert _imports(REPO / "gptpipe" / f"{name}.py") <= allowed, name


def test_no_library_module_is_part_of_an_import_cycle():
    graph = {_module(p): {i for i in _imports(p) if i.startswith("gptpipe.") and i != _module(p)} for p in LIBRARY}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in graph.get(node, ()):
            if nxt in path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, path + [nxt])
        done.add(node)

    done: set[str] = set()
    for start in graph:
        if start not in done:
            visit(start, [start])
    assert not cycles


def test_no_library_module_is_over_500_lines():
    assert not {_module(p): n for p in LIBRARY if (n := len(p.read_text().splitlines())) > 500}
