"""`flexmesh bench chaos`: a real trace replayed while actors are killed at random times.

One phase per kind of actor (`decode`, `prefill`: the prefill/decode pool's workers by their
role at the time; `probe`, `gateway`, `controller`): the trace is replayed greedily while that
kind is killed `--kills` times (Ray restarts it), one kill every `--interval-s` x U(0.5, 1.5)
once the mesh is whole again, and for `TAIL_S` after the last. After each kill a canary
request is sent every 0.1 s until one completes: that time is "served again". A request is
*affected* by a kill when it was in flight at the kill, or sent before the mesh served again
(a worker kill leaves the other model's completed requests out). After each phase: every KV
block must be free and a normal request must work; after all phases every request of a phase
that completed after its first kill, affected or not, is sent again, alone on the healed mesh
with the same model and strategy, and its tokens compared (one at a time, so the check takes
a while: most of a phase's completed requests come after its first kill).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ray

from flexmesh.bench.actors import actor_pids, kv_blocks_used
from flexmesh.bench.serving import SHARED_DATA, each_mesh, progress
from flexmesh.channel import open_channel
from flexmesh.loadgen.records import ReplayRequest, RequestRecord
from flexmesh.loadgen.replay import replay
from flexmesh.loadgen.run import add_replay_arguments, prepare
from flexmesh.v1 import flexmesh_pb2 as pb
from flexmesh.v1 import flexmesh_pb2_grpc as pb_grpc

KINDS = ("decode", "prefill", "probe", "gateway", "controller")
WORKER_KINDS = ("decode", "prefill")
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]
"""A client that finds the gateway down retries within 0.5 s (gRPC's default grows to 120 s)."""
TAIL_S = 5.0
"""Traffic after the last kill healed (requests sent in its outage are counted)."""


def add_chaos_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="demo-full", help="deploy/configs name or YAML path")
    p.add_argument("--models-dir", default=None)
    p.add_argument("--trace", default=str(SHARED_DATA / "traces" / "azure_llm_2023_conv.csv"))
    p.add_argument("--prompts-dir", default=str(SHARED_DATA / "prompts"))
    p.add_argument("--kinds", default=",".join(KINDS), help="comma-separated, in order")
    p.add_argument("--kills", type=int, default=20, help="kills of each kind")
    p.add_argument("--interval-s", type=float, default=8.0, help="mean time between kills")
    p.add_argument("--rate-scale", type=float, default=0.3, help="trace arrivals kept")
    p.add_argument("--max-input-tokens", type=int, default=512)
    p.add_argument("--max-output-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench-out/chaos", help="folder for the JSON report")
    p.add_argument("--json", action="store_true")


@dataclass(frozen=True)
class Kill:
    target: str
    at_s: float
    """Kill time on the replay's clock."""
    served_again_s: float
    """From the kill to the first canary that completed."""


async def _canary(stub: pb_grpc.GenerationStub, model: str, timeout_s: float = 60.0) -> float:
    """Seconds until a tiny request completes (each attempt bounded; retried every 0.1 s)."""
    t0 = time.monotonic()
    attempt = 0
    while time.monotonic() - t0 < timeout_s:
        attempt += 1
        rid = f"canary-{time.time():.3f}-{attempt}"  # to find it in the gateway's log
        req = pb.GenerateRequest(prompt="ping", max_tokens=2, model=model, request_id=rid)
        try:
            async for msg in stub.Generate(req, timeout=10):
                if msg.finish_reason:
                    return time.monotonic() - t0
        except Exception:
            pass
        await asyncio.sleep(0.1)
    return float("inf")


async def _target(kind: str, admin: pb_grpc.AdminStub, pool_model: str) -> str:
    """The actor to kill: a worker of the pool by its role now, else the named actor."""
    if kind not in WORKER_KINDS:
        return kind
    st = await admin.GetStatus(pb.GetStatusRequest(cached=True), timeout=10)
    pool = [w for w in st.workers if w.model == pool_model and w.alive]
    for role in (kind, "mixed"):
        names = [w.name for w in pool if w.role == role]
        if names:
            return names[0]
    return pool[0].name if pool else f"worker-{pool_model}-0"


async def _killer(
    kind: str,
    args: argparse.Namespace,
    address: str,
    namespace: str,
    pool_model: str,
    clock: float,
    rng: random.Random,
) -> list[Kill]:
    """Kill `kind` `args.kills` times; each kill waits until the mesh is whole again."""
    kills: list[Kill] = []
    async with open_channel(address, FAST_RECONNECT) as channel:
        stub, admin = pb_grpc.GenerationStub(channel), pb_grpc.AdminStub(channel)
        canary_model = pool_model if kind in WORKER_KINDS else ""
        for _ in range(args.kills):
            await asyncio.sleep(args.interval_s * rng.uniform(0.5, 1.5))
            target = await _target(kind, admin, pool_model)
            handle = ray.get_actor(target, namespace=namespace)
            before = await asyncio.to_thread(actor_pids, {target: handle})
            at = time.monotonic() - clock
            ray.kill(handle, no_restart=False)
            served = await _canary(stub, canary_model)
            kills.append(Kill(target, at, served))
            progress(f"[{kind}] killed {target} at {at:.1f} s, served again after {served:.2f} s")
            # The next kill finds the mesh whole: the actor runs in a new process (the old
            # one may still answer for a moment after the kill) and every worker reports again.
            await _restarted(target, handle, before[target])
            await _healed(admin)
    return kills


