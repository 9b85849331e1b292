"""The replay's HTTP side: any OpenAI-compatible server's streaming `/v1/completions` (FlexMesh's
own HTTP API, vLLM, SGLang, TGI, ...), so one workload measures several servers side by side.

Each request asks for `stream_options.include_usage` (the server's token counts) and
`return_token_ids` (ids per chunk where the server sends them, as FlexMesh and vLLM do; a
server that does not counts one token per text chunk until its usage arrives). FlexMesh's
route and timings come from the last message's `flexmesh` field. HTTP statuses map back to the
gRPC status names the reports use (429 -> RESOURCE_EXHAUSTED, ...). The API key comes from
FLEXMESH_API_KEY or OPENAI_API_KEY.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx

from flexmesh import env
from flexmesh.loadgen.prompts import tokenizer_dir
from flexmesh.loadgen.records import ReplayError, ReplayRequest, Sender, Stream, server_fields
from flexmesh.meshcore.errors import HTTP_STATUS

STATUS_OF_HTTP = {http: name for name, http in reversed(HTTP_STATUS.items())}
"""gRPC status name of an HTTP status (400 -> INVALID_ARGUMENT: the first name wins)."""


def is_http(target: str) -> bool:
    return target.startswith(("http://", "https://"))


def http_client(target: str, max_in_flight: int) -> httpx.AsyncClient:
    """A client with a connection for every request in flight and no timeout of its own (each
    call has its deadline)."""
    key = env.api_key(client=True)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)
    return httpx.AsyncClient(base_url=target, headers=headers, limits=limits, timeout=None)


def _status(code: Any) -> str:
    if isinstance(code, str) and code.isupper():
        return code  # FlexMesh's error bodies carry the gRPC status name
    if isinstance(code, int):
        return STATUS_OF_HTTP.get(code, f"HTTP_{code}")
    return "UNKNOWN"


def _error(body: Any, http_status: int) -> ReplayError:
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return ReplayError(_status(http_status), str(body)[:300])
    code = err.get("code") if isinstance(err.get("code"), str) else http_status
    return ReplayError(_status(code), str(err.get("message", ""))[:300])


def http_sender(client: httpx.AsyncClient, model: str, strategy: str, temperature: float) -> Sender:
    """Streams `/v1/completions` of `client`'s server."""

    async def send(
        req: ReplayRequest,
        request_id: str,
        timeout_s: float | None,
        stream: Stream,
        elapsed_s: Callable[[], float],
    ) -> None:
        body: dict[str, Any] = {
            "model": model or "auto",
            "prompt": req.prompt,
            "max_tokens": req.max_tokens,
            "temperature": temperature,
            "ignore_eos": req.ignore_eos,
            "stream": True,
            "stream_options": {"include_usage": True},
            "return_token_ids": True,
        }
        if strategy:
            body["strategy"] = strategy
        try:
            async with asyncio.timeout(timeout_s):
                await _stream(client, body, request_id, stream, elapsed_s)
        except TimeoutError as exc:
            raise ReplayError("DEADLINE_EXCEEDED", f"no end within {timeout_s} s") from exc
        except httpx.HTTPError as exc:
            raise ReplayError("UNAVAILABLE", f"{type(exc).__name__}: {exc}") from exc

    return send


async def _stream(
    client: httpx.AsyncClient,
    body: dict[str, Any],
    request_id: str,
    stream: Stream,
    elapsed_s: Callable[[], float],
) -> None:
    headers = {"x-request-id": request_id}
    async with client.stream("POST", "/v1/completions", json=body, headers=headers) as resp:
        if resp.status_code != 200:
            raw = await resp.aread()
            try:
                raise _error(json.loads(raw), resp.status_code)
            except json.JSONDecodeError:
                raise ReplayError(_status(resp.status_code), raw.decode()[:300]) from None
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line.removeprefix("data:").strip()
            if data == "[DONE]":
                return
            _take(json.loads(data), stream, elapsed_s)
    raise ReplayError("UNAVAILABLE", "the stream ended without [DONE]")


def _take(msg: dict[str, Any], stream: Stream, elapsed_s: Callable[[], float]) -> None:
    """Count one server-sent event into `stream` (an error event raises)."""
    if "error" in msg:
        raise _error(msg, 500)
    for choice in msg.get("choices") or ():
        ids = choice.get("token_ids")
        count = len(ids) if ids is not None else int(bool(choice.get("text")))
        if count:
            stream.add(elapsed_s(), count, ids or ())
        if choice.get("finish_reason"):
            stream.final["finish_reason"] = choice["finish_reason"]
    usage = msg.get("usage")
    if usage:
        stream.final["prompt_tokens"] = usage.get("prompt_tokens", 0)
        stream.final["completion_tokens"] = usage.get("completion_tokens", 0)
    extras = msg.get("flexmesh")
    if extras:
        stream.final.update(server_fields(extras.get("route"), extras.get("timings")))


async def served_model_path(target: str, model: str = "") -> str | None:
    """The local folder of `target`'s model (`model`, else its first): the `root` of its entry
    in `/v1/models` (FlexMesh and vLLM list it), when that folder exists here."""
    async with http_client(target, 1) as client:
        try:
            resp = await client.get("/v1/models", timeout=10)
            entries = resp.json().get("data", [])
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
    return tokenizer_dir(e.get("root") for e in sorted(entries, key=lambda e: e.get("id") != model))
