"""How a worker chunks a request's tokens into stream messages (`Worker._relay`), without Ray."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from flexmesh.actors.worker import Worker
from flexmesh.meshcore.messages import RequestOutput

TOKENS = 100


class _Metrics:
    def finished(self, chunk: RequestOutput) -> None:
        pass


def _worker(fanout: int, other_streams: int) -> Any:
    worker = Worker.__new__(Worker)  # the relay needs no engine: its outputs are queued here
    worker.stream_interval_s = 60.0  # chunks leave by size only, so the test has no timing
    worker.stream_chunk_tokens = 8
    worker.stream_fanout = fanout
    worker.open_streams = other_streams
    worker.metrics = _Metrics()
    return worker


async def _chunk_sizes(worker: Any) -> list[int]:
    others = worker.open_streams
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for i in range(TOKENS):
        queue.put_nowait(RequestOutput("r", (i,), "", finished=i == TOKENS - 1, offset=i))
    chunks = [c async for c in worker._relay("r", queue)]
    tokens = [t for c in chunks for t in c.token_ids]
    assert tokens == list(range(TOKENS)) and [c.offset for c in chunks] == [
        sum(len(x.token_ids) for x in chunks[:i]) for i in range(len(chunks))
    ]
    assert worker.open_streams == others  # this stream counted only while it was open
    return [len(c.token_ids) for c in chunks]


@pytest.mark.parametrize(
    ("fanout", "others", "chunk"),
    [(4, 0, 8), (4, 3, 8), (4, 7, 16), (4, 15, 32), (16, 15, 8)],
)
def test_chunks_grow_with_the_streams_open_beyond_the_fanout(
    fanout: int, others: int, chunk: int
) -> None:
    sizes = asyncio.run(_chunk_sizes(_worker(fanout, others)))
    # The first token leaves alone (time to first token), then full chunks, then the rest.
    full, rest = divmod(TOKENS - 1, chunk)
    assert sizes == [1] + [chunk] * full + ([rest] if rest else [])
