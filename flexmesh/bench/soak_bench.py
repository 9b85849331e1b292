"""`flexmesh bench soak`: the mesh held at a multiple of its measured capacity for minutes.

It first measures capacity: the trace replayed faster than the mesh serves, with a bounded
number of streams open (a closed loop), for `--capacity-s`; completed requests per second is
the capacity. Then it replays a window of the same real trace, thinned or replicated to
`--factor` x that rate, for `--minutes`, with more streams open than the gateway admits, so
the excess must be refused (RESOURCE_EXHAUSTED) rather than queued without bound. The report:
requests OK / RESOURCE_EXHAUSTED / other, hung streams (DEADLINE_EXCEEDED or stuck: must be 0),
p99 latency of what was admitted, actor restarts (crashes: must be 0), KV blocks in use after
the drain (must be 0) and every actor's resident memory: cold, once warm (the soak's start,
after the capacity run) and at the end (growth is counted from the soak's start).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flexmesh.bench.actors import actor_pids, actor_rss_mb, kv_blocks_used
from flexmesh.bench.serving import SHARED_DATA, each_mesh, progress
from flexmesh.loadgen.run import add_replay_arguments, run_replay
from flexmesh.loadgen.traces import TraceRequest, read_azure

CAPACITY_OFFERED_RPS = 32.0
RSS_EVERY_S = 10.0
WARM_UP_S = 60.0
"""Growth is counted from the soak's first minute on: new batch sizes first grow the
allocators (a leak keeps growing after it)."""
HUNG = ("DEADLINE_EXCEEDED", "CANCELLED")
RssSamples = list[tuple[float, dict[str, float | None]]]
"""(seconds since the soak started, RSS in MB by actor)."""
"""Statuses of a stream that neither finished nor was refused in time."""


def add_soak_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="demo", help="deploy/configs name or YAML path")
    p.add_argument("--models-dir", default=None)
    p.add_argument("--trace", default=str(SHARED_DATA / "traces" / "azure_llm_2023_conv.csv"))
    p.add_argument("--prompts-dir", default=str(SHARED_DATA / "prompts"))
    p.add_argument("--minutes", type=float, default=5.0, help="length of the soak")
    p.add_argument("--factor", type=float, default=2.0, help="offered load / capacity")
    p.add_argument("--capacity-s", type=float, default=60.0, help="capacity measurement")
    p.add_argument("--capacity-streams", type=int, default=128, help="streams open meanwhile")
    p.add_argument("--max-input-tokens", type=int, default=512)
    p.add_argument("--max-output-tokens", type=int, default=64)
    p.add_argument("--out", default="bench-out/soak", help="folder for JSON and plots")
    p.add_argument("--json", action="store_true")


def trace_rate(trace: Sequence[TraceRequest], start_s: float, duration_s: float) -> float:
    """Mean arrival rate (req/s) of a trace window."""
    n = sum(start_s <= r.arrival_s < start_s + duration_s for r in trace)
    return n / duration_s


def _replay_args(
    args: argparse.Namespace, target: str, tokenizer: str, out: Path, extra: list[str]
) -> argparse.Namespace:
    argv = [
        "--trace", args.trace, "--prompts-dir", args.prompts_dir, "--tokenizer", tokenizer,
        "--target", target, "--out", str(out), "--length-mode", "clip",
        "--max-input-tokens", str(args.max_input_tokens),
        "--max-output-tokens", str(args.max_output_tokens), "--deadline-s", "600",
        "--seed", "0", "--no-progress", "--status-interval-s", "2", *extra,
    ]  # fmt: skip
    return add_replay_arguments(argparse.ArgumentParser()).parse_args(argv)


async def soak(
    args: argparse.Namespace,
    address: str,
    actors: dict[str, Any],
    tokenizer: str,
    max_queue_len: int,
) -> dict[str, Any]:
    """Measure capacity, soak at `factor` x it, drain; the report (see module docstring).
    `actors`: the mesh's actor handles by name (gateway included)."""
    out = Path(args.out)
    before = await asyncio.to_thread(actor_pids, actors)
    rss_cold = actor_rss_mb(before)
    # Arrivals far above any capacity here; the open-stream bound makes it a closed loop.
    trace = await asyncio.to_thread(read_azure, args.trace)
    scale = max(1.0, CAPACITY_OFFERED_RPS / trace_rate(trace, 0.0, args.capacity_s))
    cap_args = _replay_args(args, address, tokenizer, out / "capacity", [
        "--start", "0", "--duration", str(args.capacity_s), "--rate-scale", str(scale),
        "--max-requests", "1000", "--max-in-flight", str(args.capacity_streams),
        "--max-duration-s", str(args.capacity_s),
    ])  # fmt: skip
    progress(f"measuring capacity for {args.capacity_s:.0f} s ...")
    cap = await run_replay(cap_args)
    capacity = float(cap["req_s"])
    duration_s = args.minutes * 60.0
    start_s = args.capacity_s  # a window the capacity run did not replay
    scale = args.factor * capacity / trace_rate(trace, start_s, duration_s)
    progress(f"capacity {capacity:.2f} req/s; soaking at {args.factor}x for {duration_s:.0f} s")
    soak_args = _replay_args(args, address, tokenizer, out / "soak", [
        "--start", str(start_s), "--duration", str(duration_s), "--rate-scale", str(scale),
        "--max-in-flight", str(4 * max_queue_len),
    ])  # fmt: skip
    rss: RssSamples = []
    sampling = asyncio.create_task(_sample_rss(before, rss))
    try:
        summary = await run_replay(soak_args)
    finally:
        sampling.cancel()
    used = await kv_blocks_used(address)
    after = await asyncio.to_thread(actor_pids, actors)
    rss.append((rss[-1][0] + RSS_EVERY_S if rss else 0.0, actor_rss_mb(after)))
    warm_s = min(WARM_UP_S, duration_s / 5)
    rss_warm = next((r for t, r in rss if t >= warm_s), rss[-1][1])
    rss_start, rss_end = rss[0][1], rss[-1][1]
    growth = {n: _growth(rss_warm.get(n), rss_end.get(n)) for n in rss_start}
    plot_rss(rss, warm_s, out / "rss.png")
    by_status = {"OK": summary["completed"], **summary["failed_by_status"]}
    return {
        "capacity_req_s": round(capacity, 3),
        "offered_req_s": round(summary["requests_sent"] / duration_s, 3),
        "factor": args.factor,
        "minutes": args.minutes,
        "requests": summary["requests_sent"],
        "ok": by_status["OK"],
        "resource_exhausted": by_status.get("RESOURCE_EXHAUSTED", 0),
        "other": {k: v for k, v in by_status.items() if k not in ("OK", "RESOURCE_EXHAUSTED")},
        "hung_streams": sum(by_status.get(k, 0) for k in HUNG),
        "admitted_e2e_ms": summary["e2e_ms"],
        "admitted_ttft_ms": summary["ttft_ms"],
        "crashes": sum(after[n] != before[n] for n in before),
        "kv_blocks_used_after_drain": used,
        "kv_all_free": bool(used) and not any(used.values()),
        "rss_mb_cold": rss_cold,
        "rss_mb_start": rss_start,
        "rss_mb_warm": rss_warm,
        "rss_mb_end": rss_end,
        "rss_warm_s": warm_s,
        "rss_growth": growth,
        "rss_growth_max": max((g for g in growth.values() if g is not None), default=0.0),
        "rss_growth_from_start": {n: _growth(rss_start.get(n), rss_end.get(n)) for n in rss_start},
    }


