from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from flexmesh.launch.config_file import load_mesh_config
from flexmesh.launch.mesh import Mesh, start_mesh

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def mesh(models_dir: Path) -> Iterator[Mesh]:
    """The demo mesh on one shared local Ray instance, gRPC and HTTP on free ports."""
    cfg = load_mesh_config(REPO / "deploy" / "configs" / "demo.yaml")
    # 0.9 CPU a worker (still one torch thread): Ray keeps room for the prefill/decode mesh.
    models = tuple(replace(m, num_cpus=0.9) for m in cfg.models)
    # One worker a model: nothing to migrate to, so the worker-death test is the case of
    # migration disabled.
    gateway = replace(cfg.gateway, port=0, max_migrations=0, http_port=0)
    cfg = replace(cfg, models=models, models_dir=str(models_dir), gateway=gateway)
    m = start_mesh(cfg, log_to_driver=False)
    yield m
    m.shutdown()


@pytest.fixture
async def channel(mesh: Mesh) -> grpc.aio.Channel:
    async with grpc.aio.insecure_channel(mesh.address) as ch:
        yield ch
