"""`flexmesh bench http`: the same streams through the gateway's gRPC API and its OpenAI-compatible
HTTP API, side by side in one run: one stream alone, then `--concurrency` streams at once.

Both sides send the same greedy requests (the same prompt, `--max-tokens` tokens past EOS) with
the load generator's own senders, one after the other in alternating order each round (gRPC,
HTTP, then HTTP, gRPC), so drift of a shared, noisy machine falls on both; the figures are the
medians over `--rounds`. Tokens/s of a case is every token streamed over the wall time from the
first send to the last end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from flexmesh.bench.serving import each_mesh, progress
from flexmesh.channel import open_channel
from flexmesh.loadgen.openai_http import http_client, http_sender
from flexmesh.loadgen.records import ReplayRequest, Sender, Stream
from flexmesh.loadgen.replay import grpc_sender
from flexmesh.v1 import flexmesh_pb2_grpc as pb_grpc

PROMPT = 'def fizzbuzz(n):\n    """Return Fizz, Buzz or the number."""\n'


def add_http_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="static-large", help="deploy/configs name or YAML path")
    p.add_argument("--models-dir", default=None)
    p.add_argument("--model", default="demo-large")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens of each stream")
    p.add_argument("--concurrency", type=int, default=16, help="streams of the concurrent case")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="bench-out/http", help="folder for the JSON report")
    p.add_argument("--json", action="store_true")


async def _case(send: Sender, streams: int, max_tokens: int) -> tuple[float, int]:
    """(tokens/s over the case's wall time, failed streams) of `streams` concurrent requests."""
    req = ReplayRequest(0, 0.0, PROMPT, 0, max_tokens, "code")
    results = [Stream() for _ in range(streams)]
    t0 = time.perf_counter()
    outcomes = await asyncio.gather(
        *(send(req, f"bench-{i}", 600.0, s, lambda: 0.0) for i, s in enumerate(results)),
        return_exceptions=True,
    )
    wall = time.perf_counter() - t0
    return sum(sum(s.tokens) for s in results) / wall, sum(o is not None for o in outcomes)


async def compare(args: argparse.Namespace, grpc_target: str, http_target: str) -> dict[str, Any]:
    async with open_channel(grpc_target) as channel, http_client(http_target, 256) as client:
        senders = {
            "grpc": grpc_sender(pb_grpc.GenerationStub(channel), args.model, "", 0.0),
            "http": http_sender(client, args.model, "", 0.0),
        }
        await _case(senders["grpc"], 1, 8)  # warm both paths (connections, first compile)
        await _case(senders["http"], 1, 8)
        tok_s: dict[str, dict[str, list[float]]] = {"1": {}, str(args.concurrency): {}}
        failed = 0
        for r in range(args.rounds):
            order = ("grpc", "http") if r % 2 == 0 else ("http", "grpc")
            for streams in (1, args.concurrency):
                for api in order:
                    rate, bad = await _case(senders[api], streams, args.max_tokens)
                    tok_s[str(streams)].setdefault(api, []).append(rate)
                    failed += bad
                    progress(f"round {r + 1}: {streams} stream(s) over {api}: {rate:.1f} tok/s")
    cases = {
        n: {api: round(statistics.median(v), 2) for api, v in per.items()}
        for n, per in tok_s.items()
    }
    return {
        "model": args.model,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "tok_s": cases,
        "samples": tok_s,
        "http_over_grpc": {n: round(c["http"] / c["grpc"], 3) for n, c in cases.items()},
        "failed_streams": failed,
    }


def run_http_bench(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for name, _, _, mesh in each_mesh(args.config, args.models_dir, http=True):
        report = asyncio.run(compare(args, mesh.address, f"http://{mesh.http_address}"))
        report["config"] = name
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "http.json").write_text(json.dumps(report, indent=2))
    return report


def print_http(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    title = (
        f"gRPC vs HTTP, {report['config']}: {report['model']}, greedy, "
        f"{report['max_tokens']} tokens a stream, median of {report['rounds']} rounds"
    )
    table = Table(title=title)
    for c in ("streams", "gRPC tok/s", "HTTP tok/s", "HTTP / gRPC"):
        table.add_column(c, justify="right")
    for n, c in report["tok_s"].items():
        ratio = report["http_over_grpc"][n]
        table.add_row(n, f"{c['grpc']:.1f}", f"{c['http']:.1f}", f"{ratio:.3f}")
    Console().print(table)
    if report["failed_streams"]:
        print(f"failed streams: {report['failed_streams']}")
