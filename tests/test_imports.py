"""The import graph of ``rbee``: no cycles, and the leaf modules stay leaves.

The graph is read statically with `ast` from every module under ``src/rbee``. Every ``import`` and
``from ... import`` statement counts wherever it stands: at module level, inside a function (a lazy
import still ties the two modules together; it only moves the cost), or under
``if TYPE_CHECKING``. ``from pkg import name`` is an edge to ``pkg.name`` when that is a module,
else to ``pkg``. Importing ``a.b`` also runs ``a/__init__.py``; that implicit edge is left out of
the cycle check (a package importing its own submodules would otherwise always be a cycle) and
kept in `closure`, which answers "what does importing this module load". Modules named by string
(``importlib.import_module``, the CLI's lazy command table) are not edges.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "rbee"

# Leaf -> the only rbee modules (or packages, with everything under them) it may import.
LEAVES: dict[str, tuple[str, ...]] = {
    "rbee.errors": (),
    "rbee.policy.limits": (),
    "rbee.wire": ("rbee.wire", "rbee.errors"),
    "rbee.decisions": ("rbee.wire", "rbee.errors"),
}

Graph = Mapping[str, set[str]]


def module_files(root: Path = SRC / PACKAGE) -> dict[str, Path]:
    """Every module of the package under ``root``, by dotted name (``rbee.policy`` for its
    ``__init__.py``)."""
    modules: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _resolve(name: str, known: set[str]) -> str | None:
    """The longest known module that ``name`` is or lies in (``rbee.wire.queen.JobView`` ->
    ``rbee.wire.queen``); None for anything outside the package."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_in(source: str, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The package's modules that ``source`` (the text of ``module``) imports, anywhere in it."""
    found: set[str] = set()
    here = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            # ``from pkg import name``: a submodule when one exists, else an attribute of pkg.
            subs = [t for t in targets[:-1] if t in known]
            targets = subs if len(subs) == len(node.names) else [*subs, base]
        else:
            continue
        for target in targets:
            resolved = _resolve(target, known)
            if resolved is not None and resolved != module:
                found.add(resolved)
    return found


