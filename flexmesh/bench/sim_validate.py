"""`flexmesh sim validate`: the same workloads live on this machine and in the simulator, side by
side in one run, and the error of each simulated figure against the live rounds' median.

Workloads: `pd`, the three configurations of `flexmesh bench pd` (its default phased workload,
run A); `routing`, `flexmesh bench routing`'s static-large against adaptive (`demo`). The live
side runs `--rounds` interleaved rounds (each configuration on a fresh mesh per round, as the
benchmarks do); the simulator runs each configuration once (it is deterministic) on the same
requests, with the measured profile of this machine. Beside each error, the live rounds' own
spread ((max - min) / median): the machine drifts 10-20% from minute to minute.

Figures: output throughput, TTFT p50/p90/p99, TPOT p50/p99, goodput and SLO attainment (whole
run and per phase), and the controller's decisions (kind and rule, per phase).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flexmesh.bench.pd_bench import (
    DEFAULT_PHASES,
    PD_PRESET,
    add_pd_bench_arguments,
    phased_replay_args,
)
from flexmesh.bench.serving import (
    _config_path,
    _replay_args,
    add_serving_bench_arguments,
    each_mesh,
    progress,
)
from flexmesh.loadgen.records import ReplayRequest
from flexmesh.loadgen.run import load_tokenizer, prepare, run_replay
from flexmesh.loadgen.workload import Phase, phase_bounds
from flexmesh.sim.profile import Profile
from flexmesh.sim.run import model_shapes, simulate_summary

WORKLOADS = {"pd": PD_PRESET, "routing": ("static-large", "demo")}
"""Each workload's configurations (deploy/configs names)."""

LATENCIES = (("ttft_ms", "p50"), ("ttft_ms", "p90"), ("ttft_ms", "p99"), ("tpot_ms", "p50"),
             ("tpot_ms", "p99"))  # fmt: skip


def add_validate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", required=True, help="this machine's measured profile")
    p.add_argument("--workloads", default="pd,routing", help="pd, routing or both")
    p.add_argument("--rounds", type=int, default=3, help="interleaved live rounds (>= 1)")
    p.add_argument("--models-dir", default=None)
    p.add_argument("--prompts-dir", default=None, help="default: ../shared/data/prompts")
    p.add_argument(
        "--phase",
        action="append",
        default=[],
        metavar="TRACE:START:DURATION[:RATE_SCALE]",
        help="the pd workload's phases (default: bench pd's)",
    )
    p.add_argument("--requests", type=int, default=96, help="the routing workload's requests")
    p.add_argument("--out", default="bench-out/sim-validate")
    p.add_argument("--json", action="store_true")


def _workload_args(args: argparse.Namespace, workload: str) -> argparse.Namespace:
    """The benchmark's own options for `workload`, with validate's overrides."""
    p = argparse.ArgumentParser()
    if workload == "pd":
        add_pd_bench_arguments(p)
        argv = [x for ph in args.phase for x in ("--phase", ph)]
    else:
        add_serving_bench_arguments(p, WORKLOADS["routing"])
        argv = ["--requests", str(args.requests)]
    wargs = p.parse_args(argv)
    wargs.models_dir = args.models_dir
    if args.prompts_dir:
        wargs.prompts_dir = args.prompts_dir
        wargs.data = str(Path(args.prompts_dir).parent)
    return wargs


def _replay_for(
    workload: str, wargs: argparse.Namespace, target: str, tokenizer: str, out: Path
) -> argparse.Namespace:
    if workload == "pd":
        extra = ["--model", wargs.model, "--intent-mix", "chat=0.5,code=0.5"]
        return phased_replay_args(wargs, target, tokenizer, out, DEFAULT_PHASES, extra)
    return _replay_args(wargs, target, tokenizer, out)


def _bounds(rargs: argparse.Namespace) -> list[tuple[str, float, float]]:
    return phase_bounds([Phase.parse(p) for p in rargs.phase], rargs.speedup)


def _phase_of(t_s: float, bounds: list[tuple[str, float, float]]) -> str:
    for name, start, end in bounds:
        if start <= t_s < end:
            return name
    return "after" if bounds and t_s >= bounds[-1][2] else "run"


async def _live_decisions(address: str, started_unix: float) -> list[dict[str, Any]]:
    """The controller's decisions the gateway kept (`Admin/GetStatus`), on the replay's clock."""
    from flexmesh.channel import open_channel
    from flexmesh.v1 import flexmesh_pb2 as pb
    from flexmesh.v1 import flexmesh_pb2_grpc as pb_grpc

    async with open_channel(address) as channel:
        st = await pb_grpc.AdminStub(channel).GetStatus(
            pb.GetStatusRequest(cached=True), timeout=30
        )
    return [
        {"t_s": d.t_unix - started_unix, "kind": d.kind, "reason": d.reason, "target": d.target}
        for d in st.decisions
        if d.by == "controller"
    ]


def figures(
    summary: dict[str, Any], decisions: list[dict[str, Any]], bounds: Any
) -> dict[str, Any]:
    """The compared figures of one run."""
    out: dict[str, Any] = {
        "output_tok_s": summary["output_tok_s"],
        "goodput_req_s": summary["goodput_req_s"],
        "slo_attainment": summary["slo_attainment"],
    }
    for metric, q in LATENCIES:
        out[f"{metric}_{q}"] = summary[metric][q]
    for ph in summary.get("by_phase", []):
        out[f"goodput_req_s {ph['phase']}"] = ph["goodput_req_s"]
        out[f"slo_attainment {ph['phase']}"] = (
            round(ph["met_slo"] / ph["requests"], 4) if ph["requests"] else None
        )
    out["decisions"] = sorted(
        {f"{_phase_of(d['t_s'], bounds)}: {d['kind']}/{d['reason']}" for d in decisions}
    )
    return out


