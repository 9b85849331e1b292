"""The gateway's core, free of gRPC: admission, routing, timings, offsets, cancellation.
Which workers serve a request, and the KV hand-off between them, is `services/core/dispatch.py`'s;
role and drain changes and status are `services/core/operations.py`'s.

The servicer converts protobuf to a `GenerationInput`, iterates `Frontend.generate`, and converts
each `Chunk` back. Every wait on a worker is bounded; leaving the iteration early (client
cancel, deadline) aborts the request on its workers, which frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

import structlog

from flexmesh.actors.client import ProbeClientProtocol, WorkerClientProtocol
from flexmesh.meshcore.affinity import PrefixIndex
from flexmesh.meshcore.config import MeshConfig
from flexmesh.meshcore.controller_policy import Snapshot
from flexmesh.meshcore.errors import (
    DeadlineExceededError,
    InvalidRequestError,
    QueueFullError,
    UnknownModelError,
    WorkerUnavailableError,
    status_name,
)
from flexmesh.meshcore.messages import RequestOutput, WorkerStatus
from flexmesh.meshcore.pool import WorkerPool
from flexmesh.meshcore.route import RouteRules, RouteState
from flexmesh.meshcore.routing import ROUTE_KEYS, ProbeResult, Router
from flexmesh.meshcore.sampling import SamplingParams
from flexmesh.meshcore.traffic import Arrival, TrafficWindow
from flexmesh.services.core.dispatch import Dispatcher
from flexmesh.services.core.operations import Operations

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
    """The worker that decoded the request."""
    strategy: str = "none"
    intent: str = ""
    confidence: float = 0.0
    probe_ms: float = 0.0
    reason: str = ""
    prefill_worker: str = ""
    kv_transport: str = "local"
    kv_bytes: int = 0
    kv_transfer_ms: float = 0.0
    migrations: int = 0
    """Times the request moved to another worker after its stream broke."""
    route_key: str = ""
    """The configured route's key: the intent, or "low_confidence" ("" when not routed)."""
    demanding: bool = False
    """Its configured route names the large model (`routing.RouteDecision.demanding`)."""
    downgraded: bool = False
    """Demanding, and served by another model (`routing.RouteDecision.downgraded`)."""
    intents: dict[str, float] = field(default_factory=dict)
    """Other intents the probe found in the prompt's parts (`routing.ProbeResult.intents`)."""
    quantised: bool = False
    """The model that served it runs quantised weights (`models[].quantization`)."""


@dataclass(frozen=True)
class Chunk:
    """One streamed piece; the last has `final` and the metadata."""

    request_id: str
    output: RequestOutput
    final: bool = False
    route: RouteInfo | None = None
    """The model and strategy chosen; the final chunk's has the workers and KV figures too."""
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def offset(self) -> int:
        """Index of this chunk's first token in the completion."""
        return self.output.offset


SLO_MISSES = ("DEADLINE_EXCEEDED", "UNAVAILABLE", "INTERNAL")
"""Failures that count against a model's SLO attainment (not the client's own mistakes)."""


def estimate_tokens(model: str, prompt: str) -> int:
    """Prompt length without a tokenizer: ~4 bytes a token (BPE on English and code)."""
    return len(prompt.encode("utf-8", "surrogatepass")) // 4


class FrontendMetrics(Protocol):
    """Where the frontend reports routes and finished requests (Ray metrics in the gateway)."""

    def routed(self, route: RouteInfo) -> None: ...

    def done(self, model: str, ttft_ms: float, total_ms: float, tokens: int) -> None: ...

    def failed(self, model: str, code: str) -> None: ...

    def moved(self, worker: str, kind: str) -> None: ...


