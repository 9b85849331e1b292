"""The loop that runs one request's route machine (`meshcore/route.py`) over worker clients.

It turns what workers do into route events (a chunk, the end of a stream, a typed error, a
worker found dead meanwhile, the deadline, the client leaving) and the machine's actions into
calls (prefill, run, resume, abort, ask the pool for a rescue worker). Every rule about where a
request goes next is the machine's; this module decides nothing (tests/unit/test_layers.py
checks it holds no rule). Each worker's load in the pool follows the route's phase.
docs/pd.md has the hand-off contract, docs/reliability.md the migration rules.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace

import structlog

from flexmesh.actors.client import WorkerClientProtocol
from flexmesh.meshcore import route as rt
from flexmesh.meshcore.affinity import prompt_keys
from flexmesh.meshcore.errors import (
    DeadlineExceededError,
    FlexMeshError,
    KVTransferError,
    WorkerLostError,
    WorkerUnavailableError,
)
from flexmesh.meshcore.messages import RequestOutput
from flexmesh.meshcore.pool import WorkerPool
from flexmesh.meshcore.sampling import SamplingParams

log = structlog.get_logger(__name__)


class Dispatcher:
    """Runs requests over a `WorkerPool` of worker clients."""

    def __init__(
        self,
        pool: WorkerPool,
        clients: Mapping[str, WorkerClientProtocol],
        rules: rt.RouteRules,
        min_prompt_tokens: int,
        on_move: Callable[[str, str], None] | None = None,
        block_tokens: int = 16,
    ) -> None:
        """`on_move(worker, kind)` counts a request that left a broken `worker`: kind
        "prefill_fallback" (before its hand-off) or "migration". `block_tokens`: the engines'
        KV block size, the run a cache-aware pool's prompt keys cover."""
        self.pool, self.clients, self.rules = pool, dict(clients), rules
        self.min_prompt_tokens, self.on_move = min_prompt_tokens, on_move
        self.block_tokens = block_tokens
        self.moves = {"prefill_fallback": 0, "migration": 0}
        """Requests that left a broken worker, by kind."""
        self.lost = asyncio.Event()
        """Set (then replaced) whenever a worker is found dead: wakes every waiting request."""
        self.health = 0
        """Counts changes of any worker's health: a route hears of each one."""

    def set_alive(self, worker: str, alive: bool) -> bool:
        """Record a worker's health (from a call that failed, or from its report); True when
        it changed. A worker found dead wakes every request still waiting on it: Ray queues
        calls to an actor that restarts, so they would otherwise wait out the restart."""
        changed = self.pool.set_alive(worker, alive)
        self.health += changed
        if changed and not alive:
            self.lost.set()
            self.lost = asyncio.Event()
        return changed

    def start(
        self,
        request_id: str,
        model: str,
        prompt: str,
        prompt_token_ids: tuple[int, ...],
        prompt_tokens: int,
        sampling: SamplingParams,
        deadline: float,
    ) -> RouteRun:
        """Place the request and return its run; `deadline` is on the event loop's clock."""
        keys = (
            prompt_keys(prompt, prompt_token_ids, self.block_tokens, model)
            if self.pool.index is not None
            else []
        )
        placement = self.pool.place(
            model, prompt_tokens, self.min_prompt_tokens, keys, self.block_tokens
        )
        state = rt.RouteState(request_id, prompt, prompt_token_ids, sampling, self.rules)
        run = RouteRun(self, model, state, deadline)
        prefill = placement.prefill
        run.feed(
            rt.Placed(placement.decode.name, prefill.name, prefill.rank)
            if prefill is not None
            else rt.Placed(placement.decode.name)
        )
        return run

    def dead(self, model: str) -> frozenset[str]:
        return frozenset(e.name for e in self.pool.of_model(model) if not e.alive)


