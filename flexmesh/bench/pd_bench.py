"""`flexmesh bench pd`: one trace replay against prefill/decode configurations side by side.

Each configuration (default: `pd-colocated`, `pd-disaggregated`: demo-large on two one-core
workers) first answers `--idle-requests` sequential 512-token prompts on the idle mesh (their
median TTFT is the idle-TTFT row), then replays the same window of a real trace. The replay's
reports land in `--out/<config>/`, with `status.png` showing each worker's role over time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from pathlib import Path
from typing import Any

from flexmesh.bench.serving import each_mesh, progress, report_line
from flexmesh.loadgen.cli import add_replay_arguments, run_replay

PD_PRESET = ("pd-colocated", "pd-disaggregated")
IDLE_PROMPT_TOKENS = 512


def add_pd_bench_arguments(p: argparse.ArgumentParser) -> None:
    data = Path(__file__).resolve().parents[3] / "shared" / "data"
    p.add_argument("--configs", default=",".join(PD_PRESET), help="first = baseline")
    p.add_argument("--models-dir", default=None)
    p.add_argument("--model", default="demo-large", help="the model the configs serve")
    p.add_argument("--trace", default=str(data / "traces" / "azure_llm_2023_conv.csv"))
    p.add_argument("--prompts-dir", default=str(data / "prompts"))
    p.add_argument("--duration", type=float, default=60.0, help="seconds of trace replayed")
    p.add_argument("--rate-scale", type=float, default=0.2, help="thin the trace's arrivals")
    p.add_argument(
        "--phase",
        action="append",
        default=[],
        metavar="TRACE:START:DURATION[:RATE_SCALE]",
        help="replay a workload that changes character instead (repeat in order)",
    )
    p.add_argument("--max-input-tokens", type=int, default=1024)
    p.add_argument("--max-output-tokens", type=int, default=128)
    p.add_argument("--ttft-slo-ms", type=float, default=3000.0)
    p.add_argument("--tpot-slo-ms", type=float, default=150.0)
    p.add_argument("--idle-requests", type=int, default=5, help="512-token prompts, idle mesh")
    p.add_argument("--out", default="bench-out/pd", help="folder for JSON and plots")
    p.add_argument("--json", action="store_true")


def _replay_args(args: argparse.Namespace, target: str, tokenizer: str, out: Path) -> Any:
    source = [x for ph in args.phase for x in ("--phase", ph)] or [
        "--trace", args.trace, "--format", "azure", "--duration", str(args.duration),
        "--rate-scale", str(args.rate_scale),
    ]  # fmt: skip
    argv = [
        *source, "--max-input-tokens", str(args.max_input_tokens),
        "--max-output-tokens", str(args.max_output_tokens), "--length-mode", "clip",
        "--intent-mix", "chat=0.5,code=0.5", "--prompts-dir", args.prompts_dir,
        "--tokenizer", tokenizer, "--target", target, "--out", str(out), "--model", args.model,
        "--max-in-flight", "256", "--deadline-s", "600", "--seed", "0", "--no-progress",
        "--status-interval-s", "1", "--ttft-slo-ms", str(args.ttft_slo_ms),
        "--tpot-slo-ms", str(args.tpot_slo_ms),
    ]  # fmt: skip
    return add_replay_arguments(argparse.ArgumentParser()).parse_args(argv)


async def idle_ttft_ms(address: str, model: str, n: int) -> dict[str, Any]:
    """Median TTFT (client side) of `n` sequential 512-token prompts, and how they ran."""
    import grpc

    from flexmesh.services.client import stream_generate
    from flexmesh.v1 import flexmesh_pb2 as pb
    from flexmesh.v1 import flexmesh_pb2_grpc as pb_grpc

    ttfts, transports = [], set()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GenerationStub(channel)
        for i in range(n + 1):  # the first warms up
            ids = [(11 * j + i) % 5000 + 10 for j in range(IDLE_PROMPT_TOKENS)]
            req = pb.GenerateRequest(prompt_token_ids=ids, max_tokens=8, model=model)
            res = await stream_generate(stub, req, 120)
            if i > 0 and res.final is not None:
                ttfts.append(res.ttft_s * 1000.0)
                transports.add(res.final.route.kv_transport)
    return {"ttft_ms": statistics.median(ttfts), "kv_transport": ",".join(sorted(transports))}


def run_pd_bench(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    idle: dict[str, Any] = {}
    for name, _, paths, mesh in each_mesh(args.configs, args.models_dir):
        idle[name] = asyncio.run(idle_ttft_ms(mesh.address, args.model, args.idle_requests))
        progress(f"[{name}] idle 512-token TTFT {idle[name]['ttft_ms']:.1f} ms")
        rargs = _replay_args(args, mesh.address, paths[args.model], Path(args.out) / name)
        results[name] = summary = asyncio.run(run_replay(rargs))
        report_line(name, summary)
    base = next(iter(results))
    report: dict[str, Any] = {
        "configs": results,
        "idle": idle,
        "extra_rows": {
            "idle 512-token TTFT ms": {k: v["ttft_ms"] for k, v in idle.items()},
            "idle TTFT x first config": {
                k: v["ttft_ms"] / idle[base]["ttft_ms"] for k, v in idle.items()
            },
        },
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "bench.json").write_text(json.dumps(report, indent=2))
    return report
