"""The worker actor: one model on one device, its engine loop, tokens streamed back in chunks.

A Ray hop costs about 1 ms, so tokens never cross one by one: the first chunk leaves as soon
as the first token exists (TTFT); a later chunk leaves when it holds `stream_chunk_tokens`
tokens, when `stream_interval_ms` passed since the previous one, or when the request ends. With
more than `stream_fanout` streams open on the worker both bounds grow in proportion, so the
messages a worker sends per second stay flat with load (each costs the gateway ~0.7 ms of CPU,
taken from the model's threads on a small machine; docs/engine.md).

Prefill/decode hand-off (docs/pd.md): a prefill worker's `generate` of a `hand_off` request
ends after the first token with the request's state, and its engine exports the KV to this
worker's `KVMover` (`actors/kv_mover.py`); the decode worker's `resume` has its own mover pull
the KV, imports it and streams the rest.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, replace
from typing import Any

import ray
import structlog

from flexmesh.actors.kv_mover import KVMover
from flexmesh.actors.runner.async_engine import AsyncEngine, Stream
from flexmesh.actors.runner.engine import Engine
from flexmesh.actors.telemetry import WorkerMetrics
from flexmesh.logs import configure_logging
from flexmesh.meshcore.config import EngineConfig, GatewayConfig, PDConfig
from flexmesh.meshcore.messages import RequestOutput, RequestState, WorkerStatus, merge_outputs

log = structlog.get_logger(__name__)


class Worker:
    """Thin shell around an `AsyncEngine`; Ray makes it a named actor (see `launch/mesh.py`)."""

    def __init__(
        self,
        name: str,
        model: str,
        model_path: str,
        engine_config: EngineConfig,
        role: str = "mixed",
        stream: GatewayConfig | None = None,
        draft_model_path: str | None = None,
        pd: PDConfig | None = None,
        namespace: str = "flexmesh",
        quantization: str = "none",
    ) -> None:
        configure_logging()
        # The engine thread and the event loop share the GIL; hand it over within 0.5 ms
        # (default 5 ms) so streaming work never holds a model step back for long.
        sys.setswitchinterval(0.0005)
        self.name, self.model, self.model_path, self.role = name, model, model_path, role
        self.namespace = namespace
        self.pd = pd or PDConfig()
        stream = stream or GatewayConfig()
        self.stream_interval_s = stream.stream_interval_ms / 1000.0
        self.stream_chunk_tokens = stream.stream_chunk_tokens
        self.stream_fanout = stream.stream_fanout
        self.open_streams = 0
        hold_s = self.pd.hold_timeout_ms / 1000.0

        def build() -> Engine:
            engine = Engine(
                model_path,
                engine_config,
                draft_model_path,
                quantization=quantization,
                kv_hold_timeout_s=hold_s,
            )
            engine.warm_up()
            return engine

        self.aengine = AsyncEngine(build)
        self.engine = self.aengine.engine
        self.started = time.monotonic()
        self.metrics = WorkerMetrics(name, model)
        self.mover = KVMover(name, model, namespace, self.pd, self.aengine, self.metrics)
        log.info("worker.ready", worker=name, model=model, device=str(self.engine.device))

    def ready(self) -> str:
        return self.name

    def set_role(self, role: str) -> str:
        """Record the role the gateway dispatches by; the work this worker holds goes on."""
        self.role = role
        return role

    async def set_prefill_budget(self, tokens: int) -> int:
        """Change the prefill share of each step's token budget (from the next step on)."""
        return await self.aengine.call(lambda: self.engine.set_prefill_budget(tokens))

    # -- streams ---------------------------------------------------------------------------

    async def generate(self, state: RequestState) -> AsyncIterator[RequestOutput]:
        """Stream chunks of a new request; cancelling this generator aborts it and frees its KV.

        With `state.hand_off`, the stream ends after the first token with a chunk whose
        `handoff` holds the state a decode worker continues from; the KV stays held here.
        """
        queue = await self.aengine.add(state)
        async for chunk in self._relay(state.request_id, queue):
            yield chunk

    async def resume(
        self, state: RequestState, src: str = "", src_rank: int = -1
    ) -> AsyncIterator[RequestOutput]:
        """Continue a request prefilled on worker `src` (rank `src_rank` of the model's group),
        its KV pulled by this worker's mover; with no `src`, recompute it here."""
        rid = state.request_id
        deadline = time.monotonic() + self.pd.transfer_timeout_ms / 1000.0
        queue, blocks = await self.aengine.open_stream(
            rid, lambda: self.engine.resume(state, deadline if src else None)
        )
        transfer: dict[str, Any] = {}
        try:
            if blocks[1]:  # (held here already, reserved for the rest)
                transfer = await self.mover.take(state, src, src_rank, blocks, deadline)
        except BaseException:
            await self.aengine.abort(rid)
            raise
        async for chunk in self._relay(rid, queue, transfer):
            yield chunk

    async def _relay(
        self, request_id: str, queue: Stream, transfer: dict[str, Any] | None = None
    ) -> AsyncIterator[RequestOutput]:
        """Chunk a request's outputs; the last carries `transfer` (how its KV arrived)."""
        loop = asyncio.get_running_loop()
        done = False
        sent_first = False
        self.open_streams += 1
        try:
            while not done:
                batch = [await _next(queue)]
                stretch = max(1.0, self.open_streams / self.stream_fanout)
                due = loop.time() + self.stream_interval_s * stretch
                while sent_first and not _ends(batch[-1]):
                    if sum(len(o.token_ids) for o in batch) >= self.stream_chunk_tokens * stretch:
                        break
                    try:
                        batch.append(await asyncio.wait_for(_next(queue), due - loop.time()))
                    except TimeoutError:
                        break
                chunk = merge_outputs(batch)
                if chunk.handoff is not None:  # where the decode worker pulls the KV from
                    group = self.mover.usable_group()
                    kv_from = {
                        "kv_group": group.name if group else "",
                        "kv_node": self.mover.node_id,
                    }
                    chunk = replace(chunk, handoff=replace(chunk.handoff, **kv_from))
                sent_first = sent_first or bool(chunk.token_ids)
                done = _ends(chunk)
                if chunk.finished:
                    chunk = replace(chunk, **(transfer or {}))
                    self.metrics.finished(chunk)
                yield chunk
        finally:
            self.open_streams -= 1
            if not done:
                await self.aengine.abort(request_id)
                log.info("worker.request.aborted", request_id=request_id)

    async def abort(self, request_id: str) -> bool:
        return await self.aengine.abort(request_id)

    # -- KV hand-off: the mover's actor methods --------------------------------------------

    async def send_kv(
        self, request_id: str, dst_rank: int, skip_blocks: int = 0
    ) -> tuple[bytes, list[Any] | None]:
        """A decode worker pulls a handed-off request's KV, less the leading blocks it holds
        (`KVMover.send`)."""
        return await self.mover.send(request_id, dst_rank, skip_blocks)

    async def join_kv_group(self, group: str, world_size: int, rank: int) -> str:
        """Join the model's KV collective group (every member at the same time)."""
        return await self.mover.join(group, world_size, rank)

    def inject_faults(self, kv_error: int = 0, kv_stall: int = 0) -> None:
        """Testing and chaos drills (`KVMover.inject_faults`)."""
        self.mover.inject_faults(kv_error, kv_stall)

    # -- status ----------------------------------------------------------------------------

    async def status(self) -> WorkerStatus:
        return await self.aengine.call(self._status)

    def _status(self) -> WorkerStatus:
        now, group = time.monotonic(), self.mover.usable_group()
        status = WorkerStatus(
            name=self.name,
            model=self.model,
            model_path=self.model_path,
            role=self.role,
            device=str(self.engine.device),
            uptime_s=now - self.started,
            kv_transport=group.backend if group is not None else "",
            **asdict(self.engine.load(now)),  # its fields are WorkerStatus's
        )
        self.metrics.observe_status(status)
        return status

    async def next_token_logits(self, token_ids: list[int]) -> list[float]:
        """One forward pass over `token_ids` (the `lm` probe's question to the small model)."""
        return await self.aengine.call(lambda: self.engine.next_token_logits(token_ids))


async def _next(queue: Stream) -> RequestOutput:
    item = await queue.get()
    if isinstance(item, Exception):
        raise item
    return item


def _ends(out: RequestOutput) -> bool:
    """The last output of a stream: finished here, or handed off to a decode worker."""
    return out.finished or out.handoff is not None


WorkerActor: Any = ray.remote(max_concurrency=1000)(Worker)
