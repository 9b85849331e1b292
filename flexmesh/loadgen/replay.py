"""Open-loop replay: send each request at its arrival time and time its token stream, over gRPC
to a FlexMesh gateway or over HTTP to any OpenAI-compatible server (`loadgen/openai_http.py`).

Open loop means a slow server does not slow the arrivals down, up to `max_in_flight` requests
in flight: past that bound the dispatcher waits for a slot, and the wait shows up as the
request's `send_delay_s` (so a report can tell a saturated client from a slow server). Every
call carries a deadline, and no request is sent after `max_duration_s`, so a replay always ends
by itself; each request ends as exactly one `RequestRecord`, failures and unsent ones included.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from tqdm import tqdm

from flexmesh.channel import open_channel
from flexmesh.loadgen.openai_http import http_client, http_sender, is_http
from flexmesh.loadgen.records import (
    NOT_SENT,
    OK,
    ROUTE_FIELDS,
    TIMING_FIELDS,
    ReplayError,
    ReplayRequest,
    RequestRecord,
    Sender,
    Stream,
    server_fields,
)
from flexmesh.loadgen.status import StatusReader, StatusSampler, grpc_status_reader
from flexmesh.v1 import flexmesh_pb2, flexmesh_pb2_grpc

log = structlog.get_logger(__name__)

GRACE_S = 5.0
"""Extra wait past the last deadline before stragglers are cancelled."""
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.max_receive_message_length", 64 << 20),
]


@dataclass(frozen=True)
class ReplayResult:
    """Outcome of one replay."""

    records: tuple[RequestRecord, ...]
    """One per request, in request order."""
    wall_s: float
    """From the replay's start to its last response."""
    started_unix: float
    """Wall-clock start (seconds since the epoch)."""
    target: str
    max_in_flight: int
    status_samples: tuple[dict[str, Any], ...] = ()
    """`Admin/GetStatus` samples taken during the replay (empty unless asked for)."""


def grpc_sender(
    stub: flexmesh_pb2_grpc.GenerationStub, model: str, strategy: str, temperature: float
) -> Sender:
    """Calls `Generation/Generate` of a FlexMesh gateway."""

    async def send(
        req: ReplayRequest,
        request_id: str,
        timeout_s: float | None,
        stream: Stream,
        elapsed_s: Callable[[], float],
    ) -> None:
        msg = flexmesh_pb2.GenerateRequest(
            prompt=req.prompt,
            max_tokens=req.max_tokens,
            temperature=temperature,
            ignore_eos=req.ignore_eos,
            model=model,
            request_id=request_id,
            strategy=strategy,
        )
        try:
            async for resp in stub.Generate(msg, timeout=timeout_s):
                if resp.token_ids:
                    stream.add(elapsed_s(), len(resp.token_ids), resp.token_ids)
                if resp.finish_reason:
                    stream.final = _final_fields(resp)
        except grpc.aio.AioRpcError as e:
            raise ReplayError(e.code().name, e.details() or "") from e

    return send


def _final_fields(last: flexmesh_pb2.GenerateResponse) -> dict[str, Any]:
    """The record's fields from a gateway's final message."""
    fields: dict[str, Any] = {"finish_reason": last.finish_reason}
    if last.HasField("usage"):
        fields["prompt_tokens"] = last.usage.prompt_tokens
        fields["completion_tokens"] = last.usage.completion_tokens
    if last.HasField("route"):
        fields.update(
            server_fields(route={f: getattr(last.route, f) for f in ROUTE_FIELDS.values()})
        )
    if last.HasField("timings"):
        t = last.timings
        fields.update(server_fields(timings={f: getattr(t, f) for f in TIMING_FIELDS.values()}))
    return fields


