"""The import graph of `flexmesh/`, read statically: no cycles, and imports only point down.

Every `import` and `from ... import` counts, at module level or inside a function (the code
imports lazily to keep start-up light, but a lazy import is still a dependency), and under
`if TYPE_CHECKING:` too.
"""

from __future__ import annotations

import ast
import functools
import itertools
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import flexmesh

ROOT = Path(flexmesh.__file__).parent

RANK = {
    "flexmesh": 0,
    "flexmesh.env": 0,
    "flexmesh.logs": 0,
    "flexmesh.channel": 0,
    "flexmesh.v1": 0,
    "flexmesh.meshcore": 1,
    "flexmesh.actors": 2,
    "flexmesh.services": 3,
    "flexmesh.launch": 3.5,
    "flexmesh.loadgen": 4,
    "flexmesh.sim": 4.5,
    "flexmesh.bench": 5,
    "flexmesh.cli": 6,
}
"""Layer of each top-level package or module, lowest first: ARCHITECTURE.md's "Layers" table
(meshcore -> actors -> services -> loadgen, sim, bench -> cli, with the simulator above loadgen
because it replays traces through it, and bench above both). Rank 0 are the shared leaves:
generated stubs, logging, the gRPC channel and the one reader of the environment. A package
may import its own rank or lower."""


@functools.cache
def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module under `flexmesh/` (a package is its __init__)."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = ("flexmesh", *path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(imported flexmesh module, line) for every import statement anywhere in `path`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # `from pkg import sub` imports the module pkg.sub; `from mod import name`, mod.
            subs = [f"{base}.{alias.name}" for alias in node.names]
            targets = [t if t in modules else base for t in subs]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a name inside a.b
                target = target.rpartition(".")[0]
            if target.startswith("flexmesh") and target != name:
                yield target, node.lineno


def _graph() -> dict[str, dict[str, int]]:
    """Module -> {imported module: line of the first such import}."""
    modules = _modules()
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges = graph.setdefault(name, {})
        for target, line in _imports(name, path, modules):
            edges.setdefault(target, line)
    return graph


def _layer(module: str) -> str:
    """The entry of RANK that `module` belongs to (its longest prefix there)."""
    parts = module.split(".")
    for n in range(len(parts), 1 if len(parts) > 1 else 0, -1):
        if ".".join(parts[:n]) in RANK:
            return ".".join(parts[:n])
    raise AssertionError(f"{module} is in no layer: add its top-level package to RANK")


def _cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        path = [start]
        stack = [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def _where(graph: dict[str, dict[str, int]], a: str, b: str) -> str:
    path = _modules()[a].relative_to(ROOT.parent)
    return f"{path}:{graph[a][b]} imports {b}"


def test_the_graph_sees_lazy_imports() -> None:
    graph = _graph()
    assert len(graph) > 50
    assert "flexmesh.meshcore.config" in graph["flexmesh.launch.config_file"]
    cli = {m for m in graph if _layer(m) == "flexmesh.cli"}
    assert cli, "no flexmesh.cli package"
    assert any("flexmesh.launch.mesh" in graph[m] for m in cli)  # a lazy import in a command


def test_no_import_cycle_between_modules() -> None:
    graph = _graph()
    cycle = _cycle(graph)
    assert cycle is None, "import cycle:\n" + "\n".join(
        _where(graph, a, b) for a, b in itertools.pairwise(cycle)
    )


def test_no_import_cycle_between_packages() -> None:
    """Modules collapsed into their folder (`actors/runner/`, `services/`, `flexmesh/` itself):
    two packages never import each other, even through different modules."""
    graph = _graph()
    modules = _modules()

    def package(m: str) -> str:
        return m if modules[m].name == "__init__.py" else m.rpartition(".")[0]

    packages: dict[str, dict[str, str]] = {}  # package -> {imported package: "file:line ..."}
    for a, edges in sorted(graph.items()):
        for b in edges:
            if package(a) != package(b):
                packages.setdefault(package(a), {}).setdefault(package(b), _where(graph, a, b))
    cycle = _cycle({p: packages.get(p, {}) for p in map(package, graph)})
    assert cycle is None, "package import cycle:\n" + "\n".join(
        packages[a][b] for a, b in itertools.pairwise(cycle)
    )


def test_packages_import_only_their_layer_or_below() -> None:
    graph = _graph()
    upward = [
        _where(graph, a, b)
        for a, edges in sorted(graph.items())
        for b in edges
        if RANK[_layer(b)] > RANK[_layer(a)]
    ]
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)
