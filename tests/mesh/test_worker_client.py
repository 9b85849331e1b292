"""`WorkerClient` over a real Ray actor: a stream left early stops the actor's generator and
aborts the request there; an actor that dies mid-stream is reported as lost; a ping tells an
actor too busy to answer (alive) from a dead or restarting one."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import ray

from flexmesh.actors.client import WorkerClient
from flexmesh.meshcore.errors import WorkerLostError
from flexmesh.meshcore.messages import RequestOutput
from flexmesh.meshcore.sampling import SamplingParams
from flexmesh.services.mesh import Mesh

pytestmark = pytest.mark.slow


@ray.remote(num_cpus=0)
class Streamer:
    """Streams a token every 20 ms; remembers aborts and generators that ended early."""

    def __init__(self) -> None:
        self.aborted: list[str] = []
        self.stopped: list[str] = []

    async def generate(self, request_id: str, *_: Any) -> Any:
        i = 0
        try:
            while True:
                yield RequestOutput(request_id, (i,), "t", offset=i)
                i += 1
                await asyncio.sleep(0.02)
        finally:
            self.stopped.append(request_id)

    async def abort(self, request_id: str) -> bool:
        self.aborted.append(request_id)
        return True

    def seen(self) -> tuple[list[str], list[str]]:
        return self.aborted, self.stopped

    async def ready(self) -> bool:
        return True

    async def block(self, seconds: float) -> None:
        time.sleep(seconds)  # holds the actor's event loop, as a CPU-starved process would


async def _first_tokens(client: WorkerClient, rid: str, n: int) -> Any:
    stream = client.stream(rid, "p", [], SamplingParams())
    async for out in stream:
        if out.offset == n - 1:
            return stream
    raise AssertionError("the stream ended")


async def test_a_stream_left_early_is_stopped_and_aborted_on_the_actor(mesh: Mesh) -> None:
    actor = Streamer.remote()
    client = WorkerClient(actor, "streamer", "m", timeout_s=5.0)
    stream = await _first_tokens(client, "r-left", 3)
    await stream.aclose()
    for _ in range(100):
        aborted, stopped = await actor.seen.remote()
        if aborted and stopped:
            break
        await asyncio.sleep(0.05)
    assert (aborted, stopped) == (["r-left"], ["r-left"])
    ray.kill(actor)


async def test_an_actor_that_dies_mid_stream_is_reported_lost(mesh: Mesh) -> None:
    actor = Streamer.remote()
    client = WorkerClient(actor, "streamer", "m", timeout_s=5.0)
    stream = await _first_tokens(client, "r-dies", 2)
    ray.kill(actor)
    with pytest.raises(WorkerLostError, match="streamer"):
        async for _ in stream:
            pass
    await client.abort("r-dies")  # returns at once: a dead worker holds no KV to free


async def test_a_ping_tells_a_starved_actor_from_a_dead_one(mesh: Mesh) -> None:
    actor = Streamer.options(max_restarts=1).remote()
    client = WorkerClient(actor, "streamer", "m", timeout_s=5.0)
    await client.ping(1.0)
    blocked = actor.block.remote(3.0)
    await asyncio.sleep(0.2)
    await client.ping(0.5)  # no answer in time, but Ray holds the actor alive: no error
    await blocked
    ray.kill(actor, no_restart=True)
    for _ in range(50):  # the GCS learns of the death within moments
        try:
            await client.ping(0.5)
        except WorkerLostError as exc:
            assert "streamer" in str(exc)
            return
        await asyncio.sleep(0.1)
    raise AssertionError("a killed actor still passed its ping")
