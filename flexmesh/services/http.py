"""The OpenAI-compatible HTTP front end: a thin adapter over the same `Frontend` as gRPC.

JSON in, a checked `GenerationInput` (`services/core/inputs.py`, the gRPC servicer's checks) to
`Frontend.generate`, JSON or server-sent events out. Routing, admission, migration, deadlines
and metrics are the frontend's; this module only speaks the wire format (docs/http.md):

- `POST /v1/completions`, `POST /v1/chat/completions` (the chat template of the model's
  tokenizer; `model` is a resident model or `auto`), streaming or not, with
  `stream_options.include_usage`;
- `GET /v1/models`, `GET /health`;
- errors as OpenAI's `{"error": {message, type, param, code}}` with the HTTP status of the
  frontend's gRPC status (400, 401, 404, 429, 503, 504); `param` names the field. A malformed
  body (`http_body`), route or method is a 4xx, never a plain-text 500 or a reset;
- FlexMesh's extras: request fields `strategy`, `top_k`, `ignore_eos`, `stop_token_ids`,
  `return_token_ids`; every response's last message carries `flexmesh: {route, timings}`.

A client that disconnects cancels its request, which aborts it on its workers and frees its KV
blocks, as a gRPC cancel does.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import asdict
from typing import Any, TypeVar

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from flexmesh.meshcore.config import GatewayConfig
from flexmesh.meshcore.errors import (
    FlexMeshError,
    InvalidRequestError,
)
from flexmesh.services.core.frontend import Chunk, Frontend, GenerationInput
from flexmesh.services.core.inputs import generation_input
from flexmesh.services.http_body import (
    Body,
    chat_messages,
    completion_prompt,
    error_response,
    read_json,
    sampling_params,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")
RenderChat = Callable[[str, list[dict[str, Any]]], str]
"""`render(model, messages)`: the prompt text of a chat, by `model`'s chat template."""


class _Unauthenticated(FlexMeshError):
    status = "UNAUTHENTICATED"


