"""An in-process grpc.aio server that streams like the gateway and fails on purpose.

Request ids end in the workload index (`<run>-<index>`): index % 5 == 3 is refused with
RESOURCE_EXHAUSTED, index % 11 == 7 stalls past any test deadline, the rest stream
`max_tokens` tokens in chunks of 4 and finish with usage, timings and a route (even indices
on demo-large, odd on demo-small; `route_flags` says which are demanding and downgraded).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc

from flexmesh.v1 import flexmesh_pb2, flexmesh_pb2_grpc

CHUNK = 4


def outcome(index: int) -> str:
    if index % 5 == 3:
        return "RESOURCE_EXHAUSTED"
    if index % 11 == 7:
        return "DEADLINE_EXCEEDED"
    return "OK"


def route_flags(index: int) -> tuple[bool, bool]:
    """(demanding, downgraded) of a finished request: index % 4 == 0 is demanding and served by
    demo-large, index % 4 == 1 demanding and downgraded to demo-small."""
    return index % 4 in (0, 1), index % 4 == 1


class FakeGeneration(flexmesh_pb2_grpc.GenerationServicer):
    def __init__(self) -> None:
        self.in_flight = 0

    async def Generate(
        self, request: flexmesh_pb2.GenerateRequest, context: Any
    ) -> AsyncIterator[flexmesh_pb2.GenerateResponse]:
        index = int(request.request_id.rsplit("-", 1)[1])
        if outcome(index) == "RESOURCE_EXHAUSTED":
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "gateway queue is full")
        self.in_flight += 1
        try:
            if outcome(index) == "DEADLINE_EXCEEDED":
                await asyncio.sleep(30)
            model = "demo-small" if index % 2 else "demo-large"
            await asyncio.sleep(0.01)  # prefill
            n = request.max_tokens
            for start in range(0, n, CHUNK):
                k = min(CHUNK, n - start)
                resp = flexmesh_pb2.GenerateResponse(
                    token_ids=list(range(start, start + k)),
                    text="x" * k,
                    request_id=request.request_id,
                )
                if start + k >= n:
                    resp.finish_reason = "length"
                    resp.usage.prompt_tokens = len(request.prompt.split())
                    resp.usage.completion_tokens = n
                    resp.timings.ttft_ms = 10.0
                    resp.timings.total_ms = 20.0
                    resp.route.model = model
                    resp.route.worker = f"worker-{model}-0"
                    resp.route.intent = "chat" if index % 3 else "code"
                    resp.route.strategy = "pld" if model == "demo-small" else "none"
                    resp.route.confidence = 0.9
                    resp.route.demanding, resp.route.downgraded = route_flags(index)
                yield resp
                await asyncio.sleep(0.002)
        finally:
            self.in_flight -= 1


class FakeAdmin(flexmesh_pb2_grpc.AdminServicer):
    def __init__(self, gen: FakeGeneration) -> None:
        self.gen = gen
        self.calls = 0

    async def GetStatus(self, request: Any, context: Any) -> flexmesh_pb2.GetStatusResponse:
        self.calls += 1
        flip = (self.calls // 3) % 2 == 1
        return flexmesh_pb2.GetStatusResponse(
            in_flight=self.gen.in_flight,
            max_queue_len=64,
            workers=[
                flexmesh_pb2.WorkerStatus(
                    name="worker-demo-small-0", model="demo-small", role="mixed",
                    queue_length=self.gen.in_flight // 2, running_requests=1, alive=True,
                    decode_step_ms=4.0, prefill_ms_per_token=0.25,
                    percentiles={"tpot_ms_p99": 12.5, "queue_ms_p99": 3.0},
                ),
                flexmesh_pb2.WorkerStatus(
                    name="worker-demo-large-0", model="demo-large",
                    role="prefill" if flip else "decode",
                    queue_length=self.gen.in_flight - self.gen.in_flight // 2, alive=True,
                ),
            ],
        )  # fmt: skip


@asynccontextmanager
async def fake_server(admin: bool = True) -> AsyncIterator[str]:
    """Serve on a free local port; yields "127.0.0.1:<port>"."""
    server = grpc.aio.server()
    gen = FakeGeneration()
    flexmesh_pb2_grpc.add_GenerationServicer_to_server(gen, server)
    if admin:
        flexmesh_pb2_grpc.add_AdminServicer_to_server(FakeAdmin(gen), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=None)
