"""`flexmesh bench kv`: a request's KV hand-off against raw send/recv of the same bytes.

For each transport that runs here (the gloo collective group, the object store) a two-worker
prefill/decode mesh serves prompts of several lengths; each request's route reports its KV
bytes and the hand-off time from the prefill's end to the KV imported on the decode worker.
In the same run, two bare peer actors move the same byte counts over the same transport
(`KVGroup.send/recv`; a numpy array returned through the object store), and, for comparison,
over Ray Direct Transport with gloo (a tensor-returning method feeding another actor's task).
The table prints the bandwidths and the hand-off's ratio to raw per length.

With `--nodes 2` the same runs cross nodes: a Ray cluster of a head and two nodes on this
machine (`ray.cluster_utils.Cluster`), the prefill and the decode worker spread over the two
(`placement: spread`), the raw peers pinned to the same two nodes, so both move the same bytes
over the same path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import ray
import torch

from flexmesh.actors.kv import KVGroup
from flexmesh.bench.serving import progress
from flexmesh.channel import open_channel

TRANSPORTS = ("collective", "object_store")
"""Transports that run on this machine (NCCL and HCCL need their devices)."""
POOL = "kv_bench_pool"
"""The resource only the worker nodes of `--nodes` have: one worker each."""
Where = tuple[dict[str, Any], dict[str, Any]]
"""Actor options placing the sending and the receiving end (empty: anywhere)."""


class KVPeer:
    """A bare actor holding only a KV group membership: the raw transport's endpoints."""

    def __init__(self) -> None:
        self.group: KVGroup | None = None
        self._arrays: dict[int, np.ndarray] = {}

    def join(self, group: str, world_size: int, rank: int) -> str:
        self.group = KVGroup(group, world_size, rank, "cpu", timeout_s=60.0)
        return self.group.backend

    def send(self, nbytes: int, dst_rank: int) -> None:
        assert self.group is not None
        self.group.send(torch.from_numpy(self.produce(nbytes)), dst_rank)

    def recv(self, nbytes: int, src_rank: int) -> float:
        assert self.group is not None
        buffer = torch.from_numpy(self.produce(nbytes))  # reused memory, like the workers'
        t0 = time.perf_counter()
        self.group.recv(buffer, src_rank)
        return (time.perf_counter() - t0) * 1000.0

    def produce(self, nbytes: int) -> np.ndarray:
        """A ready array of `nbytes` (made once: the transfer alone is timed)."""
        if nbytes not in self._arrays:
            self._arrays[nbytes] = np.ones(nbytes // 4, dtype=np.float32)
        return self._arrays[nbytes]

    async def fetch(self, producer: Any, nbytes: int) -> float:
        t0 = time.perf_counter()
        array = await producer.produce.remote(nbytes)
        assert array.nbytes == nbytes
        return (time.perf_counter() - t0) * 1000.0


class RDTProducer:
    """Ray Direct Transport's sender: a method whose tensor result travels over gloo."""

    def __init__(self) -> None:
        self._tensors: dict[int, torch.Tensor] = {}

    @ray.method(tensor_transport="gloo")
    def produce(self, nbytes: int) -> torch.Tensor:
        if nbytes not in self._tensors:
            self._tensors[nbytes] = torch.ones(nbytes // 4)
        return self._tensors[nbytes]


class RDTConsumer:
    """Ray Direct Transport's receiver (needs `enable_tensor_transport`, or it deadlocks)."""

    def consume(self, tensor: torch.Tensor) -> int:
        return int(tensor.numel())


def _medians(sizes: list[int], repeats: int, once: Callable[[int], float]) -> dict[int, float]:
    """Per size, the median of `repeats` measurements after one warm-up."""
    return {n: statistics.median([once(n) for _ in range(repeats + 1)][1:]) for n in sizes}


def _rdt_ms(sizes: list[int], repeats: int, where: Where) -> dict[int, float]:
    """Median milliseconds for an RDT tensor (gloo) to reach a consuming actor's task."""
    from ray.experimental.collective import create_collective_group

    opts = {"num_cpus": 0, "enable_tensor_transport": True}
    a = ray.remote(**opts)(RDTProducer).options(**where[0]).remote()
    b = ray.remote(**opts)(RDTConsumer).options(**where[1]).remote()
    try:
        create_collective_group([a, b], backend="torch_gloo")

        def once(n: int) -> float:
            t0 = time.perf_counter()
            ray.get(b.consume.remote(a.produce.remote(n)))
            return (time.perf_counter() - t0) * 1000.0

        return _medians(sizes, repeats, once)
    finally:
        ray.kill(a)
        ray.kill(b)


def _raw_ms(transport: str, sizes: list[int], repeats: int, where: Where) -> dict[int, float]:
    """Median milliseconds to move each byte count between two bare peers."""
    peer = ray.remote(num_cpus=0)(KVPeer)
    a, b = (peer.options(**w).remote() for w in where)
    try:
        if transport == "collective":
            ray.get(
                [
                    a.join.remote("flexmesh-bench-raw", 2, 0),
                    b.join.remote("flexmesh-bench-raw", 2, 1),
                ]
            )

        def once(n: int) -> float:
            if transport == "collective":
                ms, _ = ray.get([b.recv.remote(n, 0), a.send.remote(n, 1)])
                return float(ms)
            return float(ray.get(b.fetch.remote(a, n)))

        return _medians(sizes, repeats, once)
    finally:
        ray.kill(a)
        ray.kill(b)


async def _handoffs(address: str, model: str, lengths: list[int], repeats: int) -> dict[int, Any]:

    from flexmesh.services.grpc_client import stream_generate
    from flexmesh.v1 import flexmesh_pb2 as pb
    from flexmesh.v1 import flexmesh_pb2_grpc as pb_grpc

    out: dict[int, Any] = {}
    async with open_channel(address) as channel:
        stub = pb_grpc.GenerationStub(channel)
        for n in lengths:
            runs = []
            for i in range(repeats + 1):  # the first is a warm-up
                ids = [(7 * j + i) % 5000 + 10 for j in range(n)]
                req = pb.GenerateRequest(
                    prompt_token_ids=ids, max_tokens=2, ignore_eos=True, model=model
                )
                route = (await stream_generate(stub, req, 120)).final.route
                runs.append((route.kv_transport, route.kv_bytes, route.kv_transfer_ms))
            transports = {t for t, _, _ in runs[1:]}
            out[n] = {
                "transport": ",".join(sorted(transports)),
                "bytes": runs[-1][1],
                "handoff_ms": statistics.median(ms for _, _, ms in runs[1:]),
            }
    return out


def run_kv_bench(args: argparse.Namespace) -> dict[str, Any]:
    from flexmesh.launch.mesh import start_mesh
    from flexmesh.meshcore.config import MeshConfig

    lengths = [int(x) for x in args.lengths.split(",")]
    nodes = args.nodes
    report: dict[str, Any] = {
        "model": args.model,
        "lengths": lengths,
        "nodes": nodes,
        "transports": {},
    }
    model: dict[str, Any] = {"name": args.model, "num_workers": 2, "roles": ["prefill", "decode"]}
    if nodes > 1:
        model.update(placement="spread", resources={POOL: 1}, num_cpus=1)
    with local_cluster(nodes, POOL) if nodes > 1 else contextlib.nullcontext():
        for transport in TRANSPORTS:
            cfg = MeshConfig.from_dict(
                {
                    "models": [model],
                    "models_dir": args.models_dir or "",
                    "gateway": {"port": 0},
                    "pd": {"min_prompt_tokens": 1, "transport": transport},
                    "namespace": "flexmesh-bench-kv",
                }
            )
            progress(
                f"[{transport}] starting a prefill/decode mesh of {args.model} ({nodes} node(s))"
            )
            mesh = start_mesh(cfg, log_to_driver=False)
            try:
                where = _ends(args.model) if nodes > 1 else ({}, {})
                handoff = asyncio.run(_handoffs(mesh.address, args.model, lengths, args.repeats))
                sizes = sorted({h["bytes"] for h in handoff.values()})
                raw = _raw_ms(transport, sizes, args.repeats, where)
                rdt = _rdt_ms(sizes, args.repeats, where) if transport == "collective" else {}
            finally:
                mesh.shutdown()
            report["transports"][transport] = _rows(handoff, raw, rdt)
    return report


def _rows(handoff: dict[int, Any], raw: dict[int, float], rdt: dict[int, float]) -> dict[int, Any]:
    rows = {}
    for n, h in handoff.items():
        nbytes = h["bytes"]
        gbs = nbytes / (h["handoff_ms"] / 1000.0) / 1e9
        raw_gbs = nbytes / (raw[nbytes] / 1000.0) / 1e9
        rows[n] = {
            **h,
            "raw_ms": round(raw[nbytes], 3),
            "handoff_gb_s": round(gbs, 3),
            "raw_gb_s": round(raw_gbs, 3),
            "ratio": round(gbs / raw_gbs, 3),
            "rdt_gb_s": round(nbytes / (rdt[nbytes] / 1000.0) / 1e9, 3) if rdt else None,
        }
    return rows


@contextlib.contextmanager
def local_cluster(nodes: int, resource: str) -> Iterator[Any]:
    """A Ray cluster on this machine, joined by this process: a head (one CPU: the driver and
    the gateway) and `nodes` nodes of one CPU and one `resource` each (what a worker meant for
    them asks for). A node lost is noticed in ~1.5 s instead of Ray's default ~15 s. Yields the
    `ray.cluster_utils.Cluster` (its `worker_nodes` can be removed)."""
    from ray.cluster_utils import Cluster

    fast_loss = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "_system_config": fast_loss}
    )
    for _ in range(nodes):
        cluster.add_node(num_cpus=1, resources={resource: 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def actor_nodes() -> dict[str, str]:
    """The node id of every live named actor, by name."""
    from ray.util.state import list_actors

    return {a.name: a.node_id for a in list_actors(filters=[("state", "=", "ALIVE")]) if a.name}


def _ends(model: str) -> Where:
    """Options pinning a raw sender and receiver to the prefill and the decode worker's nodes."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = actor_nodes()
    prefill, decode = (node[f"worker-{model}-{i}"] for i in (0, 1))
    if prefill == decode:
        raise RuntimeError("the prefill and decode workers share a node: nothing crosses")
    pin = [NodeAffinitySchedulingStrategy(n, soft=False) for n in (prefill, decode)]
    return {"scheduling_strategy": pin[0]}, {"scheduling_strategy": pin[1]}


def print_kv_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    across = f", across {report['nodes']} nodes" if report.get("nodes", 1) > 1 else ""
    table = Table(
        title=f"KV hand-off vs raw send/recv of the same bytes ({report['model']}{across})"
    )
    columns = ("transport", "prompt tokens", "KV MB", "hand-off ms", "raw ms", "hand-off GB/s",
               "raw GB/s", "ratio", "raw RDT GB/s")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="right")
    for transport, rows in report["transports"].items():
        for n, r in rows.items():
            table.add_row(
                r["transport"] or transport,
                str(n),
                f"{r['bytes'] / 1e6:.1f}",
                f"{r['handoff_ms']:.1f}",
                f"{r['raw_ms']:.1f}",
                f"{r['handoff_gb_s']:.2f}",
                f"{r['raw_gb_s']:.2f}",
                f"{r['ratio']:.2f}",
                "-" if r["rdt_gb_s"] is None else f"{r['rdt_gb_s']:.2f}",
            )
    Console().print(table)
