"""ARCHITECTURE.md's layer rule: `meshcore/` imports no ray, grpc or torch (nor file parsers)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

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
