"""One fake of the worker protocol (`actors.client.WorkerClientProtocol`) for the gateway's
tests: no model, no Ray, every misbehaviour a real worker shows on demand."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

from flexmesh.meshcore.errors import WorkerLostError, WorkerUnavailableError
from flexmesh.meshcore.messages import RequestOutput, RequestState, WorkerStatus

HANDOFF_PROMPT_IDS = (9,) * 20
"""The prompt ids a fake prefill worker's hand-off carries."""


class FakeWorker:
    """Every request decodes `tokens` tokens 0, 1, ... ("a", "b", ...) one per chunk; a
    hand-off ends after the first with a `RequestState` of `HANDOFF_PROMPT_IDS`.

    `gate` makes a stream wait for `go` first: "first" (before its first token), "last"
    (before its final token), "prefill" (before a hand-off), "resume" (before resuming).
    `fault`: "dies" (at once, not a lost actor), "fails" (after one token, an engine failure),
    "dies_mid_stream" (its actor lost at token 2), "gap" (token 2 never sent), "truncates"
    (no final chunk), "hangs" (before its first token, as Ray holds a call to a restarting
    actor). Records `calls` (("stream", hand_off) or ("resume", src, src_rank)), the `states`
    it resumed, the streams closed `unfinished` and the `aborted` ids.
    """

    def __init__(
        self, name: str, model: str = "m", tokens: int = 5, gate: str = "", fault: str = ""
    ) -> None:
        self.name, self.model, self.tokens, self.gate, self.fault = name, model, tokens, gate, fault
        self.go = asyncio.Event()
        self.calls: list[tuple[object, ...]] = []
        self.states: list[RequestState] = []
        self.unfinished: list[str] = []
        self.aborted: list[str] = []
        self.role = "mixed"

    async def stream(self, state: RequestState) -> AsyncIterator[RequestOutput]:
        request_id, sampling, hand_off = state.request_id, state.sampling, state.hand_off
        self.calls.append(("stream", hand_off))
        if self.fault == "dies":
            raise WorkerUnavailableError(f"worker {self.name} died")
        if self.fault == "hangs":
            await asyncio.Event().wait()
        if not hand_off:
            async for out in self._decode(request_id, 0, ""):
                yield out
            return
        await self._gate("prefill")
        state = RequestState(request_id, HANDOFF_PROMPT_IDS, (0,), sampling, 20, sent_tokens=1)
        yield RequestOutput(request_id, (0,), _text(0), handoff=state)

    async def resume(
        self, state: RequestState, src: str = "", src_rank: int = -1
    ) -> AsyncIterator[RequestOutput]:
        self.calls.append(("resume", src, src_rank))
        self.states.append(state)
        await self._gate("resume")
        async for out in self._decode(state.request_id, state.sent_tokens, "gloo" if src else ""):
            yield out

    async def _decode(self, rid: str, start: int, transport: str) -> AsyncIterator[RequestOutput]:
        finished = False
        try:
            if start == 0:
                await self._gate("first")
            last = self.tokens - 1
            for i in range(start, last):
                if self.fault == "dies_mid_stream" and i == 2:
                    raise WorkerLostError(f"worker {self.name} died")
                if self.fault == "gap" and i == 2:
                    continue
                yield RequestOutput(rid, (i,), _text(i), offset=i)
                if self.fault == "fails":
                    raise WorkerUnavailableError(f"worker {self.name} died")
            if self.fault == "truncates":
                return
            await self._gate("last")
            finished = True
            yield RequestOutput(
                rid,
                (last,),
                _text(last),
                finished=True,
                finish_reason="length",
                offset=last,
                completion_tokens=self.tokens,
                kv_transport=transport,
                kv_bytes=1024 if transport else 0,
            )
        finally:
            if not finished:
                self.unfinished.append(rid)

    async def _gate(self, where: str) -> None:
        if self.gate == where:
            await self.go.wait()

    async def ping(self, timeout_s: float | None = None) -> None:
        pass

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def status(self) -> WorkerStatus:
        return WorkerStatus(
            self.name, self.model, "", self.role, "cpu", 0, 0, 0, 10, 1.0, 0, prefill_ms=300.0
        )

    async def set_role(self, role: str) -> None:
        self.role = role

    async def set_prefill_budget(self, tokens: int) -> None:
        pass


async def wait_until(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Return once `cond()` holds; fail after `timeout_s` (never a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"condition not met within {timeout_s} s"
        await asyncio.sleep(0.005)


def _text(token: int) -> str:
    return "abcdefghijklmnopqrstuvwxyz"[token % 26]
