"""`flexmesh bench ...`: each benchmark's options and how its report is printed; the benchmarks
themselves live in `flexmesh.bench`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from flexmesh.bench.chaos_bench import add_chaos_arguments
from flexmesh.bench.http_bench import add_http_bench_arguments
from flexmesh.bench.pd_bench import add_pd_bench_arguments
from flexmesh.bench.policy_bench import add_policy_bench_arguments
from flexmesh.bench.prefix_bench import add_prefix_bench_arguments
from flexmesh.bench.serving import (
    ROUTING_PRESET,
    add_rounds_argument,
    add_serving_bench_arguments,
)
from flexmesh.bench.soak_bench import add_soak_arguments
from flexmesh.cli.output import show


def add_bench_commands(sub: Any) -> None:
    """The `bench` command and its sub-commands on `sub` (the top-level sub-parsers)."""
    p = sub.add_parser("bench", help="benchmarks that print measured ratios side by side")
    bsub = p.add_subparsers(dest="bench_command", required=True)
    b = bsub.add_parser("engine", help="HF generate vs the engine (in-process and via gRPC)")
    b.add_argument("--model", default=None, help="model folder (default: demo-large)")
    b.add_argument("--models-dir", default=None)
    b.add_argument("--new-tokens", type=int, default=64)
    b.add_argument("--concurrency", type=int, default=16)
    b.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians reported")
    b.add_argument("--no-grpc", action="store_true", help="skip the gRPC columns")
    b.add_argument(
        "--profile",
        action="store_true",
        help="instead: where one batch-1 decode step goes (wall clock split, per-op table)",
    )
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench_engine)
    b = bsub.add_parser("routing", help="static-large vs static-small vs adaptive, same workload")
    add_serving_bench_arguments(b, ROUTING_PRESET)
    b.set_defaults(func=cmd_bench_serving)
    b = bsub.add_parser("serve", help="any mesh configs in turn, same workload (--configs)")
    add_serving_bench_arguments(b, ("static-large", "demo"))
    b.set_defaults(func=cmd_bench_serving)
    b = bsub.add_parser("pd", help="co-located vs disaggregated prefill/decode, same trace")
    add_pd_bench_arguments(b)
    b.set_defaults(func=cmd_bench_pd)
    b = bsub.add_parser("policy", help="fixed vs controller-tuned routing, shifting intent mix")
    add_policy_bench_arguments(b)
    b.set_defaults(func=cmd_bench_policy)
    b = bsub.add_parser("prefix", help="prefix cache and cache-aware placement: issue 26's goals")
    add_prefix_bench_arguments(b)
    b.set_defaults(func=cmd_bench_prefix)
    b = bsub.add_parser("kv", help="KV hand-off vs raw send/recv of the same bytes, per transport")
    b.add_argument("--model", default="demo-large")
    b.add_argument("--models-dir", default=None)
    b.add_argument("--lengths", default="128,512,1024,2048", help="prompt lengths (tokens)")
    b.add_argument("--repeats", type=int, default=5, help="measurements per length (medians)")
    b.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="2: prefill and decode worker on two Ray nodes of a local cluster (cross-node)",
    )
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench_kv)
    b = bsub.add_parser("chaos", help="a trace replayed while actors of each kind are killed")
    add_chaos_arguments(b)
    b.set_defaults(func=cmd_bench_chaos)
    b = bsub.add_parser("http", help="the same streams through gRPC and the OpenAI HTTP API")
    add_http_bench_arguments(b)
    b.set_defaults(func=cmd_bench_http)
    b = bsub.add_parser("soak", help="minutes at a multiple of the measured capacity")
    add_soak_arguments(b)
    b.set_defaults(func=cmd_bench_soak)
    b = bsub.add_parser("strategies", help="plain vs PLD vs draft speculation, identical output")
    b.add_argument("--models-dir", default=None)
    b.add_argument("--new-tokens", type=int, default=128)
    add_rounds_argument(b)
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench_strategies)
    b = bsub.add_parser("quant", help="int8 weight-only vs fp32 (and bf16): quality and speed")
    b.add_argument("--model", default=None, help="model folder (default: demo-large)")
    b.add_argument("--models-dir", default=None)
    b.add_argument("--data-dir", default=None, help="default: ../shared/data")
    b.add_argument("--per-source", type=int, default=8, help="quality prompts per source file")
    b.add_argument(
        "--tasks", default="", help="quality prompts of these intents only, e.g. chat,code"
    )
    b.add_argument("--new-tokens", type=int, default=64)
    b.add_argument("--concurrency", type=int, default=16)
    b.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians reported")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench_quant)


def cmd_bench_engine(args: argparse.Namespace) -> int:
    from flexmesh.bench.engine_bench import BenchSettings, profile_decode_step
    from flexmesh.bench.engine_grpc import demo_large_path, run_engine_grpc_bench

    model_path = demo_large_path(args.model, args.models_dir)
    if args.profile:
        show(args, profile_decode_step(model_path), print_profile)
        return 0
    s = BenchSettings(
        model_path, new_tokens=args.new_tokens, concurrency=args.concurrency, rounds=args.rounds
    )
    report = run_engine_grpc_bench(s, args.models_dir, grpc=not args.no_grpc)
    show(args, report, lambda r: print_engine_table(r, s.concurrency))
    return 0


def _side_by_side(args: argparse.Namespace, run: Callable[[argparse.Namespace], Any]) -> int:
    """Run a configurations-side-by-side benchmark; print its table, or its JSON."""
    from flexmesh.bench.serving import print_serving_table

    show(args, run(args), print_serving_table)
    return 0


def cmd_bench_serving(args: argparse.Namespace) -> int:
    from flexmesh.bench.serving import run_serving_bench

    return _side_by_side(args, run_serving_bench)


def cmd_bench_pd(args: argparse.Namespace) -> int:
    from flexmesh.bench.pd_bench import run_pd_bench

    return _side_by_side(args, run_pd_bench)


def cmd_bench_policy(args: argparse.Namespace) -> int:
    from flexmesh.bench.policy_bench import run_policy_bench

    return _side_by_side(args, run_policy_bench)


def cmd_bench_prefix(args: argparse.Namespace) -> int:
    from flexmesh.bench.prefix_bench import run_prefix_bench
    from flexmesh.bench.prefix_goals import print_prefix_report

    show(args, run_prefix_bench(args), print_prefix_report)
    return 0


def cmd_bench_kv(args: argparse.Namespace) -> int:
    from flexmesh.bench.kv_bench import print_kv_table, run_kv_bench

    show(args, run_kv_bench(args), print_kv_table)
    return 0


def cmd_bench_chaos(args: argparse.Namespace) -> int:
    from flexmesh.bench.chaos_bench import print_chaos, run_chaos

    phases = show(args, run_chaos(args), print_chaos)["kinds"].values()
    return 0 if all(r["kv_all_free_after"] and r["normal_request_after"] for r in phases) else 1


def cmd_bench_http(args: argparse.Namespace) -> int:
    from flexmesh.bench.http_bench import print_http, run_http_bench

    return 0 if show(args, run_http_bench(args), print_http)["failed_streams"] == 0 else 1


def cmd_bench_soak(args: argparse.Namespace) -> int:
    from flexmesh.bench.soak_bench import print_soak, run_soak

    report = show(args, run_soak(args), print_soak)
    ok = report["hung_streams"] == 0 and report["crashes"] == 0 and report["kv_all_free"]
    return 0 if ok else 1


def cmd_bench_strategies(args: argparse.Namespace) -> int:
    from flexmesh.bench.strategies_bench import run_strategies_bench

    report = run_strategies_bench(args.models_dir, args.new_tokens, args.rounds)
    show(args, report, lambda r: print_strategies_table(r, args.new_tokens))
    return 0 if all(report[f"{s}_identical_to_none"] for s in ("pld", "spec")) else 1


def cmd_bench_quant(args: argparse.Namespace) -> int:
    from flexmesh.bench.quant_bench import print_quant, run_quant_bench

    show(args, run_quant_bench(args), print_quant)
    return 0


def print_profile(r: dict[str, Any]) -> None:
    """Where one batch-1 decode step goes: the per-op table, then the wall-clock split."""
    print(r["ops"])
    print(
        f"{r['model']}, one request decoding at ~{r['context_tokens']} tokens of context, "
        f"medians of {r['steps']} steps (ms):\n"
        f"  step {r['step_ms']}, of which outside the forward {r['outside_forward_ms']} "
        "(scheduling, the step's tensors, sampling)\n"
        f"  forward {r['forward_ms']} = projections {r['projections_ms']} + other ops "
        f"{r['other_ops_ms']} (norms, rotary, KV writes and gathers, attention, Python)\n"
        f"  the projections alone, chained: {r['gemv_chain_ms']}; "
        f"{r['step_read_bytes'] / 1e6:.0f} MB at the read roofline: {r['roofline_ms']}"
    )


def print_engine_table(r: dict[str, Any], c: int) -> None:
    """HF, the engine and (when measured) gRPC side by side, as multiples of HF batch 1."""
    from rich.console import Console
    from rich.table import Table

    hf = r["hf_b1_tok_s"]
    table = Table(
        title=f"{r['model']}: {r['new_tokens']} new tokens, greedy, fp32, {r['threads']} threads, "
        f"median of {r['rounds']} interleaved rounds"
    )
    table.add_column("configuration")
    table.add_column("tokens/s", justify="right")
    table.add_column("× HF batch 1", justify="right")
    rows = [
        ("read roofline, batch 1", r["read_roofline_b1_tok_s"]),
        ("GEMV chain of the model's shapes, batch 1", r["gemv_chain_tok_s"]),
        ("HF generate, batch 1", hf),
        ("engine, batch 1", r["engine_b1_tok_s"]),
        (f"engine, {c} concurrent", r[f"engine_c{c}_tok_s"]),
    ]
    if "grpc_b1_tok_s" in r:
        rows += [
            ("gRPC + Ray, 1 stream", r["grpc_b1_tok_s"]),
            (f"gRPC + Ray, {c} streams", r[f"grpc_c{c}_tok_s"]),
        ]
    for name, v in rows:
        table.add_row(name, f"{v:.1f}", f"{v / hf:.2f}")
    Console().print(table)
    print(
        f"read roofline at batch 1: {r['read_roofline_b1_tok_s']} tok/s "
        f"({r['step_read_bytes'] / 1e6:.0f} MB of weights a step at {r['read_gb_s']} GB/s); "
        f"engine batch 1 = {r['engine_b1_of_roofline']} of it, GEMV chain = "
        f"{r['gemv_chain_of_roofline']}"
    )
    if "ratio_grpc_b1_vs_engine" in r:
        print(
            f"gRPC / in-process engine: 1 stream {r['ratio_grpc_b1_vs_engine']}, "
            f"{c} streams {r[f'ratio_grpc_c{c}_vs_engine']}"
        )


def print_strategies_table(report: dict[str, Any], new_tokens: int) -> None:
    """Plain, PLD and draft speculation: tokens/s, acceptance, and whether output is identical
    (medians over the rounds with their spread; ratios per round)."""
    from rich.console import Console
    from rich.table import Table

    from flexmesh.bench.rounds import cell

    n, spread = report["rounds"], report["spread"]
    table = Table(
        title=f"demo-large, batch 1, {new_tokens} tokens, repetitive prompts: median (min–max) "
        f"of {n} interleaved round{'s' * (n != 1)}"
    )
    for col in ("strategy", "tokens/s", "× plain", "acceptance", "identical output"):
        table.add_column(col)
    for s in ("none", "pld", "spec"):
        ratio = 1.0 if s == "none" else report[f"ratio_{s}"]
        table.add_row(
            s,
            cell(report[f"{s}_tok_s"], spread.get(f"{s}_tok_s"), 1),
            cell(ratio, spread.get(f"ratio_{s}")),
            cell(report[f"{s}_acceptance"], spread.get(f"{s}_acceptance")),
            str(report[f"{s}_identical_to_none"]),
        )
    Console().print(table)
