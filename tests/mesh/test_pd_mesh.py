"""End to end over gRPC on a prefill/decode mesh: demo-small on a prefill and a decode worker,
KV handed over through their gloo collective group (own namespace, beside the demo mesh)."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest
import ray

from flexmesh.bench.chaos_bench import add_chaos_arguments, chaos
from flexmesh.launch.mesh import Mesh, start_mesh
from flexmesh.meshcore.config import MeshConfig
from flexmesh.services.grpc_client import StreamResult, stream_generate
from flexmesh.v1 import flexmesh_pb2 as pb
from flexmesh.v1 import flexmesh_pb2_grpc as pb_grpc
from tests.runner.conftest import PROMPTS, hf_greedy

pytestmark = pytest.mark.slow
MODEL = "demo-small"
P, D = "worker-demo-small-0", "worker-demo-small-1"
NEW_TOKENS = 16
Stubs = tuple[pb_grpc.GenerationStub, pb_grpc.AdminStub]


@pytest.fixture(scope="module")
def pd_mesh(mesh: Mesh, models_dir: Path) -> Iterator[Mesh]:
    """Started after the demo mesh, whose workers take the session's two CPUs."""
    cfg = MeshConfig.from_dict(
        {
            "models": [
                # Tiny CPU reservations: this mesh shares the test session's Ray with the demo one.
                {"name": MODEL, "num_workers": 2, "num_cpus": 0.01, "roles": ["prefill", "decode"]}
            ],
            "gateway": {"port": 0},
            # Every prompt hands off from scratch: with the prefix cache, one whose prefix the
            # decode worker holds would run there alone (the cache with hand-offs is tested in
            # tests/runner/test_prefix_cache_engine.py and tests/runner/test_handoff.py).
            "engine": {"prefix_cache": False},
            "pd": {"min_prompt_tokens": 16, "transfer_timeout_ms": 2000, "hold_timeout_ms": 4000},
            "models_dir": str(models_dir),
            "namespace": "flexmesh-pd-test",
        }
    )
    m = start_mesh(cfg, log_to_driver=False)
    yield m
    m.shutdown()


@pytest.fixture
async def stubs(pd_mesh: Mesh) -> AsyncIterator[Stubs]:
    async with grpc.aio.insecure_channel(pd_mesh.address) as ch:
        yield pb_grpc.GenerationStub(ch), pb_grpc.AdminStub(ch)


def _ids(models_dir: Path) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(models_dir / MODEL))
    ids = [tok.encode(p, add_special_tokens=False) for p in PROMPTS]
    base = ids[1] * 3
    return [*ids, base[:16], base[:32], base[:33]]  # two end exactly on a block boundary


async def _generate(
    stub: pb_grpc.GenerationStub, ids: list[int], delay_s: float = 0.0, **fields: object
) -> StreamResult:
    await asyncio.sleep(delay_s)
    req = pb.GenerateRequest(prompt_token_ids=ids, max_tokens=NEW_TOKENS, model=MODEL, **fields)
    res = await stream_generate(stub, req, 60)
    assert res.gaps == 0 and res.final is not None
    return res


async def _all_free(admin: pb_grpc.AdminStub, timeout_s: float = 10.0) -> dict[str, int]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        st = await admin.GetStatus(pb.GetStatusRequest(), timeout=10)
        used = {w.name: w.kv_blocks_used for w in st.workers}
        if not any(used.values()) or loop.time() > deadline:
            return used
        await asyncio.sleep(0.1)


async def _all_alive(admin: pb_grpc.AdminStub, timeout_s: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        st = await admin.GetStatus(pb.GetStatusRequest(), timeout=10)
        if all(w.alive for w in st.workers):
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"workers not alive after {timeout_s} s")


async def test_disaggregated_greedy_equals_hugging_face(stubs: Stubs, models_dir: Path) -> None:
    stub, admin = stubs
    prompts = _ids(models_dir)
    strategies = ["none", "pld"] * len(prompts)
    results = await asyncio.gather(
        *(
            _generate(stub, ids, delay_s=0.05 * i, strategy=strategies[i])
            for i, ids in enumerate(prompts)
        )
    )
    path = str(models_dir / MODEL)
    for ids, res in zip(prompts, results, strict=True):
        assert res.token_ids == hf_greedy(path, tuple(ids), NEW_TOKENS)
        route = res.final.route
        assert route.worker == D
        if len(ids) >= 16:
            assert (route.prefill_worker, route.kv_transport) == (P, "gloo")
            assert route.kv_bytes > 0 and route.kv_transfer_ms > 0
        else:
            assert (route.prefill_worker, route.kv_transport) == (D, "local")
    assert await _all_free(admin) == {P: 0, D: 0}


