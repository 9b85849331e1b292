"""The OpenAI-compatible HTTP API over fake workers, through a real uvicorn server: each error
class with its HTTP status and OpenAI's error body, the API key, streaming shapes, and a client
that disconnects cancelling its request on the worker."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from flexmesh.meshcore.config import GatewayConfig, MeshConfig, ModelSpec
from flexmesh.services.core.frontend import Frontend
from flexmesh.services.http import OpenAIServer, serve_http
from tests.mesh.fake_worker import FakeWorker, wait_until
from tests.mesh.test_frontend import RecordingMetrics


def _render(model: str, messages: list[dict[str, Any]]) -> str:
    return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


class Api:
    def __init__(self, client: httpx.AsyncClient, workers: dict[str, FakeWorker], frontend: Any):
        self.client, self.workers, self.frontend = client, workers, frontend


async def _api(gateway: GatewayConfig) -> AsyncIterator[Api]:
    cfg = MeshConfig(models=(ModelSpec(name="ok"), ModelSpec(name="broken")), gateway=gateway)
    workers = {
        "ok": FakeWorker("w-ok", "ok", tokens=2, gate="last"),
        "broken": FakeWorker("w-broken", "broken", tokens=2, gate="last", fault="fails"),
    }
    frontend = Frontend(cfg, {k: [w] for k, w in workers.items()}, metrics=RecordingMetrics())
    server, port = await serve_http(OpenAIServer(frontend, _render, gateway.api_key), gateway, 0)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        yield Api(client, workers, frontend)
    server.should_exit = True


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async for a in _api(GatewayConfig(port=0, max_queue_len=2, request_timeout_s=1.0)):
        yield a


def _assert_error(resp: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param and param in err["message"]
    return err  # type: ignore[no-any-return]


async def test_a_completion_and_a_chat_come_back_in_openai_shape(api: Api) -> None:
    api.workers["ok"].go.set()
    body = {"model": "ok", "prompt": "hi", "max_tokens": 2, "return_token_ids": True}
    resp = await api.client.post("/v1/completions", json=body)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["object"] == "text_completion" and out["model"] == "ok"
    assert out["choices"][0]["text"] == "ab" and out["choices"][0]["token_ids"] == [0, 1]
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"]["completion_tokens"] == 2
    assert out["flexmesh"]["route"]["worker"] == "w-ok"
    assert not out["flexmesh"]["route"]["demanding"] and not out["flexmesh"]["route"]["downgraded"]

    chat = {"model": "ok", "messages": [{"role": "user", "content": "hi"}]}
    resp = await api.client.post("/v1/chat/completions", json=chat)
    msg = resp.json()["choices"][0]["message"]
    assert resp.json()["object"] == "chat.completion" and msg == {
        "role": "assistant",
        "content": "ab",
    }

    models = (await api.client.get("/v1/models")).json()
    assert [m["id"] for m in models["data"]] == ["broken", "ok"]  # no probe: no "auto"
    assert (await api.client.get("/health")).json()["status"] == "ok"


async def _events(resp: httpx.Response) -> list[Any]:
    events = []
    async for line in resp.aiter_lines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


async def test_a_stream_is_server_sent_events_with_usage_last(api: Api) -> None:
    api.workers["ok"].go.set()
    body = {
        "model": "ok",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with api.client.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = await _events(resp)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "ab"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 2
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all("usage" in c for c in chunks), "include_usage: every chunk has the field"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "ok", "prompt": "x", "temperature": "hot"}, "temperature"),
        ({"model": "ok", "prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"model": "ok", "prompt": "x", "n": 2}, "n"),
        ({"model": "ok", "prompt": ["a", "b"]}, "prompt"),
        ({"model": "ok", "prompt": ""}, "prompt"),
        ({"model": "ok", "prompt": "x", "stop": [1]}, "stop"),
        ({"model": "ok", "prompt": "x", "stream": "yes"}, "stream"),
        ({"model": "ok", "prompt": "x", "top_k": -2}, "top_k"),  # -1 is vLLM's "no limit"
        # OpenAI's types and ranges: a boolean is not an integer, temperature is in [0, 2], ...
        ({"model": "ok", "prompt": "x", "n": True}, "n"),
        ({"model": "ok", "prompt": "x", "max_tokens": True}, "max_tokens"),
        ({"model": "ok", "prompt": "x", "temperature": 2.5}, "temperature"),
        ({"model": "ok", "prompt": "x", "seed": 2**64}, "seed"),
        ({"model": "ok", "prompt": "x", "logprobs": True}, "logprobs"),  # an integer here
        ({"model": "ok", "prompt": "x", "echo": 0}, "echo"),
        ({"model": "ok", "prompt": "x", "user": 5}, "user"),
        (
            {"model": "ok", "prompt": "x", "stream_options": {"include_usage": True}},
            "stream_options",
        ),  # only with stream: true
        (
            {"model": "ok", "prompt": "x", "response_format": {"type": "json_object"}},
            "response_format",
        ),
    ],
)
async def test_bad_input_is_400_naming_the_field(
    api: Api, body: dict[str, Any], param: str
) -> None:
    err = _assert_error(await api.client.post("/v1/completions", json=body), 400, param)
    assert err["type"] == "invalid_request_error" and err["code"] == "INVALID_ARGUMENT"


USER = {"role": "user", "content": "hi"}


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([], "messages"),
        ([{"role": "user"}], "messages[0].content"),
        ([{"role": "user", "content": None}], "messages[0].content"),
        ([{"role": "user", "content": 0}], "messages[0].content"),
        ([{"role": "user", "content": []}], "messages[0].content"),
        (
            [{"role": "user", "content": [{"type": "text", "text": 5}]}],
            "messages[0].content[0].text",
        ),
        ([{"role": "user", "content": [{"type": "image_url"}]}], "messages[0].content[0].type"),
        ([{"content": "hi"}], "messages[0].role"),
        ([{"role": "bogus", "content": "hi"}], "messages[0].role"),
        ([{"role": "user", "content": "hi", "name": 5}], "messages[0].name"),
        ([{"role": "tool", "content": "42"}, USER], "messages[0].tool_call_id"),
        ([{"role": "assistant"}, USER], "messages[0].content"),
        ([USER, "hi"], "messages[1]"),
    ],
)
async def test_chats_openai_refuses_are_400_naming_the_message(
    api: Api, messages: Any, param: str
) -> None:
    body = {"model": "ok", "messages": messages}
    _assert_error(await api.client.post("/v1/chat/completions", json=body), 400, param)


async def test_a_tool_call_and_its_answer_are_a_chat(api: Api) -> None:
    api.workers["ok"].go.set()
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "developer", "content": [{"type": "text", "text": "be brief"}]},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        USER,
    ]
    body = {"model": "ok", "messages": messages, "logprobs": False}
    resp = await api.client.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize(
    ("raw", "param", "says"),
    [
        (b"{not json", "body", "JSON"),
        (b"[" * 100_000, "body", "nests"),  # Python's parser would raise RecursionError
        (b'{"prompt": ' + b"[" * 65 + b"]" * 65 + b"}", "prompt", "nests"),
        (b'{"prompt": "x", "temperature": NaN}', "body", "NaN"),  # not JSON, though Python's
        (b'{"prompt": "\\ud800"}', "prompt", "surrogate"),  # parses into a str no UTF-8 holds
        (b'{"prompt": "\xed\xa0\x80"}', "body", "JSON"),  # the same surrogate as raw bytes
        (b'{"prompt": "' + b"x" * (5 << 20) + b'"}', "body", "max_message_bytes"),
    ],
)
async def test_bodies_that_are_not_json_text_are_400_on_a_kept_connection(
    api: Api, raw: bytes, param: str, says: str
) -> None:
    api.workers["ok"].go.set()
    err = _assert_error(await api.client.post("/v1/completions", content=raw), 400, param)
    assert says in err["message"]
    resp = await api.client.post("/v1/completions", json={"model": "ok", "prompt": "x"})
    assert resp.status_code == 200, "the connection still serves"


async def test_unknown_routes_and_methods_answer_in_openai_shape(api: Api) -> None:
    err = _assert_error(await api.client.post("/v1/embeddings", json={}), 404)
    assert err["code"] == "NOT_FOUND" and "/v1/embeddings" in err["message"]
    err = _assert_error(await api.client.get("/v1/completions"), 405)
    assert err["type"] == "invalid_request_error"


async def test_keep_alive_requests_do_not_wait_for_a_delayed_ack(api: Api) -> None:
    """Without TCP_NODELAY on the server's sockets each response on a kept connection waited
    ~40 ms (its head and body are separate writes; Nagle holds the second)."""
    times = []
    for _ in range(9):
        start = time.perf_counter()
        assert (await api.client.get("/health")).status_code == 200
        times.append(time.perf_counter() - start)
    assert statistics.median(times) < 0.025, times


async def test_an_unknown_model_is_404(api: Api) -> None:
    for stream in (False, True):
        body = {"model": "nope", "prompt": "x", "stream": stream}
        err = _assert_error(await api.client.post("/v1/completions", json=body), 404)
        assert err["code"] == "NOT_FOUND" and "nope" in err["message"]


async def test_overload_is_429(api: Api) -> None:
    api.workers["ok"].gate = "first"
    body = {"model": "ok", "prompt": "x"}
    held = [asyncio.create_task(api.client.post("/v1/completions", json=body)) for _ in range(2)]
    await wait_until(lambda: api.frontend.in_flight >= 2)
    err = _assert_error(await api.client.post("/v1/completions", json=body), 429)
    assert err["type"] == "rate_limit_error"
    api.workers["ok"].go.set()
    assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]


async def test_a_worker_lost_with_none_left_is_503_or_an_error_event(api: Api) -> None:
    body = {"model": "broken", "prompt": "x"}
    err = _assert_error(await api.client.post("/v1/completions", json=body), 503)
    assert err["code"] == "UNAVAILABLE"
    async with api.client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200  # the first token was out before the worker broke
        events = await _events(r)
    assert events[0]["choices"][0]["text"] == "a"
    assert events[-2]["error"]["code"] == "UNAVAILABLE" and events[-1] == "[DONE]"


async def test_a_deadline_passed_is_504(api: Api) -> None:
    api.workers["ok"].gate = "first"  # never released: the 1 s deadline passes
    err = _assert_error(await api.client.post("/v1/completions", json={"prompt": "x"}), 504)
    assert err["code"] == "DEADLINE_EXCEEDED"


async def test_the_api_key_guards_v1_but_not_health() -> None:
    async for api in _api(GatewayConfig(port=0, api_key="s3cret")):
        api.workers["ok"].go.set()
        body = {"model": "ok", "prompt": "x"}
        _assert_error(await api.client.post("/v1/completions", json=body), 401)
        bad = {"Authorization": "Bearer wrong"}
        _assert_error(await api.client.get("/v1/models", headers=bad), 401)
        good = {"Authorization": "Bearer s3cret"}
        resp = await api.client.post("/v1/completions", json=body, headers=good)
        assert resp.status_code == 200
        assert (await api.client.get("/health")).status_code == 200


@pytest.mark.parametrize("case", ["whole", "mid_stream", "stream_before_its_first_token"])
async def test_a_client_that_disconnects_cancels_its_request(api: Api, case: str) -> None:
    worker = api.workers["ok"]  # its second token waits on `go`, never set here
    worker.gate = "first" if case == "stream_before_its_first_token" else "last"
    body = {"model": "ok", "prompt": "x", "stream": case != "whole"}
    headers = {"x-request-id": f"gone-{case}"}
    if case == "mid_stream":
        async with api.client.stream("POST", "/v1/completions", json=body, headers=headers) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    break  # the first token arrived: leave mid-stream
    else:
        call = asyncio.create_task(api.client.post("/v1/completions", json=body, headers=headers))
        await wait_until(lambda: api.frontend.in_flight >= 1)
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
    await wait_until(lambda: bool(worker.unfinished) and api.frontend.in_flight == 0)
    assert worker.unfinished == [f"gone-{case}"]


def test_top_k_minus_one_is_no_limit_and_other_negatives_are_refused() -> None:
    from flexmesh.meshcore.errors import InvalidRequestError
    from flexmesh.services.http_body import top_k

    assert (top_k(-1), top_k(0), top_k(5)) == (0, 0, 5)
    with pytest.raises(InvalidRequestError, match="top_k"):
        top_k(-3)
