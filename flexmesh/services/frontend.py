"""The gateway's core, free of gRPC: admission, routing, worker choice, timings, cancellation.

The servicer converts protobuf to a `GenerationInput`, iterates `Frontend.generate`, and converts
each `Chunk` back. Every wait on a worker is bounded; leaving the iteration early (client
cancel, deadline) aborts the request on its worker, which frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

import structlog

from flexmesh.actors.client import ProbeClientProtocol, WorkerClientProtocol
from flexmesh.meshcore.config import MeshConfig
from flexmesh.meshcore.errors import (
    DeadlineExceededError,
    InvalidRequestError,
    QueueFullError,
    UnknownModelError,
    WorkerUnavailableError,
    status_name,
)
from flexmesh.meshcore.messages import RequestOutput, WorkerStatus
from flexmesh.meshcore.routing import ProbeResult, Router, RoutingConfig
from flexmesh.meshcore.sampling import SamplingParams

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class GenerationInput:
    """A validated generation request as the frontend sees it."""

    prompt: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams
    model: str = ""
    request_id: str = ""


@dataclass(frozen=True)
class RouteInfo:
    """Where and how a request was served."""

    model: str
    worker: str = ""
    strategy: str = "none"
    intent: str = ""
    confidence: float = 0.0
    probe_ms: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class Chunk:
    """One streamed piece; the last has `final` and the metadata."""

    request_id: str
    output: RequestOutput
    final: bool = False
    route: RouteInfo | None = None
    timings: dict[str, float] = field(default_factory=dict)


class FrontendMetrics(Protocol):
    """Where the frontend reports routes and finished requests (Ray metrics in the gateway)."""

    def routed(self, route: RouteInfo) -> None: ...

    def done(self, model: str, ttft_ms: float, total_ms: float, tokens: int) -> None: ...

    def failed(self, model: str, code: str) -> None: ...


class Frontend:
    """Admits, routes and streams requests over worker clients (real actors or fakes)."""

    def __init__(
        self,
        config: MeshConfig,
        workers: Mapping[str, list[WorkerClientProtocol]],
        probe: ProbeClientProtocol | None = None,
        metrics: FrontendMetrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.workers = dict(workers)
        self.default_model = config.models[0].name
        self.probe = probe if config.adaptive else None
        self.router = Router(config.routing)
        self.queue_delay_ms: dict[str, float] = {}
        """Per model, the lowest queue delay its workers last reported (polled)."""
        self.prefill_ms: dict[str, float] = {}
        """Per model, the recent prefill time per request its workers last reported (polled)."""
        self._awaiting_first = {model: 0 for model in self.workers}
        self.in_flight = 0
        self._load: dict[str, int] = {w.name: 0 for ws in self.workers.values() for w in ws}
        self._rr = itertools.count()
        self._poller: asyncio.Task[None] | None = None

    # -- routing ---------------------------------------------------------------------------

    async def classify(self, prompt: str) -> ProbeResult:
        if self.probe is None:
            raise UnknownModelError("no probe: the mesh does not hold both routing models")
        if not prompt:
            raise InvalidRequestError("prompt", "is empty")
        return await self.probe.classify(prompt, self.router.policy.long_context_tokens)

    async def route(self, req: GenerationInput) -> RouteInfo:
        """The caller's model and strategy when both are given, else probe and router decide."""
        strategy = req.sampling.strategy
        if req.model not in ("", "auto") and req.model not in self.workers:
            raise UnknownModelError(
                f"model {req.model!r} is not served; resident: {', '.join(sorted(self.workers))}"
            )
        explicit = req.model not in ("", "auto") and strategy != ""
        if self.probe is None or explicit or not req.prompt:
            model = req.model if req.model not in ("", "auto") else self.default_model
            return RouteInfo(model=model, strategy=strategy or "none", reason="override")
        probe = await self.classify(req.prompt)
        d = self.router.route(probe, self.loads(), req.model, strategy)
        return RouteInfo(
            model=d.model,
            strategy=d.strategy,
            intent=d.intent,
            confidence=d.confidence,
            probe_ms=probe.probe_ms,
            reason=d.reason,
        )

    def set_policy(self, changes: Mapping[str, object], expected_version: int) -> RoutingConfig:
        """Apply a live policy change (version-checked); every change is a log event."""
        policy = self.router.update(changes, expected_version or self.router.policy.version)
        log.info("policy.changed", version=policy.version, changes=dict(changes))
        return policy

    # -- load telemetry --------------------------------------------------------------------

    def start(self, interval_s: float = 0.25) -> None:
        """Poll worker loads in the background (queue delays feed the spill rule)."""
        if self._poller is None and self.probe is not None:
            self._poller = asyncio.get_running_loop().create_task(self._poll(interval_s))

    def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None

    def loads(self) -> dict[str, float]:
        """Queue delay per model for the spill rule, live between two polls.

        Requests this gateway sent that have no first token yet each cost the model's recent
        prefill time (spread over its workers); the workers' own report is the floor. A burst
        thus moves spillable intents as it arrives, not one poll interval later.
        """
        return {
            model: max(
                self.queue_delay_ms.get(model, 0.0),
                self._awaiting_first[model] * self.prefill_ms.get(model, 0.0) / len(workers),
            )
            for model, workers in self.workers.items()
        }

    async def _poll(self, interval_s: float) -> None:
        while True:
            try:
                delays: dict[str, float] = {}
                prefill: dict[str, float] = {}
                for s in await self.status():
                    if s.alive:
                        delays[s.model] = min(
                            delays.get(s.model, s.queue_delay_ms), s.queue_delay_ms
                        )
                        prefill[s.model] = min(prefill.get(s.model, s.prefill_ms), s.prefill_ms)
                self.queue_delay_ms, self.prefill_ms = delays, prefill
            except Exception:
                log.exception("poll.failed")
            await asyncio.sleep(interval_s)

    def pick_worker(self, model: str) -> WorkerClientProtocol:
        """Least-loaded worker of the model (ties round-robin)."""
        workers = self.workers[model]
        start = next(self._rr)
        order = [workers[(start + i) % len(workers)] for i in range(len(workers))]
        return min(order, key=lambda w: self._load[w.name])

    # -- generation ------------------------------------------------------------------------

    async def generate(
        self, req: GenerationInput, timeout_s: float | None = None
    ) -> AsyncIterator[Chunk]:
        model = req.model or "auto"
        if self.in_flight >= self.config.gateway.max_queue_len:
            self.record_failure(model, QueueFullError.status)
            raise QueueFullError(
                f"{self.in_flight} requests in flight, "
                f"the bound is {self.config.gateway.max_queue_len}"
            )
        arrival = time.monotonic()
        rid = req.request_id or uuid.uuid4().hex
        timeout_s = timeout_s or self.config.gateway.request_timeout_s
        structlog.contextvars.bind_contextvars(request_id=rid)
        self.in_flight += 1
        final_sent = False
        try:
            async with asyncio.timeout(timeout_s):  # covers probe, queueing and decoding
                route = await self.route(req)
                model = route.model
                if self.metrics is not None:
                    self.metrics.routed(route)
                worker = self.pick_worker(route.model)
                route = replace(route, worker=worker.name)
                sampling = replace(req.sampling, strategy=route.strategy)
                self._load[worker.name] += 1
                self._awaiting_first[route.model] += 1
                awaiting = True
                try:
                    async for chunk in self._stream(rid, req, sampling, worker, route, arrival):
                        if awaiting and (chunk.output.token_ids or chunk.final):
                            awaiting = False
                            self._awaiting_first[route.model] -= 1
                        final_sent = chunk.final
                        yield chunk
                finally:
                    self._load[worker.name] -= 1
                    if awaiting:
                        self._awaiting_first[route.model] -= 1
        except TimeoutError as exc:
            self.record_failure(model, DeadlineExceededError.status)
            raise DeadlineExceededError(f"deadline of {timeout_s:.3f} s exceeded") from exc
        except (GeneratorExit, asyncio.CancelledError):
            if not final_sent:
                self.record_failure(model, "CANCELLED")  # the client left mid-stream
            raise
        except Exception as exc:
            self.record_failure(model, status_name(exc))
            raise
        finally:
            self.in_flight -= 1
            structlog.contextvars.unbind_contextvars("request_id")

    def record_failure(self, model: str, code: str) -> None:
        """Count a request that ended with status `code` (not OK) in the metrics."""
        if self.metrics is not None:
            self.metrics.failed(model, code)

    async def _stream(
        self,
        rid: str,
        req: GenerationInput,
        sampling: SamplingParams,
        worker: WorkerClientProtocol,
        route: RouteInfo,
        arrival: float,
    ) -> AsyncIterator[Chunk]:
        first_token: float | None = None
        stream = worker.stream(rid, req.prompt, list(req.prompt_token_ids), sampling)
        async for out in stream:
            now = time.monotonic()
            if first_token is None and out.token_ids:
                first_token = now
            if out.finish_reason == "error":
                raise WorkerUnavailableError(f"worker {worker.name} failed while serving {rid}")
            if not out.finished:
                yield Chunk(rid, out)
                continue
            timings = {
                "queue_ms": out.queue_ms,
                "prefill_ms": out.prefill_ms,
                "ttft_ms": ((first_token or now) - arrival) * 1000.0,
                "total_ms": (now - arrival) * 1000.0,
                "probe_ms": route.probe_ms,
            }
            final_route = replace(route, strategy=out.strategy)
            if self.metrics is not None:
                self.metrics.done(
                    route.model,
                    timings["ttft_ms"],
                    timings["total_ms"],
                    out.completion_tokens,
                )
            log.info(
                "request.done",
                model=route.model,
                worker=worker.name,
                tokens=out.completion_tokens,
                ttft_ms=round(timings["ttft_ms"], 1),
                total_ms=round(timings["total_ms"], 1),
                reason=out.finish_reason,
            )
            yield Chunk(rid, out, final=True, route=final_route, timings=timings)

    # -- admin -----------------------------------------------------------------------------

    async def status(self) -> list[WorkerStatus]:
        async def one(w: WorkerClientProtocol) -> WorkerStatus:
            try:
                return await w.status()
            except WorkerUnavailableError:
                return WorkerStatus(w.name, w.model, "", "", "", 0, 0, 0, 0, 0.0, 0, alive=False)

        all_workers = [w for ws in self.workers.values() for w in ws]
        return list(await asyncio.gather(*(one(w) for w in all_workers)))
