"""Runs last among the mesh tests: it kills a worker and the gateway (Ray restarts them), and
leaves the session's mesh as it found it (policy, pins)."""

from __future__ import annotations

import asyncio

import grpc
import httpx
import pytest
import ray

from flexmesh.launch.mesh import Mesh
from flexmesh.services.grpc_client import stream_generate
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


async def test_a_restarted_gateway_serves_on_its_port_with_the_live_policy(
    channel: grpc.aio.Channel, mesh: Mesh
) -> None:
    stub, admin = pb_grpc.GenerationStub(channel), pb_grpc.AdminStub(channel)
    original = await admin.GetPolicy(pb.GetPolicyRequest(), timeout=10)
    try:
        await _restart_the_gateway_and_check(stub, admin, mesh)
    finally:
        restore = pb.SetPolicyRequest(spill_queue_ms=original.spill_queue_ms)
        await admin.SetPolicy(restore, timeout=30, wait_for_ready=True)
        await admin.UnpinPolicy(pb.UnpinPolicyRequest(), timeout=10)
        await admin.UnpinWorker(pb.UnpinWorkerRequest(worker=WORKER), timeout=10)
    st = await admin.GetStatus(pb.GetStatusRequest(), timeout=10)
    assert st.policy.spill_queue_ms == original.spill_queue_ms and list(st.policy.pinned) == []
    assert not next(w for w in st.workers if w.name == WORKER).pinned


async def _restart_the_gateway_and_check(
    stub: pb_grpc.GenerationStub, admin: pb_grpc.AdminStub, mesh: Mesh
) -> None:
    before = await admin.SetPolicy(pb.SetPolicyRequest(spill_queue_ms=777.0), timeout=10)
    await admin.SetWorkerRole(pb.SetWorkerRoleRequest(worker=WORKER, role="mixed"), timeout=10)
    ray.kill(mesh.gateway, no_restart=False)  # Ray restarts it
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    went_down = False  # the kill takes a moment: calls just after it may still be answered
    while True:
        try:
            after = await admin.GetPolicy(pb.GetPolicyRequest(), timeout=5)
            if went_down:
                break
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE
            went_down = True
        assert loop.time() - t0 < 60, "the gateway did not come back"
        await asyncio.sleep(0.1)
    assert (after.version, after.spill_queue_ms) == (before.version, 777.0)
    assert "spill_queue_ms" in after.pinned
    st = await admin.GetStatus(pb.GetStatusRequest(), timeout=10)
    assert next(w for w in st.workers if w.name == WORKER).pinned
    res = await stream_generate(stub, pb.GenerateRequest(prompt="z", max_tokens=4), 30)
    assert res.final is not None and res.gaps == 0
    # Its HTTP API is back on its port too.
    async with httpx.AsyncClient(base_url=f"http://{mesh.http_address}", timeout=10) as http:
        for _ in range(100):
            try:
                if (await http.get("/health")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
        body = {"model": "demo-small", "prompt": "z", "max_tokens": 4}
        assert (await http.post("/v1/completions", json=body)).status_code == 200
