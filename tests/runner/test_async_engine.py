"""The engine loop's thread: its death ends the actor instead of leaving callers waiting."""

from __future__ import annotations

import threading
from typing import Any, cast

from flexmesh.actors.runner.async_engine import AsyncEngine


class _ExpiryRaises:
    """An engine whose bookkeeping outside a step raises (a bug in the loop, not the model)."""

    def expire(self) -> list[str]:
        raise RuntimeError("bookkeeping bug")


def test_a_dead_loop_thread_ends_the_actor() -> None:
    died = threading.Event()
    engine = AsyncEngine(lambda: cast(Any, _ExpiryRaises()), on_death=died.set)
    assert died.wait(5), "the loop died silently"
    engine._thread.join(5)
    assert not engine._thread.is_alive()
