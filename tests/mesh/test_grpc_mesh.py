"""End to end through real gRPC on the demo mesh (one shared local Ray instance)."""

from __future__ import annotations

import asyncio
import math
import os

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flexmesh.launch.mesh import Mesh
from flexmesh.services.grpc_client import stream_generate
from flexmesh.v1 import flexmesh_pb2 as pb
from flexmesh.v1 import flexmesh_pb2_grpc as pb_grpc
from tests.runner.conftest import PROMPTS, hf_greedy

pytestmark = pytest.mark.slow
CODE_PROMPT = 'def fizzbuzz(n):\n    """Return Fizz, Buzz or the number."""\n'


async def _status(channel: grpc.aio.Channel, model: str) -> pb.WorkerStatus:
    st = await pb_grpc.AdminStub(channel).GetStatus(pb.GetStatusRequest(), timeout=10)
    return next(w for w in st.workers if w.model == model)


async def _wait_idle(
    channel: grpc.aio.Channel, model: str, timeout_s: float = 10.0
) -> pb.WorkerStatus:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        w = await _status(channel, model)
        if (
            w.kv_blocks_used == 0 and w.running_requests == 0
        ) or asyncio.get_running_loop().time() > deadline:
            return w
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("model", ["demo-small", "demo-large"])
async def test_greedy_tokens_equal_hugging_face(
    channel: grpc.aio.Channel, mesh: Mesh, model: str
) -> None:
    from transformers import AutoTokenizer

    path = str(mesh.config.models_dir) + "/" + model
    tok = AutoTokenizer.from_pretrained(path)
    stub = pb_grpc.GenerationStub(channel)
    reqs = [pb.GenerateRequest(prompt=p, max_tokens=20, model=model) for p in PROMPTS]
    results = await asyncio.gather(*(stream_generate(stub, r, 60) for r in reqs))
    for prompt, res in zip(PROMPTS, results, strict=True):
        ids = tuple(tok.encode(prompt, add_special_tokens=False))
        assert res.token_ids == hf_greedy(path, ids, 20)
        assert res.gaps == 0, "chunk offsets are contiguous from 0"
        final = res.final
        assert final is not None and final.route.model == model
        assert final.usage.prompt_tokens == len(ids)
        assert final.usage.completion_tokens == len(res.token_ids)
        assert final.route.worker == f"worker-{model}-0"
        assert 0 < final.timings.ttft_ms <= final.timings.total_ms


async def test_stream_arrives_in_several_chunks(channel: grpc.aio.Channel) -> None:
    stub = pb_grpc.GenerationStub(channel)
    req = pb.GenerateRequest(prompt="hello", max_tokens=64, ignore_eos=True, model="demo-large")
    res = await stream_generate(stub, req, 60)
    assert len(res.token_ids) == 64 and res.gaps == 0
    assert 2 <= res.chunks < 64, "tokens must be chunked, never one message per token"
    assert res.final is not None and res.final.finish_reason == "length"


async def test_cancel_mid_stream_frees_every_kv_block(channel: grpc.aio.Channel) -> None:
    stub = pb_grpc.GenerationStub(channel)
    call = stub.Generate(
        pb.GenerateRequest(prompt="x " * 50, max_tokens=2000, ignore_eos=True, model="demo-large")
    )
    async for _ in call:
        break
    assert (await _status(channel, "demo-large")).kv_blocks_used > 0
    call.cancel()
    w = await _wait_idle(channel, "demo-large")
    assert w.kv_blocks_used == 0 and w.running_requests == 0


async def test_deadline_is_honoured_and_frees_blocks(channel: grpc.aio.Channel) -> None:
    stub = pb_grpc.GenerationStub(channel)
    req = pb.GenerateRequest(prompt="y " * 30, max_tokens=2000, ignore_eos=True, model="demo-large")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stream_generate(stub, req, timeout_s=1.0)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert (await _wait_idle(channel, "demo-large")).kv_blocks_used == 0


INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("fields", "code", "named"),
    [
        ({"prompt": ""}, grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
        ({"max_tokens": 0}, grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
        ({"max_tokens": -3}, grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
        ({"temperature": -1.0}, grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
        ({"temperature": math.nan}, grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
        ({"temperature": math.inf}, grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
        ({"max_tokens": 2**31 - 1}, grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
        ({"stop_token_ids": [10**9]}, grpc.StatusCode.INVALID_ARGUMENT, "stop_token_ids"),
        ({"stop": ["x"] * 17}, grpc.StatusCode.INVALID_ARGUMENT, "stop"),
        ({"stop": ["x" * 300]}, grpc.StatusCode.INVALID_ARGUMENT, "stop"),
        ({"top_p": 0.0}, grpc.StatusCode.INVALID_ARGUMENT, "top_p"),
        ({"top_p": 1.5}, grpc.StatusCode.INVALID_ARGUMENT, "top_p"),
        ({"prompt_token_ids": [7] * 5000}, grpc.StatusCode.INVALID_ARGUMENT, "context"),
        ({"prompt_token_ids": [7] * (1 << 18 | 1)}, INVALID, "max_prompt_tokens"),
        ({"prompt": "x" * (1 << 20 | 1)}, grpc.StatusCode.INVALID_ARGUMENT, "max_prompt_bytes"),
        ({"prompt": "x" * (5 << 20)}, grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
        ({"request_id": "r" * 129}, grpc.StatusCode.INVALID_ARGUMENT, "request_id"),
        ({"strategy": "warp"}, grpc.StatusCode.INVALID_ARGUMENT, "strategy"),
        ({"model": "gpt-9"}, grpc.StatusCode.NOT_FOUND, "gpt-9"),
    ],
)
async def test_bad_input_gets_status_code_naming_the_field(
    channel: grpc.aio.Channel, fields: dict[str, object], code: grpc.StatusCode, named: str
) -> None:
    req = pb.GenerateRequest(prompt="hi", model="demo-small")
    for k, v in fields.items():
        if isinstance(v, list):
            getattr(req, k).extend(v)
        else:
            setattr(req, k, v)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stream_generate(pb_grpc.GenerationStub(channel), req, 30)
    assert err.value.code() == code
    assert named in err.value.details()


async def test_health_serving_and_reflection(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "flexmesh.v1.Generation", "flexmesh.v1.Admin"):
        resp = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name async for r in responses for s in r.list_services_response.service}
    assert {"flexmesh.v1.Generation", "flexmesh.v1.Admin", "grpc.health.v1.Health"} <= names


async def test_classify_and_routed_generate_fill_the_route(channel: grpc.aio.Channel) -> None:
    gen = pb_grpc.GenerationStub(channel)
    prompt = CODE_PROMPT
    c = await gen.Classify(pb.ClassifyRequest(prompt=prompt), timeout=30)
    assert c.intent == "code" and c.backend == "classifier"
    assert abs(sum(c.scores.values()) - 1.0) < 1e-3 and 0 <= c.confidence <= 1 and c.probe_ms > 0
    res = await stream_generate(gen, pb.GenerateRequest(prompt=prompt, max_tokens=8), 60)
    route = res.final.route if res.final else None
    assert route is not None and route.intent == "code"
    assert (route.model, route.strategy) == ("demo-small", "pld")
    assert route.probe_ms > 0 and route.confidence > 0
    assert route.draft_tokens_accepted <= route.draft_tokens_proposed
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gen.Classify(pb.ClassifyRequest(prompt=""), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_mixed_prompt_reports_its_intents_and_goes_to_the_large_model(
    channel: grpc.aio.Channel,
) -> None:
    gen = pb_grpc.GenerationStub(channel)
    prompt = (
        "[intent=chat] Write a haiku about autumn leaves. Then: a train leaves at 3:15 pm and "
        "travels 210 km at 84 km/h. At what time does it arrive?"
    )
    c = await gen.Classify(pb.ClassifyRequest(prompt=prompt), timeout=30)
    found = {c.intent, *c.intents}
    assert {"chat", "math"} <= found, c
    res = await stream_generate(gen, pb.GenerateRequest(prompt=prompt, max_tokens=4), 60)
    route = res.final.route if res.final else None
    assert route is not None and route.model == "demo-large" and route.intent == "math"
    assert route.demanding and not route.downgraded and set(route.intents) <= set(found)


async def test_policy_is_versioned_and_live(channel: grpc.aio.Channel) -> None:
    admin, gen = pb_grpc.AdminStub(channel), pb_grpc.GenerationStub(channel)
    before = await admin.GetPolicy(pb.GetPolicyRequest(), timeout=10)
    change = pb.SetPolicyRequest(
        routes=[pb.IntentRoute(intent="code", model="demo-large", strategy="spec")],
        confidence_threshold=0.0,  # every probe answer is confident enough: the table decides
        expected_version=before.version,
    )
    after = await admin.SetPolicy(change, timeout=10)
    try:
        assert after.version == before.version + 1
        assert any(r.intent == "code" and r.model == "demo-large" for r in after.routes)
        res = await stream_generate(gen, pb.GenerateRequest(prompt=CODE_PROMPT, max_tokens=8), 60)
        assert res.final is not None and res.final.route.model == "demo-large"
        assert res.final.route.strategy == "spec", res.final.route
        assert res.final.route.draft_tokens_proposed > 0
        with pytest.raises(grpc.aio.AioRpcError) as err:  # stale version: lost update refused
            await admin.SetPolicy(change, timeout=10)
        assert (
            err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            and "expected_version" in err.value.details()
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await admin.SetPolicy(pb.SetPolicyRequest(confidence_threshold=2.0), timeout=10)
        assert "confidence_threshold" in err.value.details()
    finally:  # the session's mesh goes on serving the other tests: leave it as it was
        code = next(r for r in before.routes if r.intent == "code")
        restore = pb.SetPolicyRequest(
            routes=[code], confidence_threshold=before.confidence_threshold
        )
        restored = await admin.SetPolicy(restore, timeout=10)
        await admin.UnpinPolicy(pb.UnpinPolicyRequest(), timeout=10)
    assert restored.version == after.version + 1
    status = await admin.GetStatus(pb.GetStatusRequest(), timeout=10)
    assert status.policy_version == after.version + 1 and list(status.policy.pinned) == []
    assert [r for r in status.policy.routes if r.intent == "code"] == [code]


async def test_workers_bound_their_kernel_caches(mesh: Mesh) -> None:
    """The environment that keeps a worker's memory flat under shapes that change every step
    (`flexmesh bench soak` measures the memory itself)."""
    from flexmesh.launch.mesh import KERNEL_CACHE_ENV

    workers = [h for name, h in mesh.actors.items() if name.startswith("worker-")]
    envs = await asyncio.gather(
        *(w.__ray_call__.remote(lambda _: {k: os.environ.get(k) for k in KERNEL_CACHE_ENV})
          for w in workers)
    )  # fmt: skip
    assert workers and all(env == KERNEL_CACHE_ENV for env in envs)
