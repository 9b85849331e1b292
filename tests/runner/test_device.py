"""Device selection (npu -> cuda -> cpu) and the KV transport that follows from it, with stand-in
`torch_npu` and `ray_ascend` modules (the real ones need Ascend's CANN toolkit); and proof that
the default install never imports `torch_npu`. Stand-ins that touch torch's global state run in
a subprocess."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from flexmesh.actors import kv

STAND_IN = """
import types, torch
torch.utils.rename_privateuse1_backend("npu")  # what the real torch_npu does on import
torch.npu = types.SimpleNamespace(is_available=lambda: {available})
"""


def _run(code: str, stand_in: str | None, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    if stand_in is not None:
        (tmp_path / "torch_npu").mkdir(exist_ok=True)
        (tmp_path / "torch_npu" / "__init__.py").write_text(stand_in)
    env = {"PYTHONPATH": f"{tmp_path}:{Path(__file__).resolve().parents[2]}", "PATH": "/usr/bin"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_npu_is_chosen_first_with_bf16(tmp_path: Path) -> None:
    out = _run(
        """
        from flexmesh.actors.runner.runner import pick_device, pick_dtype
        d = pick_device("auto")
        print(d, pick_dtype("auto", d), pick_device("cpu"))
        """,
        STAND_IN.format(available=True),
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
        STAND_IN.format(available=False),
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


@pytest.mark.parametrize(
    ("device", "backend"),
    [("cpu", "gloo"), ("cuda:1", "nccl"), ("npu:0", "hccl"), ("mps", "gloo")],
)
def test_a_kv_group_joins_with_the_backend_of_its_device(
    device: str, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray's collective calls stood in for: the group that `KVGroup` joins, HCCL registered only
    for an NPU, and only gloo's send/recv bounded by the transfer deadline."""
    import torch.distributed as dist
    from ray.util import collective

    joined: list[tuple[int, int, str, str]] = []

    def init_group(world_size: int, rank: int, *, backend: str, group_name: str, **_: Any) -> None:
        joined.append((world_size, rank, backend, group_name))

    registered: list[int] = []
    stand_in = types.ModuleType("ray_ascend")
    stand_in.register_hccl_collective_backend = lambda: registered.append(1)  # type: ignore[attr-defined]
    timeouts: list[timedelta] = []
    default_group = types.SimpleNamespace(set_timeout=timeouts.append)
    monkeypatch.setattr(collective, "init_collective_group", init_group)
    monkeypatch.setitem(sys.modules, "ray_ascend", stand_in)
    monkeypatch.setattr(dist.distributed_c10d, "_get_default_group", lambda: default_group)

    group = kv.KVGroup("kv-demo-small", 3, 1, device, timeout_s=7.5)
    assert group.backend == backend and not group.broken
    assert joined == [(3, 1, backend, "kv-demo-small")]
    assert registered == ([1] if backend == "hccl" else [])
    assert timeouts == ([timedelta(seconds=7.5)] if backend == "gloo" else [])


def test_hccl_is_registered_through_ray_ascend(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def register() -> None:
        calls.append(1)
        if len(calls) > 1:
            raise ValueError("backend HCCL is already registered")

    stand_in = types.ModuleType("ray_ascend")
    stand_in.register_hccl_collective_backend = register  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ray_ascend", stand_in)
    kv._register_hccl()
    kv._register_hccl()  # a second group in the same process: already there, not an error
    assert calls == [1, 1]


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