async def _sample_rss(pids: dict[str, int], samples: RssSamples) -> None:
    """Every actor's RSS every `RSS_EVERY_S` from the soak's start (until cancelled)."""
    t0 = asyncio.get_running_loop().time()
    while True:
        samples.append((asyncio.get_running_loop().time() - t0, actor_rss_mb(pids)))
        await asyncio.sleep(RSS_EVERY_S)


def _growth(before: float | None, after: float | None) -> float | None:
    return round(after / before - 1.0, 4) if before and after else None


def plot_rss(samples: RssSamples, warm_s: float, path: Path) -> None:
    """Each actor's RSS over the soak, the end of the warm-up marked."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    ax = fig.subplots()
    for name in samples[0][1] if samples else ():
        pts = [(t, r[name]) for t, r in samples if r.get(name)]
        ax.plot([t for t, _ in pts], [v for _, v in pts], label=name)
    ax.axvline(warm_s, color="gray", linestyle=":", label="warm-up ends")
    ax.set(xlabel="time since the soak started (s)", ylabel="RSS (MB)",
           title="Resident memory of every actor during the soak")  # fmt: skip
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for name, cfg, paths, mesh in each_mesh(args.config, args.models_dir):
        tokenizer = paths[cfg.models[0].name]
        actors = {**mesh.actors, "gateway": mesh.gateway}
        report = asyncio.run(soak(args, mesh.address, actors, tokenizer, cfg.gateway.max_queue_len))
        report["config"] = name
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "soak.json").write_text(json.dumps(report, indent=2))
    return report


def print_soak(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"soak: {r['config']}, {r['minutes']} min at {r['factor']}x capacity")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("goal")
    p99 = r["admitted_e2e_ms"].get("p99")
    rows = [
        ("capacity (req/s, measured)", f"{r['capacity_req_s']:.2f}", ""),
        ("offered (req/s)", f"{r['offered_req_s']:.2f}", f"{r['factor']}x"),
        ("requests OK", str(r["ok"]), ""),
        ("refused RESOURCE_EXHAUSTED", str(r["resource_exhausted"]), "the excess"),
        ("other statuses", json.dumps(r["other"]) if r["other"] else "0", "0"),
        ("hung streams", str(r["hung_streams"]), "0"),
        ("actor crashes (restarts)", str(r["crashes"]), "0"),
        ("admitted p99 latency (ms)", f"{p99:.0f}" if p99 is not None else "-", ""),
        ("KV blocks free after drain", "all" if r["kv_all_free"] else "NO", "all"),
        ("largest actor RSS growth after warm-up", f"{100 * r['rss_growth_max']:.1f}%", "< 10%"),
    ]
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    for name in r["rss_mb_start"]:
        cold, start = r["rss_mb_cold"][name], r["rss_mb_start"][name]
        warm, end = r["rss_mb_warm"].get(name), r["rss_mb_end"].get(name)
        print(f"  RSS {name} (MB): {cold} cold, {start} at the soak's start, {warm} after "
              f"{r['rss_warm_s']:.0f} s, {end} at the end")  # fmt: skip
