"""One replay run: trace -> shaped workload -> prompts -> open-loop replay -> reports.

`add_replay_arguments(parser)` declares a replay's options and `run_replay(args)` runs them:
`flexmesh loadgen replay` (`flexmesh.cli.loadgen`), the demo and the benchmarks all replay
through these two.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

from flexmesh.loadgen.openai_http import is_http, served_model_path
from flexmesh.loadgen.plots import write_plots
from flexmesh.loadgen.prefix import (
    add_shared_prefix_arguments,
    prefix_references,
    server_prefix_figures,
    shared_prefix_config,
)
from flexmesh.loadgen.prompts import (
    DEFAULT_INTENT_MIX,
    Tokenizer,
    parse_intent_mix,
    tokenizer_dir,
)
from flexmesh.loadgen.records import ReplayRequest
from flexmesh.loadgen.replay import ReplayResult, replay
from flexmesh.loadgen.report import phase_summaries, summarize, write_reports
from flexmesh.loadgen.shaping import ShapeConfig, Workload
from flexmesh.loadgen.status import fresh_status_sample
from flexmesh.loadgen.synth import placeholders
from flexmesh.loadgen.workload import (
    FORMATS,
    Phase,
    SyntheticConfig,
    build_requests,
    infer_format,
    load_phases,
    load_workload,
    phase_bounds,
)


def add_replay_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Declare every `loadgen replay` option on `parser` (returned for chaining)."""
    src = parser.add_argument_group("trace")
    src.add_argument("--trace", help="trace file (not needed for poisson/gamma)")
    src.add_argument("--format", choices=FORMATS, help="trace format (default: from file name)")
    src.add_argument(
        "--lengths",
        help="ServeGen *_client_length_dists.jsonl.gz "
        "(default: the file beside --trace, when present)",
    )
    src.add_argument(
        "--phase",
        action="append",
        default=[],
        metavar="TRACE:START:DURATION[:RATE_SCALE]",
        help="a segment of a workload that changes character; repeat in replay order "
        "(replaces --trace, --start, --duration and --rate-scale)",
    )
    src.add_argument(
        "--rate-rps", type=float, default=1.0, help="poisson/gamma/shared-prefix: mean rate"
    )
    src.add_argument("--cv", type=float, default=2.0, help="gamma: inter-arrival CV")
    src.add_argument("--input-tokens", type=int, default=256, help="poisson/gamma: prompt length")
    src.add_argument(
        "--output-tokens", type=int, default=64, help="poisson/gamma/shared-prefix: output length"
    )
    add_shared_prefix_arguments(parser)
    sh = parser.add_argument_group("shaping")
    sh.add_argument("--start", type=float, default=0.0, help="trace-time window start (s)")
    sh.add_argument("--duration", type=float, help="trace-time window length (s)")
    sh.add_argument("--speedup", type=float, default=1.0, help="divide arrival times by this")
    sh.add_argument(
        "--rate-scale", type=float, default=1.0, help="thin (<1) or replicate (>1) arrivals"
    )
    sh.add_argument("--max-requests", type=int, help="keep the first N requests")
    sh.add_argument("--max-input-tokens", type=int, help="longest prompt (tokens)")
    sh.add_argument("--max-output-tokens", type=int, help="longest output (tokens)")
    sh.add_argument(
        "--length-mode",
        choices=("scale", "clip"),
        default="scale",
        help="scale all lengths by one factor so the longest fits, or clip",
    )
    pr = parser.add_argument_group("prompts")
    pr.add_argument("--intent-mix", default=DEFAULT_INTENT_MIX, help="e.g. code=0.3,chat=0.7")
    pr.add_argument(
        "--phase-intent-mix",
        action="append",
        default=[],
        metavar="MIX",
        help="the intent mix of each --phase, in order (an intent mix that shifts)",
    )
    pr.add_argument(
        "--prompts-dir",
        help="folder of *.jsonl(.gz) with task and prompt fields (default: prompts of random "
        "tokens of the tokenizer's vocabulary)",
    )
    pr.add_argument(
        "--tokenizer",
        help="Hugging Face folder of the target model's tokenizer (default: the target's model "
        "folder, when the target names it and it is on this machine)",
    )
    pr.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    rp = parser.add_argument_group("replay")
    rp.add_argument(
        "--target",
        default="127.0.0.1:50051",
        help="a FlexMesh gateway HOST:PORT (gRPC), or http://HOST:PORT of any OpenAI-compatible "
        "server",
    )
    rp.add_argument("--out", required=True, help="output folder for reports and plots")
    rp.add_argument("--max-in-flight", type=int, default=64, help="bound on open requests")
    rp.add_argument("--deadline-s", type=float, default=300.0, help="per-request deadline")
    rp.add_argument("--max-duration-s", type=float, help="stop sending after this many seconds")
    rp.add_argument("--model", default="", help='force a model ("" lets the router choose)')
    rp.add_argument("--strategy", default="", help='force "none", "pld" or "spec"')
    rp.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    rp.add_argument(
        "--status-interval-s",
        type=float,
        help="sample Admin/GetStatus this often (and once more before and after the replay)",
    )
    rp.add_argument(
        "--keep-token-ids",
        action="store_true",
        help="keep each completion's token ids in requests.jsonl (to compare outputs)",
    )
    rp.add_argument("--ttft-slo-ms", type=float, default=2000.0, help="TTFT SLO for goodput")
    rp.add_argument("--tpot-slo-ms", type=float, default=200.0, help="TPOT SLO for goodput")
    rp.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def load_tokenizer(path: str) -> Tokenizer:
    """The target model's tokenizer from a local Hugging Face folder (never downloads)."""
    from transformers import AutoTokenizer  # heavy import, only when a replay needs it

    # Source documents are counted whole before they are cut to a trace's length: lift the
    # model's context as the tokenizer's limit, or transformers warns about every long one.
    tok: Tokenizer = AutoTokenizer.from_pretrained(
        path, local_files_only=True, trust_remote_code=False, model_max_length=1 << 30
    )
    return tok


