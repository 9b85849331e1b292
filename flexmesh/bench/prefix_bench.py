"""`flexmesh bench prefix`: issue 26's goals for the prefix cache and cache-aware placement,
side by side from one run.

Four configurations, in-code variants of `deploy/configs/pd-colocated.yaml` (demo-large,
one-core `mixed` workers), run interleaved for `--rounds` rounds, each on a fresh mesh
(`serving.run_rounds`):

- `cache-off`, `cache-on`: one worker, `engine.prefix_cache` off / on. Each replays three
  workloads in turn: the shared-prefix workload (8 groups, 384-token prefixes, 64-token
  questions, Poisson at `--rate-rps`), a window of the Mooncake conversation trace (prompts
  synthesised from its prefix hashes, lengths scaled so that one hash marks one engine block;
  completions kept to compare them), and a workload with no repeated prefix (a burst of
  256-token prompts of their own).
- `pair-least-loaded`, `pair-cache-aware`: two workers, the cache on, `pd.placement`
  `least_loaded` / `cache_aware`; the shared-prefix workload at `--pair-rate-rps`, each worker
  with `--pair-kv-blocks` blocks of KV (`PAIR_KV_BLOCKS`).

The goals (`GOALS`) are worked out within each round (like against like), then reduced to the
median over the rounds with its spread (min–max); a goal is met when its median is. The
server's hit rate is its hit tokens over the replay's prompt tokens (the definition of the
loadgen's ideal and LRU references, `loadgen.prefix`); the LRU reference has the worker's own
KV capacity. Each run's reports land in `--out/<config>/round-<r>/<workload>/`; `bench.json`
keeps each round's raw summaries under `samples`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from flexmesh.bench.prefix_goals import computed_imbalance, goal_report
from flexmesh.bench.rounds import Rows, pick, rounds_report
from flexmesh.bench.serving import (
    add_rounds_argument,
    data_dir,
    load_named_config,
    progress,
    run_rounds,
    write_report,
)
from flexmesh.loadgen.run import add_replay_arguments, run_replay

BASE_CONFIG = "pd-colocated"
CONFIGS = ("cache-off", "cache-on", "pair-least-loaded", "pair-cache-aware")
ONE_WORKER = CONFIGS[:2]
WORKLOADS = {
    "cache-off": ("shared_prefix", "mooncake", "no_reuse"),
    "cache-on": ("shared_prefix", "mooncake", "no_reuse"),
    "pair-least-loaded": ("shared_prefix",),
    "pair-cache-aware": ("shared_prefix",),
}
SEEDS = {"shared_prefix": 0, "mooncake": 1, "no_reuse": 2}
"""A seed per workload: block texts come from (seed, block id), and the workloads' block ids
overlap, so with one seed a later workload would hit blocks an earlier one cached."""
PAIR_KV_BLOCKS = 160
"""KV blocks (16 tokens) of each worker of the pair: ~6 of the 8 groups' 24-block prefixes
beside its running requests. A worker that sees every group (least-loaded placement) cannot
keep them all; one that sees half of them (cache-aware) can: the regime of a mesh at scale,
where a worker's cache holds a fraction of the prefixes in use."""
MOONCAKE = "mooncake_fast25_conversation_trace.jsonl"
MOONCAKE_BLOCK_TOKENS = 512
"""Tokens of one Mooncake `hash_ids` block before scaling."""


def add_prefix_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"a subset of {','.join(CONFIGS)}")
    p.add_argument("--model", default="demo-large", help="the model every config serves")
    p.add_argument("--models-dir", default=None)
    p.add_argument("--data", default=None, help="shared data folder (default: ../shared/data)")
    p.add_argument("--requests-per-group", type=int, default=4, help="shared-prefix: x 8 groups")
    p.add_argument(
        "--rate-rps",
        type=float,
        default=1.5,
        help="shared-prefix, one worker: within its capacity with the cache, past it without",
    )
    p.add_argument(
        "--pair-rate-rps", type=float, default=3.0, help="shared-prefix, two workers (2x)"
    )
    p.add_argument(
        "--pair-kv-blocks",
        type=int,
        default=PAIR_KV_BLOCKS,
        help="KV blocks of each worker of the pair (0: from engine.kv_cache_bytes)",
    )
    p.add_argument("--output-tokens", type=int, default=64, help="per request (Mooncake: most)")
    p.add_argument(
        "--mooncake-window", default="2020:10", metavar="START:DURATION", help="trace seconds"
    )
    p.add_argument("--no-reuse-requests", type=int, default=24, help="256-token prompts, burst")
    p.add_argument("--ttft-slo-ms", type=float, default=1000.0, help="TTFT SLO of goodput")
    p.add_argument("--tpot-slo-ms", type=float, default=250.0, help="TPOT SLO of goodput")
    add_rounds_argument(p)
    p.add_argument("--out", default="bench-out/prefix", help="folder for reports and JSON")
    p.add_argument("--json", action="store_true")


