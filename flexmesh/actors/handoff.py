"""The KV hand-off half of a worker actor: taking a request's KV from its prefill worker
(decode side) and giving it to its decode worker (prefill side). See docs/pd.md.

A mixin of `Worker`, so Ray exposes these as the worker actor's own methods; it uses the
worker's engine, config, metrics and logger and adds only the transfer's I/O.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import ray
import structlog
import torch

from flexmesh.actors.kv import BufferPool, KVGroup, KVMeta, describe, from_numpy, to_numpy
from flexmesh.meshcore.errors import KVTransferError
from flexmesh.meshcore.messages import RequestState

if TYPE_CHECKING:
    from flexmesh.actors.runner.async_engine import AsyncEngine
    from flexmesh.actors.runner.engine import Engine
    from flexmesh.actors.telemetry import WorkerMetrics
    from flexmesh.meshcore.config import PDConfig

log = structlog.get_logger(__name__)


class KVHandoff:
    """KV hand-off methods of the worker actor (state set up by `_init_handoff`)."""

    name: str
    model: str
    namespace: str
    pd: PDConfig
    engine: Engine
    aengine: AsyncEngine
    metrics: WorkerMetrics

    def _init_handoff(self) -> None:
        self.node_id = ray.get_runtime_context().get_node_id()
        """The Ray node this worker runs on: a hand-off's transport depends on its peer's."""
        self.kv_group: KVGroup | None = None
        self.buffers = BufferPool()
        """Staging memory for KV sent or received, reused across hand-offs."""
        self._staged: dict[str, tuple[float, torch.Tensor]] = {}
        """KV gathered by `prepare_kv` and not yet sent, by request id: (time, tensor)."""
        self._peers: dict[str, Any] = {}
        self._pair_locks: dict[str, asyncio.Lock] = {}
        self._transfers: set[asyncio.Future[None]] = set()
        """Collective transfers under way (kept referenced until their recv really ends)."""
        self._faults: dict[str, int] = {}

    # -- KV hand-off: decode side ----------------------------------------------------------

    async def _take_kv(
        self, state: RequestState, src: str, src_rank: int, deadline: float
    ) -> dict[str, Any]:
        """Pull the request's KV from `src` and import it; on failure raise `KVTransferError`
        (the caller frees the reservation; the gateway's route decides what follows).

        Returns how it went, for the request's route: transport, bytes, milliseconds.
        """
        rid, t0 = state.request_id, time.monotonic()
        how, transport, peer = "none", "none", None  # how the bytes move; its name in the route
        phases: dict[str, float] = {}  # ms spent preparing, moving and importing

        async def fetch() -> tuple[KVMeta, torch.Tensor]:
            nonlocal how, transport, peer
            peer = await self._peer(src)
            packed, peer_group, peer_node = await peer.prepare_kv.remote(rid)
            phases["prepare_ms"] = (time.monotonic() - t0) * 1000.0
            meta = KVMeta.unpack(packed)
            local = peer_node == self.node_id
            how = self._transport(peer_group, local)
            transport = how if local else f"{how} cross-node"
            kv = await self._pull(meta, peer, src, src_rank if how != "object_store" else -1)
            phases["move_ms"] = (time.monotonic() - t0) * 1000.0 - phases["prepare_ms"]
            return meta, kv

        try:
            meta, kv = await asyncio.wait_for(fetch(), deadline - time.monotonic())
            t1 = time.monotonic()
            try:
                await self.aengine.call(lambda: self.engine.import_kv(rid, kv, state.num_kv_tokens))
            finally:
                if how != "object_store":
                    self.buffers.give(kv)
            phases["import_ms"] = (time.monotonic() - t1) * 1000.0
        except Exception as exc:
            outcome = "timeout" if isinstance(exc, TimeoutError) else "error"
            if how not in ("none", "object_store") and self.kv_group is not None:
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
            )
            # The gateway's route decides what follows (recompute here, or fail: pd.fallback).
            raise KVTransferError(f"did not arrive from {src}: {exc}", outcome) from exc
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

    def _usable_group(self) -> KVGroup | None:
        """This worker's collective group, unless it has none or the group broke."""
        group = self.kv_group
        return group if group is not None and not group.broken else None

    def _transport(self, peer_group: str, local: bool) -> str:
        """How the KV moves from a peer: the collective group both ends share (its backend),
        else the object store. By locality: within a node any backend; across nodes gloo
        (TCP) still, but a device collective (HCCL, NCCL) gives way to the object store."""
        group = self._usable_group()
        shared = group is not None and group.name == peer_group
        if self.pd.transport == "object_store" or (self.pd.transport == "auto" and not shared):
            return "object_store"
        if group is None or not shared:
            raise RuntimeError(f"{self.name} shares no usable KV collective group with the peer")
        if not local and group.backend != "gloo" and self.pd.transport == "auto":
            return "object_store"
        return group.backend

    async def _pull(self, meta: KVMeta, peer: Any, src: str, src_rank: int) -> torch.Tensor:
        """Receive the KV `meta` announces (into a pooled buffer over the collective group)."""
        if src_rank < 0:
            (ref,) = await peer.send_kv.remote(meta.request_id, -1)
            kv = from_numpy(await ref, meta)
        else:
            # Not returned to the pool if this fails: a recv may still be writing into it.
            kv = self.buffers.take(meta.shape, meta.torch_dtype)
            # Shielded: a cancelled or timed-out request must not release the pair's lock while
            # its recv is still posted, or the next transfer's recv could meet this one's send.
            task = asyncio.ensure_future(self._transfer(kv, peer, src, src_rank, meta.request_id))
            self._transfers.add(task)
            task.add_done_callback(self._transfers.discard)
            await asyncio.shield(task)
        await asyncio.to_thread(meta.check, kv, self.model)
        return kv

    async def _transfer(
        self, kv: torch.Tensor, peer: Any, src: str, src_rank: int, request_id: str
    ) -> None:
        """recv here and send there, one transfer per worker pair at a time, in order."""
        group = self.kv_group
        assert group is not None
        async with self._pair_locks.setdefault(src, asyncio.Lock()):
            results = await asyncio.gather(
                asyncio.to_thread(group.recv, kv, src_rank),
                peer.send_kv.remote(request_id, group.rank),
                return_exceptions=True,  # hold the lock until both ends are really done
            )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _peer(self, name: str) -> Any:
        if name not in self._peers:
            self._peers[name] = await asyncio.to_thread(
                ray.get_actor, name, namespace=self.namespace
            )
        return self._peers[name]

    # -- KV hand-off: prefill side ---------------------------------------------------------

    async def prepare_kv(self, request_id: str) -> tuple[bytes, str, str]:
        """Gather a handed-off request's KV (at a step boundary); return its `KVMeta` (msgpack),
        the name of this worker's usable collective group ("" when it has none) and its node."""
        if self._faults.get("kv_error", 0) > 0:
            self._faults["kv_error"] -= 1
            raise RuntimeError("injected KV transfer failure")
        if self._faults.get("kv_stall", 0) > 0:
            self._faults["kv_stall"] -= 1
            await asyncio.sleep(self.pd.transfer_timeout_ms / 1000.0 + 1.0)
        dtype = self.engine.dtype
        kv = await self.aengine.call(
            lambda: self.engine.export_kv(request_id, lambda s: self.buffers.take(s, dtype))
        )
        meta = await asyncio.to_thread(describe, kv, request_id, self.model)
        now = time.monotonic()
        hold_s = self.pd.hold_timeout_ms / 1000.0
        for rid, (t, stale) in list(self._staged.items()):
            if now - t > hold_s:
                del self._staged[rid]  # its decode worker never came for it
                self.buffers.give(stale)
        self._staged[request_id] = (now, kv)
        group = self._usable_group()
        return meta.pack(), group.name if group is not None else "", self.node_id

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
        device = str(self.engine.device)
        timeout_s = self.pd.transfer_timeout_ms / 1000.0
        self.kv_group = await asyncio.to_thread(KVGroup, group, world_size, rank, device, timeout_s)
        return self.kv_group.backend

    def inject_faults(self, kv_error: int = 0, kv_stall: int = 0) -> None:
        """Testing and chaos drills: fail the next `kv_error` KV preparations here, and stall
        the next `kv_stall` ones past the transfer deadline."""
        self._faults = {"kv_error": kv_error, "kv_stall": kv_stall}