async def target_model_path(target: str, model: str = "") -> str | None:
    """The local folder of the target's model (`model`, else the one it routes to first), when
    the target tells it and the folder is on this machine: a FlexMesh gateway's worker reports,
    an HTTP server's `/v1/models` roots."""
    if is_http(target):
        return await served_model_path(target, model)
    from flexmesh.channel import open_channel
    from flexmesh.v1 import flexmesh_pb2 as pb
    from flexmesh.v1 import flexmesh_pb2_grpc as pb_grpc

    try:
        async with open_channel(target) as channel:
            st = await pb_grpc.AdminStub(channel).GetStatus(
                pb.GetStatusRequest(cached=True), timeout=10
            )
    except Exception:  # unreachable or refused (an Admin token): the caller asks for --tokenizer
        return None
    wanted = model or (st.policy.large_model if st.HasField("policy") else "")
    return tokenizer_dir(w.model_path for w in sorted(st.workers, key=lambda w: w.model != wanted))


def shape_config(args: argparse.Namespace) -> ShapeConfig:
    return ShapeConfig(
        start_s=args.start,
        duration_s=args.duration,
        speedup=args.speedup,
        rate_scale=args.rate_scale,
        max_requests=args.max_requests,
        max_input_tokens=args.max_input_tokens,
        max_output_tokens=args.max_output_tokens,
        length_mode=args.length_mode,
        seed=args.seed,
    )


def prepare(
    args: argparse.Namespace, tokenizer: Tokenizer | None = None, text: bool = True
) -> tuple[Workload, list[ReplayRequest], dict[str, Any]]:
    """Blocking part of a replay: read the trace, shape it, write prompts (with `text` False,
    placeholders of the same lengths and intents, and no tokenizer is needed)."""
    phases = [Phase.parse(p) for p in args.phase]
    fmt = "phases" if phases else args.format or (infer_format(args.trace) if args.trace else None)
    if fmt is None:
        raise ValueError("format: give --format (or a --trace to infer it from)")
    mix = parse_intent_mix(args.intent_mix)
    if tokenizer is None and text:
        if not args.tokenizer:
            raise ValueError(
                "tokenizer: give --tokenizer (the target model's folder); it could not be read "
                f"from {args.target}"
            )
        tokenizer = load_tokenizer(args.tokenizer)
    synthetic = SyntheticConfig(args.rate_rps, args.cv, args.input_tokens, args.output_tokens)
    config = shape_config(args)
    if phases:
        workload = load_phases(phases, config, lengths=args.lengths)
    else:
        workload = load_workload(
            fmt,
            args.trace,
            config,
            lengths=args.lengths,
            synthetic=synthetic,
            shared_prefix=shared_prefix_config(args),
        )
    if args.phase_intent_mix and len(args.phase_intent_mix) != len(phases):
        raise ValueError(
            f"phase_intent_mix: {len(args.phase_intent_mix)} given, one per --phase "
            f"({len(phases)}) expected"
        )
    bounds = phase_bounds(phases, config.speedup)
    mixes = args.phase_intent_mix or [args.intent_mix] * len(phases)
    phase_mixes = [(end, parse_intent_mix(m)) for (_, _, end), m in zip(bounds, mixes, strict=True)]
    if text:
        assert tokenizer is not None
        requests = build_requests(
            workload, mix, args.prompts_dir, tokenizer, args.seed, not args.no_progress, phase_mixes
        )
    else:
        requests = placeholders(workload, mix, args.seed, phase_mixes)
    meta = {
        "trace": str(args.trace) if args.trace else fmt,
        "phases": [dataclasses.asdict(p) for p in phases],
        "format": fmt,
        "target": args.target,
        "seed": args.seed,
        "intent_mix": mix,
        "phase_intent_mix": list(args.phase_intent_mix),
        "shaping": {
            "start_s": config.start_s,
            "duration_s": config.duration_s,
            "speedup": config.speedup,
            "rate_scale": config.rate_scale,
            "max_requests": config.max_requests,
            "max_input_tokens": config.max_input_tokens,
            "max_output_tokens": config.max_output_tokens,
            "length_mode": config.length_mode,
            "input_scale": round(workload.input_scale, 6),
            "output_scale": round(workload.output_scale, 6),
        },
        "max_in_flight": args.max_in_flight,
        "deadline_s": args.deadline_s,
        "prefix_reference": prefix_references(
            workload.requests, workload.block_tokens, args.kv_capacity_tokens
        ),
    }
    return workload, requests, meta