def variant(name: str, base: Any, pair_kv_blocks: int = PAIR_KV_BLOCKS) -> Any:
    """Configuration `name` (one of `CONFIGS`) as a variant of the base `MeshConfig`; the
    pair's workers have `pair_kv_blocks` blocks of KV each."""
    if name not in CONFIGS:
        raise ValueError(f"configs: {name!r} is not one of {CONFIGS}")
    model = base.models[0]
    workers = 1 if name in ONE_WORKER else 2
    models = (replace(model, num_workers=workers, num_cpus=1, roles=("mixed",) * workers),)
    engine = replace(base.engine, prefix_cache=name != "cache-off")
    if workers == 2:
        engine = replace(engine, num_kv_blocks=pair_kv_blocks)
    placement = "least_loaded" if name == "pair-least-loaded" else "cache_aware"
    return replace(base, models=models, engine=engine, pd=replace(base.pd, placement=placement))


def mooncake_max_input_tokens(trace: Path, start_s: float, duration_s: float, block: int) -> int:
    """The longest prompt to scale the window to so that one hash block becomes `block` tokens
    (the engine's block: a hash then marks exactly the blocks the engine caches)."""
    from flexmesh.loadgen.shaping import ShapeConfig, shape
    from flexmesh.loadgen.traces import read_mooncake

    window = shape(read_mooncake(trace), ShapeConfig(start_s=start_s, duration_s=duration_s))
    if not window.requests:
        raise ValueError(f"mooncake_window: no request in {start_s}+{duration_s} s of {trace}")
    longest = max(r.input_tokens for r in window.requests)
    return max(block, round(longest * block / MOONCAKE_BLOCK_TOKENS))


def replay_argv(
    args: argparse.Namespace,
    workload: str,
    moon_max_input: int,
    block_tokens: int = 16,
    pair: bool = False,
) -> list[str]:
    """The `loadgen replay` options that make `workload` (target, output and SLOs aside); prefix
    blocks of `block_tokens` (the engine's); the shared-prefix workload of two workers (`pair`)
    arrives at `--pair-rate-rps`."""
    out = str(args.output_tokens)
    if workload == "mooncake":
        start, duration = args.mooncake_window.split(":")
        return [
            "--trace", str(data_dir(args) / "traces" / MOONCAKE), "--format", "mooncake",
            "--start", start, "--duration", duration, "--length-mode", "scale",
            "--max-input-tokens", str(moon_max_input), "--max-output-tokens", out,
            "--keep-token-ids",
        ]  # fmt: skip
    common = ["--format", "shared-prefix", "--output-tokens", out,
              "--prefix-block-tokens", str(block_tokens)]  # fmt: skip
    if workload == "no_reuse":  # every block a request's own: nothing to reuse
        return [*common, "--groups", "1", "--requests-per-group", str(args.no_reuse_requests),
                "--prefix-tokens", "0", "--suffix-tokens", "256", "--arrival", "burst"]  # fmt: skip
    rate = args.pair_rate_rps if pair else args.rate_rps
    return [*common, "--groups", "8", "--requests-per-group", str(args.requests_per_group),
            "--prefix-tokens", "384", "--suffix-tokens", "64", "--rate-rps", str(rate)]  # fmt: skip


def output_digests(requests_jsonl: Path) -> list[str | None]:
    """Per request (by index) a digest of its completion's token ids; None where it failed."""
    rows = [json.loads(line) for line in requests_jsonl.read_text().splitlines() if line]
    digests: list[str | None] = [None] * len(rows)
    for r in rows:
        if r["status"] == "OK":
            ids = ",".join(map(str, r["token_ids"])).encode()
            digests[r["index"]] = hashlib.sha1(ids).hexdigest()[:12]
    return digests


