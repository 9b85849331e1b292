"""The official `openai` client against the demo mesh's HTTP API: completions and chat,
streaming and not, give the same greedy tokens as the gRPC path; a client that leaves
mid-stream frees every KV block."""

from __future__ import annotations

from typing import Any

import grpc
import httpx
import openai
import pytest

from flexmesh.launch.mesh import Mesh
from flexmesh.services.grpc_client import stream_generate
from flexmesh.v1 import flexmesh_pb2 as pb
from flexmesh.v1 import flexmesh_pb2_grpc as pb_grpc
from tests.mesh.test_grpc_mesh import _wait_idle

pytestmark = pytest.mark.slow
PROMPT = "def add(a, b):\n    return"
CHAT = [{"role": "user", "content": "Write a function that adds two numbers."}]
EXTRA = {"return_token_ids": True, "ignore_eos": True}


@pytest.fixture
def client(mesh: Mesh) -> openai.AsyncOpenAI:
    assert mesh.http_address is not None
    return openai.AsyncOpenAI(base_url=f"http://{mesh.http_address}/v1", api_key="unused")


async def _grpc_ids(channel: grpc.aio.Channel, prompt: str, model: str) -> tuple[int, ...]:
    req = pb.GenerateRequest(prompt=prompt, max_tokens=12, model=model, ignore_eos=True)
    res = await stream_generate(pb_grpc.GenerationStub(channel), req, 60)
    return tuple(res.token_ids)


def _ids(choice: Any) -> tuple[int, ...]:
    return tuple(choice.model_extra["token_ids"])


@pytest.mark.parametrize("model", ["demo-small", "demo-large"])
async def test_completions_match_grpc_streaming_and_not(
    client: openai.AsyncOpenAI, channel: grpc.aio.Channel, model: str
) -> None:
    expected = await _grpc_ids(channel, PROMPT, model)
    kw: dict[str, Any] = {"model": model, "prompt": PROMPT, "max_tokens": 12, "temperature": 0}
    whole = await client.completions.create(**kw, extra_body=EXTRA)
    assert _ids(whole.choices[0]) == expected
    assert whole.usage is not None and whole.usage.completion_tokens == 12
    assert whole.model == model and whole.choices[0].finish_reason == "length"

    stream = await client.completions.create(
        **kw, stream=True, stream_options={"include_usage": True}, extra_body=EXTRA
    )
    ids: list[int] = []
    text, usage = "", None
    async for chunk in stream:
        for c in chunk.choices:
            ids += _ids(c)
            text += c.text
        usage = chunk.usage or usage
    assert tuple(ids) == expected and text == whole.choices[0].text
    assert usage is not None and usage.completion_tokens == 12


async def test_chat_matches_grpc_on_the_chat_template(
    client: openai.AsyncOpenAI, channel: grpc.aio.Channel, mesh: Mesh
) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(f"{mesh.config.models_dir}/demo-large")
    rendered = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    expected = await _grpc_ids(channel, rendered, "demo-large")
    kw: dict[str, Any] = {"model": "demo-large", "messages": CHAT, "max_tokens": 12}
    whole = await client.chat.completions.create(**kw, temperature=0, extra_body=EXTRA)
    assert _ids(whole.choices[0]) == expected
    assert whole.choices[0].message.role == "assistant"

    stream = await client.chat.completions.create(
        **kw, temperature=0, stream=True, extra_body=EXTRA
    )
    ids: list[int] = []
    async for chunk in stream:
        for c in chunk.choices:
            ids += c.model_extra.get("token_ids", [])
    assert tuple(ids) == expected


async def test_auto_is_routed_and_listed(client: openai.AsyncOpenAI, mesh: Mesh) -> None:
    models = [m.id async for m in client.models.list()]
    assert models == ["demo-large", "demo-small", "auto"]
    out = await client.completions.create(model="auto", prompt=PROMPT, max_tokens=4)
    assert out.model in ("demo-large", "demo-small")
    assert out.model_extra["flexmesh"]["route"]["reason"]


async def test_openai_errors_carry_their_status(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        await client.completions.create(model="gpt-4", prompt="x", max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        await client.completions.create(model="demo-small", prompt="x", max_tokens=1 << 30)


async def test_a_client_leaving_mid_stream_frees_every_kv_block(
    mesh: Mesh, channel: grpc.aio.Channel
) -> None:
    # ~2000 tokens take far longer than `_wait_idle` waits: only an abort frees the KV in time.
    body = {"model": "demo-large", "prompt": PROMPT, "max_tokens": 2000, "ignore_eos": True,
            "stream": True}  # fmt: skip
    async with httpx.AsyncClient(base_url=f"http://{mesh.http_address}", timeout=60) as http:
        async with http.stream("POST", "/v1/completions", json=body) as resp:
            events = 0
            async for line in resp.aiter_lines():
                events += line.startswith("data: ")
                if events == 3:
                    break  # leave while the worker is still decoding
    w = await _wait_idle(channel, "demo-large")
    assert w.kv_blocks_used == 0 and w.running_requests == 0