async def _restarted(name: str, handle: Any, old_pid: int, timeout_s: float = 120.0) -> None:
    """Until the actor answers from a process other than `old_pid` (bounded)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        pid = (await asyncio.to_thread(actor_pids, {name: handle}, timeout_s))[name]
        if pid not in (0, old_pid):
            return
        await asyncio.sleep(0.25)


async def _healed(admin: pb_grpc.AdminStub, timeout_s: float = 60.0) -> None:
    """Until every worker reports alive again (bounded)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            st = await admin.GetStatus(pb.GetStatusRequest(cached=True), timeout=10)
            if all(w.alive for w in st.workers):
                return
        except Exception:
            pass
        await asyncio.sleep(0.25)


def _completed_after_kill(records: list[RequestRecord], kills: list[Kill]) -> list[RequestRecord]:
    """Every request that completed after the phase's first kill, affected or not: the ones
    whose tokens are checked."""
    if not kills:
        return []
    first = min(k.at_s for k in kills)
    return [r for r in records if r.ok and r.end_s is not None and r.end_s > first]


def _affected(
    records: list[RequestRecord], kills: list[Kill], kind: str, pool_model: str
) -> dict[int, float]:
    """Affected request index -> the kill time that affected it (see module docstring)."""
    hit: dict[int, float] = {}
    for k in kills:
        for r in records:
            if r.send_s is None or r.end_s is None or r.index in hit:
                continue
            in_flight = r.send_s <= k.at_s < r.end_s
            during_outage = k.at_s <= r.send_s < k.at_s + k.served_again_s
            elsewhere = kind in WORKER_KINDS and r.ok and r.route_model != pool_model
            if (in_flight or during_outage) and not elsewhere:
                hit[r.index] = k.at_s
    return hit


async def chaos_phase(
    kind: str,
    args: argparse.Namespace,
    address: str,
    namespace: str,
    pool_model: str,
    requests: list[ReplayRequest],
    seed: int,
) -> dict[str, Any]:
    """One kind's phase: replay + kills, then its figures, KV check and a normal request."""
    duration_s = _phase_s(args)
    phase_requests = [r for r in requests if r.arrival_s < duration_s]
    clock = time.monotonic()
    stop = asyncio.Event()
    async with open_channel(address, FAST_RECONNECT) as channel:
        replaying = asyncio.create_task(
            replay(
                phase_requests,
                address,
                256,
                deadline_s=120.0,
                progress=False,
                channel=channel,
                keep_token_ids=True,
                run_id=f"chaos-{kind}",
                stop=stop,
            )
        )
        kills = await _killer(
            kind, args, address, namespace, pool_model, clock, random.Random(seed)
        )
        await asyncio.sleep(TAIL_S)
        stop.set()
        result = await replaying
    offset = result.started_unix - (time.time() - (time.monotonic() - clock))
    kills = [replace(k, at_s=k.at_s - offset) for k in kills]  # onto the replay's clock
    records = [r for r in result.records if r.send_s is not None]
    if kills and max((r.send_s or 0.0 for r in records), default=0.0) < kills[-1].at_s:
        progress(f"[{kind}] the trace window ended before the last kill: its outage saw no traffic")
    hit = _affected(records, kills, kind, pool_model)
    failed = [r for r in records if r.index in hit and not r.ok]
    used = await kv_blocks_used(address)
    async with open_channel(address, FAST_RECONNECT) as channel:
        normal_s = await _canary(pb_grpc.GenerationStub(channel), "", timeout_s=30.0)
    # How long each failed client waited: from the kill, or from its send during the outage.
    failures = [
        {
            "index": r.index,
            "status": r.status,
            "error": r.error[:160],
            "in_flight_at_kill": r.send_s < hit[r.index],
            "after_s": round(r.end_s - max(hit[r.index], r.send_s), 3),
        }
        for r in failed
        if r.end_s is not None and r.send_s is not None
    ]
    fail_after = [f["after_s"] for f in failures]
    served = [k.served_again_s for k in kills]
    return {
        "kills": len(kills),
        "requests": len(records),
        "affected": len(hit),
        "completed": sum(r.ok for r in records if r.index in hit),
        "failed_by_status": dict(Counter(r.status for r in failed)),
        "failed_within_s_max": max(fail_after) if fail_after else None,
        "failures": failures,
        "served_again_s_median": round(statistics.median(served), 3) if served else None,
        "served_again_s_max": round(max(served), 3) if served else None,
        "kv_all_free_after": bool(used) and not any(used.values()),
        "normal_request_after": normal_s < float("inf"),
        "_records": _completed_after_kill(records, kills),
        "_affected": set(hit),
    }


