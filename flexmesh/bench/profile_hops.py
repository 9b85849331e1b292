"""`flexmesh profile`'s costs outside the model: KV transports, process hops, the probe.

- KV over gloo: export = the engine's `gather_kv` into a reused staging buffer plus the
  checksum the sender's KV mover computes before it sends; transfer = a gloo send/recv between
  two Ray actors of a collective group (`bench/kv_bench.py`'s raw peers, `actors/kv.py`'s
  `KVGroup`); import = the receiver's checksum check plus `scatter_kv` into the blocks. Each is
  fitted `a_ms + bytes / gb_s`. "local" moves nothing: all zero.
- Hops, in one Ray session: a control call's round trip through the worker client
  (`WorkerClient.ping` to a bare async actor); a streamed message's cost, through the worker
  client's stream (`WorkerClient.stream`) and through the gateway's `Frontend` (over an
  in-process worker), each as the slope over the message count; the per-request cost, the
  Frontend's (admission, routing, dispatch) plus opening a Ray stream (the intercepts). The
  gRPC leg between the gateway and its client is not in these figures.
- The probe: the shipped classifier behind `ProbeFront`, median over development prompts.
"""

from __future__ import annotations

import asyncio
import logging
import math
import statistics
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import ray
import structlog

from flexmesh.actors.client import WorkerClient
from flexmesh.actors.kv import BufferPool, describe
from flexmesh.actors.runner.engine import Engine
from flexmesh.bench.profile_ops import fit, op_fit
from flexmesh.meshcore.config import MeshConfig, ModelSpec
from flexmesh.meshcore.messages import RequestOutput, RequestState, WorkerStatus
from flexmesh.meshcore.sampling import SamplingParams
from flexmesh.sim.profile import OpFit, Overheads, TransportFit

KV_SIZES_BYTES = (1 << 20, 4 << 20, 16 << 20, 64 << 20)
QUICK_KV_SIZES_BYTES = (1 << 20, 8 << 20)
STREAM_MESSAGES = 33
"""Messages of the long stream; the short one has 1 (the slope is the per-message cost)."""
PROBE_PROMPTS_PER_FILE = 40


# -- KV transports -------------------------------------------------------------------------


def measure_export_import(
    engine: Engine, sizes: Sequence[int], repeats: int, tick: Callable[[], None]
) -> dict[int, tuple[float, float]]:
    """Per KV byte count (whole blocks of `engine`'s cache): median export and import ms."""
    runner, name = engine.runner, "profile"
    block_bytes = math.prod(engine.kv_shape(1)) * engine.dtype.itemsize
    pool = BufferPool(engine.device)  # staging on the cache's device, as the mover's
    out: dict[int, tuple[float, float]] = {}
    for nbytes in sizes:
        blocks = min(max(1, round(nbytes / block_bytes)), runner.num_blocks)
        ids = list(range(blocks))
        export, import_ = [], []
        for i in range(repeats + 1):  # the first is a warm-up (fresh buffer memory)
            t0 = time.perf_counter()
            kv = runner.gather_kv(ids, pool.take(engine.kv_shape(blocks), engine.dtype))
            meta = describe(kv, "profile", name)
            t1 = time.perf_counter()
            meta.check(kv, name)
            runner.scatter_kv(ids, kv)
            t2 = time.perf_counter()
            pool.give(kv)
            if i:
                export.append((t1 - t0) * 1000.0)
                import_.append((t2 - t1) * 1000.0)
        out[blocks * block_bytes] = (statistics.median(export), statistics.median(import_))
        tick()
    return out


def fit_bytes(ms_by_bytes: dict[int, float]) -> OpFit:
    """`a_ms + bytes / gb_s` over measured (bytes, ms)."""
    sizes = sorted(ms_by_bytes)
    coef, err = fit([[1.0, float(n)] for n in sizes], [ms_by_bytes[n] for n in sizes])
    return op_fit(coef, err, len(sizes))


def gloo_transport(
    export_import: dict[int, tuple[float, float]], transfer: dict[int, float]
) -> TransportFit:
    return TransportFit(
        export=fit_bytes({n: e for n, (e, _) in export_import.items()}),
        transfer=fit_bytes(transfer),
        import_=fit_bytes({n: i for n, (_, i) in export_import.items()}),
    )


def measure_gloo_transfer(sizes: Sequence[int], repeats: int) -> dict[int, float]:
    """Median ms of a gloo send/recv of each byte count between two Ray actors (Ray is up)."""
    from flexmesh.bench.kv_bench import _raw_ms  # the raw peers of `flexmesh bench kv`

    return _raw_ms("collective", list(sizes), repeats, ({}, {}))


# -- process hops --------------------------------------------------------------------------


class Echo:
    """A bare async actor answering as a worker does: `ready` and `generate` streams."""

    async def ready(self) -> str:
        return "echo"

    async def abort(self, request_id: str) -> None:
        pass

    async def generate(self, state: RequestState) -> AsyncIterator[RequestOutput]:
        for out in _outputs(state):
            yield out


