"""Prefill/decode dispatch over fake workers: placement, hand-off, fallback, offsets, Admin."""

from __future__ import annotations

import asyncio

import grpc
import msgpack
import pytest

from flexmesh.meshcore.config import GatewayConfig, MeshConfig, ModelSpec, PDConfig
from flexmesh.meshcore.errors import WorkerUnavailableError
from flexmesh.meshcore.sampling import SamplingParams
from flexmesh.services.core.frontend import Chunk, Frontend, GenerationInput
from flexmesh.services.gateway import serve_frontend
from flexmesh.v1 import flexmesh_pb2 as pb
from flexmesh.v1 import flexmesh_pb2_grpc as pb_grpc
from tests.mesh.fake_worker import HANDOFF_PROMPT_IDS, FakeWorker, wait_until

LONG = "x" * 80  # ~20 tokens by the byte estimate
TOKENS = 5


def _frontend(
    p: FakeWorker, d: FakeWorker, fallback: str = "recompute", max_migrations: int = 2
) -> Frontend:
    cfg = MeshConfig(
        models=(ModelSpec(name="m", num_workers=2, roles=("prefill", "decode")),),
        gateway=GatewayConfig(port=0, max_migrations=max_migrations),
        pd=PDConfig(min_prompt_tokens=8, fallback=fallback),
    )
    return Frontend(cfg, {"m": [p, d]})


async def _run(frontend: Frontend, prompt: str = LONG) -> list[Chunk]:
    req = GenerationInput(prompt, (), SamplingParams(max_tokens=TOKENS))
    return [c async for c in frontend.generate(req)]


def _tokens(chunks: list[Chunk]) -> list[int]:
    offsets = [c.offset for c in chunks]
    tokens = [t for c in chunks for t in c.output.token_ids]
    lengths = [len(c.output.token_ids) for c in chunks]
    assert offsets == [sum(lengths[:i]) for i in range(len(chunks))], "contiguous offsets"
    return tokens


async def test_long_prompt_prefills_on_one_worker_and_decodes_on_the_other() -> None:
    p, d = FakeWorker("p"), FakeWorker("d")
    chunks = await _run(_frontend(p, d))
    assert _tokens(chunks) == list(range(TOKENS))
    route = chunks[-1].route
    assert route is not None
    assert (route.prefill_worker, route.worker, route.kv_transport) == ("p", "d", "gloo")
    assert route.kv_bytes == 1024
    assert p.calls == [("stream", True)] and d.calls == [("resume", "p", 0)]


async def test_short_prompt_runs_on_its_decode_worker_alone() -> None:
    p, d = FakeWorker("p"), FakeWorker("d")
    chunks = await _run(_frontend(p, d), prompt="hi")
    assert _tokens(chunks) == list(range(TOKENS))
    assert p.calls == [] and d.calls == [("stream", False)]
    assert chunks[-1].route is not None and chunks[-1].route.kv_transport == "local"


async def test_dead_prefill_worker_falls_back_to_the_decode_worker() -> None:
    p, d = FakeWorker("p", fault="dies"), FakeWorker("d")
    frontend = _frontend(p, d)
    chunks = await _run(frontend)
    assert _tokens(chunks) == list(range(TOKENS))
    assert frontend.dispatcher.moves == {"prefill_fallback": 1, "migration": 0}
    assert d.calls == [("stream", False)]
    with pytest.raises(WorkerUnavailableError, match="died"):
        await _run(_frontend(FakeWorker("p", fault="dies"), FakeWorker("d"), fallback="fail"))


