"""Periodic status samples during a replay (worker roles and queues over time): a FlexMesh
gateway's `Admin/GetStatus`, or any other reader of the same fields (the simulator's)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc
import structlog

from flexmesh.meshcore.routing import THRESHOLDS
from flexmesh.v1 import flexmesh_pb2, flexmesh_pb2_grpc

log = structlog.get_logger(__name__)

StatusReader = Callable[[], Awaitable[dict[str, Any] | None]]
"""Reads one sample (`status_sample`'s fields); None ends sampling (the server has none)."""


def status_sample(
    in_flight: int,
    max_queue_len: int,
    policy_version: int,
    workers: Iterable[Any],
    policy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One sample as plain data (what `plots.plot_status` and `status.jsonl` use); `workers`
    have `WorkerStatus`'s fields (the dataclass or its protobuf message)."""
    return {
        "in_flight": in_flight,
        "max_queue_len": max_queue_len,
        "policy_version": policy_version,
        "workers": [
            {
                "name": w.name,
                "model": w.model,
                "role": w.role,
                "queue_length": w.queue_length,
                "running_requests": w.running_requests,
                "kv_blocks_used": w.kv_blocks_used,
                "kv_blocks_total": w.kv_blocks_total,
                "alive": w.alive,
                "tokens_generated": w.tokens_generated,
                "queue_delay_ms": round(w.queue_delay_ms, 3),
                "tpot_ms": round(w.tpot_ms, 3),
                "decode_step_ms": round(w.decode_step_ms, 3),
                "prefill_ms_per_token": round(w.prefill_ms_per_token, 4),
                "percentiles": {k: round(v, 3) for k, v in sorted(w.percentiles.items())},
                "prefill_budget_tokens": w.prefill_budget_tokens,
                "max_batched_tokens": w.max_batched_tokens,
                "prefix_cache": dict(w.prefix_cache),
                # A server older than the field reports none (0 reads as "not reported").
                "prompt_tokens_computed": int(getattr(w, "prompt_tokens_computed", 0)),
            }
            for w in workers
        ],
        **({"policy": policy} if policy is not None else {}),
    }


def policy_sample(policy: Any, strategies: dict[str, str]) -> dict[str, Any]:
    """The routing thresholds of `policy` (a `RoutingConfig` or the proto `Policy`) and the
    strategy per route."""
    return {
        **{name: round(getattr(policy, name), 4) for name in THRESHOLDS},
        "strategies": strategies,
    }


def grpc_status_reader(
    channel: grpc.aio.Channel, timeout_s: float, cached: bool = True
) -> StatusReader:
    """Samples of a FlexMesh gateway's `Admin/GetStatus`: its cached reports (the latest poll,
    no wait on a worker), or with `cached` False each worker asked now."""
    stub = flexmesh_pb2_grpc.AdminStub(channel)

    async def read() -> dict[str, Any] | None:
        try:
            resp = await stub.GetStatus(
                flexmesh_pb2.GetStatusRequest(cached=cached), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                return None
            raise
        p = resp.policy
        policy = (
            policy_sample(p, {r.intent: r.strategy for r in p.routes})
            if resp.HasField("policy")
            else None
        )
        return status_sample(
            resp.in_flight, resp.max_queue_len, resp.policy_version, resp.workers, policy
        )

    return read


async def fresh_status_sample(target: str, timeout_s: float = 10.0) -> dict[str, Any] | None:
    """One `Admin/GetStatus` of a FlexMesh gateway with every worker asked now (not the
    gateway's latest poll): the bookends of a replay's counters. None when it has no status or
    cannot be read (logged)."""
    from flexmesh.channel import open_channel

    try:
        async with open_channel(target) as channel:
            return await grpc_status_reader(channel, timeout_s, cached=False)()
    except Exception as e:  # a replay goes on without its bookends
        log.warning("status_read_failed", target=target, error=repr(e)[:300])
        return None


class StatusSampler:
    """Reads a sample every `interval_s` on a background task until stopped. A failed read is
    logged and skipped; a reader that answers None (no status there) ends sampling."""

    def __init__(self, read: StatusReader, interval_s: float, clock: Callable[[], float]) -> None:
        if interval_s <= 0:
            raise ValueError(f"status_interval_s: must be > 0, got {interval_s}")
        self.read = read
        self.interval_s = interval_s
        self.clock = clock
        self.samples: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            t = self.clock()
            try:
                sample = await self.read()
            except Exception as e:
                log.warning("status_poll_failed", error=repr(e)[:300])
            else:
                if sample is None:
                    return
                self.samples.append({"t_s": round(t, 6), **sample})
            await asyncio.sleep(max(0.0, self.interval_s - (self.clock() - t)))

    async def stop(self) -> list[dict[str, Any]]:
        """Stop polling and return the samples."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        return self.samples
