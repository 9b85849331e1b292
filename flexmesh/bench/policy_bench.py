"""`flexmesh bench policy`: the fixed demo routing policy against the same mesh with the
controller tuning the routing thresholds, on a trace whose intent mix shifts.

Both configurations hold the probe and both demo models (one one-core worker each). The
workload keeps the Azure conversation trace's arrivals and changes what is asked: small-model
intents (chat, code), then large-model intents (knowledge questions, maths) that overload the
large model, then small-model intents again. The ratio row is controller ÷ fixed goodput.

The configurations run interleaved for `--rounds` rounds, each on a fresh mesh, into
`--out/<config>/round-<r>/`; figures are medians over the rounds with their spread (min–max),
the ratio row worked out within each round first (`flexmesh.bench.rounds`).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flexmesh.bench.pd_bench import add_phased_arguments, phase_goodput_rows, phased_replay_args
from flexmesh.bench.rounds import Rows, ratios_to_first, rounds_report
from flexmesh.bench.serving import run_rounds, write_report
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


def policy_rows(results: Mapping[str, Any]) -> Rows:
    """The extra rows of one round (`{config: summary}`)."""
    goodput = ratios_to_first(results, "goodput_req_s")
    return {"goodput x first config": goodput, **phase_goodput_rows(results)}


def run_policy_bench(args: argparse.Namespace) -> dict[str, Any]:
    mixes = args.phase_intent_mix or list(DEFAULT_MIXES)
    extra = [x for m in mixes for x in ("--phase-intent-mix", m)]

    def run_one(name: str, cfg: Any, paths: dict[str, str], mesh: Any, out: Path) -> Any:
        tokenizer = paths[cfg.routing.large_model]
        rargs = phased_replay_args(args, mesh.address, tokenizer, out, DEFAULT_PHASES, extra)
        return asyncio.run(run_replay(rargs))

    runs = run_rounds(args.configs, args.models_dir, args.rounds, Path(args.out), run_one)
    report = rounds_report(runs, policy_rows)
    write_report(Path(args.out), report)
    return report