def compare(sim: dict[str, Any], live: list[dict[str, Any]]) -> dict[str, Any]:
    """Per figure: the simulated value, the live median and spread, and the error (relative,
    or in percentage points for SLO attainment); decisions: the sim's kinds against those seen
    in most live rounds."""
    rows: dict[str, Any] = {}
    for key, value in sim.items():
        if key == "decisions":
            continue
        runs = [r[key] for r in live if r.get(key) is not None]
        if value is None or not runs:
            continue
        med = statistics.median(runs)
        spread = (max(runs) - min(runs)) / med if med else None
        if key.startswith("slo_attainment"):
            error, unit = (value - med) * 100.0, "pp"
        else:
            error, unit = ((value - med) / med if med else None), "rel"
        rows[key] = {"sim": value, "live_median": med, "live_spread": spread, "error": error,
                     "unit": unit}  # fmt: skip
    seen: dict[str, int] = {}
    for r in live:
        for d in r["decisions"]:
            seen[d] = seen.get(d, 0) + 1
    usual = sorted(d for d, n in seen.items() if n * 2 > len(live))
    rows["decisions"] = {
        "sim": sim["decisions"],
        "live_most_rounds": usual,
        "live_any_round": sorted(seen),
        "same": sim["decisions"] == usual,
    }
    return rows


def run_validate(args: argparse.Namespace) -> dict[str, Any]:
    if args.rounds < 1:
        raise ValueError(f"rounds: must be >= 1, got {args.rounds}")
    profile = Profile.load(args.profile)
    report: dict[str, Any] = {"profile": profile.label, "rounds": args.rounds, "workloads": {}}
    for workload in args.workloads.split(","):
        if workload not in WORKLOADS:
            raise ValueError(f"workloads: {workload!r} is not one of {sorted(WORKLOADS)}")
        report["workloads"][workload] = _validate(workload, args, profile)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "validate.json").write_text(json.dumps(report, indent=2))
    return report


def _validate(workload: str, args: argparse.Namespace, profile: Profile) -> dict[str, Any]:
    wargs = _workload_args(args, workload)
    configs = WORKLOADS[workload]
    out = Path(args.out) / workload
    live: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    requests: list[ReplayRequest] = []
    rargs: argparse.Namespace | None = None
    for i in range(args.rounds):
        for name, _, paths, mesh in each_mesh(",".join(configs), args.models_dir):
            tokenizer = next(iter(paths.values()))
            rargs = _replay_for(workload, wargs, mesh.address, tokenizer, out / f"live-{i}" / name)
            summary = asyncio.run(run_replay(rargs))
            started = summary["started_unix"]
            decisions = asyncio.run(_live_decisions(mesh.address, started))
            live[name].append(figures(summary, decisions, _bounds(rargs)))
            progress(f"[{workload} round {i + 1}/{args.rounds}] {name}: {_line(live[name][-1])}")
    assert rargs is not None
    _, requests, meta = prepare(rargs, load_tokenizer(rargs.tokenizer))
    results: dict[str, Any] = {}
    for name in configs:
        config = _sim_config(name, args.models_dir)
        shapes = model_shapes(config, profile)
        summary, _, mesh = simulate_summary(config, profile, shapes, requests, meta, "auto", rargs)
        sim = figures(summary, mesh.decisions, _bounds(rargs))
        progress(f"[{workload} sim] {name}: {_line(sim)}")
        results[name] = {"figures": compare(sim, live[name]), "live": live[name], "sim": sim}
    return results


def _sim_config(name: str, models_dir: str | None) -> Any:
    from dataclasses import replace

    from flexmesh.launch.config_file import load_mesh_config

    config = load_mesh_config(_config_path(name))
    return replace(config, models_dir=models_dir or config.models_dir)


def _line(f: dict[str, Any]) -> str:
    return (
        f"{f['output_tok_s']} tok/s, TTFT p50 {f['ttft_ms_p50']} p99 {f['ttft_ms_p99']} ms, "
        f"TPOT p50 {f['tpot_ms_p50']} ms, attainment {f['slo_attainment']}"
    )


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per workload, configuration and figure: sim, live median (spread), error."""
    rows = [["workload / config / figure", "sim", "live median (spread)", "error"]]
    fmt: Callable[[Any], str] = lambda v: "-" if v is None else f"{v:,.3g}"  # noqa: E731
    for workload, configs in report["workloads"].items():
        for name, r in configs.items():
            for key, row in r["figures"].items():
                label = f"{workload} / {name} / {key}"
                if key == "decisions":
                    same = "same" if row["same"] else "differ"
                    rows.append([label, "; ".join(row["sim"]) or "none",
                                 "; ".join(row["live_most_rounds"]) or "none", same])  # fmt: skip
                    continue
                spread = "-" if row["live_spread"] is None else f"{row['live_spread']:.0%}"
                err = row["error"]
                err_s = (
                    "-"
                    if err is None
                    else (f"{err:+.1f} pp" if row["unit"] == "pp" else f"{err:+.0%}")
                )
                rows.append(
                    [label, fmt(row["sim"]), f"{fmt(row['live_median'])} ({spread})", err_s]
                )
    return rows
