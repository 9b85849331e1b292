"""The gateway over fake workers, through real gRPC: admission bound, errors, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
import pytest

from flexmesh.meshcore.config import ControllerConfig, GatewayConfig, MeshConfig, ModelSpec
from flexmesh.meshcore.controller_policy import Action
from flexmesh.meshcore.errors import (
    PreconditionError,
    QueueFullError,
    WorkerLostError,
    WorkerUnavailableError,
)
from flexmesh.meshcore.messages import RequestOutput, WorkerStatus
from flexmesh.meshcore.routing import ProbeResult
from flexmesh.meshcore.sampling import SamplingParams
from flexmesh.services.core.frontend import Chunk, Frontend, GenerationInput, RouteInfo
from flexmesh.services.gateway import serve_frontend
from flexmesh.services.grpc_client import stream_generate
from flexmesh.services.servicers import to_response, worker_to_proto
from flexmesh.v1 import flexmesh_pb2 as pb
from flexmesh.v1 import flexmesh_pb2_grpc as pb_grpc
from tests.mesh.fake_worker import FakeWorker, wait_until


class KnowledgeProbe:
    """Every prompt is a confident knowledge question: a spillable large-model intent."""

    async def classify(self, prompt: str, long_context_tokens: int | None = None) -> ProbeResult:
        return ProbeResult(intent="knowledge_qa", confidence=0.9, backend="fake")


class RecordingMetrics:
    """`FrontendMetrics` that keeps the final status code of every request."""

    def __init__(self) -> None:
        self.codes: list[tuple[str, str]] = []

    def routed(self, route: object) -> None:
        pass

    def done(self, model: str, ttft_ms: float, total_ms: float, tokens: int) -> None:
        self.codes.append((model, "OK"))

    def failed(self, model: str, code: str) -> None:
        self.codes.append((model, code))

    def moved(self, worker: str, kind: str) -> None:
        self.codes.append((worker, kind))


Gateway = tuple[pb_grpc.GenerationStub, dict[str, FakeWorker], RecordingMetrics]


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    cfg = MeshConfig(
        models=(ModelSpec(name="ok"), ModelSpec(name="broken")),
        gateway=GatewayConfig(port=0, max_queue_len=2),
    )
    workers = {
        "ok": FakeWorker("w-ok", "ok", tokens=2, gate="last"),
        "broken": FakeWorker("w-broken", "broken", tokens=2, gate="last", fault="fails"),
    }
    metrics = RecordingMetrics()
    frontend = Frontend(cfg, {k: [w] for k, w in workers.items()}, metrics=metrics)
    server, port = await serve_frontend(frontend, "127.0.0.1", 0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield pb_grpc.GenerationStub(ch), workers, metrics
    await server.stop(None)


async def test_full_queue_gives_resource_exhausted(
    gateway: Gateway,
) -> None:
    stub, workers, _ = gateway
    held = [
        asyncio.create_task(stream_generate(stub, pb.GenerateRequest(prompt="p", model="ok"), 10))
        for _ in range(2)
    ]
    await wait_until(lambda: len(workers["ok"].calls) == 2)  # both in flight
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stream_generate(stub, pb.GenerateRequest(prompt="p", model="ok"), 10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    workers["ok"].go.set()
    results = await asyncio.gather(*held)
    assert all(r.token_ids == [0, 1] and r.final is not None and r.gaps == 0 for r in results)


async def test_worker_failure_gives_unavailable(
    gateway: Gateway,
) -> None:
    stub, _, _ = gateway
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stream_generate(stub, pb.GenerateRequest(prompt="p", model="broken"), 10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "died" in err.value.details()


async def test_client_cancel_reaches_the_worker(
    gateway: Gateway,
) -> None:
    stub, workers, _ = gateway
    call = stub.Generate(pb.GenerateRequest(prompt="p", model="ok", request_id="r-cancel"))
    async for _ in call:
        break
    call.cancel()
    await wait_until(lambda: "r-cancel" in workers["ok"].unfinished)


async def test_every_outcome_is_counted_by_status_code(gateway: Gateway) -> None:
    stub, workers, metrics = gateway
    workers["ok"].go.set()
    await stream_generate(stub, pb.GenerateRequest(prompt="p", model="ok"), 10)
    for bad in (
        pb.GenerateRequest(prompt="p", model="ok", temperature=-1.0),
        pb.GenerateRequest(prompt="p", model="nope"),
        pb.GenerateRequest(prompt="p", model="broken"),
    ):
        with pytest.raises(grpc.aio.AioRpcError):
            await stream_generate(stub, bad, 10)
    workers["ok"].go.clear()
    call = stub.Generate(pb.GenerateRequest(prompt="p", model="ok"))
    async for _ in call:
        break
    call.cancel()
    await wait_until(lambda: len(metrics.codes) == 5)
    assert metrics.codes == [
        ("ok", "OK"),
        ("ok", "INVALID_ARGUMENT"),
        ("unknown", "NOT_FOUND"),  # a model the mesh does not serve is not a tag
        ("broken", "UNAVAILABLE"),
        ("ok", "CANCELLED"),
    ]


def test_the_wire_carries_route_flags_and_worker_percentiles() -> None:
    route = RouteInfo("demo-small", worker="w", intent="knowledge_qa", reason="spill",
                      demanding=True, downgraded=True)  # fmt: skip
    out = RequestOutput("r", (1,), "a", finished=True, finish_reason="length")
    msg = to_response(Chunk("r", out, final=True, route=route))
    assert (msg.route.demanding, msg.route.downgraded, msg.route.model) == (
        True,
        True,
        "demo-small",
    )
    status = WorkerStatus(
        "w", "m", "", "mixed", "cpu", 0, 0, 0, 8, 1.0, 0, decode_step_ms=3.0,
        prefill_ms_per_token=0.5, percentiles={"tpot_ms_p99": 9.5, "queue_ms_p50": 1.0},
    )  # fmt: skip
    w = worker_to_proto(status)
    assert (w.decode_step_ms, w.prefill_ms_per_token) == (3.0, 0.5)
    assert dict(w.percentiles) == {"tpot_ms_p99": 9.5, "queue_ms_p50": 1.0}


async def test_a_burst_spills_as_it_arrives_and_returns_when_drained() -> None:
    cfg = MeshConfig(
        models=(ModelSpec(name="demo-large"), ModelSpec(name="demo-small")),
        gateway=GatewayConfig(port=0, status_poll_ms=10),
        controller=ControllerConfig(max_downgrade_fraction={"knowledge_qa": 0.5}),
    )
    large = FakeWorker("w-large", "demo-large", tokens=2, gate="first")
    small = FakeWorker("w-small", "demo-small", tokens=2, gate="last")
    frontend = Frontend(cfg, {"demo-large": [large], "demo-small": [small]}, KnowledgeProbe())
    frontend.start()  # the fakes report 300 ms per prefill and no queue
    await wait_until(lambda: bool(frontend.prefill_ms))
    req = GenerationInput("who wrote hamlet", (), SamplingParams(max_tokens=2))

    async def run() -> list[Chunk]:
        return [c async for c in frontend.generate(req)]

    assert (await frontend.route(req)).model == "demo-large"
    burst = [asyncio.create_task(run()) for _ in range(2)]
    await wait_until(lambda: len(large.calls) == 2)
    # Two requests on the large model without a first token: 2 x 300 ms > spill_queue_ms 500,
    # although no worker has reported any queue yet.
    assert frontend.loads()["demo-large"] == pytest.approx(600.0)
    spilled = await frontend.route(req)
    assert (spilled.model, spilled.demanding, spilled.downgraded) == ("demo-small", True, True)
    # The quality budget: with a bound of 0.25, a third knowledge question while two went to
    # the large model would make 1 of 3 a downgrade: it stays.
    frontend.config = replace(
        cfg, controller=ControllerConfig(max_downgrade_fraction={"knowledge_qa": 0.25})
    )
    kept = await frontend.route(req)
    assert (kept.model, kept.reason, kept.downgraded) == ("demo-large", "quality_budget", False)
    frontend.config = cfg
    large.go.set()
    for chunks in await asyncio.gather(*burst):
        assert chunks[-1].final and chunks[-1].route is not None
        assert chunks[-1].route.model == "demo-large"
    assert frontend.loads()["demo-large"] == 0.0
    assert (await frontend.route(req)).model == "demo-large"  # drained: below return_queue_ms
    frontend.stop()


async def test_policy_pins_the_operator_set_hold_against_the_controller_until_unpinned() -> None:
    cfg = MeshConfig(
        models=(ModelSpec(name="demo-large"), ModelSpec(name="demo-small")),
        gateway=GatewayConfig(port=0, status_poll_ms=10),
    )
    workers = {
        "demo-large": [FakeWorker("L", "demo-large", tokens=2, gate="last")],
        "demo-small": [FakeWorker("S", "demo-small", tokens=2, gate="last")],
    }
    frontend = Frontend(cfg, workers, KnowledgeProbe())
    frontend.start()
    await wait_until(lambda: len(frontend.last_status) == 2)
    snap = frontend.snapshot()
    assert [w.name for w in snap.workers] == ["L", "S"] and snap.policy is not None
    assert snap.base_policy == cfg.routing and snap.policy_pins == frozenset()

    server, port = await serve_frontend(frontend, "127.0.0.1", 0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            admin = pb_grpc.AdminStub(ch)
            route = pb.IntentRoute(intent="code", model="small", strategy="none")
            set_req = pb.SetPolicyRequest(spill_queue_ms=300.0, routes=[route])
            policy = await admin.SetPolicy(set_req)
            assert "spill_queue_ms" in policy.pinned and "routes.code.strategy" in policy.pinned
            version = policy.version
            with pytest.raises(PreconditionError, match="pinned"):
                frontend.ops.set_policy({"spill_queue_ms": 100.0}, version, "controller")
            with pytest.raises(PreconditionError, match="routes.code.strategy"):
                frontend.ops.set_policy(
                    {"routes": {"code": {"strategy": "pld"}}}, version, "controller"
                )
            left = await admin.UnpinPolicy(pb.UnpinPolicyRequest(fields=["routes.code"]))
            assert list(left.pinned) == ["spill_queue_ms"], "a prefix unpins the fields under it"
            why = {"routes.code.strategy": "small_batch"}
            frontend.ops.set_policy(
                {"routes": {"code": {"strategy": "pld"}}}, version, "controller", why
            )
            st = await admin.GetStatus(pb.GetStatusRequest(cached=True))
            assert st.policy.version == version + 1 and st.policy.pinned == ["spill_queue_ms"]
            last = st.decisions[-1]
            assert (last.kind, last.target, last.old, last.new, last.by, last.reason) == (
                "policy", "routes.code.strategy", "none", "pld", "controller", "small_batch",
            )  # fmt: skip
            assert (await admin.UnpinPolicy(pb.UnpinPolicyRequest())).pinned == []
    finally:
        await server.stop(None)
        frontend.stop()


async def test_an_operators_placement_balance_is_a_pin_the_controller_leaves_alone() -> None:
    cfg = MeshConfig(models=(ModelSpec(name="m", num_workers=2),), gateway=GatewayConfig(port=0))
    frontend = Frontend(cfg, {"m": [FakeWorker("A", "m"), FakeWorker("B", "m")]})
    assert frontend.pool.balance == {"m": cfg.pd.cache_balance_ratio}  # the cache is on
    lower = Action("balance", "m", 1.5, 1.0, "prefill_imbalance", {}, "m")
    server, port = await serve_frontend(frontend, "127.0.0.1", 0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            admin = pb_grpc.AdminStub(ch)
            policy = await admin.SetPolicy(pb.SetPolicyRequest(placement_balance={"m": 1.5}))
            assert dict(policy.placement_balance) == {"m": 1.5}
            assert list(policy.pinned) == ["placement_balance.m"]
            (error,) = await frontend.ops.apply([lower], policy.version)
            assert "pinned" in error and frontend.pool.balance["m"] == 1.5
            refused = (({"m": 0.5}, "INVALID_ARGUMENT"), ({"x": 2.0}, "FAILED_PRECONDITION"))
            for bad, code in refused:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await admin.SetPolicy(pb.SetPolicyRequest(placement_balance=bad))
                assert err.value.code().name == code
            await admin.UnpinPolicy(pb.UnpinPolicyRequest(fields=["placement_balance"]))
            assert await frontend.ops.apply([lower], policy.version) == []
            st = await admin.GetStatus(pb.GetStatusRequest(cached=True))
            last = st.decisions[-1]
            got = (last.kind, last.target, last.new, last.by)
            assert got == ("balance", "m", "1.0", "controller")
            assert frontend.ops.state()["balance"] == {"m": 1.0}  # kept across a restart
    finally:
        await server.stop(None)
        frontend.stop()


class DownProbe:
    """A probe that is dead or restarting."""

    async def classify(self, prompt: str, long_context_tokens: int | None = None) -> ProbeResult:
        raise WorkerUnavailableError("probe is unavailable: restarting")


async def test_a_probe_that_is_down_sends_requests_to_the_large_model() -> None:
    cfg = MeshConfig(models=(ModelSpec(name="demo-large"), ModelSpec(name="demo-small")))
    workers = {
        "demo-large": [FakeWorker("L", "demo-large", tokens=2, gate="last")],
        "demo-small": [FakeWorker("S", "demo-small", tokens=2, gate="last")],
    }
    workers["demo-large"][0].go.set()
    frontend = Frontend(cfg, workers, DownProbe())
    chunks = [c async for c in frontend.generate(GenerationInput("hi", (), SamplingParams()))]
    route = chunks[-1].route
    assert route is not None and (route.model, route.reason) == ("demo-large", "probe_unavailable")
    chosen = GenerationInput("hi", (), SamplingParams(), model="demo-small")
    assert (await frontend.route(chosen)).model == "demo-small"  # the caller's choice holds


class BackloggedWorker(FakeWorker):
    """Reports a queue delay of `delay_ms`."""

    delay_ms = 45_000.0

    async def status(self) -> WorkerStatus:
        return replace(await super().status(), queue_delay_ms=self.delay_ms)


async def test_an_overloaded_model_sheds_new_requests_until_its_queue_drains() -> None:
    gw = GatewayConfig(status_poll_ms=10, max_queue_delay_ms=30_000.0)
    worker = BackloggedWorker("w", "ok", tokens=2, gate="last")
    worker.go.set()
    frontend = Frontend(MeshConfig(models=(ModelSpec(name="ok"),), gateway=gw), {"ok": [worker]})
    frontend.start()
    await wait_until(lambda: frontend.queue_delay_ms.get("ok") == worker.delay_ms)
    req = GenerationInput("p", (), SamplingParams())
    with pytest.raises(QueueFullError, match=r"expected wait 45\.0 s, the bound is 30\.0 s"):
        [c async for c in frontend.generate(req)]
    worker.delay_ms = 1_000.0
    await wait_until(lambda: frontend.queue_delay_ms.get("ok") == worker.delay_ms)
    chunks = [c async for c in frontend.generate(req)]
    assert chunks[-1].final and frontend.in_flight == 0
    frontend.stop()


class SlowWorker(FakeWorker):
    """Its report waits (a long engine step); its ping answers unless it is `dead`."""

    slow = False
    dead = False

    async def status(self) -> WorkerStatus:
        if self.slow or self.dead:
            await asyncio.Event().wait()
        return replace(await super().status(), queue_length=3)

    async def ping(self, timeout_s: float | None = None) -> None:
        if self.dead:  # Ray holds a call to a restarting actor
            await asyncio.wait_for(asyncio.Event().wait(), timeout_s)


async def test_a_busy_worker_stays_alive_and_only_a_silent_one_is_lost() -> None:
    worker = SlowWorker("w", "ok", tokens=2, gate="last")
    frontend = Frontend(MeshConfig(models=(ModelSpec(name="ok"),)), {"ok": [worker]})
    (first,) = await frontend.status(0.05)
    assert first.alive and first.queue_length == 3
    worker.slow = True
    (busy,) = await frontend.status(0.05)
    assert busy.alive and busy.queue_length == 3, "the last report stands while it is busy"
    worker.dead = True
    (dead,) = await frontend.status(0.05)
    assert not dead.alive


class RestartingWorker(SlowWorker):
    """A killed worker Ray restarts: calls wait (Ray holds them) but the ping, asking the GCS,
    knows at once."""

    async def ping(self, timeout_s: float | None = None) -> None:
        if self.dead:
            raise WorkerLostError(f"worker {self.name} is restarting")


async def test_a_worker_found_restarting_is_lost_without_waiting_for_its_report() -> None:
    worker = RestartingWorker("w", "ok", tokens=2, gate="last")
    frontend = Frontend(MeshConfig(models=(ModelSpec(name="ok"),)), {"ok": [worker]})
    worker.dead = True
    # The report would wait out the whole status timeout (a minute); the ping decides first.
    (lost,) = await asyncio.wait_for(frontend.status(60.0), 10.0)
    assert not lost.alive
    assert not frontend.pool.get("w").alive, "the pool takes a fresh status's health at once"


async def test_a_worker_lost_by_a_failed_call_returns_only_by_reporting() -> None:
    """A stream's failure takes a worker out before Ray's GCS knows; a ping that the GCS
    still answers for must not bring it back, a report from its new process does."""
    worker = SlowWorker("w", "ok", tokens=2, gate="last")
    frontend = Frontend(MeshConfig(models=(ModelSpec(name="ok"),)), {"ok": [worker]})
    await frontend.status(0.05)
    frontend.dispatcher.set_alive("w", False)  # as `Dispatcher._recover` does
    worker.slow = True  # no report; the ping still answers
    (silent,) = await frontend.status(0.05)
    assert not silent.alive and not frontend.pool.get("w").alive
    worker.slow = False
    (back,) = await frontend.status(0.05)
    assert back.alive and frontend.pool.get("w").alive


async def test_a_quantised_models_route_says_so_on_the_wire() -> None:
    cfg = MeshConfig(
        models=(ModelSpec(name="q8", quantization="int8"), ModelSpec(name="fp")),
        gateway=GatewayConfig(port=0),
    )
    workers = {"q8": FakeWorker("w-q8", "q8", tokens=2), "fp": FakeWorker("w-fp", "fp", tokens=2)}
    frontend = Frontend(cfg, {k: [w] for k, w in workers.items()})
    for model, quantised in (("q8", True), ("fp", False)):
        req = GenerationInput("hi", (), SamplingParams(max_tokens=2), model=model)
        final = [c async for c in frontend.generate(req)][-1]
        assert final.route is not None and final.route.quantised is quantised
        assert to_response(final).route.quantised is quantised
