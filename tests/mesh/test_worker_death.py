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
WORKER = "worker-demo-small-0"


async def test_killed_worker_fails_fast_then_rejoins_with_every_block_free(
    channel: grpc.aio.Channel, mesh: Mesh
) -> None:
    stub, admin = pb_grpc.GenerationStub(channel), pb_grpc.AdminStub(channel)
    req = pb.GenerateRequest(prompt="z", max_tokens=3000, ignore_eos=True, model="demo-small")
    call = stub.Generate(req, timeout=60)
    async for _ in call:
        break
    ray.kill(mesh.actors[WORKER], no_restart=False)  # Ray restarts it
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in call:
            pass
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # max_migrations is 0 here
    assert loop.time() - t0 < 5
    codes = []
    while loop.time() - t0 < 60:  # refused while it restarts, served once it reports again
        try:
            short = pb.GenerateRequest(prompt="z", max_tokens=4, model="demo-small")
            async for msg in stub.Generate(short, timeout=10):
                if msg.finish_reason:
                    codes.append("OK")
            break
        except grpc.aio.AioRpcError as exc:
            codes.append(exc.code().name)
            await asyncio.sleep(0.25)
    assert codes[-1] == "OK" and set(codes[:-1]) <= {"UNAVAILABLE"}
    st = await admin.GetStatus(pb.GetStatusRequest(), timeout=10)
    worker = next(w for w in st.workers if w.name == WORKER)
    assert worker.alive and worker.kv_blocks_used == 0