def _outputs(state: RequestState) -> list[RequestOutput]:
    n = state.sampling.max_tokens
    return [
        RequestOutput(state.request_id, (i,), "a", finished=i == n - 1, offset=i) for i in range(n)
    ]


class LocalWorker:
    """`WorkerClientProtocol` in-process: streams `sampling.max_tokens` messages at once."""

    def __init__(self, name: str, model: str) -> None:
        self.name, self.model = name, model

    async def stream(self, state: RequestState) -> AsyncIterator[RequestOutput]:
        for out in _outputs(state):
            yield out

    async def resume(
        self, state: RequestState, src: str = "", src_rank: int = -1
    ) -> AsyncIterator[RequestOutput]:
        for out in _outputs(state):
            yield out

    async def abort(self, request_id: str) -> None:
        pass

    async def status(self) -> WorkerStatus:
        return WorkerStatus(self.name, self.model, "", "mixed", "cpu", 0, 0, 0, 1, 1.0, 0)

    async def ping(self, timeout_s: float | None = None) -> None:
        pass

    async def set_role(self, role: str) -> None:
        pass

    async def set_prefill_budget(self, tokens: int) -> None:
        pass


def _state(i: int, messages: int) -> RequestState:
    return RequestState(f"hop-{i}", (1, 2, 3), (), SamplingParams(max_tokens=messages))


async def _slope(stream: Callable[[int, int], Any], repeats: int) -> tuple[float, float]:
    """(per-request ms, per-message ms) of `stream(i, messages)` from 1 and `STREAM_MESSAGES`
    messages, medians of `repeats` each after a warm-up."""

    async def once(i: int, n: int) -> float:
        t0 = time.perf_counter()
        async for _ in stream(i, n):
            pass
        return (time.perf_counter() - t0) * 1000.0

    await once(0, STREAM_MESSAGES)
    one = statistics.median([await once(i, 1) for i in range(repeats)])
    many = statistics.median([await once(i, STREAM_MESSAGES) for i in range(repeats)])
    per_message = max(0.0, (many - one) / (STREAM_MESSAGES - 1))
    return max(0.0, one - per_message), per_message


def start_echo() -> Any:
    """The bare actor `measure_hops` calls (started early: its process boots meanwhile)."""
    return ray.remote(num_cpus=0)(Echo).remote()


async def _hops(handle: Any, repeats: int, tick: Callable[[], None]) -> Overheads:
    from flexmesh.services.core.frontend import Frontend, GenerationInput

    client = WorkerClient(handle, "echo", "m", timeout_s=30.0)
    await client.ping()
    control = []
    for _ in range(repeats * 4):
        t0 = time.perf_counter()
        await client.ping()
        control.append((time.perf_counter() - t0) * 1000.0)
    tick()
    ray_open, ray_message = await _slope(lambda i, n: client.stream(_state(i, n)), repeats)
    ray.kill(handle)
    tick()
    frontend = Frontend(MeshConfig(models=(ModelSpec(name="m"),)), {"m": [LocalWorker("w", "m")]})

    def generate(i: int, n: int) -> AsyncIterator[Any]:
        sampling = SamplingParams(max_tokens=n, ignore_eos=True)
        return frontend.generate(GenerationInput("", (1, 2, 3), sampling, "m", f"req-{i}-{n}"))

    quiet = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    try:  # not a line per request
        gw_request, gw_message = await _slope(generate, repeats)
    finally:
        structlog.configure(**quiet)
    tick()
    return Overheads(
        request_ms=gw_request + ray_open,
        chunk_ms=gw_message + ray_message,
        control_ms=statistics.median(control),
    )


def measure_hops(echo: Any, repeats: int, tick: Callable[[], None]) -> Overheads:
    """`Overheads` without the probe, through `echo` (`start_echo`; killed here)."""
    return asyncio.run(_hops(echo, repeats, tick))


# -- the probe -----------------------------------------------------------------------------


def probe_prompts(folder: Path | None, per_file: int) -> list[str]:
    """Prompts of every development file in `folder` (.jsonl, .jsonl.gz; never `holdout/`),
    else the classifier's shipped exemplars."""
    from flexmesh.actors.probe.data import read_prompts

    files = sorted([*folder.glob("*.jsonl"), *folder.glob("*.jsonl.gz")]) if folder else []
    prompts = [str(r["prompt"]) for f in files for r in read_prompts(f, per_file)]
    if prompts:
        return prompts
    from flexmesh.actors.probe.train import exemplars

    return [s.text for s in exemplars()]


def measure_probe(prompts: Sequence[str]) -> float:
    """Median `probe_ms` of the shipped classifier behind `ProbeFront` over `prompts`."""
    from flexmesh.actors.probe.classifier import ClassifierProbe
    from flexmesh.actors.probe.front import ProbeFront
    from flexmesh.meshcore.routing import RoutingConfig

    front = ProbeFront(ClassifierProbe(), RoutingConfig().long_context_tokens)
    front.classify(prompts[0])  # warm-up
    return statistics.median(front.classify(p).probe_ms for p in prompts)
