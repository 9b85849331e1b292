"""`flexmesh bench engine`: the in-process columns and the same streams through gRPC + Ray."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from flexmesh.bench.engine_bench import (
    BENCH_PROMPTS,
    BenchSettings,
    profile_decode_step,
    run_engine_bench,
)
from flexmesh.channel import open_channel

BENCH_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "configs" / "bench-large.yaml"


async def _grpc_tok_s(address: str, s: BenchSettings, concurrency: int) -> float:

    from flexmesh.services.client import stream_generate
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


def bench_engine(args: argparse.Namespace) -> int:
    from flexmesh.services.mesh import resolve_model_paths

    if args.model:
        model_path = args.model
    else:
        from flexmesh.meshcore.config import MeshConfig

        cfg = MeshConfig.from_dict(
            {"models": [{"name": "demo-large"}], "models_dir": args.models_dir or ""}
        )
        model_path = resolve_model_paths(cfg)["demo-large"]
    if args.profile:
        return _print_profile(profile_decode_step(model_path), args.json)
    s = BenchSettings(
        model_path, new_tokens=args.new_tokens, concurrency=args.concurrency, rounds=args.rounds
    )
    c = s.concurrency
    if args.no_grpc:
        report: dict[str, Any] = run_engine_bench(s)
    else:
        with _bench_mesh(s, args.models_dir) as address:
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
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_table(report, c)
    return 0


@contextlib.contextmanager
def _bench_mesh(s: BenchSettings, models_dir: str | None) -> Iterator[str]:
    """A one-worker mesh on the benchmarked model, both cores to the worker; yields its address."""
    from flexmesh.services.config_file import load_mesh_config
    from flexmesh.services.mesh import start_mesh

    cfg = load_mesh_config(BENCH_CONFIG)
    model = replace(cfg.models[0], path=s.model_path)
    cfg = replace(cfg, models=(model,), models_dir=models_dir or cfg.models_dir)
    mesh = start_mesh(cfg, log_to_driver=False)
    try:
        yield mesh.address
    finally:
        mesh.shutdown()


def _print_profile(r: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(r, indent=2))
        return 0
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
    return 0


def _print_table(r: dict[str, Any], c: int) -> None:
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


REPETITIVE_PROMPTS = (
    # code completion over code that repeats its own identifiers
    "class Vector:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n"
    "    def add(self, other):\n        return Vector(self.x + other.x, self.y + other.y)\n\n"
    "    def sub(self, other):\n        return Vector(self.x - other.x, self.y - other.y)\n\n"
    "    def mul(self, other):\n",
    # extraction: copy fields out of a record
    "Record: name=Ada Lovelace; born=1815; field=mathematics; known_for=analytical engine notes.\n"
    "Record: name=Alan Turing; born=1912; field=computer science; known_for=Turing machine.\n"
    "Extract every name and field from the records above as JSON lines:\n",
    # editing: rewrite a passage with a small change
    "Rewrite the following text, replacing 'blue' with 'green' and keeping everything else:\n"
    "The blue house stands by the blue lake. Every morning the blue boat leaves the blue pier "
    "and returns when the sky over the blue hills turns dark.\n",
)


def bench_strategies(args: argparse.Namespace) -> int:
    """Batch-1 tokens/s of plain decoding, PLD and draft speculation on repetitive prompts."""
    from flexmesh.actors.runner.engine import Engine
    from flexmesh.meshcore.config import EngineConfig, MeshConfig
    from flexmesh.meshcore.sampling import SamplingParams
    from flexmesh.services.mesh import resolve_model_paths

    cfg = MeshConfig.from_dict(
        {
            "models": [{"name": "demo-large"}, {"name": "demo-small"}],
            "models_dir": args.models_dir or "",
        }
    )
    paths = resolve_model_paths(cfg)
    engine = Engine(paths["demo-large"], EngineConfig(), draft_model_path=paths["demo-small"])
    prompts = [engine.tokenizer.encode(p, add_special_tokens=False) for p in REPETITIVE_PROMPTS]
    report: dict[str, Any] = {
        "model": "demo-large",
        "draft": "demo-small",
        "new_tokens": args.new_tokens,
    }
    outputs: dict[str, list[list[int]]] = {}
    for strategy in ("none", "pld", "spec"):
        sp = SamplingParams(max_tokens=args.new_tokens, ignore_eos=True, strategy=strategy)
        engine.generate(
            [prompts[0][:8]], SamplingParams(max_tokens=4, strategy=strategy)
        )  # warm-up
        proposed = accepted = tokens = 0
        outs = []
        t0 = time.perf_counter()
        for ids in prompts:
            rid = engine.add_request(prompt_token_ids=ids, sampling=sp)
            out: list[int] = []
            while engine.has_unfinished():
                for o in engine.step():
                    if o.request_id == rid:
                        out += o.token_ids
                        proposed += o.draft_tokens_proposed
                        accepted += o.draft_tokens_accepted
            outs.append(out)
            tokens += len(out)
        elapsed = time.perf_counter() - t0
        outputs[strategy] = outs
        report[f"{strategy}_tok_s"] = round(tokens / elapsed, 2)
        report[f"{strategy}_acceptance"] = round(accepted / proposed, 3) if proposed else None
        report[f"{strategy}_identical_to_none"] = outs == outputs["none"]
    for s in ("pld", "spec"):
        report[f"ratio_{s}"] = round(report[f"{s}_tok_s"] / report["none_tok_s"], 2)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"demo-large, batch 1, {args.new_tokens} tokens, repetitive prompts")
        for col in ("strategy", "tokens/s", "× plain", "acceptance", "identical output"):
            table.add_column(col)
        for s in ("none", "pld", "spec"):
            ratio = report[f"{s}_tok_s"] / report["none_tok_s"]
            acc = report[f"{s}_acceptance"]
            acc_text = "-" if acc is None else f"{acc:.2f}"
            tok_s = f"{report[f'{s}_tok_s']:.1f}"
            same = str(report[f"{s}_identical_to_none"])
            table.add_row(s, tok_s, f"{ratio:.2f}", acc_text, same)
        Console().print(table)
    return 0 if all(report[f"{s}_identical_to_none"] for s in ("pld", "spec")) else 1
