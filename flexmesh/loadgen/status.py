"""Periodic `Admin/GetStatus` samples during a replay (worker roles and queues over time)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import structlog

from flexmesh.v1 import flexmesh_pb2, flexmesh_pb2_grpc

log = structlog.get_logger(__name__)


def status_to_dict(t_s: float, resp: flexmesh_pb2.GetStatusResponse) -> dict[str, Any]:
    """One sample as plain data (what `plots.plot_status` and `status.jsonl` use)."""
    return {
        "t_s": round(t_s, 6),
        "in_flight": resp.in_flight,
        "max_queue_len": resp.max_queue_len,
        "policy_version": resp.policy_version,
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
                "prefill_budget_tokens": w.prefill_budget_tokens,
                "max_batched_tokens": w.max_batched_tokens,
            }
            for w in resp.workers
        ],
        **({"policy": _policy(resp.policy)} if resp.HasField("policy") else {}),
    }


def _policy(p: flexmesh_pb2.Policy) -> dict[str, Any]:
    return {
        "confidence_threshold": round(p.confidence_threshold, 4),
        "spill_queue_ms": p.spill_queue_ms,
        "return_queue_ms": p.return_queue_ms,
        "strategies": {r.intent: r.strategy for r in p.routes},
    }


class StatusSampler:
    """Polls `Admin/GetStatus` every `interval_s` on a background task until stopped.

    A failed poll is logged and skipped; UNIMPLEMENTED (a server without Admin) ends sampling.
    """

    def __init__(
        self, channel: grpc.aio.Channel, interval_s: float, clock: Callable[[], float]
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"status_interval_s: must be > 0, got {interval_s}")
        self.stub = flexmesh_pb2_grpc.AdminStub(channel)
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
                resp = await self.stub.GetStatus(
                    flexmesh_pb2.GetStatusRequest(cached=True), timeout=max(1.0, self.interval_s)
                )
                self.samples.append(status_to_dict(t, resp))
            except grpc.aio.AioRpcError as e:
                log.warning("status_poll_failed", code=e.code().name, error=e.details())
                if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                    return
            await asyncio.sleep(max(0.0, self.interval_s - (self.clock() - t)))

    async def stop(self) -> list[dict[str, Any]]:
        """Stop polling and return the samples."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        return self.samples