@pytest.mark.parametrize("fault", ["dies_mid_stream", "gap", "truncates"])
@pytest.mark.parametrize("prompt", [LONG, "hi"], ids=["handed-off", "local"])
async def test_a_broken_decode_stream_migrates_and_the_client_sees_one_stream(
    fault: str, prompt: str
) -> None:
    p, d = FakeWorker("p"), FakeWorker("d", fault=fault)
    frontend = _frontend(p, d)
    chunks = await _run(frontend, prompt)
    assert _tokens(chunks) == list(range(TOKENS))  # no token lost, none repeated
    route = chunks[-1].route
    assert route is not None and (route.worker, route.migrations) == ("p", 1)
    assert frontend.dispatcher.moves == {"prefill_fallback": 0, "migration": 1}
    (state,) = p.states  # p recomputes from what the client already had
    sent = 4 if fault == "truncates" else 2  # the gap's chunk is refused, not forwarded
    assert state.output_token_ids == tuple(range(sent))
    assert state.sent_tokens == state.sent_text_chars == sent
    handed_off = (
        "",
        HANDOFF_PROMPT_IDS,
    )  # the ids came with the hand-off: no text to tokenize again
    assert (state.prompt, state.prompt_token_ids) == (handed_off if prompt == LONG else ("hi", ()))
    assert frontend.pool.entries["d"].alive == (fault != "dies_mid_stream")  # only death is
    assert all(e.prefilling == e.decoding == 0 for e in frontend.pool.entries.values())


@pytest.mark.parametrize(
    ("fault", "match"), [("dies_mid_stream", "died"), ("gap", "broke"), ("truncates", "final")]
)
async def test_without_migration_a_broken_stream_fails_unavailable(fault: str, match: str) -> None:
    with pytest.raises(WorkerUnavailableError, match=match):
        await _run(_frontend(FakeWorker("p"), FakeWorker("d", fault=fault), max_migrations=0))


async def test_with_no_live_worker_left_a_broken_stream_fails_unavailable() -> None:
    p, d = FakeWorker("p", fault="dies_mid_stream"), FakeWorker("d", fault="dies_mid_stream")
    frontend = _frontend(p, d)
    with pytest.raises(WorkerUnavailableError, match="no live worker left"):
        await _run(frontend)  # d dies mid-stream, then p, where the request moved
    assert [e.alive for e in frontend.pool.entries.values()] == [False, False]
    with pytest.raises(WorkerUnavailableError, match="no live worker"):
        await _run(frontend)  # nothing is sent to dead workers
    assert p.calls == [("stream", True), ("resume", "", -1)]


async def test_loads_return_to_zero_after_success_and_failure() -> None:
    frontend = _frontend(FakeWorker("p"), FakeWorker("d", fault="truncates"), max_migrations=0)
    with pytest.raises(WorkerUnavailableError):
        await _run(frontend)
    frontend.dispatcher.clients["d"] = FakeWorker("d")
    await _run(frontend)
    await _run(frontend, prompt="hi")
    assert all(e.prefilling == e.decoding == 0 for e in frontend.pool.entries.values())
    assert frontend.loads() == {"m": 0.0} and frontend.in_flight == 0


