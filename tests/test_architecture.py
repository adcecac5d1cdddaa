"""The package's import structure follows DESIGN.md ("Principles": dependencies point one way).

The source under ``src/stromalens`` is parsed with :mod:`ast`, nothing is imported. Every import
counts, wherever it stands (module level, inside a function, under ``TYPE_CHECKING``), and so does
``importlib.import_module("stromalens.…")`` with a literal name. Relative imports are resolved to
full module names; ``from pkg import name`` where ``pkg.name`` is a module counts as importing that
module. A package's ``__init__`` implied by importing one of its submodules is not counted (it is
always loaded first and is not what the importer depends on).

A *unit* is a top-level package under ``stromalens`` (``wsi``, ``models`` …) or a top-level module
(``config``, ``cohort``, ``hashing`` …); ``stromalens/__init__.py`` is the unit ``stromalens``.
"""

from __future__ import annotations

import ast
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = "stromalens"
SRC = Path(__file__).resolve().parents[1] / "src" / ROOT

#: Imported by nothing outside itself: the CLI is the top of the graph.
ENTRY_POINT = "cli"
#: The synthetic generator is a data source for the CLI, the demo and the tests.
DATA_SOURCE = "synthetic"

#: DESIGN.md's dependency rules: unit → units it must never import (directly or lazily).
FORBIDDEN: dict[str, set[str]] = {
    # `targets`, `wsi` and `radiology` never import `training`, `evaluation` or `report`
    # (nor the study runner or the CLI above them).
    "targets": {"training", "evaluation", "report", "study", "cli"},
    "wsi": {"training", "evaluation", "report", "study", "cli"},
    "radiology": {"training", "evaluation", "report", "study", "cli"},
    # `models` never imports `training` or `cli` (nor evaluation, report, the study runner).
    "models": {"training", "cli", "evaluation", "report", "study"},
    # `report` reads run files and never runs models.
    "report": {"training", "models"},
}

#: Packages whose modules must not import each other in a cycle.
ACYCLIC_PACKAGES = ("wsi",)


@dataclass(frozen=True)
class Import:
    module: str  # importer, e.g. "stromalens.wsi.embed"
    line: int
    target: str  # imported module, e.g. "stromalens.wsi.encoders"
    path: Path

    def __str__(self) -> str:
        return f"{self.path.relative_to(SRC.parent)}:{self.line} → {self.target}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


MODULES = _modules()


