"""The gRPC client of a gateway's Generate stream, as the CLI, benchmarks and tests use it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from flexmesh.channel import open_channel
from flexmesh.v1 import flexmesh_pb2 as pb
from flexmesh.v1 import flexmesh_pb2_grpc as pb_grpc


@dataclass
class StreamResult:
    """What one Generate stream delivered, as the client saw it."""

    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    chunks: int = 0
    gaps: int = 0
    """Chunks whose `offset` was not where the previous ones ended (lost or repeated tokens)."""
    final: pb.GenerateResponse | None = None
    ttft_s: float = 0.0
    total_s: float = 0.0


async def stream_generate(
    stub: pb_grpc.GenerationStub, request: pb.GenerateRequest, timeout_s: float | None = None
) -> StreamResult:
    res = StreamResult()
    t0 = time.perf_counter()
    async for msg in stub.Generate(request, timeout=timeout_s):
        if res.chunks == 0 or not res.token_ids:
            res.ttft_s = time.perf_counter() - t0
        res.chunks += 1
        res.gaps += msg.offset != len(res.token_ids)
        res.token_ids += msg.token_ids
        res.text += msg.text
        if msg.finish_reason:
            res.final = msg
    res.total_s = time.perf_counter() - t0
    return res


async def fetch_status(target: str, timeout_s: float = 10.0) -> pb.GetStatusResponse:
    async with open_channel(target) as channel:
        return await pb_grpc.AdminStub(channel).GetStatus(pb.GetStatusRequest(), timeout=timeout_s)
