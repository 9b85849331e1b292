"""The worker actor: one model on one device, its engine loop, tokens streamed back in chunks.

A Ray hop costs about 1 ms, so tokens never cross one by one: the first chunk leaves as soon
as the first token exists (TTFT); a later chunk leaves when it holds `stream_chunk_tokens`
tokens, when `stream_interval_ms` passed since the previous one, or when the request ends.

Prefill/decode hand-off (docs/pd.md): a prefill worker's `generate(..., hand_off=True)` ends
after the first token with the request's state and keeps its KV; the decode worker's `resume`
pulls the KV from it (`prepare_kv`, then `send_kv` over the transport, then `release_kv`),
imports it and streams the rest. Any failure there falls back to recomputing on the decode
worker (or fails with UNAVAILABLE when `pd.fallback` is `fail`), within `pd.transfer_timeout_ms`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import ray
import structlog
import torch

from flexmesh.actors.kv import BufferPool, KVGroup, KVMeta, describe, from_numpy, to_numpy
from flexmesh.actors.runner.async_engine import AsyncEngine, Stream
from flexmesh.actors.runner.engine import Engine
from flexmesh.actors.telemetry import WorkerMetrics
from flexmesh.logs import configure_logging
from flexmesh.meshcore.config import EngineConfig, GatewayConfig, PDConfig
from flexmesh.meshcore.errors import KVTransferError
from flexmesh.meshcore.messages import RequestOutput, RequestState, WorkerStatus, merge_outputs
from flexmesh.meshcore.sampling import SamplingParams

log = structlog.get_logger(__name__)


class Worker:
    """Thin shell around an `AsyncEngine`; Ray makes it a named actor (see `services/mesh.py`)."""

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
        hold_s = self.pd.hold_timeout_ms / 1000.0

        def build() -> Engine:
            engine = Engine(model_path, engine_config, draft_model_path, kv_hold_timeout_s=hold_s)
            engine.warm_up()
            return engine

        self.aengine = AsyncEngine(build)
        self.engine = self.aengine.engine
        self.started = time.monotonic()
        self.metrics = WorkerMetrics(name, model)
        self.kv_group: KVGroup | None = None
        self.buffers = BufferPool()
        """Staging memory for KV sent or received, reused across hand-offs."""
        self._staged: dict[str, tuple[float, torch.Tensor]] = {}
        """KV gathered by `prepare_kv` and not yet sent, by request id: (time, tensor)."""
        self._peers: dict[str, Any] = {}
        self._pair_locks: dict[str, asyncio.Lock] = {}
        self._faults: dict[str, int] = {}
        log.info("worker.ready", worker=name, model=model, device=str(self.engine.runner.device))

    def ready(self) -> str:
        return self.name

    def set_role(self, role: str) -> str:
        """Record the role the gateway dispatches by; the work this worker holds goes on."""
        self.role = role
        return role

    # -- streams ---------------------------------------------------------------------------

    async def generate(
        self,
        request_id: str,
        prompt: str,
        prompt_token_ids: list[int],
        sampling: SamplingParams,
        hand_off: bool = False,
    ) -> AsyncIterator[RequestOutput]:
        """Stream chunks of one request; cancelling this generator aborts it and frees its KV.

        With `hand_off`, the stream ends after the first token with a chunk whose `handoff`
        holds the state a decode worker continues from; the KV stays held here for it.
        """
        queue = await self.aengine.add(
            prompt or None, prompt_token_ids or None, sampling, request_id, hand_off
        )
        async for chunk in self._relay(request_id, queue):
            yield chunk

    async def resume(
        self, state: RequestState, src: str = "", src_rank: int = -1
    ) -> AsyncIterator[RequestOutput]:
        """Continue a request prefilled on worker `src` (KV pulled over the collective group
        when `src_rank` >= 0, else the object store); with no `src`, recompute it here."""
        rid = state.request_id
        deadline = time.monotonic() + self.pd.transfer_timeout_ms / 1000.0
        queue, blocks = await self.aengine.open_stream(
            rid, lambda: self.engine.resume(state, deadline if src else None)
        )
        transfer: dict[str, Any] = {}
        try:
            if blocks:
                transfer = await self._take_kv(state, src, src_rank, deadline)
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
        try:
            while not done:
                batch = [await _next(queue)]
                due = loop.time() + self.stream_interval_s
                while sent_first and not _ends(batch[-1]):
                    if sum(len(o.token_ids) for o in batch) >= self.stream_chunk_tokens:
                        break
                    try:
                        batch.append(await asyncio.wait_for(_next(queue), due - loop.time()))
                    except TimeoutError:
                        break
                chunk = merge_outputs(batch)
                sent_first = sent_first or bool(chunk.token_ids)
                done = _ends(chunk)
                if chunk.finished:
                    chunk = replace(chunk, **(transfer or {}))
                    self.metrics.finished(chunk)
                yield chunk
        finally:
            if not done:
                await self.aengine.abort(request_id)
                log.info("worker.request.aborted", request_id=request_id)

    async def abort(self, request_id: str) -> bool:
        return await self.aengine.abort(request_id)

    # -- KV hand-off: decode side ----------------------------------------------------------

    async def _take_kv(
        self, state: RequestState, src: str, src_rank: int, deadline: float
    ) -> dict[str, Any]:
        """Pull the request's KV from `src` and import it; on failure recompute (or raise).

        Returns how it went, for the request's route: transport, bytes, milliseconds.
        """
        rid, t0 = state.request_id, time.monotonic()
        transport, peer = "none", None
        phases: dict[str, float] = {}  # ms spent preparing, moving and importing

        async def fetch() -> tuple[KVMeta, torch.Tensor]:
            nonlocal transport, peer
            peer = await self._peer(src)
            packed, peer_group = await peer.prepare_kv.remote(rid)
            phases["prepare_ms"] = (time.monotonic() - t0) * 1000.0
            meta = KVMeta.unpack(packed)
            transport = self._transport(peer_group)
            rank = src_rank if transport != "object_store" else -1
            kv = await self._pull(meta, peer, src, rank)
            phases["move_ms"] = (time.monotonic() - t0) * 1000.0 - phases["prepare_ms"]
            return meta, kv

        try:
            meta, kv = await asyncio.wait_for(fetch(), deadline - time.monotonic())
            t1 = time.monotonic()
            try:
                await self.aengine.call(lambda: self.engine.import_kv(rid, kv, state.num_kv_tokens))
            finally:
                if transport != "object_store":
                    self.buffers.give(kv)
            phases["import_ms"] = (time.monotonic() - t1) * 1000.0
        except Exception as exc:
            outcome = "timeout" if isinstance(exc, TimeoutError) else "error"
            if transport not in ("none", "object_store") and self.kv_group is not None:
                # A recv may still be posted: this group's pair streams are in an unknown state.
                self.kv_group.broken = self.kv_group.broken or f"transfer {outcome}"
            ms = (time.monotonic() - t0) * 1000.0
            self.metrics.transfer(outcome, transport, 0, ms)
            log.warning(
                "kv.transfer_failed",
                request_id=rid,
                src=src,
                transport=transport,
                outcome=outcome,
                error=f"{type(exc).__name__}: {exc}",
                fallback=self.pd.fallback,
            )
            if self.pd.fallback == "fail":
                raise KVTransferError(f"KV of {rid} did not arrive from {src}: {exc}") from exc
            await self.aengine.call(lambda: self.engine.kv_failed(rid))
            return {"kv_transport": f"recompute ({outcome})", "kv_transfer_ms": ms}
        finally:
            if peer is not None:
                peer.release_kv.remote(rid)  # the acknowledgement; its hold deadline covers loss
        # From the prefill's end on the sender (wall clocks: one host here, NTP across nodes).
        ms = (time.time() - state.handed_off_at) * 1000.0 if state.handed_off_at else 0.0
        ms = ms if ms > 0 else (time.monotonic() - t0) * 1000.0
        self.metrics.transfer("ok", transport, meta.nbytes, ms)
        log.info(
            "kv.imported",
            request_id=rid,
            src=src,
            transport=transport,
            bytes=meta.nbytes,
            ms=round(ms, 2),
            **{k: round(v, 2) for k, v in phases.items()},
        )
        return {"kv_transport": transport, "kv_bytes": meta.nbytes, "kv_transfer_ms": ms}

    def _transport(self, peer_group: str) -> str:
        """The collective backend when both ends share a usable group, else the object store."""
        group = self.kv_group
        shared = group is not None and not group.broken and group.name == peer_group
        if self.pd.transport == "object_store" or (self.pd.transport == "auto" and not shared):
            return "object_store"
        if group is None or not shared:
            raise RuntimeError(f"{self.name} shares no usable KV collective group with the peer")
        return group.backend

    async def _pull(self, meta: KVMeta, peer: Any, src: str, src_rank: int) -> torch.Tensor:
        """Receive the KV `meta` announces (into a pooled buffer over the collective group)."""
        if src_rank < 0:
            (ref,) = await peer.send_kv.remote(meta.request_id, -1)
            kv = from_numpy(await ref, meta)
        else:
            assert self.kv_group is not None
            # Not returned to the pool if this fails: a recv may still be writing into it.
            kv = self.buffers.take(meta.shape, meta.torch_dtype)
            async with self._pair_locks.setdefault(src, asyncio.Lock()):
                # One transfer per pair at a time: recvs must meet their sends in order.
                await asyncio.gather(
                    asyncio.to_thread(self.kv_group.recv, kv, src_rank),
                    peer.send_kv.remote(meta.request_id, self.kv_group.rank),
                )
        await asyncio.to_thread(meta.check, kv, self.model)
        return kv

    async def _peer(self, name: str) -> Any:
        if name not in self._peers:
            self._peers[name] = await asyncio.to_thread(
                ray.get_actor, name, namespace=self.namespace
            )
        return self._peers[name]

    # -- KV hand-off: prefill side ---------------------------------------------------------

    async def prepare_kv(self, request_id: str) -> tuple[bytes, str]:
        """Gather a handed-off request's KV (at a step boundary); return its `KVMeta` (msgpack)
        and the name of this worker's usable collective group ("" when it has none)."""
        if self._faults.get("kv_error", 0) > 0:
            self._faults["kv_error"] -= 1
            raise RuntimeError("injected KV transfer failure")
        if self._faults.get("kv_stall", 0) > 0:
            self._faults["kv_stall"] -= 1
            await asyncio.sleep(self.pd.transfer_timeout_ms / 1000.0 + 1.0)
        dtype = self.engine.runner.dtype
        kv = await self.aengine.call(
            lambda: self.engine.export_kv(request_id, lambda s: self.buffers.take(s, dtype))
        )
        meta = await asyncio.to_thread(describe, kv, request_id, self.model, 0)
        now = time.monotonic()
        hold_s = self.pd.hold_timeout_ms / 1000.0
        for rid, (t, stale) in list(self._staged.items()):
            if now - t > hold_s:
                del self._staged[rid]  # its decode worker never came for it
                self.buffers.give(stale)
        self._staged[request_id] = (now, kv)
        group = self.kv_group
        return meta.pack(), group.name if group is not None and not group.broken else ""

    async def send_kv(self, request_id: str, dst_rank: int) -> Any:
        """Send prepared KV to `dst_rank` of the group, or put it in the object store as numpy
        and return `[its ObjectRef]`."""
        _, kv = self._staged.pop(request_id)
        try:
            if dst_rank < 0:
                return [await asyncio.to_thread(ray.put, to_numpy(kv))]
            if self.kv_group is None:
                raise RuntimeError(f"{self.name} is in no KV collective group")
            await asyncio.to_thread(self.kv_group.send, kv, dst_rank)
            return None
        finally:
            self.buffers.give(kv)

    async def release_kv(self, request_id: str) -> bool:
        """The decode side has the KV (or gave up on it): free the blocks held here."""
        staged = self._staged.pop(request_id, None)
        if staged is not None:
            self.buffers.give(staged[1])
        return await self.aengine.call(lambda: self.engine.release_kv(request_id))

    async def join_kv_group(self, group: str, world_size: int, rank: int) -> str:
        """Join the model's collective group (every member calls this at the same time)."""
        device = str(self.engine.runner.device)
        timeout_s = self.pd.transfer_timeout_ms / 1000.0
        self.kv_group = await asyncio.to_thread(KVGroup, group, world_size, rank, device, timeout_s)
        return self.kv_group.backend

    def inject_faults(self, kv_error: int = 0, kv_stall: int = 0) -> None:
        """Testing and chaos drills: fail the next `kv_error` KV preparations here, and stall
        the next `kv_stall` ones past the transfer deadline."""
        self._faults = {"kv_error": kv_error, "kv_stall": kv_stall}

    # -- status ----------------------------------------------------------------------------

    async def status(self) -> WorkerStatus:
        return await self.aengine.call(self._status)

    def _status(self) -> WorkerStatus:
        sched, group = self.engine.scheduler, self.kv_group
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
            prefill_tokens_waiting=sched.num_prefill_tokens_waiting,
            decode_batch=sched.num_decoding,
            step_ms=self.engine.recent_step_ms,
            tpot_ms=self.engine.recent_decode_step_ms,
            kv_blocks_in_flight=sched.num_blocks_in_flight,
            kv_transport=group.backend if group is not None and not group.broken else "",
        )
        self.metrics.observe_status(status)
        return status

    async def next_token_logits(self, token_ids: list[int]) -> list[float]:
        """One forward pass over `token_ids` (the `lm` probe's question to the small model)."""
        return await self.aengine.call(lambda: self.engine.runner.next_token_logits(token_ids))


async def _next(queue: Stream) -> RequestOutput:
    item = await queue.get()
    if isinstance(item, Exception):
        raise item
    return item


def _ends(out: RequestOutput) -> bool:
    """The last output of a stream: finished here, or handed off to a decode worker."""
    return out.finished or out.handoff is not None


WorkerActor: Any = ray.remote(max_concurrency=1000)(Worker)
