"""The KV mover: the byte-moving half of a prefill/decode hand-off, an object beside a worker's
engine (the planning half is the engine's: docs/pd.md).

Prefill side: at the end of the step that sampled a handed-off request's first token, the
engine copies its KV into a staging buffer from this mover and frees its blocks (the planned
export); the mover checksums the copy in the background and holds it until the decode worker
asks for it (`send`), or `pd.hold_timeout_ms` passes. A decode worker that holds the
request's leading blocks already (its prefix cache) asks for the rest only: those are copied
out of the staged KV and checksummed when sent.

Decode side (`take`): the decode worker pulls. It knows the shape (its own blocks for the
state's KV tokens, less those it holds already) and, from the hand-off state, the prefill
worker's group and node, so one call moves the bytes: it posts its receive and asks the
prefill worker to send (over the model's collective group, one transfer per worker pair at a
time), or to put the copy in the object store; then it checks the checksum and imports at a
step boundary. Staging and receive buffers live on the worker's device, so gather, send/recv
and scatter never leave it; only the object store crosses the host (device → host on P, host
→ device on D, named in the route). Nothing blocks the engine thread or the event loop. A
failure raises `KVTransferError`; the gateway's route decides what follows (recompute on this
worker, or fail: `pd.fallback`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import ray
import structlog
import torch

from flexmesh.actors.kv import (
    BufferPool,
    KVGroup,
    KVMeta,
    describe,
    from_numpy,
    to_numpy,
    via_host,
)
from flexmesh.actors.runner.async_engine import AsyncEngine
from flexmesh.actors.telemetry import WorkerMetrics
from flexmesh.meshcore.config import PDConfig
from flexmesh.meshcore.errors import KVTransferError
from flexmesh.meshcore.messages import RequestState

log = structlog.get_logger(__name__)


class KVMover:
    """Stages, sends and receives one worker's hand-off KV (see module docstring)."""

    def __init__(
        self, name: str, model: str, namespace: str, pd: PDConfig, aengine: AsyncEngine,
        metrics: WorkerMetrics,
    ) -> None:  # fmt: skip
        self.name, self.model, self.namespace, self.pd = name, model, namespace, pd
        self.aengine, self.metrics = aengine, metrics
        self.node_id = ray.get_runtime_context().get_node_id()
        """The Ray node this worker runs on: a hand-off's transport depends on its peer's."""
        self.group: KVGroup | None = None
        self.buffers = BufferPool(aengine.engine.device)
        """Staging memory for KV sent or received, on this worker's device, reused."""
        self._staged: dict[str, asyncio.Future[tuple[torch.Tensor, KVMeta]]] = {}
        """Exported KV by request id: (tensor, its meta) once checksummed."""
        self._peers: dict[str, Any] = {}
        self._pair_locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        """Background work kept referenced until it ends: checksums of staged copies, and
        collective transfers (until their recv really ends)."""
        self._faults: dict[str, int] = {}
        dtype = aengine.engine.dtype
        aengine.exports = (lambda shape: self.buffers.take(shape, dtype), self._stage)

    # -- prefill side ----------------------------------------------------------------------

    def _stage(self, request_id: str, kv: torch.Tensor) -> None:
        """Take the engine's planned export (on the event loop): checksum it, then hold it
        until its decode worker takes it or `pd.hold_timeout_ms` passes."""
        staged = self._future(request_id)
        if staged.done():  # a second export of the same id: keep the first
            self.buffers.give(kv)
            return

        async def checksum() -> None:
            meta = await asyncio.to_thread(describe, kv, request_id, self.model)
            if not staged.done():
                staged.set_result((kv, meta))

        loop = asyncio.get_running_loop()
        loop.call_later(self._hold_s, self._expire, request_id, staged)
        task = loop.create_task(checksum())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def send(
        self, request_id: str, dst_rank: int, skip_blocks: int = 0
    ) -> tuple[bytes, list[Any] | None]:
        """Send the staged KV of `request_id`, less its first `skip_blocks` blocks (the
        receiver holds them), to rank `dst_rank` of the group (its receive is posted), or put
        it in the object store (`dst_rank` < 0); return its meta (msgpack) and, for the object
        store, `[its ObjectRef]`. The staged copy is freed either way."""
        if self._faults.get("kv_error", 0) > 0:
            self._faults["kv_error"] -= 1
            raise RuntimeError("injected KV transfer failure")
        if self._faults.get("kv_stall", 0) > 0:
            self._faults["kv_stall"] -= 1
            await asyncio.sleep(self.pd.transfer_timeout_ms / 1000.0 + 1.0)
        staged = self._future(request_id)
        try:
            kv, meta = await asyncio.wait_for(asyncio.shield(staged), self._transfer_s)
        except TimeoutError:
            self._staged.pop(request_id, None)
            raise RuntimeError(
                f"{self.name} holds no KV of {request_id} (expired or aborted)"
            ) from None
        part = None
        try:
            if skip_blocks:
                part = await asyncio.to_thread(self.buffers.tail, kv, skip_blocks)
                meta = await asyncio.to_thread(describe, part, request_id, self.model)
                kv = part
            if dst_rank < 0:
                return meta.pack(), [await asyncio.to_thread(ray.put, to_numpy(kv))]
            if self.group is None:
                raise RuntimeError(f"{self.name} is in no KV collective group")
            await asyncio.to_thread(self.group.send, kv, dst_rank)
            return meta.pack(), None
        finally:
            if part is not None:
                self.buffers.give(part)
            self._drop(request_id)

    def _future(self, request_id: str) -> asyncio.Future[tuple[torch.Tensor, KVMeta]]:
        if request_id not in self._staged:
            self._staged[request_id] = asyncio.get_running_loop().create_future()
        return self._staged[request_id]

    def _expire(self, request_id: str, staged: asyncio.Future[Any]) -> None:
        """Nobody came for the staged KV (its decode worker died, the gateway left)."""
        if self._staged.get(request_id) is staged:
            self._drop(request_id)
            log.warning("kv.hold_expired", request_id=request_id)

    def _drop(self, request_id: str) -> None:
        fut = self._staged.pop(request_id, None)
        if fut is not None and fut.done() and not fut.exception():
            self.buffers.give(fut.result()[0])

    @property
    def _hold_s(self) -> float:
        return self.pd.hold_timeout_ms / 1000.0

    @property
    def _transfer_s(self) -> float:
        return self.pd.transfer_timeout_ms / 1000.0

    # -- decode side -----------------------------------------------------------------------

    async def take(
        self,
        state: RequestState,
        src: str,
        src_rank: int,
        blocks: tuple[int, int],
        deadline: float,
    ) -> dict[str, Any]:
        """Pull the request's KV from `src` and import it; `blocks` is (leading blocks held
        here already, which `src` skips; blocks reserved here for the rest), as `Engine.resume`
        returns it. Raise `KVTransferError` when it does not arrive. Returns how it went, for
        the route: transport, bytes moved, milliseconds."""
        rid, t0 = state.request_id, time.monotonic()
        local = state.kv_node == self.node_id
        how = self._transport(state.kv_group, local)
        transport = how if local else f"{how} cross-node"
        phases: dict[str, float] = {}  # ms spent moving and importing
        try:
            peer = await self._peer(src)
            kv, meta = await asyncio.wait_for(
                self._pull(peer, rid, src, src_rank, how, blocks), deadline - time.monotonic()
            )
            phases["move_ms"] = (time.monotonic() - t0) * 1000.0
            t1 = time.monotonic()
            try:
                engine = self.aengine.engine
                await self.aengine.call(lambda: engine.import_kv(rid, kv, state.num_kv_tokens))
            finally:
                if how != "object_store" or self.buffers.device.type != "cpu":
                    self.buffers.give(kv)  # a pool buffer (on a CPU the store's array is not)
            phases["import_ms"] = (time.monotonic() - t1) * 1000.0
        except Exception as exc:
            outcome = "timeout" if isinstance(exc, TimeoutError) else "error"
            if how != "object_store" and self.group is not None:
                # A recv may still be posted: this group's pair streams are in an unknown state.
                self.group.broken = self.group.broken or f"transfer {outcome}"
            ms = (time.monotonic() - t0) * 1000.0
            self.metrics.transfer(outcome, transport, 0, ms)
            log.warning(
                "kv.transfer_failed", request_id=rid, src=src, transport=transport,
                outcome=outcome, error=f"{type(exc).__name__}: {exc}",
            )  # fmt: skip
            raise KVTransferError(f"did not arrive from {src}: {exc}", outcome) from exc
        # From the prefill's end on the sender (wall clocks: one host here, NTP across nodes).
        ms = (time.time() - state.handed_off_at) * 1000.0 if state.handed_off_at else 0.0
        ms = ms if ms > 0 else (time.monotonic() - t0) * 1000.0
        hops = via_host(meta.device, self.buffers.device.type) if how == "object_store" else ""
        transport += f" ({hops})" if hops else ""
        self.metrics.transfer("ok", transport, meta.nbytes, ms)
        log.info(
            "kv.imported", request_id=rid, src=src, transport=transport, bytes=meta.nbytes,
            ms=round(ms, 2), **{k: round(v, 2) for k, v in phases.items()},
        )  # fmt: skip
        return {"kv_transport": transport, "kv_bytes": meta.nbytes, "kv_transfer_ms": ms}

    async def _pull(
        self, peer: Any, rid: str, src: str, src_rank: int, how: str, blocks: tuple[int, int]
    ) -> tuple[torch.Tensor, KVMeta]:
        """The KV, received and checked against the meta its sender announces (its block count
        against the reservation: here for the collective's buffer, at the import otherwise)."""
        skip, num_blocks = blocks
        if how == "object_store":
            packed, (ref,) = await peer.send_kv.remote(rid, -1, skip)
            meta = KVMeta.unpack(packed)
            host = from_numpy(await ref, meta)
            # Checked on the host, where the bytes are, then copied host → device.
            await asyncio.to_thread(meta.check, host, self.model)
            return await asyncio.to_thread(self.buffers.upload, host), meta
        # Not returned to the pool if this fails: a recv may still be writing into it.
        engine = self.aengine.engine
        kv = self.buffers.take(engine.kv_shape(num_blocks), engine.dtype)
        # Shielded: a cancelled or timed-out request must not release the pair's lock while
        # its recv is still posted, or the next transfer's recv could meet this one's send.
        task = asyncio.ensure_future(self._transfer(kv, peer, src, src_rank, rid, skip))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        meta = await asyncio.shield(task)
        await asyncio.to_thread(meta.check, kv, self.model)
        return kv, meta

    async def _transfer(
        self, kv: torch.Tensor, peer: Any, src: str, src_rank: int, request_id: str, skip: int
    ) -> KVMeta:
        """recv here and send there, one transfer per worker pair at a time, in order."""
        group = self.group
        assert group is not None
        async with self._pair_locks.setdefault(src, asyncio.Lock()):
            received = asyncio.ensure_future(asyncio.to_thread(group.recv, kv, src_rank))
            try:
                packed, _ = await peer.send_kv.remote(request_id, group.rank, skip)
            except BaseException as exc:
                # The sender gave up (or died): this recv stays posted until the group's
                # timeout, so nothing else may use the group (it would meet the wrong bytes).
                group.broken = group.broken or f"send of {request_id} failed: {exc!r}"
                self._tasks.add(received)
                received.add_done_callback(self._tasks.discard)
                raise
            await received
        return KVMeta.unpack(packed)

    def usable_group(self) -> KVGroup | None:
        """This worker's collective group, unless it has none or the group broke."""
        group = self.group
        return group if group is not None and not group.broken else None

    def _transport(self, peer_group: str, local: bool) -> str:
        """How the KV moves from a peer: the collective group both ends share (its backend),
        else the object store. By locality: within a node any backend; across nodes gloo
        (TCP) still, but a device collective (HCCL, NCCL) gives way to the object store."""
        group = self.usable_group()
        shared = group is not None and group.name == peer_group
        if self.pd.transport == "object_store" or (self.pd.transport == "auto" and not shared):
            return "object_store"
        if group is None or not shared:
            raise RuntimeError(f"{self.name} shares no usable KV collective group with the peer")
        if not local and group.backend != "gloo" and self.pd.transport == "auto":
            return "object_store"
        return group.backend

    async def _peer(self, name: str) -> Any:
        if name not in self._peers:
            self._peers[name] = await asyncio.to_thread(
                ray.get_actor, name, namespace=self.namespace
            )
        return self._peers[name]

    # -- membership and drills -------------------------------------------------------------

    async def join(self, group: str, world_size: int, rank: int) -> str:
        """Join the model's collective group (every member calls this at the same time)."""
        device = str(self.aengine.engine.device)
        timeout_s = self._transfer_s
        self.group = await asyncio.to_thread(KVGroup, group, world_size, rank, device, timeout_s)
        return self.group.backend

    def inject_faults(self, kv_error: int = 0, kv_stall: int = 0) -> None:
        """Testing and chaos drills: fail the next `kv_error` sends here, and stall the next
        `kv_stall` ones past the transfer deadline."""
        self._faults = {"kv_error": kv_error, "kv_stall": kv_stall}
