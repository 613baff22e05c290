"""Layers point one way: core types -> spec -> backends -> stage graph -> commands.

Every import of a project module counts, including those inside functions."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runner", "backends")
# Modules that import nothing of the project but each other: what a backend may use from runner.
LEAVES = {"runner", "runner.errors", "runner.core", "runner.grammar", "runner.templates", "runner.prices",
          "runner.features", "runner.paper", "runner.files", "runner.env"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path, modules: set[str]) -> set[str]:
    """Project modules a file imports anywhere in it (`from runner import x` counts as runner.x)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        out |= {n for n in names if n in modules}
    return out


def import_graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    modules = {module_name(p) for p in files}
    graph = {module_name(p): project_imports(p, modules) for p in files}
    for mod, deps in graph.items():  # importing a.b runs a's __init__ too; that is not a dependency edge
        deps.discard(mod)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_backends_use_only_leaf_modules_of_runner():
    graph = import_graph()
    for mod, deps in graph.items():
        if mod.startswith("backends"):
            bad = {d for d in deps if d.startswith("runner") and d not in LEAVES}
            assert not bad, f"{mod} imports {sorted(bad)} from the runner"


def test_leaf_modules_import_only_leaves():
    graph = import_graph()
    for mod in LEAVES:
        assert graph.get(mod, set()) <= LEAVES, f"{mod} imports {sorted(graph[mod] - LEAVES)}"
