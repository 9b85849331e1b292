"""`flexmesh bench pd`: one workload that changes character, replayed against prefill/decode
configurations side by side.

Each configuration (default: `pd-colocated`, `pd-disaggregated`, `pd-dynamic`: demo-large on two
one-core workers, the last with the controller) first answers `--idle-requests` sequential
512-token prompts on the idle mesh (their median TTFT is the idle-TTFT row), then replays the
phases: by default a window of the Azure conversation trace, a prefill-heavy burst of the
Azure code trace, then conversation again. Ratio rows compare the last configuration with the
first two (the goals of docs/controller.md), goodput is also given per phase.

The configurations run interleaved for `--rounds` rounds, each on a fresh mesh
(`serving.run_rounds`); every figure is the median over the rounds with its spread (min–max),
and every ratio row is worked out within each round before it is reduced the same way
(`flexmesh.bench.rounds`). Each round's reports land in `--out/<config>/round-<r>/`,
`controller.png` showing roles, prefill budgets and TTFT/TPOT over time; `bench.json` keeps
each round's raw summary under `samples`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flexmesh.bench.rounds import Rows, over_ref, rounds_report
from flexmesh.bench.serving import (
    SHARED_DATA,
    add_rounds_argument,
    progress,
    run_rounds,
    write_report,
)
from flexmesh.channel import open_channel
from flexmesh.loadgen.run import add_replay_arguments, run_replay

PD_PRESET = ("pd-colocated", "pd-disaggregated", "pd-dynamic")
IDLE_PROMPT_TOKENS = 512
DEFAULT_PHASES = (
    "azure_llm_2023_conv.csv:0:60:0.1",
    "azure_llm_2023_code.csv:260:40:0.12",
    "azure_llm_2023_conv.csv:60:60:0.06",
)
"""Conversation (~0.25 req/s, ~100 prompt and ~25 output tokens/s), a code burst (~0.45
req/s, ~450 prompt tokens/s: one demo-large worker's whole prefill rate here, ~7 output
tokens/s), then conversation again (~0.25 req/s): traces under `shared/data/traces`,
TRACE:START:DURATION:RATE_SCALE."""


def add_phased_arguments(p: argparse.ArgumentParser, preset: tuple[str, ...], out: str) -> None:
    """Options shared by the benchmarks that replay a phased workload against configs."""
    p.add_argument("--configs", default=",".join(preset), help="first = baseline")
    p.add_argument("--models-dir", default=None)
    p.add_argument("--prompts-dir", default=str(SHARED_DATA / "prompts"))
    p.add_argument(
        "--phase",
        action="append",
        default=[],
        metavar="TRACE:START:DURATION[:RATE_SCALE]",
        help="the workload's phases, in order (default: see the command's help)",
    )
    p.add_argument("--max-input-tokens", type=int, default=1024)
    p.add_argument("--max-output-tokens", type=int, default=128)
    p.add_argument("--ttft-slo-ms", type=float, default=3000.0)
    p.add_argument("--tpot-slo-ms", type=float, default=150.0)
    add_rounds_argument(p)
    p.add_argument("--out", default=out, help="folder for JSON and plots")
    p.add_argument("--json", action="store_true")


def add_pd_bench_arguments(p: argparse.ArgumentParser) -> None:
    add_phased_arguments(p, PD_PRESET, "bench-out/pd")
    p.add_argument("--model", default="demo-large", help="the model the configs serve")
    p.add_argument("--idle-requests", type=int, default=5, help="512-token prompts, idle mesh")


def phased_replay_args(
    args: argparse.Namespace,
    target: str,
    tokenizer: str,
    out: Path,
    default_phases: tuple[str, ...],
    extra: list[str],
) -> Any:
    """`loadgen replay` options of one configuration's run of the phased workload."""
    traces = Path(args.prompts_dir).parent / "traces"
    phases = args.phase or [str(traces / ph) for ph in default_phases]
    argv = [
        *(x for ph in phases for x in ("--phase", ph)), *extra,
        "--max-input-tokens", str(args.max_input_tokens),
        "--max-output-tokens", str(args.max_output_tokens), "--length-mode", "clip",
        "--prompts-dir", args.prompts_dir, "--tokenizer", tokenizer, "--target", target,
        "--out", str(out), "--max-in-flight", "256", "--deadline-s", "600", "--seed", "0",
        "--no-progress", "--status-interval-s", "1", "--ttft-slo-ms", str(args.ttft_slo_ms),
        "--tpot-slo-ms", str(args.tpot_slo_ms),
    ]  # fmt: skip
    return add_replay_arguments(argparse.ArgumentParser()).parse_args(argv)


