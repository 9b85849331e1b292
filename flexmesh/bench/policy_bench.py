"""`flexmesh bench policy`: the fixed demo routing policy against the same mesh with the
controller tuning the routing thresholds, on a trace whose intent mix shifts.

Both configurations hold the probe and both demo models (one one-core worker each). The
workload keeps the Azure conversation trace's arrivals and changes what is asked: small-model
intents (chat, code), then large-model intents (knowledge questions, maths) that overload the
large model, then small-model intents again. The ratio row is controller ÷ fixed goodput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from flexmesh.bench.pd_bench import add_phased_arguments, phase_goodput_rows, phased_replay_args
from flexmesh.bench.serving import each_mesh, report_line
from flexmesh.loadgen.run import run_replay

POLICY_PRESET = ("demo", "routing-dynamic")
DEFAULT_PHASES = (
    "azure_llm_2023_conv.csv:0:40:0.15",
    "azure_llm_2023_conv.csv:40:40:0.15",
    "azure_llm_2023_conv.csv:80:40:0.15",
)
DEFAULT_MIXES = (
    "chat=0.6,code=0.4",
    "knowledge_qa=0.6,math=0.2,chat=0.2",
    "chat=0.6,code=0.4",
)
"""One intent mix per phase: small-model intents, large-model intents, small again."""


def add_policy_bench_arguments(p: argparse.ArgumentParser) -> None:
    add_phased_arguments(p, POLICY_PRESET, "bench-out/policy")
    p.add_argument(
        "--phase-intent-mix",
        action="append",
        default=[],
        metavar="MIX",
        help="the intent mix of each --phase, in order",
    )


def run_policy_bench(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    mixes = args.phase_intent_mix or list(DEFAULT_MIXES)
    extra = [x for m in mixes for x in ("--phase-intent-mix", m)]
    for name, cfg, paths, mesh in each_mesh(args.configs, args.models_dir):
        tokenizer = paths[cfg.routing.large_model]
        out = Path(args.out) / name
        rargs = phased_replay_args(args, mesh.address, tokenizer, out, DEFAULT_PHASES, extra)
        results[name] = summary = asyncio.run(run_replay(rargs))
        report_line(name, summary)
    base = next(iter(results.values()))
    rows = {
        "goodput x first config": {
            k: v["goodput_req_s"] / (base["goodput_req_s"] or 1e-9) for k, v in results.items()
        },
        **phase_goodput_rows(results),
    }
    report: dict[str, Any] = {"configs": results, "extra_rows": rows}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "bench.json").write_text(json.dumps(report, indent=2))
    return report
