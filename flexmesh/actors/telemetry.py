"""Ray metrics (Prometheus / Ray dashboard) of workers and the gateway."""

from __future__ import annotations

from typing import Any

from ray.util import metrics

from flexmesh.meshcore.config import WORKER_ROLES
from flexmesh.meshcore.load import QUANTILES
from flexmesh.meshcore.messages import RequestOutput, WorkerStatus

_MS_BUCKETS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]


class WorkerMetrics:
    """Per-worker gauges and counters, tagged with worker and model."""

    def __init__(self, worker: str, model: str) -> None:
        self.tags = {"worker": worker, "model": model}
        keys = ("worker", "model")
        self.tokens = metrics.Counter("flexmesh_worker_tokens", "Tokens generated", tag_keys=keys)
        self.requests = metrics.Counter(
            "flexmesh_worker_requests", "Requests finished", tag_keys=(*keys, "reason")
        )
        self.queue = metrics.Gauge(
            "flexmesh_worker_queue_length", "Waiting requests", tag_keys=keys
        )
        self.running = metrics.Gauge("flexmesh_worker_running", "Running requests", tag_keys=keys)
        self.kv_used = metrics.Gauge(
            "flexmesh_worker_kv_blocks_used", "KV blocks in use", tag_keys=keys
        )
        self.drafts = metrics.Counter(
            "flexmesh_worker_draft_tokens", "Draft tokens", tag_keys=(*keys, "outcome")
        )
        self.role = metrics.Gauge(
            "flexmesh_worker_role", "1 for the worker's current role", tag_keys=(*keys, "role")
        )
        self.prefill_waiting = metrics.Gauge(
            "flexmesh_worker_prefill_tokens_waiting", "Prompt tokens not computed", tag_keys=keys
        )
        self.decode_batch = metrics.Gauge(
            "flexmesh_worker_decode_batch", "Requests decoding", tag_keys=keys
        )
        self.step_ms = metrics.Gauge("flexmesh_worker_step_ms", "Recent step time", tag_keys=keys)
        self.tpot_ms = metrics.Gauge(
            "flexmesh_worker_tpot_ms", "Recent time of a step that decodes", tag_keys=keys
        )
        self.decode_step_ms = metrics.Gauge(
            "flexmesh_worker_decode_step_ms",
            "Recent time of a step without prompt tokens",
            tag_keys=keys,
        )
        self.prefill_ms_per_token = metrics.Gauge(
            "flexmesh_worker_prefill_ms_per_token",
            "Recent time one prompt token adds to a step",
            tag_keys=keys,
        )
        self.prefix = {
            name: metrics.Gauge(f"flexmesh_worker_prefix_{name}", text, tag_keys=keys)
            for name, text in (
                ("hit_tokens", "Prompt tokens found in the prefix cache"),
                ("hit_rate", "Share of queried prompt blocks found in the prefix cache"),
                ("evictions", "Cached blocks given back to the pool"),
                ("cached_blocks", "Blocks in the prefix cache, held or not"),
            )
        }
        # NOTE: own names, not a `quantile` tag on the recent-average gauges above: a metric's
        # tag keys are fixed by its first declaration.
        qkeys = (*keys, "quantile")
        self.quantiles = {
            "step_ms": metrics.Gauge(
                "flexmesh_worker_step_ms_quantile",
                "Windowed percentile (p50, p90, p99) of the step time",
                tag_keys=qkeys,
            ),
            "tpot_ms": metrics.Gauge(
                "flexmesh_worker_tpot_ms_quantile",
                "Windowed percentile (p50, p90, p99) of the time of a step that decodes",
                tag_keys=qkeys,
            ),
            "queue_ms": metrics.Gauge(
                "flexmesh_worker_queue_ms_quantile",
                "Windowed percentile (p50, p90, p99) of arrival to first step",
                tag_keys=qkeys,
            ),
        }
        """Per signal of `WorkerStatus.percentiles`, its gauge."""
        self.prefill_budget = metrics.Gauge(
            "flexmesh_worker_prefill_budget_tokens",
            "Most prompt tokens one step computes (the controller's co-location knob)",
            tag_keys=keys,
        )
        self.kv_in_flight = metrics.Gauge(
            "flexmesh_worker_kv_blocks_in_flight", "KV blocks held for hand-offs", tag_keys=keys
        )
        transfer_keys = (*keys, "outcome", "transport")
        self.transfers = metrics.Counter(
            "flexmesh_kv_transfers", "KV hand-offs received", tag_keys=transfer_keys
        )
        self.transfer_bytes = metrics.Counter(
            "flexmesh_kv_transfer_bytes", "KV bytes received", tag_keys=transfer_keys
        )
        self.transfer_ms = metrics.Histogram(
            "flexmesh_kv_transfer_ms",
            "KV hand-off time, the prefill's end to the KV imported",
            boundaries=_MS_BUCKETS,
            tag_keys=transfer_keys,
        )

    def finished(self, out: RequestOutput) -> None:
        # NOTE: ray.util.metrics counters refuse increments <= 0.
        if out.completion_tokens > 0:
            self.tokens.inc(out.completion_tokens, self.tags)
        self.requests.inc(1.0, {**self.tags, "reason": out.finish_reason or "unknown"})
        for outcome, n in (
            ("accepted", out.draft_tokens_accepted),
            ("proposed", out.draft_tokens_proposed),
        ):
            if n > 0:
                self.drafts.inc(n, {**self.tags, "outcome": outcome})

    def transfer(self, outcome: str, transport: str, nbytes: int, ms: float) -> None:
        tags = {**self.tags, "outcome": outcome, "transport": transport}
        self.transfers.inc(1.0, tags)
        if nbytes > 0:
            self.transfer_bytes.inc(nbytes, tags)
        self.transfer_ms.observe(ms, tags)

    def observe_status(self, s: WorkerStatus) -> None:
        self.queue.set(s.queue_length, self.tags)
        self.running.set(s.running_requests, self.tags)
        self.kv_used.set(s.kv_blocks_used, self.tags)
        for role in WORKER_ROLES:
            self.role.set(1.0 if role == s.role else 0.0, {**self.tags, "role": role})
        self.prefill_waiting.set(s.prefill_tokens_waiting, self.tags)
        self.decode_batch.set(s.decode_batch, self.tags)
        self.step_ms.set(s.step_ms, self.tags)
        self.tpot_ms.set(s.tpot_ms, self.tags)
        self.kv_in_flight.set(s.kv_blocks_in_flight, self.tags)
        self.prefill_budget.set(s.prefill_budget_tokens, self.tags)
        self.decode_step_ms.set(s.decode_step_ms, self.tags)
        self.prefill_ms_per_token.set(s.prefill_ms_per_token, self.tags)
        for name, gauge in self.prefix.items():
            if name in s.prefix_cache:  # none while the cache is off
                gauge.set(s.prefix_cache[name], self.tags)
        for name, gauge in self.quantiles.items():
            for q in QUANTILES:
                value = s.percentiles.get(f"{name}_p{q}")
                if value is not None:  # none until the window has a sample
                    gauge.set(value, {**self.tags, "quantile": f"p{q}"})


