"""Device selection (npu -> cuda -> cpu), the collective backend that follows from it, and HCCL's
registration, checked against the real modules' published names: Ray's `ray.util.collective`
as installed here, and, for `torch_npu` and `ray_ascend` (which need Ascend's CANN toolkit),
the fact tables below, read from their released wheels. Where a test needs a module it cannot
import here, it builds one from those facts, never from names of its own; code that touches
torch's global state runs in a subprocess."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import textwrap
import tomllib
import types
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import ray
from ray.util import collective
from ray.util.collective import backend_registry
from ray.util.collective import types as ray_types
from ray.util.collective.collective_group.base_collective_group import BaseGroup

from flexmesh.actors import kv
from flexmesh.cli import doctor

ROOT = Path(__file__).resolve().parents[2]
RAY_ASCEND = {
    "release": "0.1.1",
    "read_from": "PyPI wheel ray_ascend-0.1.1-py3-none-any.whl: ray_ascend/__init__.py, "
    "ray_ascend/collective/hccl_collective_group.py",
    "commit": "15784db4627469455c01467b87e4490f1c6a639a",  # its ray_ascend/_version.py
    "exports": (
        "register_hccl_collective_backend",
        "register_hccl_tensor_transport",
        "register_yr_tensor_transport",
    ),
    "group_module": "ray_ascend.collective.hccl_collective_group",
    "group_class": "HCCLGroup",  # HCCLGroup(world_size, rank, group_name), a Ray BaseGroup
    "group_init": ("world_size", "rank", "group_name"),
    "backend_name": "HCCL",  # register_hccl_collective_backend(): ...("HCCL", HCCLGroup)
    "registers_with": "ray.util.collective.backend_registry.register_collective_backend",
    "needs_ray": (2, 56),  # "register_hccl_collective_backend requires Ray >= 2.56"
}
"""ray-ascend's API as its pinned release publishes it. Other source trees differ: Ascend/ray-ascend
at 18c4b3d exports only `register_yr_tensor_transport`; KaisennHu/ray-ascend at 1449a03 also
exports `HCCLGroup` at the top level. `kv.register_hccl` takes each of these."""
TORCH_NPU = {
    "release": "2.13.0",
    "read_from": "PyPI wheel torch_npu-2.13.0-cp311 (git c798c6532a0d): "
    "torch_npu/_init/registry/backend.py, torch_npu/npu/__init__.py",
    "backend": 'torch.utils.rename_privateuse1_backend("npu")',
    "device_module": 'torch._register_device_module("npu", torch_npu.npu)',
    "npu_api": ("is_available", "device_count", "get_device_properties"),  # in npu.__all__
}


# -- device choice (a torch_npu built from TORCH_NPU's names, in a subprocess) --------------

TORCH_NPU_STAND_IN = """
import types, torch
npu = types.ModuleType("torch_npu.npu")
npu.is_available = lambda: {available}
npu.device_count = lambda: int({available})
torch.utils.rename_privateuse1_backend("npu")
torch._register_device_module("npu", npu)
"""


def _run(code: str, stand_in: str | None, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    if stand_in is not None:
        (tmp_path / "torch_npu").mkdir(exist_ok=True)
        (tmp_path / "torch_npu" / "__init__.py").write_text(stand_in)
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin"}
    cmd = [sys.executable, "-c", textwrap.dedent(code)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def test_the_torch_npu_stand_in_does_what_the_release_does() -> None:
    """It calls the two torch hooks torch_npu 2.13.0 calls (real torch functions here) and
    defines only names of `torch_npu.npu.__all__` that FlexMesh uses."""
    import torch

    for fact in ("backend", "device_module"):
        call = TORCH_NPU[fact].split("(")[0]
        assert call in TORCH_NPU_STAND_IN
        assert callable(getattr(torch.utils if "utils" in call else torch, call.split(".")[-1]))
    defined = {line.split("=")[0].strip()[4:] for line in TORCH_NPU_STAND_IN.splitlines()
               if line.startswith("npu.")}  # fmt: skip
    assert defined and defined <= set(TORCH_NPU["npu_api"])


def test_an_npu_is_chosen_first_with_bf16(tmp_path: Path) -> None:
    out = _run(
        """
        from flexmesh.actors.runner.runner import pick_device, pick_dtype
        d = pick_device("auto")
        print(d, pick_dtype("auto", d), pick_device("cpu"))
        """,
        TORCH_NPU_STAND_IN.format(available=True),
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["npu:0", "torch.bfloat16", "cpu"]


def test_torch_npu_without_a_device_falls_back_or_refuses(tmp_path: Path) -> None:
    out = _run(
        """
        from flexmesh.actors.runner.runner import pick_device, pick_dtype
        d = pick_device("auto")
        print(d, pick_dtype("auto", d))
        try:
            pick_device("npu")
        except RuntimeError as e:
            print("refused:", e)
        """,
        TORCH_NPU_STAND_IN.format(available=False),
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "cpu torch.float32" and lines[1].startswith("refused: device npu")


def test_the_default_install_never_imports_torch_npu(tmp_path: Path) -> None:
    """A `torch_npu` on the path that breaks on import, as it does without CANN: importing
    every FlexMesh module and choosing a CPU device must not touch it."""
    poison = "raise ImportError('torch_npu imported: this install has no CANN')\n"
    out = _run(
        """
        import importlib, pkgutil, sys
        import flexmesh
        for m in pkgutil.walk_packages(flexmesh.__path__, "flexmesh."):
            importlib.import_module(m.name)
        from flexmesh.actors.runner.runner import pick_device
        assert str(pick_device("cpu")) == "cpu"
        print("torch_npu" in sys.modules)
        """,
        poison,
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# -- ray-ascend: the pinned release, its names, and Ray's real hooks -------------------------


def test_the_pinned_ray_ascend_is_the_release_these_names_were_read_from() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    npu = extras["optional-dependencies"]["npu"]
    assert f"ray-ascend=={RAY_ASCEND['release']}" in npu
    major, minor = RAY_ASCEND["needs_ray"]
    assert f"ray>={major}.{minor}" in npu
    assert doctor.ASCEND_VERSIONS["ray_ascend"] == RAY_ASCEND["release"]
    assert tuple(int(p) for p in ray.__version__.split(".")[:2]) >= RAY_ASCEND["needs_ray"]


def test_flexmesh_calls_only_names_the_release_publishes() -> None:
    """Every `ray_ascend` name `kv.py` uses, read from its source, is in the fact table."""
    tree = ast.parse((ROOT / "flexmesh/actors/kv.py").read_text())
    used: set[tuple[str, str]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ray_ascend"):
            used |= {(node.module or "", a.name) for a in node.names}
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "getattr":
            target, name = node.args[0], node.args[1]
            if getattr(target, "id", "") == "ray_ascend" and isinstance(name, ast.Constant):
                used.add(("ray_ascend", name.value))
    published = {("ray_ascend", n) for n in RAY_ASCEND["exports"]}
    published |= {(RAY_ASCEND["group_module"], RAY_ASCEND["group_class"])}
    published |= {("ray_ascend", RAY_ASCEND["group_class"])}  # KaisennHu/ray-ascend@1449a03
    assert ("ray_ascend", "register_hccl_collective_backend") in used
    assert used <= published, used - published


def test_ray_has_the_hooks_that_ray_ascend_and_flexmesh_call() -> None:
    """Installed Ray, not a stand-in: the registry ray-ascend registers with, the group base
    class HCCLGroup extends, and the calls `KVGroup` makes."""
    module, _, name = RAY_ASCEND["registers_with"].rpartition(".")
    register = getattr(__import__(module, fromlist=[name]), name)
    assert register is collective.register_collective_backend  # Ray's public hook
    assert list(inspect.signature(register).parameters) == ["name", "group_cls"]
    init = list(inspect.signature(BaseGroup.__init__).parameters)[1:]
    assert tuple(init) == RAY_ASCEND["group_init"]
    params = inspect.signature(collective.init_collective_group).parameters
    assert {"world_size", "rank", "backend", "group_name", "gloo_timeout"} <= set(params)
    assert list(inspect.signature(collective.send).parameters) == [
        "tensor",
        "dst_rank",
        "group_name",
    ]
    assert list(inspect.signature(collective.recv).parameters) == [
        "tensor",
        "src_rank",
        "group_name",
    ]
    assert {b.upper() for b in kv.BACKENDS.values()} == {"GLOO", "NCCL", RAY_ASCEND["backend_name"]}
    assert (ray_types.Backend.GLOO, ray_types.Backend.NCCL) == ("GLOO", "NCCL")


@pytest.fixture
def registry() -> Iterator[Any]:
    """Ray's real backend registry, restored afterwards (HCCL is not registered here)."""
    reg = backend_registry._global_registry
    saved, had = dict(reg._map), hasattr(ray_types.Backend, "HCCL")
    yield reg
    reg._map = saved
    if not had and hasattr(ray_types.Backend, "HCCL"):
        delattr(ray_types.Backend, "HCCL")


