"""The worker actor: one model on one device, its engine loop, tokens streamed back in chunks.

A Ray hop costs about 1 ms, so tokens never cross one by one: the first chunk leaves as soon
as the first token exists (TTFT); a later chunk leaves when it holds `stream_chunk_tokens`
tokens, when `stream_interval_ms` passed since the previous one, or when the request ends.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import ray
import structlog

from flexmesh.actors.runner.async_engine import AsyncEngine
from flexmesh.actors.runner.engine import Engine
from flexmesh.actors.telemetry import WorkerMetrics
from flexmesh.logs import configure_logging
from flexmesh.meshcore.config import EngineConfig, GatewayConfig
from flexmesh.meshcore.messages import RequestOutput, WorkerStatus, merge_outputs
from flexmesh.meshcore.sampling import SamplingParams

log = structlog.get_logger(__name__)


class Worker:
    """Thin shell around an `AsyncEngine`; Ray makes it a named actor (see `actors/mesh.py`)."""

    def __init__(
        self,
        name: str,
        model: str,
        model_path: str,
        engine_config: EngineConfig,
        role: str = "mixed",
        stream: GatewayConfig | None = None,
        draft_model_path: str | None = None,
    ) -> None:
        configure_logging()
        # The engine thread and the event loop share the GIL; hand it over within 0.5 ms
        # (default 5 ms) so streaming work never holds a model step back for long.
        sys.setswitchinterval(0.0005)
        self.name, self.model, self.model_path, self.role = name, model, model_path, role
        stream = stream or GatewayConfig()
        self.stream_interval_s = stream.stream_interval_ms / 1000.0
        self.stream_chunk_tokens = stream.stream_chunk_tokens

        def build() -> Engine:
            engine = Engine(model_path, engine_config, draft_model_path)
            engine.warm_up()
            return engine

        self.aengine = AsyncEngine(build)
        self.engine = self.aengine.engine
        self.started = time.monotonic()
        self.metrics = WorkerMetrics(name, model)
        log.info("worker.ready", worker=name, model=model, device=str(self.engine.runner.device))

    def ready(self) -> str:
        return self.name

    async def generate(
        self,
        request_id: str,
        prompt: str,
        prompt_token_ids: list[int],
        sampling: SamplingParams,
    ) -> AsyncIterator[RequestOutput]:
        """Stream chunks of one request; cancelling this generator aborts it and frees its KV."""
        queue = await self.aengine.add(
            prompt or None, prompt_token_ids or None, sampling, request_id
        )
        loop = asyncio.get_running_loop()
        finished = False
        sent_first = False
        try:
            while not finished:
                batch = [await queue.get()]
                due = loop.time() + self.stream_interval_s
                while sent_first and not batch[-1].finished:
                    if sum(len(o.token_ids) for o in batch) >= self.stream_chunk_tokens:
                        break
                    try:
                        batch.append(await asyncio.wait_for(queue.get(), due - loop.time()))
                    except TimeoutError:
                        break
                chunk = merge_outputs(batch)
                sent_first = sent_first or bool(chunk.token_ids)
                finished = chunk.finished
                if finished:
                    self.metrics.finished(chunk)
                yield chunk
        finally:
            if not finished:
                await self.aengine.abort(request_id)
                log.info("worker.request.aborted", request_id=request_id)

    async def abort(self, request_id: str) -> bool:
        return await self.aengine.abort(request_id)

    async def status(self) -> WorkerStatus:
        return await self.aengine.call(self._status)

    def _status(self) -> WorkerStatus:
        sched = self.engine.scheduler
        status = WorkerStatus(
            name=self.name,
            model=self.model,
            model_path=self.model_path,
            role=self.role,
            device=str(self.engine.runner.device),
            queue_length=sched.num_waiting,
            running_requests=sched.num_running,
            kv_blocks_used=sched.pool.num_used,
            kv_blocks_total=sched.pool.num_blocks,
            uptime_s=time.monotonic() - self.started,
            tokens_generated=self.engine.tokens_generated,
            queue_delay_ms=sched.queue_delay_ms(time.monotonic()),
            prefill_ms=sched.recent_prefill_ms,
        )
        self.metrics.observe_status(status)
        return status

    async def next_token_logits(self, token_ids: list[int]) -> list[float]:
        """One forward pass over `token_ids` (the `lm` probe's question to the small model)."""
        return await self.aengine.call(lambda: self.engine.runner.next_token_logits(token_ids))


WorkerActor: Any = ray.remote(max_concurrency=1000)(Worker)
