"""ARCHITECTURE.md's layer rule: `meshcore/` imports no ray, grpc or torch (nor file parsers)."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import flexmesh
import flexmesh.meshcore


def test_meshcore_imports_no_ray_grpc_or_torch() -> None:
    modules = [
        m.name for m in pkgutil.iter_modules(flexmesh.meshcore.__path__, "flexmesh.meshcore.")
    ]
    assert len(modules) >= 8
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(sorted(m for m in ('ray', 'grpc', 'torch', 'yaml') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


RULE_FIELDS = {"fallback", "max_migrations"}
"""Config that says where a request goes next: read by `meshcore.route.RouteRules` only."""
ROUTE_FIELDS = {
    "offset",
    "finished",
    "handoff",
    "phase",
    "tokens",
    "migrations",
    "dead",
    "failed",
    "holders",
    "alive",
    "moving",
}
"""Fields a rule about a request's next worker would read (outputs, route state, health)."""


def _attributes(node: ast.AST) -> set[str]:
    return {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}


def test_no_module_outside_meshcore_decides_where_a_request_goes_next() -> None:
    """The route machine (`meshcore/route.py`) holds every such rule: the gateway's loop
    (`services/core/dispatch.py`) only turns messages into events and actions into calls, and no
    other module reads the rules' config."""
    root = Path(flexmesh.__file__).parent
    for path in root.rglob("*.py"):
        if "meshcore" in path.parts or "v1" in path.parts:
            continue
        tree = ast.parse(path.read_text())
        read = _attributes(tree) & RULE_FIELDS
        assert not read, f"{path.relative_to(root)} reads {sorted(read)}: a route rule"
    dispatch = ast.parse((root / "services" / "core" / "dispatch.py").read_text())
    for node in ast.walk(dispatch):
        if isinstance(node, (ast.If, ast.IfExp, ast.While, ast.Assert)):
            decided = _attributes(node.test) & ROUTE_FIELDS
            assert not decided, f"dispatch.py:{node.lineno} branches on {sorted(decided)}"
        if isinstance(node, ast.Compare):
            names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
            assert "Phase" not in names and not _attributes(node) & {"Phase"}, (
                f"dispatch.py:{node.lineno} compares a route phase"
            )


def test_one_module_reads_the_environment() -> None:
    root = Path(flexmesh.__file__).parent
    readers = sorted(
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if _attributes(ast.parse(path.read_text())) & {"environ", "getenv", "putenv"}
    )
    assert readers == ["env.py"]


def test_the_gateway_core_knows_no_transport() -> None:
    """`services/core/` is the gateway without gRPC or HTTP: the transports adapt to it."""
    core = Path(flexmesh.__file__).parent / "services" / "core"
    for path in core.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                names.append(getattr(node, "module", None) or "")
                for name in names:
                    top = name.split(".")[0]
                    assert top not in ("grpc", "starlette", "uvicorn", "httpx"), f"{path}: {name}"
                    inside = name.startswith("flexmesh.services.")
                    assert not inside or name.startswith("flexmesh.services.core"), (
                        f"{path}: {name}"
                    )


def test_meshcore_has_no_clock_and_does_no_io() -> None:
    """Every decision takes its clock and inputs as arguments, so the simulator can run it on
    a virtual clock (ARCHITECTURE.md, "The simulator runs the mesh's own code")."""
    forbidden = {"time", "datetime", "random", "os", "socket", "subprocess", "threading", "asyncio"}
    core = Path(flexmesh.meshcore.__file__).parent
    for path in core.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "open":
                    raise AssertionError(f"{path.name}:{node.lineno} opens a file")
                continue
            bad = {n.split(".")[0] for n in names} & forbidden
            assert not bad, f"{path.name}:{node.lineno} imports {sorted(bad)}"