class OpenAIServer:
    """The routes; `api_key` (when set) is required as `Authorization: Bearer <key>` on
    everything under /v1."""

    def __init__(
        self,
        frontend: Frontend,
        render_chat: RenderChat,
        api_key: str = "",
        model_paths: dict[str, str] | None = None,
    ) -> None:
        """`model_paths`: each model's local folder, listed as its `root` in /v1/models (where
        a load generator on this machine finds the tokenizer)."""
        self.frontend, self.render_chat, self.api_key = frontend, render_chat, api_key
        self.model_paths = model_paths or {}

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/health", self.health, methods=["GET"]),
            ],
            exception_handlers={HTTPException: _no_route},
        )

    # -- endpoints -------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "in_flight": self.frontend.in_flight})

    async def models(self, request: Request) -> Response:
        try:
            self._authorize(request)
        except FlexMeshError as exc:
            return error_response(exc)
        names = [*sorted(self.frontend.workers), *(["auto"] if self.frontend.probe else [])]
        large = self.frontend.router.policy.large_model
        data = [
            {
                "id": n,
                "object": "model",
                "created": 0,
                "owned_by": "flexmesh",
                "root": self.model_paths.get(large if n == "auto" else n),
            }
            for n in names
        ]
        return JSONResponse({"object": "list", "data": data})

    async def completions(self, request: Request) -> Response:
        return await self._serve(request, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        return await self._serve(request, chat=True)

    # -- the shared path -------------------------------------------------------------------

    async def _serve(self, request: Request, chat: bool) -> Response:
        model: Any = "auto"
        try:
            self._authorize(request)
            body = Body(await read_json(request, self.frontend.config.gateway.max_message_bytes))
            model = body.data.get("model") or "auto"
            inp = self._input(request, body, chat)
            stream, include_usage = body.streaming()
            reply = _Reply(chat, body.get("return_token_ids", bool, False), inp.request_id)
        except Exception as exc:  # a refusal; anything else is a bug, answered as JSON too
            if not isinstance(exc, FlexMeshError):
                log.exception("http.failed", path=request.url.path)
            code = exc.status if isinstance(exc, FlexMeshError) else "INTERNAL"
            self.frontend.record_failure(model if isinstance(model, str) else "auto", code)
            return error_response(exc)
        chunks = self.frontend.generate(inp)
        try:
            if not stream:
                return await _until_disconnect(request, reply.whole(chunks))
            # The first chunk before the 200: a refusal (overload, unknown model) keeps its
            # status. From the 200 on, Starlette cancels the stream when the client leaves.
            first = await _until_disconnect(request, anext(chunks))
        except _ClientGone:
            return Response(status_code=499)  # nobody reads it
        except Exception as exc:
            if not isinstance(exc, FlexMeshError):
                log.exception("http.failed", path=request.url.path)
            return error_response(exc)
        return StreamingResponse(
            reply.events(first, chunks, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )

    def _authorize(self, request: Request) -> None:
        if not self.api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token, self.api_key):
            raise _Unauthenticated("a valid API key is required (Authorization: Bearer <key>)")

    def _input(self, request: Request, body: Body, chat: bool) -> GenerationInput:
        body.check_fields(chat)
        model = body.get("model", str, "")
        if chat:
            messages = chat_messages(body)
            routed = model if model not in ("", "auto") else self.frontend.router.policy.large_model
            if routed not in self.frontend.workers:
                routed = self.frontend.default_model
            prompt, ids, field = self.render_chat(routed, messages), (), "messages"
            sampling = sampling_params(body, ("max_completion_tokens", "max_tokens"))
        else:
            (prompt, ids), field = completion_prompt(body), "prompt"
            sampling = sampling_params(body, ("max_tokens",))
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        gw = self.frontend.config.gateway
        return generation_input(gw, prompt, ids, sampling, model, rid, prompt_field=field)


class ChatTemplates:
    """Renders a chat to prompt text with its model's chat template (from its tokenizer)."""

    def __init__(self, tokenizers: dict[str, Any]) -> None:
        self.tokenizers = tokenizers

    def render(self, model: str, messages: list[dict[str, Any]]) -> str:
        tok = self.tokenizers.get(model)
        if tok is None or not getattr(tok, "chat_template", None):
            raise InvalidRequestError(
                "messages", f"model {model!r} has no chat template (use /v1/completions)"
            )
        try:
            return str(
                tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            )
        except Exception as exc:  # the template refuses the chat (roles out of order, ...)
            raise InvalidRequestError("messages", f"the chat template refused them: {exc}") from exc


async def serve_http(
    server: OpenAIServer, gw: GatewayConfig, port: int
) -> tuple[uvicorn.Server, int]:
    """Serve `server`'s routes with uvicorn on this event loop at `gw.host:port` (TLS with the
    gateway's cert and key); returns the server and its bound port once it accepts."""
    family = socket.AF_INET6 if ":" in gw.host else socket.AF_INET
    # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY only on sockets whose `proto` says
    # TCP, and accepted sockets copy it. Without it, a keep-alive request's response (head
    # and body, each SSE event: separate writes) waits ~40 ms on the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((gw.host, port))  # here, so a port in use is an error, not uvicorn's exit
    config = uvicorn.Config(
        server.app(),
        lifespan="off",
        access_log=False,
        log_config=None,
        ssl_certfile=gw.tls_cert_file or None,
        ssl_keyfile=gw.tls_key_file or None,
        timeout_graceful_shutdown=2,
    )
    http = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(http.serve(sockets=[sock]))
    while not http.started:
        if task.done():
            task.result()  # its error
            raise RuntimeError(f"the HTTP server on {gw.host}:{port} stopped while starting")
        await asyncio.sleep(0.01)
    return http, sock.getsockname()[1]


class _Reply:
    """One request's response in OpenAI's shape, whole or as server-sent events."""

    def __init__(self, chat: bool, token_ids: bool, request_id: str) -> None:
        self.chat, self.token_ids = chat, token_ids
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{request_id}"
        self.created = int(time.time())

    def _envelope(self, chunk: Chunk, stream: bool) -> dict[str, Any]:
        kind = "chat.completion" if self.chat else "text_completion"
        model = chunk.route.model if chunk.route else ""
        return {
            "id": self.id,
            "object": f"{kind}.chunk" if stream and self.chat else kind,
            "created": self.created,
            "model": model,
        }

    def _choice(self, text: str, ids: Sequence[int], finish: str | None, delta: bool) -> dict:
        choice: dict[str, Any] = {"index": 0}
        if not self.chat:
            choice.update(text=text, logprobs=None)
        elif delta:
            choice["delta"] = {"content": text} if text else {}
        else:
            choice["message"] = {"role": "assistant", "content": text}
        if self.token_ids:
            choice["token_ids"] = list(ids)
        choice["finish_reason"] = finish
        return choice

    @staticmethod
    def _extras(final: Chunk) -> dict[str, Any]:
        out = final.output
        usage = {
            "prompt_tokens": out.prompt_tokens,
            "completion_tokens": out.completion_tokens,
            "total_tokens": out.prompt_tokens + out.completion_tokens,
        }
        route = asdict(final.route) if final.route else {}
        return {"usage": usage, "flexmesh": {"route": route, "timings": final.timings}}

    async def whole(self, chunks: AsyncIterator[Chunk]) -> Response:
        text: list[str] = []
        ids: list[int] = []
        async with aclosing(chunks):
            async for chunk in chunks:
                text.append(chunk.output.text)
                ids.extend(chunk.output.token_ids)
                if chunk.final:
                    body = self._envelope(chunk, stream=False)
                    reason = chunk.output.finish_reason
                    body["choices"] = [self._choice("".join(text), ids, reason, delta=False)]
                    return JSONResponse({**body, **self._extras(chunk)})
        raise AssertionError("the frontend's stream ended without its final chunk")

    async def events(
        self, first: Chunk, chunks: AsyncIterator[Chunk], include_usage: bool
    ) -> AsyncIterator[str]:
        """Server-sent events from `first` on; an error after the 200 is one `error` event.
        With `include_usage` every chunk has a `usage` field, null but in the last one, which
        has no choices (OpenAI's shape)."""

        def event(chunk: Chunk, choices: list[dict[str, Any]], **extra: Any) -> str:
            usage = {"usage": None} if include_usage else {}
            return _event({**self._envelope(chunk, True), "choices": choices, **usage, **extra})

        async with aclosing(chunks):
            if self.chat:
                role = {"index": 0, "delta": {"role": "assistant", "content": ""}}
                yield event(first, [{**role, "finish_reason": None}])
            chunk: Chunk | None = first
            try:
                while chunk is not None:
                    out = chunk.output
                    reason = out.finish_reason if chunk.final else None
                    choices = [self._choice(out.text, out.token_ids, reason, delta=True)]
                    if not chunk.final:
                        yield event(chunk, choices)
                        chunk = await anext(chunks, None)
                        continue
                    extras = self._extras(chunk)
                    yield event(chunk, choices, flexmesh=extras["flexmesh"])
                    if include_usage:
                        yield event(chunk, [], usage=extras["usage"])
                    chunk = None
            except Exception as exc:
                yield _event(json.loads(error_response(exc).body))
        yield "data: [DONE]\n\n"


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


async def _no_route(request: Request, exc: Exception) -> Response:
    """Starlette's 404 (no such route) and 405 (wrong method) in OpenAI's error shape."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    message = f"{request.method} {request.url.path}: {getattr(exc, 'detail', '')}"
    code = {404: "NOT_FOUND", 405: "UNIMPLEMENTED"}.get(status, "INVALID_ARGUMENT")
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    return JSONResponse({"error": error}, status_code=status, headers=getattr(exc, "headers", None))


class _ClientGone(Exception):
    """The client disconnected before its response was ready."""


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result, or `_ClientGone` once `work` is cancelled (which aborts the request on
    its workers) because the client disconnected first."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise _ClientGone
    return task.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
