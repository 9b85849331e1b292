"""Small clients over actor handles, so services and tests can swap in fakes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Protocol

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

from flexmesh.meshcore.errors import FlexMeshError, WorkerLostError, WorkerUnavailableError
from flexmesh.meshcore.messages import RequestOutput, RequestState, WorkerStatus
from flexmesh.meshcore.routing import ProbeResult

_DEAD = (RayActorError, ActorDiedError, ActorUnavailableError)
ANSWER_S = 0.1
"""A live actor's event loop answers a control call within this; one still waiting then asks
Ray's GCS whether the actor is restarting or dead."""


class WorkerClientProtocol(Protocol):
    name: str
    model: str

    def stream(self, state: RequestState) -> AsyncIterator[RequestOutput]:
        """A new request (no output tokens yet; `state.hand_off` for a prefill worker)."""
        ...

    def resume(
        self, state: RequestState, src: str = "", src_rank: int = -1
    ) -> AsyncIterator[RequestOutput]: ...

    async def abort(self, request_id: str) -> None: ...

    async def status(self) -> WorkerStatus: ...

    async def ping(self, timeout_s: float | None = None) -> None: ...

    async def set_role(self, role: str) -> None: ...

    async def set_prefill_budget(self, tokens: int) -> None: ...


class WorkerClient:
    """Talks to one named worker actor.

    Control calls are bounded by `timeout_s`. A stream is not: a queued request may wait long
    for its first token under load. It ends with the request's deadline (the frontend's), and
    a dead worker ends it at once through Ray's actor-death error.
    """

    def __init__(self, handle: Any, name: str, model: str, timeout_s: float) -> None:
        self.handle, self.name, self.model, self.timeout_s = handle, name, model, timeout_s

    def stream(self, state: RequestState) -> AsyncIterator[RequestOutput]:
        gen = self.handle.generate.options(num_returns="streaming").remote(state)
        return self._follow(state.request_id, gen)

    def resume(
        self, state: RequestState, src: str = "", src_rank: int = -1
    ) -> AsyncIterator[RequestOutput]:
        gen = self.handle.resume.options(num_returns="streaming").remote(state, src, src_rank)
        return self._follow(state.request_id, gen)

    async def _follow(self, request_id: str, gen: Any) -> AsyncIterator[RequestOutput]:
        finished = False
        try:
            while True:
                try:
                    ref = await gen.__anext__()
                    out: RequestOutput = await ref
                except StopAsyncIteration:
                    return
                except _DEAD as exc:
                    raise WorkerLostError(f"worker {self.name} is unavailable: {exc}") from exc
                except RayTaskError as exc:
                    if isinstance(exc.cause, FlexMeshError):
                        raise exc.cause from None  # the worker's typed error, message intact
                    raise
                finished = out.finished or out.handoff is not None
                yield out
        finally:
            if not finished:
                # Cancelled or failed mid-stream: stop the worker's generator so it frees KV.
                ray.cancel(gen)
                await self.abort(request_id)

    async def abort(self, request_id: str) -> None:
        try:
            await self._answer(self.handle.abort.remote(request_id))
        except (WorkerUnavailableError, TimeoutError):
            pass  # a dead, restarting or stuck worker holds no KV we could free

    async def status(self) -> WorkerStatus:
        return await self._call(self.handle.status.remote())  # type: ignore[no-any-return]

    async def ping(self, timeout_s: float | None = None) -> None:
        """Return while the worker is alive, else raise WorkerLostError.

        Answered by the actor's event loop, not its engine: a busy worker answers at once, a
        dead or restarting one does not (Ray holds the call). One whose event loop is starved
        of CPU (more busy processes than cores) may not answer within `timeout_s` either: it
        still counts as alive while Ray's control store (GCS) holds its actor ALIVE, so load
        alone never takes a worker, and the requests it serves, out of the pool.
        """
        try:
            await self._answer(self.handle.ready.remote(), timeout_s)
        except (TimeoutError, WorkerLostError) as exc:
            # No answer in time, or Ray's "temporarily unavailable" (also raised for a while
            # after a restart, by calls sent while it ran): the GCS decides.
            state = await asyncio.to_thread(self._actor_state)
            if state != "ALIVE":
                raise WorkerLostError(f"worker {self.name} is {state.lower()}") from exc

    async def _answer(self, ref: Any, timeout_s: float | None = None) -> Any:
        """`ref`'s result within `timeout_s` (default: the client's), else TimeoutError; but
        WorkerLostError as soon as a call not answered at once (`ANSWER_S`) finds the actor
        restarting or dead in the GCS: Ray holds calls to a restarting actor until its new
        process is up, seconds later, and they concern the old process."""
        call = asyncio.ensure_future(self._call(ref))
        timeout_s = timeout_s or self.timeout_s
        try:
            done, _ = await asyncio.wait({call}, timeout=min(ANSWER_S, timeout_s))
            if not done:
                state = await asyncio.to_thread(self._actor_state)
                if state in ("RESTARTING", "DEAD"):
                    raise WorkerLostError(f"worker {self.name} is {state.lower()}")
            return await asyncio.wait_for(call, max(0.0, timeout_s - ANSWER_S))
        finally:
            call.cancel()

    def _actor_state(self) -> str:
        """The actor's state in the GCS: ALIVE, RESTARTING, DEAD (or UNKNOWN)."""
        try:
            return str(ray._private.state.actors(self.handle._actor_id.hex())["State"])
        except Exception:  # a private Ray API: if it moves, treat silence as before (dead)
            return "UNKNOWN"

    async def set_role(self, role: str) -> None:
        await self._call(self.handle.set_role.remote(role))

    async def set_prefill_budget(self, tokens: int) -> None:
        await self._call(self.handle.set_prefill_budget.remote(tokens))

    async def _call(self, ref: Any) -> Any:
        try:
            return await asyncio.wait_for(ref, self.timeout_s)
        except _DEAD as exc:
            raise WorkerLostError(f"worker {self.name} is unavailable: {exc}") from exc
        except TimeoutError as exc:
            raise WorkerUnavailableError(
                f"worker {self.name} did not answer within {self.timeout_s} s"
            ) from exc


class ProbeClientProtocol(Protocol):
    async def classify(
        self, prompt: str, long_context_tokens: int | None = None
    ) -> ProbeResult: ...


class ProbeClient:
    """Talks to the named `probe` actor."""

    def __init__(self, handle: Any, timeout_s: float) -> None:
        self.handle, self.timeout_s = handle, timeout_s

    async def classify(self, prompt: str, long_context_tokens: int | None = None) -> ProbeResult:
        try:
            ref = self.handle.classify.remote(prompt, long_context_tokens)
            return await asyncio.wait_for(ref, self.timeout_s)  # type: ignore[no-any-return]
        except RayTaskError as exc:
            if isinstance(exc.cause, FlexMeshError):
                raise exc.cause from None  # the probe's typed error (a bad prompt)
            raise WorkerUnavailableError(f"probe failed: {exc.cause!r}") from exc
        except _DEAD as exc:
            raise WorkerUnavailableError(f"probe is unavailable: {exc}") from exc
        except TimeoutError as exc:
            raise WorkerUnavailableError(f"probe did not answer within {self.timeout_s} s") from exc