class RouteRun:
    """One request's route being run: `next()` gives its outputs in order, `close()` ends it."""

    def __init__(
        self, dispatcher: Dispatcher, model: str, state: rt.RouteState, deadline: float
    ) -> None:
        self.d, self.model, self.state, self.deadline = dispatcher, model, state, deadline
        self._events: deque[rt.RouteEvent] = deque()
        self._outputs: deque[RequestOutput] = deque()
        self._stream: AsyncIterator[RequestOutput] | None = None
        self._stream_worker = ""
        self._next: asyncio.Future[RequestOutput | None] | None = None
        self._error: BaseException | None = None
        """The last typed error a worker raised (re-raised when the route fails with it)."""
        self._failure: FlexMeshError | None = None
        self._health = -1
        """The dispatcher's `health` when the route last heard which workers are dead."""

    def feed(self, event: rt.RouteEvent) -> None:
        self._events.append(event)

    async def next(self) -> RequestOutput | None:
        """The next output for the client; None after the final one; raises the typed error
        the route failed with."""
        while True:
            while self._events:
                await self._apply(self._events.popleft())
            if self._outputs:
                return self._outputs.popleft()
            if self._failure is not None:
                raise self._failure
            if self.state.over:
                return None
            self.feed(await self._wait())

    async def close(self) -> None:
        """The client left (or the request ended): abort whatever still holds it."""
        if not self.state.over:
            await self._apply(rt.Cancel())
        await self._close_stream()

    # -- events in ---------------------------------------------------------------------------

    async def _wait(self) -> rt.RouteEvent:
        """The next thing that happens to the request: its stream moves, a worker is found
        dead, or the deadline passes."""
        assert self._stream is not None, "a live route always follows a stream"
        if self._health != self.d.health:  # a worker was found dead (or back) meanwhile
            return self._workers_lost()
        if self._next is None:
            self._next = asyncio.ensure_future(anext(self._stream, None))
        lost = asyncio.ensure_future(self.d.lost.wait())
        left = self.deadline - asyncio.get_running_loop().time()
        try:
            await asyncio.wait(
                (self._next, lost), timeout=max(0.0, left), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            lost.cancel()
        if lost.done():  # before any output: the worker it came from may be the one lost
            return self._workers_lost()
        if not self._next.done():
            return rt.Deadline(f"deadline exceeded while {self.state.worker} served the request")
        step, self._next = self._next, None
        worker = self._stream_worker
        try:
            out = step.result()
        except KVTransferError as exc:
            self._error = exc
            return rt.TransferFailed(worker, exc.outcome, str(exc))
        except WorkerUnavailableError as exc:
            self._error = exc
            return rt.StreamFailed(worker, str(exc), lost=isinstance(exc, WorkerLostError))
        except FlexMeshError as exc:
            self._error = exc
            return rt.Refused(worker, exc.status, str(exc))
        return rt.StreamEnded(worker) if out is None else rt.Output(worker, out)

    def _workers_lost(self) -> rt.RouteEvent:
        self._health = self.d.health
        return rt.WorkersLost(self.d.dead(self.model))

    # -- actions out -------------------------------------------------------------------------

    async def _apply(self, event: rt.RouteEvent) -> None:
        before = self.state.load
        self.state, actions = rt.step(self.state, event)
        self.d.pool.count(before, self.state.load)
        for action in actions:
            await self._do(action)

    async def _do(self, action: rt.RouteAction) -> None:
        s = self.state
        match action:
            case rt.Forward():
                self._outputs.append(action.output)
            case rt.Prefill() | rt.Run():
                state = replace(s.resume_state(), hand_off=isinstance(action, rt.Prefill))
                await self._follow(action.worker, self.d.clients[action.worker].stream(state))
            case rt.Resume():
                client = self.d.clients[action.worker]
                await self._follow(
                    action.worker, client.resume(action.state, action.src, action.src_rank)
                )
            case rt.Abort():
                if action.worker == self._stream_worker:
                    await self._close_stream()  # its client aborts the request on the worker
                else:
                    await self.d.clients[action.worker].abort(s.request_id)
            case rt.MarkLost():
                if self.d.set_alive(action.worker, False):
                    log.warning("worker.lost", worker=action.worker, error=s.error)
            case rt.FindWorker():
                try:
                    entry = self.d.pool.rescue(self.model, action.exclude)
                except WorkerUnavailableError as none:
                    self.feed(rt.NoWorker(str(none)))
                else:
                    self.feed(rt.Replacement(entry.name))
            case rt.Moved():
                self.d.moves[action.kind] += 1
                if self.d.on_move is not None:
                    self.d.on_move(action.broken, action.kind)
                log.warning(
                    f"request.{action.kind}",
                    broken=action.broken,
                    to=action.to,
                    tokens_sent=action.tokens_sent,
                    error=action.error,
                )
            case rt.Fail():
                self._failure = _error(action, self._error)

    async def _follow(self, worker: str, stream: AsyncIterator[RequestOutput]) -> None:
        await self._close_stream()
        self._stream, self._stream_worker = stream, worker

    async def _close_stream(self) -> None:
        """Stop following the current stream; one that did not end aborts on its worker."""
        pending, self._next = self._next, None
        if pending is not None and not pending.done():
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)  # its cleanup, then ours
        stream, self._stream, self._stream_worker = self._stream, None, ""
        if stream is not None:
            await stream.aclose()  # type: ignore[attr-defined]


def _error(fail: rt.Fail, cause: BaseException | None) -> FlexMeshError:
    """The typed error a failed route raises: the worker's own when the route failed with its
    message, else one of the route's status."""
    if isinstance(cause, FlexMeshError) and str(cause) == fail.error:
        return cause
    if fail.status == "DEADLINE_EXCEEDED":
        return DeadlineExceededError(fail.error)
    return WorkerUnavailableError(fail.error)