def _record(
    req: ReplayRequest,
    request_id: str,
    send_s: float,
    end_s: float,
    stream: Stream,
    status: str,
    error: str,
) -> RequestRecord:
    fields = dict(stream.final)
    return RequestRecord(
        index=req.index,
        request_id=request_id,
        intent=req.intent,
        arrival_s=req.arrival_s,
        status=status,
        send_s=send_s,
        send_delay_s=max(0.0, send_s - req.arrival_s),
        end_s=end_s,
        ttft_s=stream.times[0] if stream.times else None,
        e2e_s=end_s - send_s,
        chunk_times_s=tuple(stream.times),
        chunk_tokens=tuple(stream.tokens),
        token_ids=tuple(stream.token_ids or ()),
        prompt_tokens=fields.pop("prompt_tokens", req.prompt_tokens),
        target_prompt_tokens=req.target_prompt_tokens,
        max_tokens=req.max_tokens,
        completion_tokens=fields.pop("completion_tokens", sum(stream.tokens)),
        error=error,
        **fields,
    )


class _Replayer:
    """State of one replay run: the clock, the in-flight bound and the finished records."""

    def __init__(
        self,
        send: Sender,
        max_in_flight: int,
        deadline_s: float | None,
        end_by_s: float | None,
        run_id: str,
        bar: tqdm[Any],
        keep_token_ids: bool = False,
    ) -> None:
        self.send = send
        self.keep_token_ids = keep_token_ids
        self.slots = asyncio.Semaphore(max_in_flight)
        self.deadline_s = deadline_s
        self.end_by_s = end_by_s
        self.run_id = run_id
        self.bar = bar
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        self.records: dict[int, RequestRecord] = {}
        self.in_flight = 0

    def now(self) -> float:
        return self.loop.time() - self.t0

    def timeout_for(self, send_s: float) -> float | None:
        """Per-call deadline: the smaller of `deadline_s` and what is left of the run."""
        limits = [] if self.deadline_s is None else [self.deadline_s]
        if self.end_by_s is not None:
            limits.append(self.end_by_s - send_s)
        return max(0.001, min(limits)) if limits else None

    async def call(self, req: ReplayRequest, send_s: float) -> None:
        request_id = f"{self.run_id}-{req.index}"
        stream = Stream(token_ids=[] if self.keep_token_ids else None)
        status, error = OK, ""
        try:
            await self.send(
                req, request_id, self.timeout_for(send_s), stream, lambda: self.now() - send_s
            )
        except ReplayError as e:
            status, error = e.status, e.error
        except asyncio.CancelledError:
            status, error = "CANCELLED", "cancelled by the replay (stuck or stopped)"
        except Exception as e:  # a client-side bug must still leave a record, not a hole
            status, error = "UNKNOWN", f"{type(e).__name__}: {e}"
        finally:
            self.in_flight -= 1
            self.slots.release()
            self.records[req.index] = _record(
                req, request_id, send_s, self.now(), stream, status, error
            )
            if status != OK:
                log.debug("request_failed", request_id=request_id, status=status, error=error)
            self.bar.update(1)
            self.bar.set_postfix(in_flight=self.in_flight, refresh=False)