class GatewayMetrics:
    """Request-level latency histograms as clients see them."""

    def __init__(self) -> None:
        keys = ("model", "code")
        self.requests = metrics.Counter(
            "flexmesh_requests", "gRPC Generate calls by final status code", tag_keys=keys
        )
        self.ttft = metrics.Histogram(
            "flexmesh_ttft_ms", "Time to first token", boundaries=_MS_BUCKETS, tag_keys=("model",)
        )
        self.tpot = metrics.Histogram(
            "flexmesh_tpot_ms",
            "Time per output token",
            boundaries=[1, 2, 5, 10, 20, 50, 100, 200, 500],
            tag_keys=("model",),
        )
        self.routes = metrics.Counter(
            "flexmesh_routes",
            "Routing decisions",
            tag_keys=("intent", "model", "strategy", "reason"),
        )
        self.probe_ms = metrics.Histogram(
            "flexmesh_probe_ms", "Probe latency", boundaries=[0.5, 1, 2, 5, 10, 20, 50, 100]
        )
        self.demanding = metrics.Counter(
            "flexmesh_demanding_requests",
            "Requests whose configured route names the large model, by route key (the intent, "
            "or low_confidence)",
            tag_keys=("intent",),
        )
        self.downgrades = metrics.Counter(
            "flexmesh_downgrades",
            "Demanding requests served by another model (spilled or moved by the controller)",
            tag_keys=("intent",),
        )
        self.moves = metrics.Counter(
            "flexmesh_requests_moved",
            "Requests that left a broken worker for another: prefill_fallback (before the "
            "hand-off) or migration (resumed where the client's stream stood)",
            tag_keys=("worker", "kind"),
        )

    def moved(self, worker: str, kind: str) -> None:
        self.moves.inc(1.0, {"worker": worker, "kind": kind})

    def routed(self, route: Any) -> None:
        tags = {
            "intent": route.intent or "none",
            "model": route.model,
            "strategy": route.strategy,
            "reason": route.reason or "none",
        }
        self.routes.inc(1.0, tags)
        # By the configured route's key (the intent, or low_confidence): what the quality
        # budget bounds.
        budget = {"intent": route.route_key or tags["intent"]}
        if route.demanding:
            self.demanding.inc(1.0, budget)
        if route.downgraded:
            self.downgrades.inc(1.0, budget)
        if route.probe_ms > 0:
            self.probe_ms.observe(route.probe_ms)

    def failed(self, model: str, code: str) -> None:
        self.requests.inc(1.0, {"model": model, "code": code})

    def done(self, model: str, ttft_ms: float, total_ms: float, tokens: int) -> None:
        self.requests.inc(1.0, {"model": model, "code": "OK"})
        if tokens > 0:
            self.ttft.observe(ttft_ms, {"model": model})
        if tokens > 1:
            self.tpot.observe((total_ms - ttft_ms) / (tokens - 1), {"model": model})
