"""The gRPC columns of `flexmesh bench engine`: the same single and concurrent streams as
`engine_bench`'s in-process columns, sent through the gateway of a one-worker mesh on the
benchmarked model, and their ratios to the in-process engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from flexmesh.bench.engine_bench import BENCH_PROMPTS, BenchSettings, run_engine_bench
from flexmesh.channel import open_channel

BENCH_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "configs" / "bench-large.yaml"


def demo_large_path(model: str | None, models_dir: str | None) -> str:
    """`model` when given, else the demo-large folder under `models_dir` (built when missing)."""
    from flexmesh.launch.mesh import resolve_model_paths

    if model:
        return model
    from flexmesh.meshcore.config import MeshConfig

    cfg = MeshConfig.from_dict({"models": [{"name": "demo-large"}], "models_dir": models_dir or ""})
    return resolve_model_paths(cfg)["demo-large"]


async def _grpc_tok_s(address: str, s: BenchSettings, concurrency: int) -> float:

    from flexmesh.services.grpc_client import stream_generate
    from flexmesh.v1 import flexmesh_pb2 as pb
    from flexmesh.v1 import flexmesh_pb2_grpc as pb_grpc

    def req(i: int, n: int) -> pb.GenerateRequest:
        prompt = BENCH_PROMPTS[i % len(BENCH_PROMPTS)]
        return pb.GenerateRequest(prompt=prompt, max_tokens=n, ignore_eos=True, model="demo-large")

    async with open_channel(address) as channel:
        stub = pb_grpc.GenerationStub(channel)
        await stream_generate(stub, req(0, 4))  # warm-up
        t0 = time.perf_counter()
        if concurrency == 1:
            results = [
                await stream_generate(stub, req(i, s.new_tokens)) for i in range(len(BENCH_PROMPTS))
            ]
        else:
            results = await asyncio.gather(
                *(stream_generate(stub, req(i, s.new_tokens)) for i in range(concurrency))
            )
        return sum(len(r.token_ids) for r in results) / (time.perf_counter() - t0)


def run_engine_grpc_bench(
    s: BenchSettings, models_dir: str | None, grpc: bool = True
) -> dict[str, Any]:
    """`run_engine_bench`'s columns, plus (with `grpc`) the same streams through a mesh's gateway
    and their ratios to the in-process engine."""
    if not grpc:
        return run_engine_bench(s)
    c = s.concurrency
    with _bench_mesh(s, models_dir) as address:
        report = run_engine_bench(
            s,
            extra_columns={
                "grpc_b1_tok_s": lambda: asyncio.run(_grpc_tok_s(address, s, 1)),
                f"grpc_c{c}_tok_s": lambda: asyncio.run(_grpc_tok_s(address, s, c)),
            },
        )
    report["ratio_grpc_b1_vs_engine"] = round(
        report["grpc_b1_tok_s"] / report["engine_b1_tok_s"], 3
    )
    report[f"ratio_grpc_c{c}_vs_engine"] = round(
        report[f"grpc_c{c}_tok_s"] / report[f"engine_c{c}_tok_s"], 3
    )
    report[f"ratio_grpc_c{c}_vs_hf_b1"] = round(
        report[f"grpc_c{c}_tok_s"] / report["hf_b1_tok_s"], 2
    )
    return report


@contextlib.contextmanager
def _bench_mesh(s: BenchSettings, models_dir: str | None) -> Iterator[str]:
    """A one-worker mesh on the benchmarked model, both cores to the worker; yields its address."""
    from flexmesh.launch.config_file import load_mesh_config
    from flexmesh.launch.mesh import start_mesh

    cfg = load_mesh_config(BENCH_CONFIG)
    model = replace(cfg.models[0], path=s.model_path)
    cfg = replace(cfg, models=(model,), models_dir=models_dir or cfg.models_dir)
    mesh = start_mesh(cfg, log_to_driver=False)
    try:
        yield mesh.address
    finally:
        mesh.shutdown()