async def _sleep_unless(stop: asyncio.Event | None, seconds: float) -> None:
    """Sleep `seconds`, or less if `stop` is set meanwhile."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def replay(
    requests: Sequence[ReplayRequest],
    target: str,
    max_in_flight: int = 64,
    *,
    deadline_s: float | None = 300.0,
    max_duration_s: float | None = None,
    model: str = "",
    strategy: str = "",
    temperature: float = 0.0,
    run_id: str | None = None,
    progress: bool = True,
    status_interval_s: float | None = None,
    channel: grpc.aio.Channel | None = None,
    keep_token_ids: bool = False,
    stop: asyncio.Event | None = None,
    send: Sender | None = None,
    read_status: StatusReader | None = None,
) -> ReplayResult:
    """Send `requests` to `target` at their arrival times; one record each. `target` is a
    FlexMesh gateway ("host:port", gRPC) or any OpenAI-compatible server ("http://host:port",
    its `/v1/completions`; `model` "" asks FlexMesh's router, as "auto").

    `deadline_s` bounds each call; `max_duration_s` bounds the run (nothing is sent after it,
    calls in flight get at most what is left). `status_interval_s` also samples
    `Admin/GetStatus` during the run. Pass `channel` to reuse one (it is then not closed).
    `keep_token_ids` keeps each completion's ids in its record (to compare outputs). Once
    `stop` is set nothing more is sent (the rest are NOT_SENT); calls in flight finish.
    `send` (with `read_status` for the samples) replaces the transport: the simulator calls
    its gateway core directly, and `target` then only names the run.
    """
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight: must be >= 1, got {max_in_flight}")
    if len({r.index for r in requests}) != len(requests):
        raise ValueError("requests: indices must be unique (records are keyed by index)")
    ordered = sorted(requests, key=lambda r: (r.arrival_s, r.index))
    bar = tqdm(total=len(ordered), desc="replay", unit="req", disable=not progress)
    started_unix = time.time()
    stack = contextlib.AsyncExitStack()
    if send is None and is_http(target):
        client = await stack.enter_async_context(http_client(target, max_in_flight))
        send = http_sender(client, model, strategy, temperature)
        if status_interval_s:
            log.warning("status_sampling_skipped", reason="only a gRPC gateway has Admin/GetStatus")
            status_interval_s = None
    elif send is None:
        chan = channel or open_channel(target, options=_CHANNEL_OPTIONS)
        if channel is None:
            stack.push_async_callback(chan.close)
        send = grpc_sender(flexmesh_pb2_grpc.GenerationStub(chan), model, strategy, temperature)
        read_status = grpc_status_reader(chan, max(1.0, status_interval_s or 1.0))
    rp = _Replayer(
        send,
        max_in_flight,
        deadline_s,
        max_duration_s,
        run_id or uuid.uuid4().hex[:8],
        bar,
        keep_token_ids,
    )
    sampler = (
        StatusSampler(read_status, status_interval_s, rp.now)
        if read_status and status_interval_s
        else None
    )
    tasks: dict[int, asyncio.Task[None]] = {}
    try:
        if sampler:
            sampler.start()
        for req in ordered:
            wait = req.arrival_s - rp.now()
            if max_duration_s is not None and max(req.arrival_s, rp.now()) >= max_duration_s:
                break
            if wait > 0:
                await _sleep_unless(stop, wait)
            if stop is not None and stop.is_set():
                break
            if max_duration_s is None:
                await rp.slots.acquire()
            else:
                try:
                    await asyncio.wait_for(rp.slots.acquire(), max_duration_s - rp.now())
                except TimeoutError:
                    break
            rp.in_flight += 1
            send_s = rp.now()
            tasks[req.index] = asyncio.create_task(rp.call(req, send_s))
        pending = [t for t in tasks.values() if not t.done()]
        if pending:
            # Every call has its own deadline; the grace period only catches a stuck stream.
            longest = rp.timeout_for(rp.now())
            _, late = await asyncio.wait(
                pending, timeout=None if longest is None else longest + GRACE_S
            )
            for t in late:
                t.cancel()
            if late:
                await asyncio.wait(late)
        wall_s = rp.now()
    finally:
        unfinished = [t for t in tasks.values() if not t.done()]
        for t in unfinished:
            t.cancel()
        if unfinished:
            await asyncio.gather(*unfinished, return_exceptions=True)
        samples = await sampler.stop() if sampler else []
        bar.close()
        await stack.aclose()
    records = [
        rp.records.get(r.index)
        or RequestRecord(r.index, "", r.intent, r.arrival_s, NOT_SENT, max_tokens=r.max_tokens)
        for r in sorted(requests, key=lambda r: r.index)
    ]
    log.info(
        "replay_done",
        target=target,
        requests=len(records),
        ok=sum(r.ok for r in records),
        wall_s=round(wall_s, 3),
    )
    return ReplayResult(tuple(records), wall_s, started_unix, target, max_in_flight, tuple(samples))