def kv_capacity_tokens(address: str, block_tokens: int) -> int | None:
    """One worker's KV capacity in tokens, from the mesh's status (None when unreadable)."""
    from flexmesh.loadgen.status import fresh_status_sample

    sample = asyncio.run(fresh_status_sample(address))
    workers = (sample or {}).get("workers") or []
    return workers[0]["kv_blocks_total"] * block_tokens if workers else None


def prefix_rows(run: Mapping[str, Any]) -> Rows:
    """One round's figures beside the goals: per workload, each configuration's latency,
    throughput, goodput and server hit rate; the Mooncake window's references."""
    rows: Rows = {}
    figures = (
        ("TTFT p50 ms", ("ttft_ms", "p50")),
        ("TPOT p50 ms", ("tpot_ms", "p50")),
        ("output tok/s", ("output_tok_s",)),
        ("goodput req/s", ("goodput_req_s",)),
        ("server hit rate", ("prefix_server", "hit_rate_of_prompt_tokens")),
        ("prompt tokens computed", ("prefix_server", "prompt_tokens_computed_total")),
    )
    for workload in ("shared_prefix", "mooncake", "no_reuse"):
        for label, path in figures:
            row = {k: pick(v, workload, *path) for k, v in run.items()}
            if any(x is not None for x in row.values()):
                rows[f"{workload}: {label}"] = row
    row = {k: computed_imbalance(k)(run) for k in run}
    if any(x is not None for x in row.values()):
        rows["shared_prefix: prompt tokens computed, busier / other worker"] = row
    for ref in ("ideal_hit_rate", "lru_hit_rate"):
        row = {k: pick(v, "mooncake", "prefix_reference", ref) for k, v in run.items()}
        if any(x is not None for x in row.values()):
            rows[f"mooncake: {ref.replace('_', ' ')} (reference)"] = row
    return rows


def run_prefix_bench(args: argparse.Namespace) -> dict[str, Any]:
    base = load_named_config(BASE_CONFIG)
    block = base.engine.block_size_tokens
    start, duration = (float(x) for x in args.mooncake_window.split(":"))
    trace = data_dir(args) / "traces" / MOONCAKE
    moon_max_input = mooncake_max_input_tokens(trace, start, duration, block)

    def run_one(name: str, cfg: Any, paths: dict[str, str], mesh: Any, out: Path) -> Any:
        capacity = kv_capacity_tokens(mesh.address, block)
        result: dict[str, Any] = {}
        for workload in WORKLOADS[name]:
            argv = [
                *replay_argv(args, workload, moon_max_input, block, pair=name not in ONE_WORKER),
                "--model", args.model, "--tokenizer", paths[args.model],
                "--target", mesh.address, "--out", str(out / workload),
                "--max-in-flight", "256", "--deadline-s", "600", "--seed", str(SEEDS[workload]),
                "--no-progress",
                "--status-interval-s", "1", "--ttft-slo-ms", str(args.ttft_slo_ms),
                "--tpot-slo-ms", str(args.tpot_slo_ms),
                *(["--kv-capacity-tokens", str(capacity)] if capacity else []),
            ]  # fmt: skip
            rargs = add_replay_arguments(argparse.ArgumentParser()).parse_args(argv)
            summary = asyncio.run(run_replay(rargs))
            if workload == "mooncake":
                summary["output_digests"] = output_digests(out / workload / "requests.jsonl")
            result[workload] = summary
            progress(
                f"[{name}] {workload}: {summary['completed']}/{summary['requests_sent']} ok, "
                f"{summary['output_tok_s']} tok/s, TTFT p50 {summary['ttft_ms']['p50']} ms"
            )
        return result

    def load(name: str) -> Any:
        return variant(name, base, args.pair_kv_blocks)

    runs = run_rounds(args.configs, args.models_dir, args.rounds, Path(args.out), run_one, load)
    report = rounds_report(runs, prefix_rows, ratio_figures=())
    report["goals"] = goal_report(runs)
    report["mooncake_max_input_tokens"] = moon_max_input
    write_report(Path(args.out), report)
    return report
