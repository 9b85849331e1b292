"""`flexmesh generate`, `status`, `workers`, `classify` and `policy`: commands that talk to a
running mesh's gateway over gRPC, and print what it says.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from flexmesh.channel import open_channel
from flexmesh.meshcore.routing import THRESHOLDS
from flexmesh.services.grpc_client import fetch_status
from flexmesh.v1 import flexmesh_pb2 as pb
from flexmesh.v1 import flexmesh_pb2_grpc as pb_grpc

DEFAULT_TARGET = "127.0.0.1:50051"


def cmd_generate(args: argparse.Namespace) -> int:
    return asyncio.run(generate_cli(args))


def cmd_status(args: argparse.Namespace) -> int:
    return asyncio.run(status_cli(args))


def cmd_workers(args: argparse.Namespace) -> int:
    return asyncio.run(workers_cli(args))


def cmd_classify(args: argparse.Namespace) -> int:
    return asyncio.run(classify_cli(args))


def cmd_policy(args: argparse.Namespace) -> int:
    return asyncio.run(policy_cli(args))


def add_generate_command(sub: Any) -> None:
    """`generate` on `sub` (the top-level sub-parsers)."""
    p = sub.add_parser("generate", help="stream a completion from a running mesh")
    p.add_argument("prompt")
    p.add_argument("--target", default=DEFAULT_TARGET)
    p.add_argument("--model", default="", help='"" or auto = let FlexMesh choose')
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[])
    p.add_argument("--strategy", default="", choices=["", "none", "pld", "spec"])
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("--timeout", type=float, default=120.0, help="deadline in seconds")
    p.add_argument("--json", action="store_true", help="print the final metadata as JSON")
    p.set_defaults(func=cmd_generate)


def add_mesh_commands(sub: Any) -> None:
    """`status`, `workers`, `classify` and `policy` on `sub` (the top-level sub-parsers)."""
    p = sub.add_parser("status", help="workers, roles and loads of a running mesh")
    p.add_argument("--target", default=DEFAULT_TARGET)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("workers", help="change a worker's role or drain it (live)")
    wsub = p.add_subparsers(dest="workers_command", required=True)
    q = wsub.add_parser("role", help="prefill, decode or mixed for new requests (pins it)")
    q.add_argument("worker", help="actor name, e.g. worker-demo-large-1")
    q.add_argument("role", choices=["prefill", "decode", "mixed"])
    q.add_argument("--target", default=DEFAULT_TARGET)
    q = wsub.add_parser("unpin", help="hand a worker's role back to the controller")
    q.add_argument("worker")
    q.add_argument("--target", default=DEFAULT_TARGET)
    q = wsub.add_parser("drain", help="send the worker no new requests (what it holds finishes)")
    q.add_argument("worker")
    q.add_argument("--resume", action="store_true", help="take the worker back into the pool")
    q.add_argument("--target", default=DEFAULT_TARGET)
    p.set_defaults(func=cmd_workers)

    p = sub.add_parser("classify", help="run the intent probe alone on a prompt")
    p.add_argument("prompt")
    p.add_argument("--target", default=DEFAULT_TARGET)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("policy", help="get or set the live routing policy")
    psub = p.add_subparsers(dest="policy_command", required=True)
    for name in ("unpin", "get", "set"):
        q = psub.add_parser(name)
        q.add_argument("--target", default=DEFAULT_TARGET)
        q.set_defaults(func=cmd_policy)
        if name == "unpin":
            q.add_argument("fields", nargs="*", help="e.g. spill_queue_ms routes.code (none: all)")
    q.add_argument("--confidence-threshold", type=float, default=None)
    q.add_argument("--spill-queue-ms", type=float, default=None)
    q.add_argument("--return-queue-ms", type=float, default=None)
    q.add_argument("--small-spill-queue-ms", type=float, default=None)
    q.add_argument("--small-return-queue-ms", type=float, default=None)
    q.add_argument("--long-context-tokens", type=int, default=None)
    q.add_argument(
        "--route", action="append", default=[], help="intent=model[@variant][:strategy][:spill]"
    )
    q.add_argument(
        "--balance",
        action="append",
        default=[],
        metavar="MODEL=RATIO",
        help="a model's cache-aware placement bound (pins placement_balance.MODEL)",
    )
    q.add_argument("--expected-version", type=int, default=0, help="reject unless at this version")


def request_from_args(args: argparse.Namespace) -> pb.GenerateRequest:
    req = pb.GenerateRequest(
        prompt=args.prompt,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        stop=args.stop,
        model=args.model,
        strategy=args.strategy,
        ignore_eos=args.ignore_eos,
    )
    if args.top_p is not None:
        req.top_p = args.top_p
    if args.seed is not None:
        req.seed = args.seed
    return req


async def generate_cli(args: argparse.Namespace) -> int:
    async with open_channel(args.target) as channel:
        stub = pb_grpc.GenerationStub(channel)
        try:
            final = None
            async for msg in stub.Generate(request_from_args(args), timeout=args.timeout):
                if not args.json:
                    print(msg.text, end="", flush=True)
                if msg.finish_reason:
                    final = msg
        except grpc.aio.AioRpcError as err:
            print(f"\nflexmesh: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    if args.json and final is not None:
        meta = MessageToDict(final, preserving_proto_field_name=True)
        meta.pop("token_ids", None)
        print(json.dumps(meta, indent=2))
    elif not args.json:
        print()
    return 0


async def status_cli(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    try:
        status = await fetch_status(args.target)
    except grpc.aio.AioRpcError as err:
        print(f"flexmesh: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(MessageToDict(status, preserving_proto_field_name=True), indent=2))
        return 0
    table = Table(
        title=f"FlexMesh at {args.target}: {status.in_flight}/{status.max_queue_len} in flight"
    )
    for col in (
        "worker",
        "model",
        "role",
        "device",
        "queue",
        "queue p99 ms",
        "prefill tok",
        "decoding",
        "KV blocks",
        "in flight",
        "step ms",
        "TPOT ms (p99)",
        "prefill budget",
        "KV group",
        "tokens",
        "up (s)",
        "alive",
    ):
        table.add_column(col)
    for w in status.workers:
        table.add_row(
            w.name,
            w.model,
            w.role + (" (draining)" if w.draining else "") + (" (pinned)" if w.pinned else ""),
            w.device,
            str(w.queue_length),
            _ms(w.percentiles, "queue_ms_p99"),
            str(w.prefill_tokens_waiting),
            str(w.decode_batch),
            f"{w.kv_blocks_used}/{w.kv_blocks_total}",
            str(w.kv_blocks_in_flight),
            f"{w.step_ms:.1f}",
            f"{w.tpot_ms:.1f} ({_ms(w.percentiles, 'tpot_ms_p99')})",
            f"{w.prefill_budget_tokens}/{w.max_batched_tokens}",
            w.kv_transport or "-",
            str(w.tokens_generated),
            f"{w.uptime_s:.0f}",
            "yes" if w.alive else "NO",
        )
    Console().print(table)
    for d in status.decisions[-10:]:
        when = time.strftime("%H:%M:%S", time.localtime(d.t_unix))
        why = f" ({d.reason}: " + ", ".join(f"{k} {v:.2f}" for k, v in d.inputs.items()) + ")"
        what = f"{d.kind} {d.target} {d.old} -> {d.new}"
        print(f"{when} {d.by}: {what}{why if d.reason else ''}")
    return 0


def _ms(values: Mapping[str, float], key: str) -> str:
    """One windowed percentile of a worker's report, "-" before it has a sample."""
    return f"{values[key]:.1f}" if key in values else "-"


