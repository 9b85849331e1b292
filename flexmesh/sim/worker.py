"""A simulated worker: the real scheduler on a virtual clock, the forward pass a profiled cost.

`SimWorker` is a worker client (`actors.client.WorkerClientProtocol`), so the gateway's own
core (`services/core`: frontend, dispatcher, route machine, operations) drives it exactly as it
drives a worker actor. Inside, it runs what a worker's engine loop runs: `Scheduler.schedule`,
the step, `Scheduler.update_from_output`, the hand-off's export at the step's end, hold expiry,
`StepStats` and `EngineLoad` for its reports. Only these are replaced by the profile:

- a step's forward pass: `StepCost.ms` of the plan's chunks (the step's virtual duration);
- a hand-off's KV: exported on the prefill worker's engine after its step, carried over the
  profile's transport between the two workers (less the prompt prefix the decode worker's
  cache holds already), imported on the decode worker's engine;
- hops: opening a stream (`request_ms`), each streamed message (`chunk_ms`), control calls
  (`control_ms`).

Sampled tokens are placeholders: requests run to their `max_tokens` (the replay asks for
`ignore_eos`), and draft tokens are not simulated (a pld/spec route decodes as "none").
Outputs go out at the first token and at the end; the gateway's per-chunk cost is counted per
message sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from flexmesh.meshcore.config import EngineConfig, PDConfig
from flexmesh.meshcore.load import EngineLoad, StepStats
from flexmesh.meshcore.messages import RequestOutput, RequestState, WorkerStatus
from flexmesh.meshcore.request import Request, RequestStatus
from flexmesh.meshcore.scheduler import Scheduler
from flexmesh.sim.profile import ModelShape, Overheads, StepCost, TransportFit

TOKEN = 0
"""The placeholder every simulated step samples."""


class SimWorker:
    """One simulated worker of `model` (see the module docstring)."""

    def __init__(
        self,
        name: str,
        model: str,
        shape: ModelShape,
        cost: StepCost,
        engine: EngineConfig,
        pd: PDConfig,
        overheads: Overheads,
        transport: Callable[[SimWorker, SimWorker], tuple[str, TransportFit]],
        peers: dict[str, SimWorker],
        role: str = "mixed",
        device: str = "sim",
    ) -> None:
        """`transport(src, dst)` names the link a hand-off between two workers takes and its
        costs; `peers` finds a hand-off's source by name."""
        self.name, self.model, self.role, self.device = name, model, role, device
        self.shape, self.cost, self.overheads = shape, cost, overheads
        self.transport, self.peers = transport, peers
        num_blocks = engine.kv_blocks(shape.kv_bytes_per_token)
        self.scheduler = Scheduler(engine, num_blocks, shape.max_position_tokens)
        self.hold_s = pd.hold_timeout_ms / 1000.0
        self.transfer_s = pd.transfer_timeout_ms / 1000.0
        self.stats = StepStats()
        self.tokens_generated = 0
        self.busy_s = 0.0
        """Virtual seconds the engine spent in steps, exports and imports."""
        self._streams: dict[str, asyncio.Queue[RequestOutput]] = {}
        self._sent: dict[str, int] = {}
        """Output tokens each request already sent (the next output's offset)."""
        self._timings: dict[str, tuple[float, float]] = {}
        """Queue and prefill ms a resumed request brought from where it was computed."""
        self._staged: dict[str, int] = {}
        """KV bytes of each handed-off request exported here, until its decode worker pulls."""
        self._imports: list[tuple[str, int, int]] = []
        """KV arrived for (request, tokens, bytes): imported at the next step boundary."""
        self._work = asyncio.Event()
        self.exported = asyncio.Event()
        """Set (then replaced) after each step's exports: a decode worker waiting to pull."""
        self._loop = asyncio.get_running_loop()
        self.failure: BaseException | None = None
        """What broke this worker's engine loop (a simulator bug: the run reports it)."""
        self._task = self._loop.create_task(self._run(), name=f"sim-{name}")
        self._task.add_done_callback(self._died)

    # -- the worker protocol -------------------------------------------------------------------

    async def stream(self, state: RequestState) -> AsyncIterator[RequestOutput]:
        await self._hop(self.overheads.request_ms)
        request = Request(
            state.request_id,
            list(state.prompt_token_ids),
            state.sampling,
            arrival_time=self._loop.time(),
            hand_off=state.hand_off,
        )
        queue = self._open(state.request_id, 0)
        try:
            self.scheduler.add(request)
        except BaseException:
            self._close(state.request_id)
            raise
        self._work.set()
        async for out in self._relay(state.request_id, queue):
            yield out

    async def resume(
        self, state: RequestState, src: str = "", src_rank: int = -1
    ) -> AsyncIterator[RequestOutput]:
        await self._hop(self.overheads.request_ms)
        rid, now = state.request_id, self._loop.time()
        if self.scheduler.get(rid, RequestStatus.KV_IN_FLIGHT) is not None:
            self.scheduler.finish(rid, RequestStatus.FINISHED_STOPPED)  # prefilled here
        request = Request(
            rid,
            list(state.prompt_token_ids),
            state.sampling,
            arrival_time=now,
            output_token_ids=list(state.output_token_ids),
            first_scheduled_time=now,
            first_token_time=now,
        )
        source = self.peers.get(src) if src else None
        reserved = source is not None and self.scheduler.reserve_for_kv(
            request, state.num_kv_tokens, now + self.transfer_s
        )
        if not reserved:
            self.scheduler.add(request)
            self._work.set()
        queue = self._open(rid, state.sent_tokens, (state.queue_ms, state.prefill_ms))
        if reserved:
            assert source is not None
            held = request.num_cached_blocks * self.scheduler.config.block_size_tokens
            self._loop.create_task(self._pull(source, rid, state.num_kv_tokens, held))
        async for out in self._relay(rid, queue):
            yield out

    async def abort(self, request_id: str) -> None:
        await self._hop(self.overheads.control_ms)
        self._abort(request_id)

    async def status(self) -> WorkerStatus:
        await self._hop(self.overheads.control_ms)
        now = self._loop.time()
        load = EngineLoad.of(self.scheduler, now, self.stats, self.tokens_generated)
        return WorkerStatus(
            name=self.name,
            model=self.model,
            model_path="",
            role=self.role,
            device=self.device,
            uptime_s=now,
            **vars(load),  # its fields are WorkerStatus's (a shallow copy: asdict deep-copies)
        )

    async def ping(self, timeout_s: float | None = None) -> None:
        await self._hop(self.overheads.control_ms)

    async def set_role(self, role: str) -> None:
        await self._hop(self.overheads.control_ms)
        self.role = role

    async def set_prefill_budget(self, tokens: int) -> None:
        await self._hop(self.overheads.control_ms)
        self.scheduler.set_prefill_budget(tokens)

    def stop(self) -> None:
        self._task.cancel()

    def _died(self, task: asyncio.Task[None]) -> None:
        """The engine loop ended by an exception: every stream gets it, nothing waits."""
        if task.cancelled() or task.exception() is None:
            return
        self.failure = task.exception()
        for queue in self._streams.values():
            queue.put_nowait(self.failure)  # type: ignore[arg-type]

    # -- streams -------------------------------------------------------------------------------

    def _open(
        self, rid: str, sent: int, timings: tuple[float, float] | None = None
    ) -> asyncio.Queue[RequestOutput]:
        queue: asyncio.Queue[RequestOutput] = asyncio.Queue()
        self._streams[rid], self._sent[rid] = queue, sent
        if timings is not None:
            self._timings[rid] = timings
        return queue

    def _close(self, rid: str) -> None:
        self._streams.pop(rid, None)
        self._sent.pop(rid, None)
        self._timings.pop(rid, None)

    async def _relay(
        self, rid: str, queue: asyncio.Queue[RequestOutput]
    ) -> AsyncIterator[RequestOutput]:
        done = False
        try:
            while not done:
                out = await queue.get()
                if isinstance(out, BaseException):
                    raise out
                done = out.finished or out.handoff is not None
                yield out
        finally:
            if not done:  # the gateway closed the stream early: the request is aborted
                self._abort(rid)

    def _abort(self, rid: str) -> None:
        self._close(rid)
        self._staged.pop(rid, None)
        self.scheduler.abort(rid)
        self._work.set()

    async def _hop(self, ms: float) -> None:
        if ms > 0:
            await asyncio.sleep(ms / 1000.0)

    def _emit(self, req: Request) -> None:
        """The output of `req` after a step (its first token, its end or its hand-off), sent
        to its stream after a message's hop."""
        queue = self._streams.get(req.request_id)
        if queue is None:
            return
        offset = self._sent[req.request_id]
        first = offset == 0 and req.status == RequestStatus.RUNNING
        handed_off = req.status == RequestStatus.KV_IN_FLIGHT
        if not (first or handed_off or req.finished):
            return  # tokens between the first and the last go out with the last
        new_ids = tuple(req.output_token_ids[offset:])
        self._sent[req.request_id] = len(req.output_token_ids)
        self.tokens_generated += len(new_ids)
        queue_ms, prefill_ms = self._timings.get(req.request_id) or req.timings_ms
        out = RequestOutput(req.request_id, new_ids, "", offset=offset)
        if handed_off:
            state = RequestState(
                request_id=req.request_id,
                prompt_token_ids=tuple(req.prompt_token_ids),
                output_token_ids=tuple(req.output_token_ids),
                sampling=req.sampling,
                num_kv_tokens=req.num_computed_tokens,
                sent_tokens=len(req.output_token_ids),
                queue_ms=queue_ms,
                prefill_ms=prefill_ms,
            )
            out = replace(out, handoff=state)
        elif req.finished:
            out = replace(
                out,
                finished=True,
                finish_reason=req.status.finish_reason,
                prompt_tokens=req.num_prompt_tokens,
                completion_tokens=len(req.output_token_ids),
                queue_ms=queue_ms,
                prefill_ms=prefill_ms,
            )
        if out.finished or out.handoff is not None:
            self._close(req.request_id)
        self._loop.call_later(self.overheads.chunk_ms / 1000.0, queue.put_nowait, out)

    # -- hand-off ------------------------------------------------------------------------------

    async def _pull(self, source: SimWorker, rid: str, tokens: int, held: int) -> None:
        """Take `rid`'s KV from `source` once it is exported there, over the pair's link: all
        but its first `held` tokens, which this worker's prefix cache holds already."""
        deadline = self._loop.time() + self.transfer_s
        nbytes = source._staged.pop(rid, None)
        while nbytes is None:  # exported at the end of the step that handed it off
            if self._loop.time() >= deadline or rid not in self._streams:
                self.scheduler.kv_failed(rid)
                self._work.set()
                return
            await source.exported.wait()
            nbytes = source._staged.pop(rid, None)
        nbytes -= held * self.shape.kv_bytes_per_token
        _, link = self.transport(source, self)
        await asyncio.sleep(link.transfer.ms(nbytes) / 1000.0)
        self._imports.append((rid, tokens, nbytes))
        self._work.set()

    # -- the engine loop -----------------------------------------------------------------------

    async def _run(self) -> None:
        loop = self._loop
        while True:
            dropped, _ = self.scheduler.expire(loop.time())
            for req in dropped:
                self._staged.pop(req.request_id, None)
            if self._imports:
                await self._import()
            if not self.scheduler.has_unfinished():
                await self._idle()
                continue
            plan = self.scheduler.schedule(loop.time())
            for req in plan.finished:
                self._emit(req)
            if not plan.chunks:  # blocked (no free blocks): wait for something to change
                await self._idle()
                continue
            ms = self.cost.ms((c.num_tokens, c.start + c.num_tokens) for c in plan.chunks)
            await self._busy(ms)
            now = loop.time()
            sampled = {c.request_id: [TOKEN] for c in plan.chunks if c.samples}
            touched = self.scheduler.update_from_output(plan, sampled, now, now + self.hold_s)
            self.stats.observe(plan, sampled, ms)
            for req in touched:
                self._emit(req)
            await self._export()

    async def _idle(self) -> None:
        """Wait for new work, or for the next hold deadline (then expire it)."""
        self._work.clear()
        deadline = self.scheduler.next_deadline()
        timeout = None if deadline is None else max(0.0, deadline - self._loop.time())
        try:
            await asyncio.wait_for(self._work.wait(), timeout)
        except TimeoutError:
            pass

    async def _export(self) -> None:
        """The planned export: each request handed off in this step, its KV copied out and its
        blocks freed (the copy waits for its decode worker)."""
        handed = [r for r in self.scheduler.parked() if r.status == RequestStatus.KV_IN_FLIGHT]
        if not handed:
            return
        sizes = {
            r.request_id: r.num_computed_tokens * self.shape.kv_bytes_per_token for r in handed
        }
        await self._busy(sum(self._export_cost(n) for n in sizes.values()))
        for rid, nbytes in sizes.items():
            if self.scheduler.get(rid, RequestStatus.KV_IN_FLIGHT) is not None:
                self.scheduler.finish(rid, RequestStatus.FINISHED_STOPPED)
                self._staged[rid] = nbytes
        event, self.exported = self.exported, asyncio.Event()
        event.set()

    def _export_cost(self, nbytes: int) -> float:
        """A copy out of this worker's blocks (the same for any destination)."""
        return self.transport(self, self)[1].export.ms(nbytes)

    async def _import(self) -> None:
        imports, self._imports = self._imports, []
        ms = 0.0
        for rid, tokens, nbytes in imports:
            if self.scheduler.get(rid, RequestStatus.WAITING_FOR_KV) is None:
                continue  # aborted or expired meanwhile
            ms += self.transport(self, self)[1].import_.ms(nbytes)
            self.scheduler.kv_arrived(rid, tokens)
        await self._busy(ms)

    async def _busy(self, ms: float) -> None:
        self.busy_s += ms / 1000.0
        await asyncio.sleep(ms / 1000.0)
