"""One request's path through a model's workers: on one worker, or prefilled on one and
decoded on another with its KV handed over (docs/pd.md has the whole contract), and moved to
another worker when the one serving it breaks.

The dispatcher places the request (`WorkerPool.place`), follows the prefill worker's stream to
the hand-off, then the decode worker's, and keeps the pool's per-worker loads current. Every
output is checked against what the client already has (contiguous offsets). When a worker's
stream breaks (its actor died, its engine failed, a gap, an end without the final chunk), the
request **migrates**: another live worker of the model (`WorkerPool.rescue`) computes the
prompt plus the tokens already streamed and continues from the next offset, so the client sees
one stream; greedy output equals an uninterrupted run. `gateway.max_migrations` bounds it.
A prefill worker that fails before handing over is a *fallback* (`pd.fallback: recompute`, not
counted as a migration; `fail` fails the request). Failures of the KV transfer itself are
handled on the decode worker, which recomputes the prompt or fails likewise.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field

import structlog

from flexmesh.actors.client import WorkerClientProtocol
from flexmesh.meshcore.config import PDConfig
from flexmesh.meshcore.errors import KVTransferError, WorkerLostError, WorkerUnavailableError
from flexmesh.meshcore.messages import RequestOutput, RequestState
from flexmesh.meshcore.pool import Placement, PoolEntry, WorkerPool
from flexmesh.meshcore.sampling import SamplingParams

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Hop:
    """Which workers served the request so far."""

    prefill_worker: str
    decode_worker: str
    migrations: int = 0
    """Times the request moved to another worker after its stream broke."""


@dataclass
class _Progress:
    """What the client has of one request: where it stands and what a migration resumes from."""

    request_id: str
    prompt: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams
    tokens: list[int] = field(default_factory=list)
    """Output tokens streamed so far."""
    text_chars: int = 0
    prefill_worker: str = ""
    worker: str = ""
    """The worker whose stream is followed now."""
    handing_off: bool = False
    """`worker` is the prefill worker of a hand-off that has not happened yet."""
    failed: set[str] = field(default_factory=set)
    migrations: int = 0
    queue_ms: float = 0.0
    prefill_ms: float = 0.0

    def at(self, worker: str, prefill_worker: str = "", handing_off: bool = False) -> None:
        self.worker, self.handing_off = worker, handing_off
        self.prefill_worker = prefill_worker or worker

    def take(self, out: RequestOutput) -> None:
        """Check `out` continues the stream, then count it."""
        if out.offset != len(self.tokens):
            raise WorkerUnavailableError(
                f"stream of {self.request_id} broke on {self.worker}: chunk at token "
                f"{out.offset}, expected {len(self.tokens)}"
            )
        self.tokens.extend(out.token_ids)
        self.text_chars += len(out.text)
        self.queue_ms, self.prefill_ms = out.queue_ms or self.queue_ms, out.prefill_ms
        if out.handoff is not None and not self.prompt_token_ids:
            self.prompt_token_ids = out.handoff.prompt_token_ids

    def hop(self) -> Hop:
        return Hop(self.prefill_worker, self.worker, self.migrations)

    def state(self) -> RequestState:
        """The request as another worker resumes it: everything the client received."""
        return RequestState(
            self.request_id,
            self.prompt_token_ids,
            tuple(self.tokens),
            self.sampling,
            sent_tokens=len(self.tokens),
            sent_text_chars=self.text_chars,
            queue_ms=self.queue_ms,
            prefill_ms=self.prefill_ms,
            prompt="" if self.prompt_token_ids else self.prompt,
        )


class Dispatcher:
    """Runs requests over a `WorkerPool` of worker clients."""

    def __init__(
        self,
        pool: WorkerPool,
        clients: Mapping[str, WorkerClientProtocol],
        pd: PDConfig,
        max_migrations: int = 2,
        on_move: Callable[[str, str], None] | None = None,
    ) -> None:
        """`on_move(worker, kind)` counts a request that left a broken `worker`: kind
        "prefill_fallback" (before its hand-off) or "migration"."""
        self.pool, self.clients, self.pd = pool, dict(clients), pd
        self.max_migrations, self.on_move = max_migrations, on_move
        self.moves = {"prefill_fallback": 0, "migration": 0}
        """Requests that left a broken worker, by kind."""
        self._lost = asyncio.Event()
        """Set (then replaced) whenever a worker is found dead: wakes every waiting request."""

    def set_alive(self, worker: str, alive: bool) -> bool:
        """Record a worker's health (from a call that failed, or from its report); True when
        it changed. A worker found dead wakes every request still waiting on it: Ray queues
        calls to an actor that restarts, so they would otherwise wait out the restart."""
        changed = self.pool.set_alive(worker, alive)
        if changed and not alive:
            self._lost.set()
            self._lost = asyncio.Event()
        return changed

    async def run(
        self,
        request_id: str,
        model: str,
        prompt: str,
        prompt_token_ids: list[int],
        prompt_tokens: int,
        sampling: SamplingParams,
    ) -> AsyncIterator[tuple[RequestOutput, Hop]]:
        """Yield the request's outputs in order, each with the workers serving it."""
        progress = _Progress(request_id, prompt, tuple(prompt_token_ids), sampling)
        placement = self.pool.place(model, prompt_tokens, self.pd.min_prompt_tokens)
        first = placement.prefill or placement.decode
        progress.at(first.name, handing_off=placement.prefill is not None)
        stream = self._placed(placement, progress)
        while True:
            try:
                async with aclosing(stream):  # a broken stream is aborted on its worker
                    while (out := await self._next(stream, progress)) is not None:
                        progress.take(out)
                        yield out, progress.hop()
                        if out.finished:
                            return
                raise WorkerUnavailableError(
                    f"the stream of {request_id} on {progress.worker} ended without its final chunk"
                )
            except WorkerUnavailableError as exc:
                stream = self._recover(model, progress, exc)

    def _recover(
        self, model: str, progress: _Progress, exc: WorkerUnavailableError
    ) -> AsyncIterator[RequestOutput]:
        """The stream that continues a request whose worker broke, or `exc` re-raised."""
        broken = progress.worker
        if isinstance(exc, WorkerLostError) and self.set_alive(broken, False):
            log.warning("worker.lost", worker=broken, error=str(exc))
        progress.failed.add(broken)
        kind = "prefill_fallback" if progress.handing_off else "migration"
        handoff_failed = kind == "prefill_fallback" or isinstance(exc, KVTransferError)
        if self.pd.fallback == "fail" and handoff_failed:
            raise exc  # the operator asked hand-off failures to fail, not to recompute
        if kind == "migration":
            if progress.migrations >= self.max_migrations:
                raise exc
            progress.migrations += 1
        try:
            target = self.pool.rescue(model, progress.failed)
        except WorkerUnavailableError as none:
            raise WorkerUnavailableError(f"{exc}; {none}") from exc
        self.moves[kind] += 1
        if self.on_move is not None:
            self.on_move(broken, kind)
        log.warning(
            f"request.{kind}",
            broken=broken,
            to=target.name,
            tokens_sent=len(progress.tokens),
            error=str(exc),
        )
        progress.at(target.name)  # what the caller watches from now on
        return self._resume(target, progress)

    async def _next(
        self, stream: AsyncIterator[RequestOutput], progress: _Progress
    ) -> RequestOutput | None:
        """The stream's next output (None at its end), or WorkerLostError as soon as the worker
        the request follows is found dead meanwhile (the step is then cancelled, which aborts
        it there). A step may hand the request over to its decode worker: from then on that
        worker is the one watched, and the prefill worker's death no longer concerns it."""
        step = asyncio.ensure_future(anext(stream, None))
        try:
            while True:
                lost = asyncio.ensure_future(self._lost.wait())
                try:
                    await asyncio.wait((step, lost), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    lost.cancel()
                if step.done():
                    return step.result()
                if not self.pool.get(progress.worker).alive:
                    raise WorkerLostError(
                        f"worker {progress.worker} was lost while the request waited on it"
                    )
        finally:
            if not step.done():
                step.cancel()
                await asyncio.gather(step, return_exceptions=True)  # its cleanup, then ours

    async def _placed(
        self, placement: Placement, progress: _Progress
    ) -> AsyncIterator[RequestOutput]:
        """The request's first path: its decode worker alone, or prefill, hand-off, decode."""
        decode, prefill, rid = placement.decode, placement.prefill, progress.request_id
        if prefill is None:
            async with aclosing(self._resume(decode, progress)) as stream:
                async for out in stream:
                    yield out
            return
        state = None
        with _Load(prefill, hands_off=True) as load:
            stream = self.clients[prefill.name].stream(
                rid, progress.prompt, list(progress.prompt_token_ids), progress.sampling, True
            )
            async with aclosing(stream):
                async for out in stream:
                    load.first_token()
                    state = out.handoff
                    yield out
        if state is None:
            return  # finished on its first token, or broken (the caller tells which)
        progress.at(decode.name, prefill_worker=prefill.name)
        if not decode.alive:  # lost since placement: no event will wake a wait on it
            raise WorkerLostError(f"worker {decode.name} was lost before the hand-off")
        with _Load(decode, decoding=True):
            stream = self.clients[decode.name].resume(state, prefill.name, prefill.rank)
            async with aclosing(stream):
                async for out in stream:
                    yield out

    async def _resume(self, entry: PoolEntry, progress: _Progress) -> AsyncIterator[RequestOutput]:
        """The request on one worker from where the client stands: from its prompt when
        nothing was streamed yet, else recomputing prompt and streamed tokens (the caller
        has set `progress` at `entry`)."""
        client = self.clients[entry.name]
        with _Load(entry, decoding=bool(progress.tokens)) as load:
            if progress.tokens:
                stream = client.resume(progress.state())
            else:
                p = progress
                stream = client.stream(p.request_id, p.prompt, list(p.prompt_token_ids), p.sampling)
            async with aclosing(stream):
                async for out in stream:
                    if out.token_ids:
                        load.first_token()
                    yield out


class _Load:
    """Counts one request on a pool entry: prefilling until its first token, then decoding
    (or, on a prefill worker that hands it off, gone)."""

    def __init__(self, entry: PoolEntry, decoding: bool = False, hands_off: bool = False):
        self.entry, self.has_first_token, self.hands_off = entry, decoding, hands_off

    def __enter__(self) -> _Load:
        if self.has_first_token:
            self.entry.decoding += 1
        else:
            self.entry.prefilling += 1
        return self

    def first_token(self) -> None:
        if not self.has_first_token:
            self.has_first_token = True
            self.entry.prefilling -= 1
            if not self.hands_off:
                self.entry.decoding += 1

    def __exit__(self, *exc: object) -> None:
        if not self.has_first_token:
            self.entry.prefilling -= 1
        elif not self.hands_off:
            self.entry.decoding -= 1