async def workers_cli(args: argparse.Namespace) -> int:
    """`flexmesh workers role W ROLE | drain W [--resume] | unpin W`."""
    async with open_channel(args.target) as channel:
        stub = pb_grpc.AdminStub(channel)
        try:
            if args.workers_command == "role":
                req = pb.SetWorkerRoleRequest(worker=args.worker, role=args.role)
                w = await stub.SetWorkerRole(req, timeout=30)
            elif args.workers_command == "unpin":
                w = await stub.UnpinWorker(pb.UnpinWorkerRequest(worker=args.worker), timeout=30)
            else:
                req2 = pb.DrainWorkerRequest(worker=args.worker, resume=args.resume)
                w = await stub.DrainWorker(req2, timeout=30)
        except grpc.aio.AioRpcError as err:
            print(f"flexmesh: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    state = "draining" if w.draining else "taking requests"
    pin = ", pinned (the controller leaves it alone)" if w.pinned else ""
    print(f"{w.name}: role {w.role}, {state}{pin}")
    return 0


async def classify_cli(args: argparse.Namespace) -> int:
    async with open_channel(args.target) as channel:
        stub = pb_grpc.GenerationStub(channel)
        try:
            r = await stub.Classify(pb.ClassifyRequest(prompt=args.prompt), timeout=30)
        except grpc.aio.AioRpcError as err:
            print(f"flexmesh: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(MessageToDict(r, preserving_proto_field_name=True), indent=2))
    else:
        scores = "  ".join(
            f"{k} {v:.2f}" for k, v in sorted(r.scores.items(), key=lambda kv: -kv[1])
        )
        found = "".join(f"  also {k} {v:.2f}" for k, v in sorted(r.intents.items()))
        print(
            f"{r.intent} (confidence {r.confidence:.2f}, {r.probe_ms:.1f} ms, {r.backend})",
            scores + found,
        )
    return 0


def _parse_route(spec: str) -> pb.IntentRoute:
    """`intent=model[@variant][:strategy][:spill]`, e.g. `chat=large:none`,
    `code=small:pld:spill` or `chat=small@demo-small-int8:none` (a resident model serving the
    route in `model`'s place)."""
    intent, _, rest = spec.partition("=")
    parts = rest.split(":")
    model, _, variant = parts[0].partition("@")
    if not intent or not model:
        raise ValueError(f"--route {spec!r}: expected intent=model[@variant][:strategy][:spill]")
    return pb.IntentRoute(
        intent=intent,
        model=model,
        strategy=parts[1] if len(parts) > 1 else "none",
        spillable=len(parts) > 2 and parts[2] == "spill",
        variant=variant,
    )


def parse_balance(spec: str) -> tuple[str, float]:
    """`MODEL=RATIO`, e.g. `demo-large=1.5`."""
    model, _, ratio = spec.rpartition("=")
    try:
        return model, float(ratio)
    except ValueError:
        raise ValueError(f"--balance {spec!r}: expected MODEL=RATIO") from None


async def policy_cli(args: argparse.Namespace) -> int:
    async with open_channel(args.target) as channel:
        stub = pb_grpc.AdminStub(channel)
        try:
            if args.policy_command == "get":
                policy = await stub.GetPolicy(pb.GetPolicyRequest(), timeout=10)
            elif args.policy_command == "unpin":
                unpin = pb.UnpinPolicyRequest(fields=args.fields)
                policy = await stub.UnpinPolicy(unpin, timeout=10)
            else:
                req = pb.SetPolicyRequest(
                    routes=[_parse_route(r) for r in args.route],
                    expected_version=args.expected_version,
                )
                for name in (*THRESHOLDS, "long_context_tokens"):
                    value = getattr(args, name)
                    if value is not None:
                        setattr(req, name, value)
                req.placement_balance.update(parse_balance(b) for b in args.balance)
                policy = await stub.SetPolicy(req, timeout=10)
        except grpc.aio.AioRpcError as err:
            print(f"flexmesh: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    print(json.dumps(MessageToDict(policy, preserving_proto_field_name=True), indent=2))
    return 0
