"""The package's layers, read from its source with ``ast``: import direction and no cycles.

The direction is one line, lowest first (``TIERS``)::

    errors <- core <- {proxy, upstream} <- {discovery, probes} <- fleet
           <- {observe, adapter, transport, asgi, gateway_settings} <- {wsgi, gateway} <- demo
           <- __main__

A module may import a module of its own unit (the first name under ``lbmiddleware``: ``core``,
``proxy``, ``adapter`` ...) or of a unit in a lower tier; units of one tier are independent.
The tier above them holds the front-ends built on another front-end: the WSGI middleware forwards
through the requests adapter, and the gateway serves the ASGI middleware; ``__main__`` (the
command line) runs the gateway, the demo and the etcd registration. The rules go by
unit, not by module, so a new module under ``core/`` or ``upstream/`` falls under its folder's
rules; a new unit must be given a tier here before its first test run passes.

What counts as an import: every ``import`` and ``from ... import`` statement, absolute or
relative, wherever it is: at module level, inside a function (a lazy import), and under
``if TYPE_CHECKING:``. Type-checking imports count for both rules: they never run, but they
are a dependency all the same (a type checker and a reader follow them), and a cycle under
``TYPE_CHECKING`` is a design cycle that the next runtime import turns into a real one. An
import names its most specific module: ``from .core import balancer`` is an edge to
``lbmiddleware.core.balancer``; ``from .core import Balancer`` one to ``lbmiddleware.core``.

The package's ``__init__`` re-exports: it may import any layer lazily (in a function or under
``TYPE_CHECKING``), but what it imports eagerly, followed through every eager import (and
the parent packages each one runs), must reach the standard library only; the same is
checked at run time in a fresh interpreter. No module of the package imports the package
itself (its ``__init__`` imports them: that would be a cycle).

Outside the package: ``errors`` and ``core`` import only the standard library
(``sys.stdlib_module_names``); ``proxy`` and ``upstream`` import no third-party module.
"""

from __future__ import annotations

import ast
import functools
import json
import pathlib
import subprocess
import sys
from dataclasses import dataclass
from itertools import pairwise

PACKAGE = "lbmiddleware"
ROOT = pathlib.Path(__file__).resolve().parents[1]

# Lowest first. Units in one tier may not import each other.
TIERS: list[frozenset[str]] = [
    frozenset({"errors"}),
    frozenset({"core"}),
    frozenset({"proxy", "upstream"}),
    frozenset({"discovery", "probes"}),
    frozenset({"fleet"}),
    frozenset({"observe", "adapter", "transport", "asgi", "gateway_settings"}),
    frozenset({"wsgi", "gateway"}),
    frozenset({"demo"}),
    frozenset({"__main__"}),
]
TOP = "__init__"            # the unit of the package's own __init__
STDLIB_ONLY = frozenset({"errors", "core"})           # nothing but the standard library
NO_THIRD_PARTY = frozenset({"errors", "core", "proxy", "upstream", "probes", "fleet"})


@dataclass(frozen=True)
class Import:
    """One import statement's target: ``module`` (dotted) from ``source`` at ``line``;
    ``kind`` is ``"eager"``, ``"lazy"`` (inside a function) or ``"type"`` (under
    ``if TYPE_CHECKING:``)."""

    source: str
    module: str
    path: str
    line: int
    kind: str

    def where(self) -> str:
        note = {"eager": "", "lazy": ", inside a function", "type": ", under TYPE_CHECKING"}
        return f"{self.path}:{self.line}{note[self.kind]}"