async def run_replay(
    args: argparse.Namespace, tokenizer: Tokenizer | None = None
) -> dict[str, Any]:
    """Run `loadgen replay` from parsed `args`; returns the summary (also in `args.out`).

    Pass `tokenizer` to reuse one already loaded (then `--tokenizer` is not read).
    """
    if tokenizer is None and not args.tokenizer:
        args.tokenizer = await target_model_path(args.target, args.model)
    _, requests, meta = await asyncio.to_thread(prepare, args, tokenizer)
    bookends = bool(args.status_interval_s) and not is_http(args.target)
    first = await fresh_status_sample(args.target) if bookends else None
    result = await replay(
        requests,
        args.target,
        args.max_in_flight,
        deadline_s=args.deadline_s,
        max_duration_s=args.max_duration_s,
        model=args.model,
        strategy=args.strategy,
        temperature=args.temperature,
        progress=not args.no_progress,
        status_interval_s=args.status_interval_s,
        keep_token_ids=args.keep_token_ids,
    )
    if bookends:
        result = with_bookends(result, first, await fresh_status_sample(args.target))
    meta["started_unix"] = round(result.started_unix, 3)
    summary = summarize_replay(args, result, meta)
    files = await asyncio.to_thread(write_all, Path(args.out), result, summary, args)
    return {**summary, "files": [str(p) for p in files]}


def with_bookends(
    result: ReplayResult, first: dict[str, Any] | None, last: dict[str, Any] | None
) -> ReplayResult:
    """`result` with a status sample read just before the replay (at 0 s) and one just after
    it (at its end), when they could be read: the periodic samples read the gateway's latest
    poll, which may miss the first and last requests' counters."""
    samples = [
        *([{**first, "t_s": 0.0}] if first else []),
        *result.status_samples,
        *([{**last, "t_s": round(result.wall_s, 6)}] if last else []),
    ]
    return dataclasses.replace(result, status_samples=tuple(samples))


def summarize_replay(
    args: argparse.Namespace, result: ReplayResult, meta: dict[str, Any]
) -> dict[str, Any]:
    """The replay's summary (with the server's prefix-cache figures when it was sampled), per
    phase too when it has phases."""
    summary = summarize(result.records, result.wall_s, args.ttft_slo_ms, args.tpot_slo_ms, meta)
    summary["prefix_server"] = server_prefix_figures(result.status_samples, summary["input_tokens"])
    if args.phase:
        bounds = phase_bounds([Phase.parse(p) for p in args.phase], args.speedup)
        slos = (args.ttft_slo_ms, args.tpot_slo_ms)
        summary["by_phase"] = phase_summaries(result.records, bounds, *slos)
    return summary


def write_all(
    out: Path, result: ReplayResult, summary: dict[str, Any], args: argparse.Namespace
) -> list[Path]:
    """Reports, status samples and plots into `out`."""
    paths = list(write_reports(out, result.records, summary).values())
    if result.status_samples:
        status_path = out / "status.jsonl"
        with open(status_path, "w", encoding="utf-8") as f:
            for s in result.status_samples:
                f.write(json.dumps(s) + "\n")
        paths.append(status_path)
    paths += write_plots(
        out, result.records, result.status_samples, args.ttft_slo_ms, args.tpot_slo_ms
    )
    return paths
