"""AsyncEngine: the engine loop on a background thread, streams per request on an asyncio loop.

Only the loop thread touches the engine. Callers post operations (add, abort, any callable)
into an inbox and await their futures, so the event loop never blocks on a model step, and
the engine never sees two threads at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

from flexmesh.actors.runner.engine import Engine
from flexmesh.meshcore.messages import RequestOutput
from flexmesh.meshcore.sampling import SamplingParams

log = structlog.get_logger(__name__)
T = TypeVar("T")


class AsyncEngine:
    """Runs `Engine.step()` in a thread while requests are pending; idles otherwise."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._inbox: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]]
        self._inbox = queue.SimpleQueue()
        self._streams: dict[
            str, tuple[asyncio.AbstractEventLoop, asyncio.Queue[RequestOutput]]
        ] = {}
        self._wake = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self._thread.start()

    async def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the loop thread between two steps and return its result."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._inbox.put((fn, fut))
        self._wake.set()
        return await asyncio.wrap_future(fut)

    async def add(
        self,
        prompt: str | None,
        prompt_token_ids: list[int] | None,
        sampling: SamplingParams,
        request_id: str,
    ) -> asyncio.Queue[RequestOutput]:
        """Queue a request; typed errors (bad prompt, ...) are raised here, to the caller."""
        loop = asyncio.get_running_loop()
        out: asyncio.Queue[RequestOutput] = asyncio.Queue()

        def add() -> None:
            self.engine.add_request(
                prompt, prompt_token_ids=prompt_token_ids, sampling=sampling, request_id=request_id
            )
            self._streams[request_id] = (loop, out)

        await self.call(add)
        return out

    async def abort(self, request_id: str) -> bool:
        def abort() -> bool:
            self._streams.pop(request_id, None)
            return self.engine.abort(request_id)

        return await self.call(abort)

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=5)

    def _drain_inbox(self) -> None:
        while True:
            try:
                fn, fut = self._inbox.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:  # handed to the awaiting caller
                fut.set_exception(exc)

    def _run(self) -> None:
        while not self._stopped:
            self._drain_inbox()
            if not self.engine.has_unfinished():
                self._wake.wait()
                self._wake.clear()
                continue
            try:
                outputs = self.engine.step()
            except Exception:
                log.exception("engine.step.failed")
                self._fail_all()
                continue
            for out in outputs:
                target = self._streams.get(out.request_id)
                if target is None:
                    continue
                if out.finished:
                    del self._streams[out.request_id]
                loop, q = target
                loop.call_soon_threadsafe(q.put_nowait, out)

    def _fail_all(self) -> None:
        """After a failed step, abort every request so no stream waits forever."""
        for rid, (loop, q) in list(self._streams.items()):
            self.engine.abort(rid)
            failed = RequestOutput(rid, (), "", finished=True, finish_reason="error")
            loop.call_soon_threadsafe(q.put_nowait, failed)
        self._streams.clear()