def _ray_ascend(layout: str) -> dict[str, types.ModuleType]:
    """A `ray_ascend` laid out as a real tree is, from RAY_ASCEND's facts: "0.1.1" (its
    register function registers the group as the wheel's does), or "no register function"
    (the group class in its module only). Its group is unavailable, as without libhccl."""
    group = type(
        RAY_ASCEND["group_class"],
        (BaseGroup,),
        {"check_backend_availability": classmethod(lambda cls: False)},
    )
    top = types.ModuleType("ray_ascend")
    group_module = types.ModuleType(RAY_ASCEND["group_module"])
    setattr(group_module, RAY_ASCEND["group_class"], group)
    if layout == "0.1.1":

        def register() -> None:
            registry = __import__(RAY_ASCEND["registers_with"].rpartition(".")[0], fromlist=["x"])
            registry.register_collective_backend(RAY_ASCEND["backend_name"], group)

        setattr(top, RAY_ASCEND["exports"][0], register)
    return {"ray_ascend": top, "ray_ascend.collective": types.ModuleType("ray_ascend.collective"),
            RAY_ASCEND["group_module"]: group_module}  # fmt: skip


@pytest.mark.parametrize("layout", ["0.1.1", "no register function"])
def test_hccl_registers_in_rays_real_registry(
    layout: str, registry: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, module in _ray_ascend(layout).items():
        monkeypatch.setitem(sys.modules, name, module)
    kv.register_hccl()
    kv.register_hccl()  # a second group in the same process: already there, not an error
    assert registry.is_registered("hccl") and ray_types.Backend.HCCL == "HCCL"
    assert registry.get("hccl").__name__ == RAY_ASCEND["group_class"]
    assert not collective.is_backend_available("HCCL")  # no libhccl here


@pytest.mark.parametrize(
    ("device", "backend"),
    [("cpu", "gloo"), ("cuda:1", "nccl"), ("npu:0", "hccl"), ("mps", "gloo")],
)
def test_a_kv_group_joins_with_the_backend_of_its_device(
    device: str, backend: str, registry: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`KVGroup` calls Ray's real `init_collective_group` signature (autospec) with a backend
    name Ray knows; HCCL registered only for an NPU; only gloo bounded by the deadline."""
    import torch.distributed as dist

    init = mock.create_autospec(collective.init_collective_group)
    timeouts: list[timedelta] = []
    default_group = types.SimpleNamespace(set_timeout=timeouts.append)
    monkeypatch.setattr(collective, "init_collective_group", init)
    monkeypatch.setattr(dist.distributed_c10d, "_get_default_group", lambda: default_group)
    for name, module in _ray_ascend("0.1.1").items():
        monkeypatch.setitem(sys.modules, name, module)

    group = kv.KVGroup("kv-demo-small", 3, 1, device, timeout_s=7.5)
    assert group.backend == backend and not group.broken
    init.assert_called_once_with(
        3, 1, backend=backend, group_name="kv-demo-small", gloo_timeout=30_000
    )
    assert registry.is_registered("hccl") == (backend == "hccl")
    assert backend.upper() in ("GLOO", "NCCL") or registry.is_registered(backend)
    assert timeouts == ([timedelta(seconds=7.5)] if backend == "gloo" else [])


@pytest.mark.parametrize(
    ("backend", "setting", "local", "expected"),
    [
        ("hccl", "auto", True, "hccl"),  # within a node: the device link
        ("hccl", "auto", False, "object_store"),  # across nodes a device collective gives way
        ("nccl", "auto", False, "object_store"),
        ("gloo", "auto", False, "gloo"),  # gloo is TCP: it crosses nodes
        ("gloo", "auto", True, "gloo"),
        ("hccl", "collective", False, "hccl"),  # asked for by name: kept
        ("hccl", "object_store", True, "object_store"),
    ],
)
def test_the_kv_transport_of_a_hand_off_follows_locality(
    backend: str, setting: str, local: bool, expected: str
) -> None:
    from flexmesh.actors.kv_mover import KVMover
    from flexmesh.meshcore.config import PDConfig

    worker = KVMover.__new__(KVMover)  # the transport rule alone: no engine, no Ray
    worker.name, worker.pd = "w", PDConfig(transport=setting)
    worker.group = types.SimpleNamespace(name="g", backend=backend, broken="")  # type: ignore[assignment]
    assert worker._transport("g", local=local) == expected
    if setting == "auto":  # a peer outside this worker's group: the object store
        assert worker._transport("other", local=local) == "object_store"