class Frontend:
    """Admits, routes and streams requests over worker clients (real actors or fakes)."""

    def __init__(
        self,
        config: MeshConfig,
        workers: Mapping[str, list[WorkerClientProtocol]],
        probe: ProbeClientProtocol | None = None,
        metrics: FrontendMetrics | None = None,
        count_tokens: Callable[[str, str], int] = estimate_tokens,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """`workers`: clients per model in rank order; `count_tokens(model, prompt)` measures
        prompts for conditional disaggregation. `clock` times requests and the controller's
        snapshots, `wall_clock` dates decisions (the simulator passes its virtual clock)."""
        self.config = config
        self.quantised = {m.name: m.quantization != "none" for m in config.models}
        self.clock = clock
        self.metrics = metrics
        self.workers = dict(workers)
        self.clients = {w.name: w for ws in self.workers.values() for w in ws}
        roles = {s.name: s for s in config.models}
        cache_aware = config.engine.prefix_cache and config.pd.placement == "cache_aware"
        self.pool = WorkerPool(
            (
                (w.name, model, roles[model].role_of(i) if model in roles else "mixed")
                for model, ws in self.workers.items()
                for i, w in enumerate(ws)
            ),
            PrefixIndex() if cache_aware else None,
            config.pd.cache_balance_ratio,
        )
        self.dispatcher = Dispatcher(
            self.pool,
            self.clients,
            RouteRules.of(config),
            config.pd.min_prompt_tokens,
            metrics.moved if metrics else None,
            config.engine.block_size_tokens,
        )
        self.count_tokens = count_tokens
        self.default_model = config.models[0].name
        self.probe = probe if config.adaptive else None
        self.router = Router(config.routing)
        self.ops = Operations(
            self.pool, self.clients, self.router, config.controller.history, wall_clock
        )
        self.traffic = TrafficWindow(config.controller.traffic_window_s)
        self.last_status: list[WorkerStatus] = []
        """Every worker's report from the latest poll."""
        self.queue_delay_ms: dict[str, float] = {}
        """Per model, the lowest queue delay its workers last reported (polled)."""
        self.prefill_ms: dict[str, float] = {}
        """Per model, the recent prefill time per request its workers last reported (polled)."""
        self.in_flight = 0
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
        try:
            probe = await self.classify(req.prompt)
        except WorkerUnavailableError as exc:  # dead, restarting or timed out: serve anyway
            log.warning("probe.unavailable", error=str(exc))
            policy = self.router.policy
            model = req.model if req.model not in ("", "auto") else policy.large_model
            return RouteInfo(model=model, strategy=strategy or "none", reason="probe_unavailable")
        ctl = self.config.controller
        capped = self.traffic.capped(
            self.clock(), ROUTE_KEYS, ctl.max_downgrade_fraction, ctl.default_max_downgrade_fraction
        )
        d = self.router.route(probe, self.loads(), req.model, strategy, capped)
        return RouteInfo(
            model=d.model,
            strategy=d.strategy,
            intent=d.intent,
            confidence=d.confidence,
            probe_ms=probe.probe_ms,
            reason=d.reason,
            route_key=d.route_key,
            demanding=d.demanding,
            downgraded=d.downgraded,
            intents=probe.intents,
        )

    def snapshot(self) -> Snapshot:
        """What the controller reads: the latest worker reports, the policy, the traffic."""
        routed = self.probe is not None
        return Snapshot(
            t_s=self.clock(),
            workers=tuple(self.ops.overlay(s) for s in self.last_status),
            policy=self.router.policy if routed else None,
            base_policy=self.config.routing if routed else None,
            policy_pins=frozenset(self.ops.policy_pins),
            traffic=self.traffic.summary(self.clock()),
            balance=dict(self.pool.balance),
            base_balance=self.config.pd.cache_balance_ratio,
        )

    # -- load telemetry --------------------------------------------------------------------

    def start(self) -> None:
        """Poll every worker's report in the background (`gateway.status_poll_ms`): queue
        delays feed the spill rule, the reports the controller's snapshot and the gauges."""
        if self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll())

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
        loads = {}
        for model in self.workers:
            entries = self.pool.of_model(model)
            awaiting = sum(e.prefilling for e in entries)
            prefillers = max(1, sum(e.takes_prefill for e in entries))
            backlog_ms = awaiting * self.prefill_ms.get(model, 0.0) / prefillers
            loads[model] = max(self.queue_delay_ms.get(model, 0.0), backlog_ms)
        return loads

    async def _poll(self) -> None:
        gw = self.config.gateway
        while True:
            try:
                delays: dict[str, float] = {}
                prefill: dict[str, float] = {}
                self.last_status = await self.status(gw.status_timeout_ms / 1000.0)
                for s in self.last_status:
                    if s.alive:
                        delays[s.model] = min(
                            delays.get(s.model, s.queue_delay_ms), s.queue_delay_ms
                        )
                        prefill[s.model] = min(prefill.get(s.model, s.prefill_ms), s.prefill_ms)
                self.queue_delay_ms, self.prefill_ms = delays, prefill
            except Exception:
                log.exception("poll.failed")
            await asyncio.sleep(gw.status_poll_ms / 1000.0)

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
        arrival = self.clock()
        rid = req.request_id or uuid.uuid4().hex
        timeout_s = timeout_s or self.config.gateway.request_timeout_s
        deadline = asyncio.get_running_loop().time() + timeout_s
        structlog.contextvars.bind_contextvars(request_id=rid)
        self.in_flight += 1
        final_sent = False
        try:
            # NOTE: each await is bounded by the deadline, never a scope around a `yield`: a
            # timeout that fires while the consumer holds the chunk would cancel the consumer.
            async with asyncio.timeout_at(deadline):
                route = await self.route(req)
            model = route.model
            self._check_overload(model)
            ids = req.prompt_token_ids
            n_prompt = len(ids) if ids else self.count_tokens(model, req.prompt)
            self.traffic.arrived(
                self.clock(),
                Arrival(
                    route.intent, model, n_prompt, route.route_key, route.demanding,
                    route.downgraded,
                ),
            )  # fmt: skip
            if self.metrics is not None:
                self.metrics.routed(route)
            sampling = replace(req.sampling, strategy=route.strategy)
            run = self.dispatcher.start(rid, model, req.prompt, ids, n_prompt, sampling, deadline)
            first_token: float | None = None
            try:
                while (out := await run.next()) is not None:
                    now = self.clock()
                    if first_token is None and out.token_ids:
                        first_token = now
                    if out.finished:
                        chunk = self._final(rid, out, run.state, route, arrival, first_token or now)
                    else:
                        chunk = Chunk(rid, out, route=route)
                    final_sent = chunk.final
                    yield chunk
            finally:
                await run.close()  # a request left unfinished is aborted on its workers
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

    def _check_overload(self, model: str) -> None:
        """Shed a request its model would keep waiting past `gateway.max_queue_delay_ms`."""
        bound = self.config.gateway.max_queue_delay_ms
        wait = self.loads()[model]
        if bound and wait > bound:
            raise QueueFullError(
                f"model {model} is overloaded: expected wait {wait / 1000:.1f} s, "
                f"the bound is {bound / 1000:.1f} s (gateway.max_queue_delay_ms)"
            )

    def record_failure(self, model: str, code: str) -> None:
        """Count a request that ended with status `code` (not OK) in the metrics; a model
        name the mesh does not serve counts as "unknown" (never the caller's text as a tag)."""
        if self.metrics is not None:
            self.metrics.failed(model if model in (*self.workers, "auto") else "unknown", code)
        if code in SLO_MISSES and model in self.workers:
            self.traffic.ended(self.clock(), model, met_slo=False)

    def _final(
        self,
        rid: str,
        out: RequestOutput,
        hop: RouteState,
        route: RouteInfo,
        arrival: float,
        first_token: float,
    ) -> Chunk:
        """The last chunk, with timings and the full route; counted in metrics and logged."""
        now = self.clock()
        timings = {
            "queue_ms": out.queue_ms,
            "prefill_ms": out.prefill_ms,
            "ttft_ms": (first_token - arrival) * 1000.0,
            "total_ms": (now - arrival) * 1000.0,
            "probe_ms": route.probe_ms,
        }
        final_route = replace(
            route,
            worker=hop.worker,
            prefill_worker=hop.prefill_worker,
            strategy=out.strategy,
            kv_transport=out.kv_transport or hop.kv_note or "local",
            kv_bytes=out.kv_bytes,
            kv_transfer_ms=out.kv_transfer_ms,
            migrations=hop.migrations,
            quantised=self.quantised.get(route.model, False),
        )
        if self.metrics is not None:
            self.metrics.done(
                route.model, timings["ttft_ms"], timings["total_ms"], out.completion_tokens
            )
        slo = self.config.controller
        tpot_ms = (timings["total_ms"] - timings["ttft_ms"]) / max(1, out.completion_tokens - 1)
        met = timings["ttft_ms"] <= slo.ttft_slo_ms and tpot_ms <= slo.tpot_slo_ms
        self.traffic.ended(now, route.model, met)
        self.traffic.drafted(
            now, route.route_key, out.draft_tokens_accepted, out.draft_tokens_proposed
        )
        log.info(
            "request.done",
            model=route.model,
            worker=hop.worker,
            prefill_worker=hop.prefill_worker,
            kv_transport=final_route.kv_transport,
            tokens=out.completion_tokens,
            ttft_ms=round(timings["ttft_ms"], 1),
            total_ms=round(timings["total_ms"], 1),
            reason=out.finish_reason,
        )
        return Chunk(rid, out, final=True, route=final_route, timings=timings)

    # -- admin -----------------------------------------------------------------------------

    async def status(self, timeout_s: float | None = None) -> list[WorkerStatus]:
        """Every worker's report, asked now (each bounded by `timeout_s`); the pool takes the
        health it shows at once (an operator's fresh status and placement never disagree)."""
        reports = await self.ops.status(timeout_s)
        for s in reports:
            if self.dispatcher.set_alive(s.name, s.alive):
                log.warning("worker.alive" if s.alive else "worker.lost", worker=s.name)
            if self.pool.index is not None and s.alive:
                self.pool.index.set_capacity(s.name, s.kv_blocks_total)
        return reports

    async def latest_status(self) -> list[WorkerStatus]:
        """The latest poll's reports with the roles, drains and pins in force now (no wait on
        a worker's step); a bounded poll when there is none yet."""
        if not self.last_status:
            return await self.status(self.config.gateway.status_timeout_ms / 1000.0)
        return [self.ops.overlay(s) for s in self.last_status]