def import_graph(root: Path = SRC / PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, for every module under ``root``."""
    files = module_files(root)
    known = set(files)
    return {
        name: imports_in(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", known)
        for name, path in files.items()
    }


def find_cycles(graph: Graph) -> list[list[str]]:
    """One cycle through each strongly connected component with more than one module (or a module
    that imports itself), each as the path ``[a, b, ..., a]``, sorted for stable messages."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(_cycle_in(graph, component) for component in components)


def _cycle_in(graph: Graph, component: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for succ in sorted(graph.get(node, ())):
                if succ == start:
                    return [*paths[node], start]
                if succ in component and succ not in paths:
                    paths[succ] = [*paths[node], succ]
                    following.append(succ)
        frontier = following
    raise AssertionError(f"{sorted(component)} is not strongly connected")


def closure(graph: Graph, modules: Iterable[str], *, packages: bool = True) -> set[str]:
    """Every module that importing ``modules`` loads: their imports, theirs, and so on, and with
    ``packages`` each one's packages (whose ``__init__.py`` Python runs first)."""
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(graph.get(name, ()))
        parent = name.rpartition(".")[0]
        if parent and packages:
            todo.append(parent)
    return seen


def _within(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(f"{p}.") for p in prefixes)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


# --- the checker itself -----------------------------------------------------------------------


def test_find_cycles_reports_a_cycle_and_only_the_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]


def test_find_cycles_reports_each_cycle_and_a_self_import() -> None:
    graph = {"a": {"b"}, "b": {"a"}, "c": {"c"}, "d": {"e"}, "e": {"f"}, "f": {"d"}}
    assert find_cycles(graph) == [["a", "b", "a"], ["c", "c"], ["d", "e", "f", "d"]]


def test_find_cycles_accepts_a_diamond() -> None:
    assert find_cycles({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}) == []


def test_imports_in_counts_function_level_and_relative_imports() -> None:
    known = {"rbee", "rbee.policy", "rbee.policy.nodes", "rbee.queen", "rbee.queen.scheduler"}
    source = (
        "from typing import TYPE_CHECKING\n"
        "import os\n"
        "from . import nodes\n"
        "if TYPE_CHECKING:\n"
        "    import rbee.queen\n"
        "def f():\n"
        "    from rbee.queen.scheduler import Route\n"
        "    return Route\n"
    )
    found = imports_in(source, "rbee.policy.compile", False, known)
    assert found == {"rbee.policy.nodes", "rbee.queen", "rbee.queen.scheduler"}


def test_imports_in_tells_submodules_from_attributes() -> None:
    known = {"rbee", "rbee.wire", "rbee.sse"}
    found = imports_in("from rbee import __version__, sse\n", "rbee.x", False, known)
    assert found == {"rbee", "rbee.sse"}
    assert imports_in("from rbee import sse\n", "rbee.x", False, known) == {"rbee.sse"}


def test_closure_loads_the_packages_of_what_it_imports() -> None:
    graph = {"p": set(), "p.a": {"q.b"}, "q": {"r"}, "q.b": set(), "r": set()}
    assert closure(graph, ["p.a"]) == {"p", "p.a", "q", "q.b", "r"}
    assert closure(graph, ["p.a"], packages=False) == {"p.a", "q.b"}


# --- the rbee package -------------------------------------------------------------------------


def test_the_graph_sees_the_package(graph: dict[str, set[str]]) -> None:
    assert {"rbee.decisions", "rbee.wire.queen", "rbee.queen.scheduler"} <= set(graph)
    assert "rbee.decisions" in graph["rbee.queen.scheduler"]
    assert "rbee.policy" in graph["rbee.queen.scheduler"]  # the lazy import in make_scheduler


def test_no_import_cycle_inside_rbee(graph: dict[str, set[str]]) -> None:
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_a_leaf_imports_nothing_else_of_rbee(graph: dict[str, set[str]], leaf: str) -> None:
    """What the leaf's own imports reach, its package's ``__init__.py`` left out (the policy
    package's names everything, loaded lazily); the next test checks what really loads."""
    allowed = LEAVES[leaf]
    modules = [m for m in graph if _within(m, [leaf])]
    assert modules, f"no module {leaf}"
    loaded = closure(graph, modules, packages=False)
    assert sorted(m for m in loaded if not _within(m, [leaf, *allowed])) == []


def test_the_policy_package_never_imports_the_queen(graph: dict[str, set[str]]) -> None:
    policy = [m for m in graph if _within(m, ["rbee.policy"])]
    assert sorted(m for m in closure(graph, policy) if _within(m, ["rbee.queen"])) == []


def loaded_by(module: str) -> list[str]:
    """The rbee modules a fresh interpreter has loaded after ``import module``: what Python really
    runs, package ``__init__`` files included, beside the static graph."""
    code = f"import sys, {module}\nprint(' '.join(m for m in sys.modules if m.startswith('rbee')))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return sorted(run.stdout.split())


@pytest.mark.parametrize(
    ("module", "allowed"),
    [
        ("rbee.policy.limits", ("rbee.policy.limits",)),
        (
            "rbee.policy.parse",
            ("rbee.policy.parse", "rbee.policy.nodes", "rbee.policy.limits", "rbee.errors"),
        ),
        ("rbee.decisions", ("rbee.decisions", "rbee.wire", "rbee.errors")),
        ("rbee.wire.hive", ("rbee.wire", "rbee.errors")),
    ],
)
def test_importing_a_leaf_loads_only_what_it_needs(module: str, allowed: tuple[str, ...]) -> None:
    """Beside ``allowed``, only the module's own packages (``rbee``, ``rbee.policy``) may load."""
    loaded = loaded_by(module)
    packages = {module.rsplit(".", i)[0] for i in range(1, module.count(".") + 1)}
    assert module in loaded
    assert [m for m in loaded if not _within(m, allowed) and m not in packages] == []
