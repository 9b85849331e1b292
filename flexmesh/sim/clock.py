"""A virtual clock for asyncio: the mesh's own async code runs unchanged, time only jumps.

`VirtualLoop` is a stock selector event loop whose `time()` is a virtual clock and whose
selector, instead of waiting for I/O, moves that clock to the next timer. Every `sleep`,
`wait_for` and deadline of the code it runs then takes no wall time, and a run is a discrete-event
simulation: deterministic, since nothing outside the loop (no thread, no socket) feeds it.
A loop with nothing ready and no timer would wait forever on a real clock; here that is a
simulation that cannot go on, and it raises `Stalled`.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any


class Stalled(RuntimeError):
    """Nothing is ready and no timer is set: the simulated mesh waits for something that
    will never happen."""


class _Selector(selectors.SelectSelector):
    def __init__(self, loop: VirtualLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            raise Stalled("the simulation has nothing left to run and no timer set")
        self._loop.advance(timeout)
        return []


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time (seconds from 0); `asyncio.Runner(loop_factory=...)`."""

    def __init__(self) -> None:
        self._now = 0.0
        super().__init__(_Selector(self))

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            self._now += seconds


def run(main: Any) -> Any:
    """Run the coroutine `main` to its end on a fresh `VirtualLoop`."""
    with asyncio.Runner(loop_factory=VirtualLoop) as runner:
        return runner.run(main)
