"""The controller on a live prefill/decode mesh: a burst moves a role, every request completes,
pins win, and a killed controller leaves serving up and comes back on the mesh's state."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import ray

from flexmesh.cli.mesh_commands import status_cli
from flexmesh.launch.mesh import Mesh, start_mesh
from flexmesh.meshcore.config import MeshConfig
from flexmesh.meshcore.controller_policy import Action
from flexmesh.services.grpc_client import stream_generate
from flexmesh.v1 import flexmesh_pb2 as pb
from flexmesh.v1 import flexmesh_pb2_grpc as pb_grpc
from tests.runner.conftest import hf_greedy

pytestmark = pytest.mark.slow
MODEL = "demo-small"
P, D = "worker-demo-small-0", "worker-demo-small-1"


@pytest.fixture(scope="module")
def ctl_mesh(mesh: Mesh, models_dir: Path) -> Iterator[Mesh]:
    """Started after the demo mesh (it takes the session's CPUs); its own namespace."""
    cfg = MeshConfig.from_dict(
        {
            "models": [
                {"name": MODEL, "num_workers": 2, "num_cpus": 0.01, "roles": ["prefill", "decode"]}
            ],
            "gateway": {"port": 0},
            "pd": {"min_prompt_tokens": 16},
            # A tiny TTFT objective so that a burst puts it at risk; TPOT never is.
            "controller": {
                "enabled": True,
                "interval_ms": 100,
                "ttft_slo_ms": 50,
                "tpot_slo_ms": 100000,
                "min_dwell_ms": 300,
            },
            "models_dir": str(models_dir),
            "namespace": "flexmesh-controller-test",
        }
    )
    m = start_mesh(cfg, log_to_driver=False)
    yield m
    m.shutdown()


@pytest.fixture
async def stubs(ctl_mesh: Mesh) -> AsyncIterator[tuple[pb_grpc.GenerationStub, pb_grpc.AdminStub]]:
    async with grpc.aio.insecure_channel(ctl_mesh.address) as ch:
        yield pb_grpc.GenerationStub(ch), pb_grpc.AdminStub(ch)


async def _burst(stub: pb_grpc.GenerationStub, models_dir: Path, n: int = 24) -> None:
    prompts = [[(31 * j + i) % 4000 + 10 for j in range(400)] for i in range(n)]
    reqs = [pb.GenerateRequest(prompt_token_ids=p, max_tokens=8, model=MODEL) for p in prompts]
    results = await asyncio.gather(*(stream_generate(stub, r, 120) for r in reqs))
    path = str(models_dir / MODEL)
    for p, res in zip(prompts, results, strict=True):
        assert res.gaps == 0 and res.final is not None
        assert res.token_ids == hf_greedy(path, tuple(p), 8)


async def _roles(admin: pb_grpc.AdminStub) -> dict[str, str]:
    st = await admin.GetStatus(pb.GetStatusRequest(), timeout=10)
    return {w.name: w.role for w in st.workers}


async def test_a_burst_moves_a_role_and_every_request_completes(
    stubs: tuple[pb_grpc.GenerationStub, pb_grpc.AdminStub], models_dir: Path
) -> None:
    stub, admin = stubs
    await _burst(stub, models_dir)
    st = await admin.GetStatus(pb.GetStatusRequest(), timeout=10)
    by_controller = [d for d in st.decisions if d.by == "controller" and d.kind == "role"]
    assert by_controller, "the burst put TTFT at risk: the controller must have acted"
    first = by_controller[0]
    assert (first.target, first.old, first.new, first.reason) == (
        D,
        "decode",
        "mixed",
        "ttft_at_risk",
    )
    assert first.inputs["queue_delay_ms"] >= 0.8 * 50
    # TPOT was never at risk: every worker still gives prefill its whole step budget.
    assert all(w.prefill_budget_tokens == w.max_batched_tokens > 0 for w in st.workers)
    roles = await _roles(admin)
    assert any(r in ("prefill", "mixed") for r in roles.values())
    assert any(r in ("decode", "mixed") for r in roles.values())


async def test_flexmesh_status_lists_the_decisions(
    ctl_mesh: Mesh, capsys: pytest.CaptureFixture[str]
) -> None:
    args = argparse.Namespace(target=ctl_mesh.address, json=False)
    assert await status_cli(args) == 0
    out = capsys.readouterr().out
    lines = [x for x in out.splitlines() if f"controller: role {D} decode -> mixed" in x]
    assert lines and all("(ttft_at_risk: " in x and "queue_delay_ms" in x for x in lines)


async def test_an_operator_pin_wins_until_unpinned(
    stubs: tuple[pb_grpc.GenerationStub, pb_grpc.AdminStub], models_dir: Path
) -> None:
    stub, admin = stubs
    await admin.SetWorkerRole(pb.SetWorkerRoleRequest(worker=P, role="prefill"))
    await admin.SetWorkerRole(pb.SetWorkerRoleRequest(worker=D, role="decode"))
    before = len((await admin.GetStatus(pb.GetStatusRequest())).decisions)
    await _burst(stub, models_dir)
    st = await admin.GetStatus(pb.GetStatusRequest())
    assert [d.by for d in st.decisions[before:]] == [], "pinned workers are left alone"
    assert {w.name: (w.role, w.pinned) for w in st.workers} == {
        P: ("prefill", True),
        D: ("decode", True),
    }
    for w in (P, D):
        assert not (await admin.UnpinWorker(pb.UnpinWorkerRequest(worker=w))).pinned


async def test_killed_controller_leaves_serving_up_and_resumes_from_the_mesh(
    stubs: tuple[pb_grpc.GenerationStub, pb_grpc.AdminStub], ctl_mesh: Mesh, models_dir: Path
) -> None:
    stub, admin = stubs
    await admin.SetWorkerRole(pb.SetWorkerRoleRequest(worker=D, role="mixed"))
    await admin.UnpinWorker(pb.UnpinWorkerRequest(worker=D))
    roles = await _roles(admin)
    ray.kill(ctl_mesh.actors["controller"], no_restart=False)  # Ray restarts it
    await _burst(stub, models_dir, n=2)  # serving goes on meanwhile
    handle = ray.get_actor("controller", namespace=ctl_mesh.config.namespace)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while True:
        try:
            if await asyncio.wait_for(handle.ready.remote(), 5) >= 3:
                break  # restarted and has run rounds
        except (ray.exceptions.RayActorError, TimeoutError):
            pass
        assert loop.time() < deadline, "the controller did not come back"
        await asyncio.sleep(0.5)
    assert await _roles(admin) == roles, "it resumes from the roles in force, not the config's"


async def test_the_gateway_applies_budgets_and_refuses_pinned_workers(
    stubs: tuple[pb_grpc.GenerationStub, pb_grpc.AdminStub], ctl_mesh: Mesh, models_dir: Path
) -> None:
    stub, admin = stubs
    gateway = ray.get_actor("gateway", namespace=ctl_mesh.config.namespace)
    shrink = Action("prefill_budget", D, 512, 64, "tpot_at_risk", {"tpot_ms": 1.0})
    assert await gateway.apply.remote([shrink], 0) == []
    st = await admin.GetStatus(pb.GetStatusRequest(), timeout=10)
    assert {w.name: w.prefill_budget_tokens for w in st.workers}[D] == 64
    last = st.decisions[-1]
    assert (last.kind, last.target, last.old, last.new, last.by) == (
        "prefill_budget", D, "512", "64", "controller",
    )  # fmt: skip
    await _burst(stub, models_dir, n=4)  # a small prefill share still serves every request
    await admin.SetWorkerRole(pb.SetWorkerRoleRequest(worker=D, role="mixed"))  # pins D
    grow = Action("prefill_budget", D, 64, 512, "ttft_at_risk")
    (error,) = await gateway.apply.remote([grow], 0)
    assert "pinned" in error
    await admin.UnpinWorker(pb.UnpinWorkerRequest(worker=D))
    assert await gateway.apply.remote([grow], 0) == []
