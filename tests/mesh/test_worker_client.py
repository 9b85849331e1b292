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
from flexmesh.launch.mesh import Mesh
from flexmesh.meshcore.errors import WorkerLostError
from flexmesh.meshcore.messages import RequestOutput, RequestState
from flexmesh.meshcore.sampling import SamplingParams

pytestmark = pytest.mark.slow


class _Streamer:
    """Streams a token every 20 ms; remembers aborts and generators that ended early."""

    def __init__(self) -> None:
        self.aborted: list[str] = []
        self.stopped: list[str] = []

    async def generate(self, state: RequestState) -> Any:
        request_id, i = state.request_id, 0
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


Streamer: Any = ray.remote(num_cpus=0)(_Streamer)


async def _first_tokens(client: WorkerClient, rid: str, n: int) -> Any:
    stream = client.stream(RequestState(rid, (), (), SamplingParams(), prompt="p"))
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
    await client.ping(10.0)  # its process may take a moment to start
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


class _SlowStarter(_Streamer):
    """Takes a while to come back after a restart, like a worker loading its model."""

    def __init__(self) -> None:
        super().__init__()
        if ray.get_runtime_context().was_current_actor_reconstructed:
            time.sleep(5.0)


SlowStarter: Any = ray.remote(num_cpus=0, max_restarts=1)(_SlowStarter)


async def test_a_restarting_actor_is_lost_at_once_not_when_it_is_back(mesh: Mesh) -> None:
    """Ray holds calls to a restarting actor until its new process answers; the ping and the
    abort ask the GCS instead of waiting for that (which would read it alive again)."""
    actor = SlowStarter.remote()
    client = WorkerClient(actor, "slow", "m", timeout_s=20.0)
    await client.ping(10.0)
    ray.kill(actor, no_restart=False)
    with pytest.raises(WorkerLostError, match="slow is restarting"):
        for _ in range(50):  # the GCS learns of the death within moments
            await client.ping(20.0)
            await asyncio.sleep(0.1)
    await client.abort("r")  # gives up at once too: the restarted actor holds nothing of it
    assert client._actor_state() == "RESTARTING"