def phase_goodput_rows(results: Mapping[str, Any]) -> Rows:
    """One row per phase: each configuration's goodput (requests meeting both SLOs, per s)."""
    base = next(iter(results.values()))
    return {
        f"goodput req/s, {phase['phase']}": {
            k: v["by_phase"][i]["goodput_req_s"] for k, v in results.items()
        }
        for i, phase in enumerate(base.get("by_phase", []))
    }


async def idle_ttft_ms(address: str, model: str, n: int) -> dict[str, Any]:
    """Median TTFT (client side) of `n` sequential 512-token prompts, and how they ran."""

    from flexmesh.services.grpc_client import stream_generate
    from flexmesh.v1 import flexmesh_pb2 as pb
    from flexmesh.v1 import flexmesh_pb2_grpc as pb_grpc

    ttfts, transports = [], set()
    async with open_channel(address) as channel:
        stub = pb_grpc.GenerationStub(channel)
        for i in range(n + 1):  # the first warms up
            ids = [(11 * j + i) % 5000 + 10 for j in range(IDLE_PROMPT_TOKENS)]
            req = pb.GenerateRequest(prompt_token_ids=ids, max_tokens=8, model=model)
            res = await stream_generate(stub, req, 120)
            if i > 0 and res.final is not None:
                ttfts.append(res.ttft_s * 1000.0)
                transports.add(res.final.route.kv_transport)
    return {"ttft_ms": statistics.median(ttfts), "kv_transport": ",".join(sorted(transports))}


def _ratios(
    results: Mapping[str, Any], ref: dict[str, Any], get: Callable[[dict[str, Any]], float | None]
) -> dict[str, float]:
    """Each configuration's figure over `ref`'s (NaN when either is missing)."""
    return over_ref(results, ref, get)


def pd_rows(results: Mapping[str, Any]) -> Rows:
    """The extra rows of one round (`{config: summary}`, each with its `idle` figures)."""
    base = next(iter(results.values()))["idle"]["ttft_ms"]
    rows: Rows = {
        "idle 512-token TTFT ms": {k: v["idle"]["ttft_ms"] for k, v in results.items()},
        "idle TTFT x first config": {k: v["idle"]["ttft_ms"] / base for k, v in results.items()},
    }
    names = list(results)
    for ref in names[:2]:  # each configuration against the static ones
        r = results[ref]
        rows[f"TTFT p99 x {ref}"] = _ratios(results, r, lambda s: s["ttft_ms"]["p99"])
        rows[f"TPOT mean x {ref}"] = _ratios(results, r, lambda s: s["tpot_ms"]["mean"])
        rows[f"output tok/s x {ref}"] = _ratios(results, r, lambda s: s["output_tok_s"])
    rows.update(phase_goodput_rows(results))
    return rows


def run_pd_bench(args: argparse.Namespace) -> dict[str, Any]:
    def run_one(name: str, cfg: Any, paths: dict[str, str], mesh: Any, out: Path) -> Any:
        idle = asyncio.run(idle_ttft_ms(mesh.address, args.model, args.idle_requests))
        progress(f"[{name}] idle 512-token TTFT {idle['ttft_ms']:.1f} ms")
        extra = ["--model", args.model, "--intent-mix", "chat=0.5,code=0.5"]
        rargs = phased_replay_args(
            args, mesh.address, paths[args.model], out, DEFAULT_PHASES, extra
        )
        return {**asyncio.run(run_replay(rargs)), "idle": idle}

    runs = run_rounds(args.configs, args.models_dir, args.rounds, Path(args.out), run_one)
    report = rounds_report(runs, pd_rows)
    report["idle"] = {k: v["idle"] for k, v in report["configs"].items()}
    write_report(Path(args.out), report)
    return report