async def test_seeded_sampling_matches_the_colocated_demo_mesh(
    stubs: Stubs, models_dir: Path, channel: grpc.aio.Channel
) -> None:
    stub, _ = stubs
    ids = _ids(models_dir)[5]
    sampled = {"temperature": 0.9, "top_p": 0.95, "seed": 11}
    here = await _generate(stub, ids, **sampled)
    assert here.final.route.kv_transport == "gloo"
    colocated = await _generate(pb_grpc.GenerationStub(channel), ids, **sampled)
    assert colocated.final.route.kv_transport == "local"
    assert here.token_ids == colocated.token_ids


@pytest.mark.parametrize(("fault", "outcome"), [("kv_error", "error"), ("kv_stall", "timeout")])
async def test_injected_transfer_faults_recompute_and_free_every_block(
    stubs: Stubs, pd_mesh: Mesh, models_dir: Path, fault: str, outcome: str
) -> None:
    stub, admin = stubs
    ids = _ids(models_dir)[6]
    await pd_mesh.actors[P].inject_faults.remote(**{fault: 1})
    res = await _generate(stub, ids)
    assert res.final.route.kv_transport == f"recompute ({outcome})"
    assert res.token_ids == hf_greedy(str(models_dir / MODEL), tuple(ids), NEW_TOKENS)
    assert await _all_free(admin) == {P: 0, D: 0}


async def test_cancel_after_the_hand_off_frees_blocks_on_both_workers(
    stubs: Stubs, models_dir: Path
) -> None:
    stub, admin = stubs
    call = stub.Generate(
        pb.GenerateRequest(
            prompt_token_ids=_ids(models_dir)[5], max_tokens=2000, ignore_eos=True, model=MODEL
        )
    )
    n = 0
    async for msg in call:
        n += len(msg.token_ids)
        if n > 20:
            break
    call.cancel()
    assert await _all_free(admin) == {P: 0, D: 0}


async def test_role_switch_under_load_completes_every_request(
    stubs: Stubs, models_dir: Path
) -> None:
    stub, admin = stubs
    prompts = _ids(models_dir)[4:] * 3

    async def switch() -> None:
        for worker, role in ((D, "mixed"), (P, "decode"), (D, "prefill")):
            await asyncio.sleep(0.15)
            w = await admin.SetWorkerRole(pb.SetWorkerRoleRequest(worker=worker, role=role))
            assert w.role == role

    results, _ = await asyncio.gather(
        asyncio.gather(*(_generate(stub, ids, delay_s=0.05 * i) for i, ids in enumerate(prompts))),
        switch(),
    )
    path = str(models_dir / MODEL)
    for ids, res in zip(prompts, results, strict=True):
        assert res.token_ids == hf_greedy(path, tuple(ids), NEW_TOKENS)
    assert {r.final.route.worker for r in results} == {P, D}, "both sides decoded at some point"
    for worker, role in ((D, "mixed"), (P, "prefill"), (D, "decode")):
        await admin.SetWorkerRole(pb.SetWorkerRoleRequest(worker=worker, role=role))
    for worker in (P, D):  # as the module's mesh was: roles from its config, nothing pinned
        assert not (await admin.UnpinWorker(pb.UnpinWorkerRequest(worker=worker))).pinned
    assert await _all_free(admin) == {P: 0, D: 0}


def test_workers_cli_changes_roles_and_drains(pd_mesh: Mesh) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "flexmesh.cli.main", "workers", *args]
        return subprocess.run(
            [*cmd, "--target", pd_mesh.address], capture_output=True, text=True, timeout=60
        )

    refused = cli("drain", D)
    assert refused.returncode == 1 and "FAILED_PRECONDITION" in refused.stderr
    pinned = ", pinned (the controller leaves it alone)"
    assert cli("role", P, "mixed").stdout.strip() == f"{P}: role mixed, taking requests{pinned}"
    assert cli("drain", D).stdout.strip().startswith(f"{D}: role decode, draining")
    assert cli("drain", D, "--resume").returncode == 0
    assert cli("role", P, "prefill").stdout.strip().startswith(f"{P}: role prefill, taking")
    assert cli("unpin", P).stdout.strip() == f"{P}: role prefill, taking requests"