@dataclass
class Graph:
    modules: dict[str, str]                 # dotted name -> path (relative to the root)
    internal: list[Import]                  # edges between the package's modules
    external: list[Import]                  # imports of other top-level modules


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Yield (node, kind) for every import statement in ``tree``."""
    def visit(node: ast.AST, kind: str):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, kind
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            kind = "lazy" if kind == "eager" else kind
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from visit(child, "type")
            for child in node.orelse:
                yield from visit(child, kind)
            return
        for child in ast.iter_child_nodes(node):
            yield from visit(child, kind)

    yield from visit(tree, "eager")


def build_graph(root: pathlib.Path = ROOT, package: str = PACKAGE) -> Graph:
    """Read every module of ``root/package`` and resolve its imports."""
    files = sorted((root / package).rglob("*.py"))
    modules = {module_name(f, root): f.relative_to(root).as_posix() for f in files}
    graph = Graph(modules, [], [])
    for name, path in modules.items():
        is_package = path.endswith("__init__.py")
        tree = ast.parse((root / path).read_text(encoding="utf-8"), filename=path)
        for node, kind in _imports(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = name.split(".")
                    if not is_package:
                        base.pop()
                    up = node.level - 1
                    if up >= len(base):
                        raise AssertionError(f"{path}:{node.lineno}: relative import beyond "
                                             f"the top-level package")
                    base = base[:len(base) - up]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                # ``from pkg import sub`` names the submodule when there is one
                targets = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in modules else stem
                           for alias in node.names]
            for target in dict.fromkeys(targets):
                edge = Import(name, target, path, node.lineno, kind)
                if target == package or target.startswith(package + "."):
                    graph.internal.append(edge)
                else:
                    graph.external.append(edge)
    return graph


@functools.cache
def package_graph() -> Graph:
    return build_graph()


def unit(module: str) -> str:
    parts = module.split(".")
    return TOP if len(parts) == 1 else parts[1]


def tier(unit_name: str) -> int | None:
    return next((i for i, units in enumerate(TIERS) if unit_name in units), None)


def describe_tiers() -> str:
    return " <- ".join("{" + ", ".join(sorted(units)) + "}" if len(units) > 1 else next(iter(units))
                       for units in TIERS)


# -- the checks: each returns the problems found, one line each -----------------------------------

def cycles(graph: Graph) -> list[str]:
    """Every import cycle (one per strongly connected component), spelled edge by edge."""
    edges: dict[str, dict[str, Import]] = {}
    for edge in graph.internal:
        edges.setdefault(edge.source, {}).setdefault(edge.module, edge)
    # Tarjan's strongly connected components, iteratively
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(graph.modules):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, {}))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(component)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges.get(child, {})))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    problems = []
    for component in components:
        members = set(component)
        first = min(component)
        if len(component) == 1 and first not in edges.get(first, {}):
            continue
        # the shortest way from ``first`` back to itself, inside the component
        paths = {first: [first]}
        queue = [first]
        cycle: list[str] = []
        while queue and not cycle:
            node = queue.pop(0)
            for child in sorted(edges.get(node, {})):
                if child == first:
                    cycle = paths[node] + [first]
                    break
                if child in members and child not in paths:
                    paths[child] = paths[node] + [child]
                    queue.append(child)
        steps = " -> ".join(f"{a} ({edges[a][b].where()})" for a, b in pairwise(cycle))
        problems.append(f"import cycle: {steps} -> {first}")
    return problems


def direction_problems(graph: Graph) -> list[str]:
    """Edges against the direction, imports of the package itself, modules without a tier."""
    problems = []
    for name in sorted(graph.modules):
        if unit(name) != TOP and tier(unit(name)) is None:
            problems.append(f"{graph.modules[name]}: unit {unit(name)!r} has no tier in "
                            f"tests/test_layering.py TIERS ({describe_tiers()})")
    for edge in graph.internal:
        source, target = unit(edge.source), unit(edge.module)
        if target == TOP:
            if edge.module == PACKAGE and edge.source != PACKAGE:
                problems.append(f"{edge.where()}: {edge.source} imports the package "
                                f"{PACKAGE} itself (import from the module that defines the "
                                f"name; the package's __init__ imports its modules)")
            continue
        if source in (TOP, target):
            continue
        have, want = tier(source), tier(target)
        if have is None or want is None:
            continue                                    # reported above
        if want >= have:
            why = "the same tier: siblings are independent" if want == have else "a higher tier"
            problems.append(f"{edge.where()}: {edge.source} imports {edge.module}: {source} may "
                            f"not import {target} ({why}; the direction is {describe_tiers()})")
    return problems


def is_stdlib(module: str) -> bool:
    return module.partition(".")[0] in sys.stdlib_module_names


def outside_problems(graph: Graph, units: frozenset[str], what: str) -> list[str]:
    """Imports from ``units`` of modules outside the package and the standard library."""
    return [f"{edge.where()}: {edge.source} imports {edge.module}, which is not {what}"
            for edge in graph.external
            if unit(edge.source) in units and not is_stdlib(edge.module)]


def eager_closure_problems(graph: Graph, start: str = PACKAGE) -> list[str]:
    """Third-party modules that ``import start`` would load: every eager import from it, and
    from what that loads, with the parent packages each import runs."""
    eager: dict[str, list[Import]] = {}
    for edge in graph.internal + graph.external:
        if edge.kind == "eager":
            eager.setdefault(edge.source, []).append(edge)
    via: dict[str, list[str]] = {start: [start]}
    queue = [start]
    problems = []
    while queue:
        module = queue.pop(0)
        targets = [(edge.module, edge) for edge in eager.get(module, [])]
        parts = module.split(".")
        targets += [(".".join(parts[:i]), None) for i in range(1, len(parts))]   # parents
        for target, edge in targets:
            if target in graph.modules:
                if target not in via:
                    via[target] = via[module] + [target]
                    queue.append(target)
            elif edge is not None and not is_stdlib(target):
                chain = " -> ".join(via[module])
                problems.append(f"{edge.where()}: import {start} loads {target} "
                                f"({chain} -> {target}); load it lazily")
    return problems


# -- the tests -------------------------------------------------------------------------------------

def test_the_package_has_no_import_cycle():
    problems = cycles(package_graph())
    assert not problems, "\n".join(problems)


def test_every_import_follows_the_direction_of_the_layers():
    problems = direction_problems(package_graph())
    assert not problems, "\n".join(problems)


def test_errors_and_the_core_import_only_the_standard_library():
    problems = outside_problems(package_graph(), STDLIB_ONLY, "in the standard library")
    assert not problems, "\n".join(problems)


def test_proxy_and_upstream_import_no_third_party_module():
    problems = outside_problems(package_graph(), NO_THIRD_PARTY,
                                "in the standard library (no third-party module here)")
    assert not problems, "\n".join(problems)


def test_what_the_package_imports_eagerly_is_standard_library_only():
    problems = eager_closure_problems(package_graph())
    assert not problems, "\n".join(problems)


def test_import_lbmiddleware_loads_no_third_party_module_in_a_fresh_interpreter():
    script = (
        "import json, sys\n"
        "before = set(sys.modules)\n"
        "import lbmiddleware\n"
        "loaded = {name.partition('.')[0] for name in set(sys.modules) - before}\n"
        "print(json.dumps(sorted(loaded - set(sys.stdlib_module_names) - {'lbmiddleware'})))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_the_graph_sees_every_kind_of_import():
    """The walk itself: relative and absolute, lazy and TYPE_CHECKING imports are all edges."""
    graph = package_graph()
    kinds = {edge.kind for edge in graph.internal}
    assert kinds == {"eager", "lazy", "type"}
    assert any(edge.source == PACKAGE and edge.module == f"{PACKAGE}.core.backend"
               for edge in graph.internal)
    assert len(graph.modules) >= 30


# -- the checks catch what they are for (a small package written to a temporary folder) ----------

def _write(root: pathlib.Path, files: dict[str, str]) -> Graph:
    for name, text in files.items():
        path = root / PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return build_graph(root)


GOOD = {
    "__init__.py": "from .core.a import A\nif TYPE_CHECKING:\n    from .asgi import M\n",
    "errors.py": "",
    "core/__init__.py": "",
    "core/a.py": "import math\nfrom ..errors import E\n",
    "proxy/__init__.py": "",
    "proxy/b.py": "from ..core import a\n",
    "asgi/__init__.py": "import json\n\ndef f():\n    import uvicorn\n",
}


def test_a_clean_package_passes(tmp_path):
    graph = _write(tmp_path, GOOD)
    assert cycles(graph) == [] and direction_problems(graph) == []
    assert outside_problems(graph, NO_THIRD_PARTY, "stdlib") == []
    assert eager_closure_problems(graph) == []


def test_an_upward_import_is_named_with_its_file_and_line(tmp_path):
    graph = _write(tmp_path, {**GOOD, "core/a.py": "import math\n\ndef f():\n"
                                                   "    from ..proxy.b import B\n"})
    assert direction_problems(graph) == [
        "lbmiddleware/core/a.py:4, inside a function: lbmiddleware.core.a imports "
        "lbmiddleware.proxy.b: core may not import proxy (a higher tier; the direction is "
        f"{describe_tiers()})"]


def test_a_cycle_under_type_checking_is_named_edge_by_edge(tmp_path):
    graph = _write(tmp_path, {**GOOD, "proxy/b.py": "from .c import C\n",
                              "proxy/c.py": "if TYPE_CHECKING:\n    from .b import B\n"})
    assert cycles(graph) == [
        "import cycle: lbmiddleware.proxy.b (lbmiddleware/proxy/b.py:1) -> lbmiddleware.proxy.c "
        "(lbmiddleware/proxy/c.py:2, under TYPE_CHECKING) -> lbmiddleware.proxy.b"]


def test_siblings_third_party_imports_and_eager_loads_are_named(tmp_path):
    graph = _write(tmp_path, {**GOOD, "upstream/__init__.py": "import requests\n",
                              "proxy/b.py": "from ..upstream import X\n",
                              "__init__.py": "from .proxy.b import B\n",
                              "transport.py": "from . import errors\nfrom . import Thing\n",
                              "telemetry/__init__.py": ""})
    assert direction_problems(graph) == [
        "lbmiddleware/telemetry/__init__.py: unit 'telemetry' has no tier in "
        f"tests/test_layering.py TIERS ({describe_tiers()})",
        "lbmiddleware/proxy/b.py:1: lbmiddleware.proxy.b imports lbmiddleware.upstream: proxy "
        "may not import upstream (the same tier: siblings are independent; the direction is "
        f"{describe_tiers()})",
        "lbmiddleware/transport.py:2: lbmiddleware.transport imports the package lbmiddleware "
        "itself (import from the module that defines the name; the package's __init__ "
        "imports its modules)"]
    assert outside_problems(graph, NO_THIRD_PARTY, "in the standard library") == [
        "lbmiddleware/upstream/__init__.py:1: lbmiddleware.upstream imports requests, which "
        "is not in the standard library"]
    assert eager_closure_problems(graph) == [
        "lbmiddleware/upstream/__init__.py:1: import lbmiddleware loads requests (lbmiddleware "
        "-> lbmiddleware.proxy.b -> lbmiddleware.upstream -> requests); load it lazily"]
