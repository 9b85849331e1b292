"""What the reliability benchmarks read about a running mesh beside its gRPC answers: its
actors' processes (a new pid = a restart), their resident memory (/proc, this node), and the
KV blocks in use. Ray's state API would need the dashboard (~0.9 GB here): each actor is asked
for its pid instead."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flexmesh.channel import open_channel


def _pid(_: object) -> int:
    return os.getpid()


def actor_pids(actors: Mapping[str, Any], timeout_s: float = 30.0) -> dict[str, int]:
    """Each actor's process id, asked of the actor itself (0 when it does not answer); a new
    pid later means Ray restarted it."""
    import ray

    pids: dict[str, int] = {}
    for name, handle in sorted(actors.items()):
        try:
            pids[name] = int(ray.get(handle.__ray_call__.remote(_pid), timeout=timeout_s))
        except Exception:
            pids[name] = 0
    return pids


def rss_mb(pid: int) -> float | None:
    """Resident memory of a local process from /proc (None elsewhere or when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        return None
    return None


def actor_rss_mb(pids: Mapping[str, int]) -> dict[str, float | None]:
    return {name: rss_mb(pid) for name, pid in pids.items()}


async def kv_blocks_used(address: str, timeout_s: float = 60.0) -> dict[str, int]:
    """Every worker's KV blocks in use once they are all free, or as they are at the timeout."""
    from flexmesh.v1 import flexmesh_pb2 as pb
    from flexmesh.v1 import flexmesh_pb2_grpc as pb_grpc

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with open_channel(address) as channel:
        admin = pb_grpc.AdminStub(channel)
        while True:
            try:
                st = await admin.GetStatus(pb.GetStatusRequest(), timeout=10)
                used = {w.name: w.kv_blocks_used for w in st.workers}
                if all(w.alive for w in st.workers) and not any(used.values()):
                    return used
            except Exception:
                used = {}
            if loop.time() > deadline:
                return used
            await asyncio.sleep(0.5)
