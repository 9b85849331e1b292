"""Runs last among the mesh tests: it kills a worker (Ray restarts it)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import ray

from flexmesh.services.mesh import Mesh
from flexmesh.v1 import flexmesh_pb2 as pb
from flexmesh.v1 import flexmesh_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow


async def test_killed_worker_gives_unavailable_quickly(
    channel: grpc.aio.Channel, mesh: Mesh
) -> None:
    stub = pb_grpc.GenerationStub(channel)
    call = stub.Generate(
        pb.GenerateRequest(prompt="z", max_tokens=3000, ignore_eos=True, model="demo-small"),
        timeout=60,
    )
    async for _ in call:
        break
    ray.kill(mesh.actors["worker-demo-small-0"], no_restart=False)  # Ray restarts it
    t0 = asyncio.get_running_loop().time()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in call:
            pass
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert asyncio.get_running_loop().time() - t0 < 15