async def test_prefill_worker_killed_mid_prefill_falls_back_to_the_decode_worker(
    stubs: Stubs, pd_mesh: Mesh, models_dir: Path
) -> None:
    stub, admin = stubs
    ids = (_ids(models_dir)[1] * 40)[:1500]  # a prefill of three steps or more to be caught in
    task = asyncio.create_task(_generate(stub, ids))
    await _until(admin, lambda w: w.name == P and w.prefill_tokens_waiting > 512)
    ray.kill(pd_mesh.actors[P], no_restart=False)  # mid-prefill: two steps or more are left
    res = await asyncio.wait_for(task, 30)
    route = res.final.route
    assert (route.prefill_worker, route.worker, route.migrations) == (D, D, 0), route
    assert res.token_ids == hf_greedy(str(models_dir / MODEL), tuple(ids), NEW_TOKENS)
    await _until(admin, lambda w: w.name == P and w.alive)  # restarted, for the next tests
    assert await _all_free(admin, timeout_s=30) == {P: 0, D: 0}


async def _until(
    admin: pb_grpc.AdminStub, cond: Callable[[pb.WorkerStatus], bool], timeout_s: float = 30.0
) -> None:
    """Poll fresh worker reports until one satisfies `cond`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        status = await admin.GetStatus(pb.GetStatusRequest(), timeout=10)
        if any(cond(w) for w in status.workers):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no worker report satisfied the condition within {timeout_s} s")


async def test_decode_worker_killed_mid_stream_migrates_with_the_same_greedy_tokens(
    stubs: Stubs, pd_mesh: Mesh, models_dir: Path
) -> None:
    stub, admin = stubs
    ids, new_tokens = _ids(models_dir)[6], 160
    await _all_alive(admin)  # the prefill worker killed by the test before has restarted
    req = pb.GenerateRequest(
        prompt_token_ids=ids, max_tokens=new_tokens, model=MODEL, ignore_eos=True
    )
    tokens: list[int] = []
    gaps, final, killed = 0, None, False
    async for msg in stub.Generate(req, timeout=60):
        gaps += msg.offset != len(tokens)
        tokens += msg.token_ids
        if msg.finish_reason:
            final = msg
        elif len(tokens) > 1 and not killed:
            ray.kill(pd_mesh.actors[D], no_restart=False)  # mid-stream; Ray restarts it
            killed = True
    assert final is not None and gaps == 0
    assert (final.route.worker, final.route.migrations) == (P, 1)
    assert tokens == hf_greedy(str(models_dir / MODEL), tuple(ids), new_tokens)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while True:  # the restarted worker rejoins the pool once it reports again
        res = await _generate(stub, ids)
        if res.final.route.worker == D or loop.time() > deadline:
            break
        await asyncio.sleep(0.5)
    assert res.final.route.worker == D
    assert await _all_free(admin) == {P: 0, D: 0}


async def test_a_short_chaos_run_kills_the_decode_worker_and_reports_it(
    pd_mesh: Mesh, shared_data: Path, models_dir: Path, tmp_path: Path
) -> None:
    parser = argparse.ArgumentParser()
    add_chaos_arguments(parser)
    args = parser.parse_args([
        "--trace", str(shared_data / "traces" / "azure_llm_2023_conv.csv"),
        "--prompts-dir", str(shared_data / "prompts"), "--out", str(tmp_path),
        "--kinds", "decode", "--kills", "1", "--interval-s", "2",
        "--max-input-tokens", "64", "--max-output-tokens", "16",
    ])  # fmt: skip
    cfg = pd_mesh.config
    report = await chaos(args, pd_mesh.address, cfg.namespace, MODEL, str(models_dir / MODEL))
    r = report["decode"]
    assert r["kills"] == 1 and r["requests"] > 0 and r["served_again_s_max"] < 30
    assert r["kv_all_free_after"] and r["normal_request_after"]
    assert r["completed"] == r["completed_identical"]  # every completed one, same greedy tokens
    assert r["affected"] == r["completed"] + sum(r["failed_by_status"].values())
