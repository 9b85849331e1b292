"""The multi-node scenario of `test_multinode.py`, run in its own process (it owns a Ray cluster
of three nodes on this machine, beside the test session's own Ray instance).

`python -m tests.mesh.multinode_scenario MODELS_DIR` prints one JSON line of what it saw:
where the workers were placed, each request's tokens and route before and after a node was
removed, and the status the gateway reported after the loss.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import grpc

from flexmesh.bench.kv_bench import actor_nodes, local_cluster
from flexmesh.launch.mesh import start_mesh
from flexmesh.meshcore.config import MeshConfig
from flexmesh.services.grpc_client import stream_generate
from flexmesh.v1 import flexmesh_pb2 as pb
from flexmesh.v1 import flexmesh_pb2_grpc as pb_grpc

MODEL = "demo-large"
NAMESPACE = "flexmesh-multinode"
NEW_TOKENS = 24
LONG_TOKENS = 400
"""The stream running while its decode worker's node goes away."""


def mesh_config(models_dir: str) -> MeshConfig:
    return MeshConfig.from_dict(
        {
            "models": [
                {
                    "name": MODEL,
                    "num_workers": 2,
                    "roles": ["prefill", "decode"],
                    "num_cpus": 1,
                    "placement": "spread",
                    "resources": {"pool": 1},  # only the two worker nodes have it
                }
            ],
            # The prompts are prefixes of one another: with the prefix cache their uncached
            # parts would be too short to hand off, and this scenario is the hand-off's.
            "engine": {"kv_cache_bytes": 64 << 20, "prefix_cache": False},
            "gateway": {"port": 0, "max_migrations": 2},
            "pd": {"min_prompt_tokens": 16},
            "models_dir": models_dir,
            "namespace": NAMESPACE,
        }
    )


def _route(res: Any) -> dict[str, Any]:
    r = res.final.route
    return {
        "worker": r.worker,
        "prefill_worker": r.prefill_worker,
        "kv_transport": r.kv_transport,
        "migrations": r.migrations,
    }


async def _generate(address: str, ids: list[int], max_tokens: int) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(address) as ch:
        req = pb.GenerateRequest(prompt_token_ids=ids, max_tokens=max_tokens, model=MODEL)
        res = await stream_generate(pb_grpc.GenerationStub(ch), req, 300)
    return {"prompt": ids, "tokens": res.token_ids, "gaps": res.gaps, "route": _route(res)}


async def _status(address: str) -> list[dict[str, Any]]:
    async with grpc.aio.insecure_channel(address) as ch:
        status = await pb_grpc.AdminStub(ch).GetStatus(pb.GetStatusRequest(), timeout=30)
    return [{"name": w.name, "alive": w.alive, "role": w.role} for w in status.workers]


async def _lose_a_node(cluster: Any, address: str, ids: list[int], node: Any) -> Any:
    """Start a long stream, remove `node` (its decode worker's) while it runs, finish it."""
    stream = asyncio.create_task(_generate(address, ids, LONG_TOKENS))
    await asyncio.sleep(4.0)  # well into decoding on the other node
    await asyncio.to_thread(cluster.remove_node, node, False)  # not graceful: a crash
    return await stream


def main(models_dir: str) -> dict[str, Any]:
    with local_cluster(2, "pool") as cluster:
        mesh = start_mesh(mesh_config(models_dir), address=cluster.address, log_to_driver=False)
        try:
            return _scenario(cluster, mesh.address, models_dir)
        finally:
            mesh.shutdown()


def _scenario(cluster: Any, address: str, models_dir: str) -> dict[str, Any]:
    from transformers import AutoTokenizer

    workers = actor_nodes()
    nodes = {
        "head": cluster.head_node.node_id,
        "workers": [n.node_id for n in cluster.worker_nodes],
    }
    tok = AutoTokenizer.from_pretrained(f"{models_dir}/{MODEL}")
    text = "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n"
    ids = tok.encode(text * 2, add_special_tokens=False)
    before = [asyncio.run(_generate(address, ids[: 20 + 7 * i], NEW_TOKENS)) for i in range(3)]
    decode_node = workers[f"worker-{MODEL}-1"]
    node = next(n for n in cluster.worker_nodes if n.node_id == decode_node)
    t0 = time.monotonic()
    during = asyncio.run(_lose_a_node(cluster, address, ids, node))
    lost_s = time.monotonic() - t0
    after = asyncio.run(_generate(address, ids[:30], NEW_TOKENS))
    return {
        "nodes": nodes,
        "placement": workers,
        "before": before,
        "during": during,
        "during_s": lost_s,
        "after": after,
        "status": asyncio.run(_status(address)),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])), flush=True)
