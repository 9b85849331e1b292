"""Property-based fuzzing of every request field (hypothesis): no crash, no hang, and every
refusal a clear status code. The gateway's own code runs for real (servicers, frontend,
router, operations) over fake workers, so thousands of requests take seconds
(`FLEXMESH_FUZZ_EXAMPLES` examples a test, 300 in CI; the README's figure: 10000). One test
sends generated Generate calls to the real demo mesh (its workers, models and KV cache;
`FLEXMESH_MESH_FUZZ_EXAMPLES`, 300), then a normal request, and finds every KV block free.
test_http_fuzz.py does the same for the OpenAI-compatible HTTP API."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flexmesh.launch.mesh import Mesh
from flexmesh.meshcore.config import GatewayConfig, MeshConfig, ModelSpec
from flexmesh.meshcore.routing import INTENTS
from flexmesh.services.core.frontend import Frontend
from flexmesh.services.gateway import serve_frontend
from flexmesh.v1 import flexmesh_pb2 as pb
from flexmesh.v1 import flexmesh_pb2_grpc as pb_grpc
from tests.mesh.fake_worker import FakeWorker
from tests.mesh.fuzz_requests import (
    MESH_EXAMPLES,
    MODELS,
    WORKERS,
    admin_calls,
    fuzz,
    generate_requests,
    idle_worker,
    mesh_generate_requests,
    text,
)
from tests.mesh.test_frontend import KnowledgeProbe, RecordingMetrics

REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
"""Clear refusals. INTERNAL or UNKNOWN would be a crash, DEADLINE_EXCEEDED a hang."""


@pytest.fixture(scope="module")
def metrics() -> RecordingMetrics:
    return RecordingMetrics()


@pytest.fixture(scope="module")
async def gateway(metrics: RecordingMetrics) -> AsyncIterator[grpc.aio.Channel]:
    """A gateway over fake workers of both routing models."""
    workers = {m: FakeWorker(w, m) for m, w in zip(MODELS, WORKERS, strict=True)}
    cfg = MeshConfig(models=tuple(ModelSpec(name=m) for m in MODELS), gateway=GatewayConfig())
    frontend = Frontend(cfg, {m: [w] for m, w in workers.items()}, KnowledgeProbe(), metrics)
    server, port = await serve_frontend(frontend, "127.0.0.1", 0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel
    await server.stop(None)


async def _outcome(call: Awaitable[object]) -> None:
    """The call succeeds or is refused with a clear code and message; else the test fails."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        assert err.code() in REFUSALS, f"{err.code().name}: {err.details()}"
        assert err.details(), "a refusal says why"


async def _generate(channel: grpc.aio.Channel, req: pb.GenerateRequest, timeout_s: float) -> None:
    chunks = [m async for m in pb_grpc.GenerationStub(channel).Generate(req, timeout=timeout_s)]
    assert chunks and chunks[-1].finish_reason, "a stream that succeeds ends with its final chunk"


@fuzz
@given(req=generate_requests())
async def test_generate_requests(
    gateway: grpc.aio.Channel, metrics: RecordingMetrics, req: pb.GenerateRequest
) -> None:
    metrics.codes.clear()
    await _outcome(_generate(gateway, req, 5))
    assert {model for model, _ in metrics.codes} <= {*MODELS, "auto", "unknown"}, (
        "metric tags hold only the mesh's own names, never the caller's text"
    )


@fuzz
@given(prompt=text)
async def test_classify_requests(gateway: grpc.aio.Channel, prompt: str) -> None:
    """An empty prompt is refused, naming the field; any other is answered with what the probe
    sensed: one of the known intents, a confidence in [0, 1], the probe's own backend."""
    stub = pb_grpc.GenerationStub(gateway)
    call = stub.Classify(pb.ClassifyRequest(prompt=prompt), timeout=5)
    if not prompt:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "prompt" in (refused.value.details() or "")
        return
    resp = await call
    sensed = await KnowledgeProbe().classify(prompt)
    assert resp.intent in INTENTS and resp.intent == sensed.intent
    assert 0.0 <= resp.confidence <= 1.0
    assert resp.confidence == pytest.approx(sensed.confidence, rel=1e-6)  # a float32 on the wire
    assert dict(resp.scores) == pytest.approx(sensed.scores, rel=1e-6)
    assert resp.backend == sensed.backend and resp.probe_ms >= 0.0


@fuzz
@given(calls=st.lists(admin_calls, min_size=1, max_size=4))
async def test_admin_requests_then_the_mesh_still_serves(
    gateway: grpc.aio.Channel, calls: list[tuple[str, Any]]
) -> None:
    admin = pb_grpc.AdminStub(gateway)
    for method, req in calls:
        await _outcome(getattr(admin, method)(req, timeout=5))
    for model in MODELS:  # whatever the operator did, every model still serves
        await _generate(gateway, pb.GenerateRequest(prompt="p", model=model), 5)


@pytest.mark.slow
def test_generate_requests_on_the_demo_mesh(mesh: Mesh) -> None:
    """Fewer examples than over fakes, mostly requests the mesh serves (at most 4 tokens)
    with 0-2 fields drawn from any value, the same in every run (derandomized); then the
    mesh still serves and holds no KV block. Sync gRPC: the inner test is a plain function,
    so the checks after it run in the same test."""
    codes: Counter[str] = Counter()
    with grpc.insecure_channel(mesh.address) as channel:
        stub = pb_grpc.GenerationStub(channel)

        @settings(fuzz, max_examples=MESH_EXAMPLES, derandomize=True)
        @given(req=mesh_generate_requests(max_tokens=st.integers(-3, 4) | st.just(2**31 - 1)))
        def one(req: pb.GenerateRequest) -> None:
            try:
                chunks = list(stub.Generate(req, timeout=30))
            except grpc.RpcError as err:
                assert err.code() in REFUSALS, f"{err.code().name}: {err.details()}"
                assert err.details(), "a refusal says why"
                codes[err.code().name] += 1
                return
            assert chunks and chunks[-1].finish_reason, "a stream that succeeds ends in full"
            codes["OK"] += 1

        one()
        # Most requests reached the engine, and refusals were drawn too.
        assert codes["OK"] >= MESH_EXAMPLES // 2 and codes["INVALID_ARGUMENT"] >= 10, codes
        for model in MODELS:
            req = pb.GenerateRequest(prompt="def add(a, b):", model=model, max_tokens=4)
            assert len([t for c in stub.Generate(req, timeout=30) for t in c.token_ids]) >= 1
    for model in MODELS:
        w = idle_worker(mesh.address, model)
        assert w.kv_blocks_used == 0 and w.running_requests == 0, f"{model}: {w}"