async def verify_tokens(
    address: str, requests: dict[int, ReplayRequest], records: list[RequestRecord]
) -> list[bool]:
    """Send each completed request again, alone, with its model and strategy; same tokens?"""
    same: list[bool] = []
    async with open_channel(address, FAST_RECONNECT) as channel:
        stub = pb_grpc.GenerationStub(channel)
        for r in records:
            req = requests[r.index]
            msg = pb.GenerateRequest(
                prompt=req.prompt, max_tokens=req.max_tokens, ignore_eos=req.ignore_eos,
                model=r.route_model, strategy=r.route_strategy,
            )  # fmt: skip
            ids: list[int] = []
            async for chunk in stub.Generate(msg, timeout=120):
                ids += chunk.token_ids
            same.append(tuple(ids) == r.token_ids)
    return same


def _phase_s(args: argparse.Namespace) -> float:
    """Trace seconds prepared for a phase: more than its kills and restarts take (the
    longest wait between kills, and 30 s to restart and heal); the rest is not sent."""
    return args.kills * (1.5 * args.interval_s + 30.0) + 10.0


async def chaos(
    args: argparse.Namespace, address: str, namespace: str, pool_model: str, tokenizer: str
) -> dict[str, Any]:
    argv = [
        "--trace", args.trace, "--prompts-dir", args.prompts_dir, "--tokenizer", tokenizer,
        "--out", str(Path(args.out) / "workload"), "--length-mode", "clip",
        "--rate-scale", str(args.rate_scale), "--duration", str(_phase_s(args)),
        "--max-input-tokens", str(args.max_input_tokens), "--seed", str(args.seed),
        "--max-output-tokens", str(args.max_output_tokens), "--no-progress",
    ]  # fmt: skip
    rargs = add_replay_arguments(argparse.ArgumentParser()).parse_args(argv)
    _, requests, _ = await asyncio.to_thread(prepare, rargs)
    by_index = {r.index: r for r in requests}
    report: dict[str, Any] = {}
    for i, kind in enumerate(args.kinds.split(",")):
        progress(f"[{kind}] {args.kills} kills, replaying up to {len(requests)} requests ...")
        report[kind] = await chaos_phase(
            kind, args, address, namespace, pool_model, requests, args.seed + i
        )
    for kind, phase in report.items():
        records, hit = phase.pop("_records"), phase.pop("_affected")
        progress(f"[{kind}] checking the tokens of {len(records)} completed after a kill ...")
        same = await verify_tokens(address, by_index, records)
        phase["completed_identical"] = sum(
            ok for r, ok in zip(records, same, strict=True) if r.index in hit
        )
        phase["completed_after_kill"] = len(same)
        phase["completed_after_kill_identical"] = sum(same)
        phase["identical_share"] = round(sum(same) / len(same), 4) if same else None
        progress(
            f"[{kind}] {phase['affected']} affected, {phase['completed_identical']}/"
            f"{phase['completed']} of them identical; {sum(same)}/{len(same)} identical of all "
            "completed after a kill"
        )
    return report


def run_chaos(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for name, cfg, paths, mesh in each_mesh(args.config, args.models_dir):
        pool = max(cfg.models, key=lambda m: m.num_workers)  # the prefill/decode pool
        report = {
            "config": name,
            "kinds": asyncio.run(
                chaos(args, mesh.address, cfg.namespace, pool.name, paths[pool.name])
            ),
        }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "chaos.json").write_text(json.dumps(report, indent=2))
    return report


def print_chaos(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"chaos: {report['config']}, kills of each kind while replaying")
    cols = (
        "kind",
        "kills",
        "affected",
        "completed",
        "identical (affected)",
        "identical (all after a kill)",
        "failed (codes)",
        "failed within s",
        "served again s (median/max)",
        "KV free",
        "normal after",
    )
    for c in cols:
        table.add_column(c)
    for kind, r in report["kinds"].items():
        share = r["identical_share"]
        table.add_row(
            kind, str(r["kills"]), str(r["affected"]), str(r["completed"]),
            str(r["completed_identical"]),
            f"{r['completed_after_kill_identical']}/{r['completed_after_kill']}"
            + ("" if share is None else f" ({100 * share:.1f}%)"),
            json.dumps(r["failed_by_status"]) if r["failed_by_status"] else "0",
            "-" if r["failed_within_s_max"] is None else f"{r['failed_within_s_max']:.2f}",
            f"{r['served_again_s_median']} / {r['served_again_s_max']}",
            str(r["kv_all_free_after"]), str(r["normal_request_after"]),
        )  # fmt: skip
    Console().print(table)
