"""One request's path through a model's workers: on one worker, or prefilled on one and
decoded on another with its KV handed over (docs/pd.md has the whole contract).

The dispatcher places the request (`WorkerPool.place`), follows the prefill worker's stream to
the hand-off, then the decode worker's, and keeps the pool's per-worker loads current. If the
prefill worker fails before the first token, the request falls back to its decode worker
(`pd.fallback: recompute`) or fails with UNAVAILABLE (`fail`). Failures of the KV transfer
itself are handled on the decode worker, which recomputes the prompt or fails likewise.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass

import structlog

from flexmesh.actors.client import WorkerClientProtocol
from flexmesh.meshcore.config import PDConfig
from flexmesh.meshcore.errors import WorkerUnavailableError
from flexmesh.meshcore.messages import RequestOutput
from flexmesh.meshcore.pool import PoolEntry, WorkerPool
from flexmesh.meshcore.sampling import SamplingParams

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Hop:
    """Which workers served the request so far."""

    prefill_worker: str
    decode_worker: str


class Dispatcher:
    """Runs requests over a `WorkerPool` of worker clients."""

    def __init__(
        self,
        pool: WorkerPool,
        clients: Mapping[str, WorkerClientProtocol],
        pd: PDConfig,
        on_fallback: Callable[[str], None] | None = None,
    ) -> None:
        """`on_fallback(worker)` counts a prefill worker's failure that the decode side took."""
        self.pool, self.clients, self.pd = pool, dict(clients), pd
        self.on_fallback = on_fallback
        self.fallbacks = 0
        """Requests whose prefill worker failed and which were recomputed on the decode side."""

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
        placement = self.pool.place(model, prompt_tokens, self.pd.min_prompt_tokens)
        decode, prefill = placement.decode, placement.prefill
        if prefill is not None:
            state = None
            with _Load(prefill, hands_off=True) as load:
                try:
                    stream = self.clients[prefill.name].stream(
                        request_id, prompt, prompt_token_ids, sampling, hand_off=True
                    )
                    async with aclosing(stream):
                        async for out in stream:
                            load.first_token()
                            yield out, Hop(prefill.name, decode.name)
                            if out.finished:
                                return  # it ended on its first token: nothing to decode
                            state = out.handoff
                except WorkerUnavailableError as exc:
                    if self.pd.fallback == "fail" or load.has_first_token:
                        raise
                    self.fallbacks += 1
                    if self.on_fallback is not None:
                        self.on_fallback(prefill.name)
                    log.warning(
                        "pd.prefill_failed",
                        prefill=prefill.name,
                        decode=decode.name,
                        error=str(exc),
                        fallback="recompute",
                    )
            if state is not None:
                with _Load(decode, decoding=True):
                    stream = self.clients[decode.name].resume(state, prefill.name, prefill.rank)
                    async with aclosing(stream):
                        async for out in stream:
                            yield out, Hop(prefill.name, decode.name)
                return
            if load.has_first_token:
                raise WorkerUnavailableError(f"{prefill.name} gave {request_id} no hand-off")
        with _Load(decode) as load:
            stream = self.clients[decode.name].stream(
                request_id, prompt, prompt_token_ids, sampling
            )
            async with aclosing(stream):
                async for out in stream:
                    if out.token_ids:
                        load.first_token()
                    yield out, Hop(decode.name, decode.name)


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
