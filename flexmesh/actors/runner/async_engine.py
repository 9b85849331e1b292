"""AsyncEngine: the engine loop on a background thread, streams per request on an asyncio loop.

Only the loop thread touches the engine: it also builds it. Callers post operations (add,
abort, any callable) into an inbox and await their futures, so the event loop never blocks on a
model step, and the engine never sees two threads at once.

If the loop itself dies (anything outside a model step, which fails only its requests), the
actor's process exits: Ray restarts the worker and every caller gets the actor's death at once
(the gateway migrates its requests), instead of waiting on a thread that is gone.

NOTE: torch's OpenMP pool belongs to the thread that first runs an op. Loading the model on
one thread and stepping on another leaves two pools spinning on two cores, which cost a third
of decode speed here (43 vs 65 tokens/s); building the engine on the loop thread avoids it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

from flexmesh.actors.runner.engine import Engine
from flexmesh.meshcore.errors import EngineFailedError
from flexmesh.meshcore.messages import RequestOutput, RequestState

log = structlog.get_logger(__name__)
T = TypeVar("T")
StreamItem = RequestOutput | EngineFailedError
"""What a request's stream carries: its outputs, or the error that ended it."""
Stream = asyncio.Queue[StreamItem]


class AsyncEngine:
    """Runs `Engine.step()` in a thread while requests are pending; idles otherwise."""

    def __init__(
        self, build: Callable[[], Engine], on_death: Callable[[], None] | None = None
    ) -> None:
        """`on_death` runs when the loop thread dies (default: exit the process)."""
        self._on_death = on_death or _exit_process
        self._inbox: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]]
        self._inbox = queue.SimpleQueue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, Stream]] = {}
        self._wake = threading.Event()
        self._stopped = False
        self.exports: tuple[Callable[[tuple[int, ...]], Any], Callable[[str, Any], None]] | None
        self.exports = None
        """(stage, sink): where the planned export of handed-off KV goes (the worker's KV
        mover): `stage(shape)` gives a buffer (engine thread), `sink(request_id, kv)` takes the
        copy on the event loop of the request's stream."""
        self._handed_off: dict[str, asyncio.AbstractEventLoop] = {}
        """Requests handed off in this step: the event loop their export goes to."""
        built: concurrent.futures.Future[Engine] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(build, built), name="engine-loop", daemon=True
        )
        self._thread.start()
        built.result()  # waits for the model; re-raises a failed load here

    async def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the loop thread between two steps and return its result."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._inbox.put((fn, fut))
        self._wake.set()
        return await asyncio.wrap_future(fut)

    async def add(self, state: RequestState) -> Stream:
        """Queue a new request; typed errors (bad prompt, ...) are raised here, to the caller."""
        stream, _ = await self.open_stream(state.request_id, lambda: self.engine.add(state))
        return stream

    async def open_stream(self, request_id: str, start: Callable[[], T]) -> tuple[Stream, T]:
        """Run `start` (which adds `request_id` to the engine); stream its outputs from then."""
        loop = asyncio.get_running_loop()
        out: Stream = asyncio.Queue()

        def run() -> T:
            result = start()
            self._streams[request_id] = (loop, out)
            return result

        return out, await self.call(run)

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

    def _run(self, build: Callable[[], Engine], built: concurrent.futures.Future[Engine]) -> None:
        try:
            self.engine = build()
        except BaseException as exc:
            built.set_exception(exc)
            return
        built.set_result(self.engine)
        try:
            self._loop()
        except BaseException:
            log.exception("engine.thread.died")
            self._on_death()

    def _loop(self) -> None:
        while not self._stopped:
            self._drain_inbox()
            for rid in self.engine.expire():
                log.warning("kv.hold_expired", request_id=rid)
            if not self.engine.has_unfinished():
                deadline = self.engine.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                self._wake.wait(timeout)
                self._wake.clear()
                continue
            try:
                outputs = self.engine.step()
            except Exception:
                held = sorted(self.engine.request_ids())
                log.exception("engine.step.failed", request_ids=held)
                self._fail_all()
                continue
            self._deliver(outputs)  # first tokens go out before the KV of a hand-off is copied
            self._export()

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        """Hand a step's outputs to their streams: one event-loop wake-up per loop per step."""
        items: list[tuple[asyncio.AbstractEventLoop, Stream, StreamItem]] = []
        for out in outputs:
            target = self._streams.get(out.request_id)
            if target is None:
                continue
            if out.handoff is not None:
                self._handed_off[out.request_id] = target[0]
            if out.finished or out.handoff is not None:
                del self._streams[out.request_id]
            items.append((*target, out))
        _post(items)

    def _export(self) -> None:
        """The step's planned KV export, each copy posted to its requester's event loop."""
        if self.exports is None:
            return
        stage, sink = self.exports
        exported = self.engine.export_handed_off(stage)
        by_loop, self._handed_off = self._handed_off, {}
        for rid, kv in exported:
            loop = by_loop.get(rid)
            if loop is not None:
                loop.call_soon_threadsafe(sink, rid, kv)

    def _fail_all(self) -> None:
        """After a failed step, abort every request (parked ones too) and end every stream with
        `EngineFailedError`, so no caller waits forever and no KV block stays taken."""
        for rid in self.engine.request_ids():
            self.engine.abort(rid)
        streams, self._streams = self._streams, {}
        _post(
            [
                (loop, q, EngineFailedError(f"the engine failed a step while serving {rid}"))
                for rid, (loop, q) in streams.items()
            ]
        )


def _exit_process() -> None:
    """End the actor's process so that Ray restarts it (a clean exit would not be restarted)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(70)


def _post(items: list[tuple[asyncio.AbstractEventLoop, Stream, StreamItem]]) -> None:
    """Put items on their streams from the engine thread: one wake-up per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Stream, StreamItem]]] = {}
    for loop, q, item in items:
        by_loop.setdefault(loop, []).append((q, item))
    for loop, pairs in by_loop.items():
        loop.call_soon_threadsafe(_put_all, pairs)


def _put_all(items: list[tuple[Stream, StreamItem]]) -> None:
    for q, out in items:
        q.put_nowait(out)
