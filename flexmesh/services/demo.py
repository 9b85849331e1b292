"""`flexmesh demo`: start the embedded mesh, send a burst of mixed prompts, print a summary."""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import random
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

from flexmesh.services.client import StreamResult, stream_generate
from flexmesh.v1 import flexmesh_pb2 as pb
from flexmesh.v1 import flexmesh_pb2_grpc as pb_grpc

BUILTIN_PROMPTS = (
    ("code", 'def quicksort(items):\n    """Sort a list with quicksort."""\n'),
    ("math", "A train travels 120 km in 1.5 hours. What is its average speed in km/h?"),
    (
        "knowledge_qa",
        "Which planet has the most moons?\nA. Earth\nB. Mars\nC. Saturn\nD. Venus",
    ),
    ("chinese_exam", "下列哪一项是中国的首都？\nA. 上海\nB. 北京\nC. 广州\nD. 深圳"),
    ("chat", "Write a short, friendly note inviting my neighbours to a garden party."),
)


def default_prompts_dir() -> Path:
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "prompts"


def load_prompts(prompts_dir: Path, per_file: int, seed: int) -> list[tuple[str, str]]:
    """(intent, prompt) pairs sampled from the shared prompt files, or built-in examples."""
    files = sorted(p for p in prompts_dir.glob("*.jsonl*") if "long_context" not in p.name)
    if not files:
        return list(BUILTIN_PROMPTS)
    rng = random.Random(seed)
    out: list[tuple[str, str]] = []
    for path in files:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        out += [(r["task"], r["prompt"]) for r in rng.sample(rows, min(per_file, len(rows)))]
    rng.shuffle(out)
    return out


async def burst(
    address: str, prompts: list[tuple[str, str]], max_tokens: int
) -> tuple[list[StreamResult], float]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GenerationStub(channel)
        t0 = time.perf_counter()
        reqs = [
            pb.GenerateRequest(prompt=p[:2000], max_tokens=max_tokens, model="auto")
            for _, p in prompts
        ]
        results = await asyncio.gather(
            *(stream_generate(stub, r, 300) for r in reqs), return_exceptions=True
        )
        elapsed = time.perf_counter() - t0
    ok = [r for r in results if isinstance(r, StreamResult)]
    return ok, elapsed


def print_summary(
    prompts: list[tuple[str, str]], results: list[StreamResult], elapsed: float
) -> None:
    from rich.console import Console
    from rich.table import Table

    tokens = sum(len(r.token_ids) for r in results)
    ttft = np.array([r.ttft_s * 1000 for r in results])
    tpot = np.array(
        [
            (r.total_s - r.ttft_s) * 1000 / (len(r.token_ids) - 1)
            for r in results
            if len(r.token_ids) > 1
        ]
    )
    table = Table(title="FlexMesh demo: one burst of concurrent gRPC requests")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("requests sent / completed", f"{len(prompts)} / {len(results)}")
    table.add_row("output tokens/s", f"{tokens / elapsed:.1f}")
    for name, arr in (("TTFT ms", ttft), ("TPOT ms", tpot)):
        if arr.size:
            p50, p90, p99 = np.percentile(arr, [50, 90, 99])
            table.add_row(f"{name} p50 / p90 / p99", f"{p50:.0f} / {p90:.0f} / {p99:.0f}")
    models = Counter(r.final.route.model for r in results if r.final is not None)
    for model, n in sorted(models.items()):
        table.add_row(f"served by {model}", str(n))
    Console().print(table)


def run_demo(args: argparse.Namespace, mesh_address: str) -> int:
    prompts_dir = Path(args.prompts_dir) if args.prompts_dir else default_prompts_dir()
    prompts = load_prompts(prompts_dir, args.per_file, args.seed)[: args.requests]
    print(f"sending {len(prompts)} concurrent requests to {mesh_address} ...", flush=True)
    results, elapsed = asyncio.run(burst(mesh_address, prompts, args.max_tokens))
    print_summary(prompts, results, elapsed)
    return 0 if len(results) == len(prompts) else 1