def _resolve(module: str, path: Path, level: int, name: str | None) -> str:
    """The absolute module name of ``from <level dots><name> import …`` inside ``module``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    parts = package.split(".")
    if level > 1:
        parts = parts[: len(parts) - (level - 1)]
    base = ".".join(parts)
    return f"{base}.{name}" if name else base


def _literal_import_module(node: ast.Call) -> str | None:
    func = node.func
    fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if fname not in {"import_module", "__import__"} or not node.args:
        return None
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    return None


#: Modules that did not parse (reported by test_the_parser_sees_the_package).
PARSE_ERRORS: list[str] = []


def _imports_of(module: str, path: Path) -> list[Import]:
    try:
        with warnings.catch_warnings():  # e.g. invalid escape sequences: not this test's business
            warnings.simplefilter("ignore")
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as exc:
        PARSE_ERRORS.append(f"{path.relative_to(SRC.parent)}:{exc.lineno}: {exc.msg}")
        return []
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _resolve(module, path, node.level, node.module)
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((node.lineno, sub if sub in MODULES else base))
        elif isinstance(node, ast.Call) and (name := _literal_import_module(node)):
            found.append((node.lineno, name))
    return [
        Import(module, line, target, path)
        for line, target in sorted(set(found))
        if target == ROOT or target.startswith(ROOT + ".")
    ]


def _all_imports() -> list[Import]:
    return [imp for module, path in MODULES.items() for imp in _imports_of(module, path)]


IMPORTS = _all_imports()


def unit(module: str) -> str:
    """``stromalens.wsi.embed`` → ``wsi``; ``stromalens.config`` → ``config``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def _owning_module(target: str) -> str:
    """The longest known module that ``target`` names or lies in (``a.b.attr`` → ``a.b``)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target


def _find_cycles(graph: dict[str, set[str]]) -> list[tuple[list[str], list[str]]]:
    """(a shortest cycle, all its component's nodes) per strongly connected component (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [(_cycle_in(graph, comp), comp) for comp in components]


def _cycle_in(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first node (breadth-first)."""
    members = set(component)
    start = component[0]
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, set()) & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle in {component}")  # pragma: no cover


def _edge_evidence(imports: list[Import], key, a: str, b: str) -> list[Import]:
    return [imp for imp in imports if key(imp.module) == a and key(imp.target) == b]


def _report_cycles(cycles, imports: list[Import], key) -> str:
    lines = []
    for cycle, members in cycles:
        lines.append("cycle: " + " → ".join(cycle))
        if len(cycle) - 1 < len(members):
            lines.append("  (one of the cycles among " + ", ".join(members) + ")")
        for a, b in zip(cycle, cycle[1:], strict=False):
            lines.append(f"  {a} → {b}:")
            lines += [f"    {imp}" for imp in _edge_evidence(imports, key, a, b)]
    return "\n".join(lines)


def _report(violations: list[tuple[str, Import]]) -> str:
    return "\n".join(f"{rule}: {imp}" for rule, imp in violations)


# ------------------------------------------------------------------------------------- tests
def test_the_parser_sees_the_package():
    assert not PARSE_ERRORS, "modules that do not parse:\n" + "\n".join(PARSE_ERRORS)
    assert f"{ROOT}.wsi.encoders" in MODULES
    assert IMPORTS, "no stromalens imports found; is SRC right?"
    # relative imports resolve to full names, `from . import x` to the submodule x
    assert _resolve("stromalens.wsi.embed", SRC / "wsi" / "embed.py", 2, "cli.train") == (
        "stromalens.cli.train"
    )
    assert _resolve("stromalens.wsi", SRC / "wsi" / "__init__.py", 1, None) == "stromalens.wsi"
    assert _find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [
        (["a", "b", "c", "a"], ["a", "b", "c"])
    ]
    assert _find_cycles({"a": {"b", "c"}, "b": {"a"}, "c": {"a"}}) == [
        (["a", "b", "a"], ["a", "b", "c"])
    ]


def test_nothing_outside_cli_imports_cli():
    offending = [
        (f"imports {ROOT}.{ENTRY_POINT}", imp)
        for imp in IMPORTS
        if unit(imp.target) == ENTRY_POINT and unit(imp.module) != ENTRY_POINT
    ]
    if offending:
        pytest.fail(
            f"only the CLI may import {ROOT}.{ENTRY_POINT} (DESIGN.md: cli → study runner → "
            "stages); move what is shared into the stage or the study runner:\n"
            + _report(offending),
            pytrace=False,
        )


def test_no_cycle_between_packages():
    graph: dict[str, set[str]] = defaultdict(set)
    for imp in IMPORTS:
        a, b = unit(imp.module), unit(imp.target)
        if a != b:
            graph[a].add(b)
    if cycles := _find_cycles(graph):
        pytest.fail(
            "dependencies between packages must point one way:\n"
            + _report_cycles(cycles, IMPORTS, unit),
            pytrace=False,
        )


def test_design_dependency_rules():
    pipeline_stages = {unit(m) for m in MODULES} - {ENTRY_POINT, DATA_SOURCE}
    rules = {u: FORBIDDEN.get(u, set()) | {DATA_SOURCE} for u in pipeline_stages}
    offending = [
        (f"{unit(imp.module)} must not import {unit(imp.target)}", imp)
        for imp in IMPORTS
        if unit(imp.target) in rules.get(unit(imp.module), ())
    ]
    if offending:
        pytest.fail(
            "DESIGN.md's dependency rules are broken:\n" + _report(offending), pytrace=False
        )


def test_no_module_cycle_inside_acyclic_packages():
    failures = []
    for package in ACYCLIC_PACKAGES:
        inside = [imp for imp in IMPORTS if unit(imp.module) == package == unit(imp.target)]
        graph: dict[str, set[str]] = defaultdict(set)
        for imp in inside:
            target = _owning_module(imp.target)
            if target != imp.module:
                graph[imp.module].add(target)
        if cycles := _find_cycles(graph):
            failures.append(_report_cycles(cycles, inside, _owning_module))
    if failures:
        pytest.fail("modules import each other in a cycle:\n" + "\n".join(failures), pytrace=False)