async def test_admin_changes_roles_and_drains_through_grpc() -> None:
    p, d = FakeWorker("p"), FakeWorker("d")
    frontend = _frontend(p, d)
    server, port = await serve_frontend(frontend, "127.0.0.1", 0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            admin = pb_grpc.AdminStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await admin.SetWorkerRole(pb.SetWorkerRoleRequest(worker="d", role="prefill"))
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "no decode-capable" in err.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await admin.SetWorkerRole(pb.SetWorkerRoleRequest(worker="zz", role="mixed"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            w = await admin.SetWorkerRole(pb.SetWorkerRoleRequest(worker="p", role="mixed"))
            assert w.role == "mixed" and p.role == "mixed"
            w = await admin.DrainWorker(pb.DrainWorkerRequest(worker="d"))
            assert w.draining
            st = await admin.GetStatus(pb.GetStatusRequest())
            assert [(x.name, x.role, x.draining) for x in st.workers] == [
                ("p", "mixed", False),
                ("d", "decode", True),
            ]
    finally:
        await server.stop(None)
    chunks = await _run(frontend)  # d is drained: p, now mixed, serves alone
    assert chunks[-1].route is not None and chunks[-1].route.worker == "p"


async def test_operations_state_survives_a_round_trip_through_msgpack() -> None:
    frontend = _frontend(FakeWorker("p"), FakeWorker("d"))
    ops = frontend.ops
    saved: list[dict[str, object]] = []
    ops.on_change = saved.append
    await ops.set_role("p", "mixed")
    await ops.drain("d")
    ops.set_policy({"spill_queue_ms": 900.0, "routes": {"code": {"strategy": "pld"}}}, 0)
    assert len(saved) == 3 and saved[-1] == ops.state()
    fresh = _frontend(FakeWorker("p"), FakeWorker("d"))
    fresh.ops.restore(msgpack.unpackb(msgpack.packb(saved[-1])))
    assert fresh.ops.state() == ops.state()
    assert fresh.router.policy == frontend.router.policy and fresh.ops.pins == {"p"}
    assert fresh.pool.entries["d"].draining and fresh.pool.entries["p"].role == "mixed"


async def test_a_request_waiting_on_a_worker_found_dead_moves_at_once() -> None:
    p, d = FakeWorker("p"), FakeWorker("d", fault="hangs")
    frontend = _frontend(p, d)
    waiting = asyncio.create_task(_run(frontend, prompt="hi"))  # local on d, which hangs
    await wait_until(lambda: d.calls == [("stream", False)])
    assert not waiting.done()
    frontend.dispatcher.set_alive("d", False)  # another request's failure, or the poll
    chunks = await asyncio.wait_for(waiting, 5)
    assert _tokens(chunks) == list(range(TOKENS))
    assert chunks[-1].route is not None and chunks[-1].route.worker == "p"
    assert p.calls == [("stream", False)]  # nothing was streamed: it starts afresh on p
    frontend.dispatcher.set_alive("d", True)  # back: takes requests again
    assert frontend.pool.place("m", 1, 8).decode.name == "d"


async def test_a_prefill_worker_lost_after_its_hand_off_leaves_the_request_alone() -> None:
    p, d = FakeWorker("p"), FakeWorker("d", gate="resume")
    frontend = _frontend(p, d)
    running = asyncio.create_task(_run(frontend))
    await wait_until(lambda: bool(d.calls))  # handed off: d is resuming it (and waits)
    frontend.dispatcher.set_alive("p", False)  # the prefill worker dies now
    d.go.set()
    chunks = await asyncio.wait_for(running, 5)
    assert _tokens(chunks) == list(range(TOKENS))
    route = chunks[-1].route
    assert route is not None and (route.worker, route.migrations) == ("d", 0)
    assert frontend.pool.get("d").alive, "the decode worker was not the one lost"


async def test_a_decode_worker_lost_while_it_resumes_a_handed_off_request_moves_it_at_once() -> (
    None
):
    p, d = FakeWorker("p"), FakeWorker("d", gate="resume")  # d never answers (restarting)
    frontend = _frontend(p, d)
    running = asyncio.create_task(_run(frontend))
    await wait_until(lambda: bool(d.calls))  # handed off in the step it is waiting on
    frontend.dispatcher.set_alive("d", False)
    chunks = await asyncio.wait_for(running, 5)
    assert _tokens(chunks) == list(range(TOKENS))
    route = chunks[-1].route
    assert route is not None and (route.worker, route.migrations) == ("p", 1)


async def test_a_decode_worker_lost_before_the_hand_off_is_never_called() -> None:
    p, d = FakeWorker("p", gate="prefill"), FakeWorker("d")
    frontend = _frontend(p, d)
    running = asyncio.create_task(_run(frontend))
    await wait_until(lambda: bool(p.calls))  # placed: prefill on p, decode on d
    frontend.dispatcher.set_alive("d", False)
    p.go.set()
    chunks = await asyncio.wait_for(running, 5)
    assert _tokens(chunks) == list(range(TOKENS))
    assert d.calls == [] and p.calls == [("stream", True), ("resume", "", -1)]
