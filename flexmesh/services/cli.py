"""`flexmesh` command line: serve, demo, generate, classify, status, workers, policy, models,
loadgen, bench.

Imports are local to each command so `flexmesh --help` stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from flexmesh.actors.probe.evaluate import add_eval_arguments
from flexmesh.bench.chaos_bench import add_chaos_arguments
from flexmesh.bench.http_bench import add_http_bench_arguments
from flexmesh.bench.pd_bench import add_pd_bench_arguments
from flexmesh.bench.policy_bench import add_policy_bench_arguments
from flexmesh.bench.serving import ROUTING_PRESET, add_serving_bench_arguments
from flexmesh.bench.soak_bench import add_soak_arguments
from flexmesh.loadgen.cli import add_replay_arguments
from flexmesh.logs import configure_logging
from flexmesh.services.demo import add_demo_arguments

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "deploy" / "configs"
DEFAULT_TARGET = "127.0.0.1:50051"


def _default_config(name: str = "demo.yaml") -> str:
    return str(REPO_CONFIGS / name)


def load_config(args: argparse.Namespace) -> Any:
    from flexmesh.meshcore.config import MeshConfig
    from flexmesh.services.config_file import load_mesh_config

    cfg = (
        load_mesh_config(args.config)
        if Path(args.config).exists()
        else MeshConfig.from_dict(_builtin_demo_config())
    )
    gateway = cfg.gateway
    if getattr(args, "host", None):
        gateway = replace(gateway, host=args.host)
    if getattr(args, "port", None) is not None:
        gateway = replace(gateway, port=args.port)
    if getattr(args, "http_port", None) is not None:
        gateway = replace(gateway, http_port=args.http_port)
    models_dir = getattr(args, "models_dir", None) or cfg.models_dir
    return replace(cfg, gateway=gateway, models_dir=models_dir)


def _builtin_demo_config() -> dict[str, Any]:
    """Used when the package is installed without the repository's deploy/ folder."""
    return {"models": [{"name": "demo-large"}, {"name": "demo-small"}]}


def _add_mesh_args(p: argparse.ArgumentParser, config: str = "demo.yaml") -> None:
    p.add_argument("--config", default=_default_config(config), help=f"mesh YAML ({config})")
    p.add_argument("--address", default=None, help="join this Ray cluster instead of starting one")
    p.add_argument("--models-dir", default=None, help="where models live / demo models are built")
    p.add_argument("--host", default=None, help="gRPC bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="gRPC port (default 50051, 0 = any)")
    p.add_argument(
        "--http-port",
        type=int,
        default=None,
        help="also serve the OpenAI-compatible HTTP API on this port (0 = any; default off)",
    )
    p.add_argument("--dashboard", action="store_true", help="start the Ray dashboard (~0.9 GB)")


# -- serve ---------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from flexmesh.services.mesh import start_mesh

    mesh = start_mesh(load_config(args), address=args.address, dashboard=args.dashboard)
    http = f", OpenAI HTTP on http://{mesh.http_address}" if mesh.http_address else ""
    print(f"FlexMesh serving gRPC on {mesh.address}{http}  (Ctrl-C to stop)", flush=True)
    stop = asyncio.Event()

    async def wait() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()

    try:
        asyncio.run(wait())
    finally:
        print("shutting down", flush=True)
        mesh.shutdown()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from flexmesh.services.demo import run_demo
    from flexmesh.services.mesh import resolve_model_paths, start_mesh

    cfg = load_config(args)
    cfg = replace(cfg, gateway=replace(cfg.gateway, port=args.port if args.port is not None else 0))
    print("starting the mesh (Ray, demo models, gateway) ...", flush=True)
    mesh = start_mesh(cfg, address=args.address, dashboard=args.dashboard, log_to_driver=False)
    try:
        tokenizer = resolve_model_paths(cfg)[cfg.models[0].name]
        return run_demo(args, mesh.address, tokenizer, cfg.controller)
    finally:
        mesh.shutdown()


def cmd_loadgen(args: argparse.Namespace) -> int:
    from flexmesh.loadgen.cli import print_summary, run_replay

    print_summary(asyncio.run(run_replay(args)))
    return 0


# -- client commands -----------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> int:
    from flexmesh.services.client import generate_cli

    return asyncio.run(generate_cli(args))


def cmd_doctor(args: argparse.Namespace) -> int:
    from flexmesh.services.doctor import print_report, report

    _show(args, report(args.models_dir), print_report)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from flexmesh.services.client import status_cli

    return asyncio.run(status_cli(args))


def cmd_workers(args: argparse.Namespace) -> int:
    from flexmesh.services.client import workers_cli

    return asyncio.run(workers_cli(args))


def cmd_classify(args: argparse.Namespace) -> int:
    from flexmesh.services.client import classify_cli

    return asyncio.run(classify_cli(args))


def cmd_policy(args: argparse.Namespace) -> int:
    from flexmesh.services.client import policy_cli

    return asyncio.run(policy_cli(args))


def cmd_probe_eval(args: argparse.Namespace) -> int:
    from flexmesh.actors.probe.evaluate import run_eval

    return run_eval(args)


def cmd_models(args: argparse.Namespace) -> int:
    from flexmesh.actors.runner.demo_models import build_demo_models

    for name, path in build_demo_models(args.dir, force=args.force).items():
        print(f"{name}: {path}")
    return 0


def cmd_bench_engine(args: argparse.Namespace) -> int:
    from flexmesh.bench.cli import bench_engine

    return bench_engine(args)


def _show(args: argparse.Namespace, report: Any, table: Callable[[Any], None]) -> Any:
    """Print a benchmark's report as JSON (`--json`) or as its table; return the report."""
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        table(report)
    return report


def _side_by_side(args: argparse.Namespace, run: Callable[[argparse.Namespace], Any]) -> int:
    """Run a configurations-side-by-side benchmark; print its table, or its JSON."""
    from flexmesh.bench.serving import print_serving_table

    _show(args, run(args), print_serving_table)
    return 0


def cmd_bench_serving(args: argparse.Namespace) -> int:
    from flexmesh.bench.serving import run_serving_bench

    return _side_by_side(args, run_serving_bench)


def cmd_bench_pd(args: argparse.Namespace) -> int:
    from flexmesh.bench.pd_bench import run_pd_bench

    return _side_by_side(args, run_pd_bench)


def cmd_bench_policy(args: argparse.Namespace) -> int:
    from flexmesh.bench.policy_bench import run_policy_bench

    return _side_by_side(args, run_policy_bench)


def cmd_bench_kv(args: argparse.Namespace) -> int:
    from flexmesh.bench.kv_bench import print_kv_table, run_kv_bench

    _show(args, run_kv_bench(args), print_kv_table)
    return 0


def cmd_bench_chaos(args: argparse.Namespace) -> int:
    from flexmesh.bench.chaos_bench import print_chaos, run_chaos

    phases = _show(args, run_chaos(args), print_chaos)["kinds"].values()
    return 0 if all(r["kv_all_free_after"] and r["normal_request_after"] for r in phases) else 1


def cmd_bench_http(args: argparse.Namespace) -> int:
    from flexmesh.bench.http_bench import print_http, run_http_bench

    return 0 if _show(args, run_http_bench(args), print_http)["failed_streams"] == 0 else 1


def cmd_bench_soak(args: argparse.Namespace) -> int:
    from flexmesh.bench.soak_bench import print_soak, run_soak

    report = _show(args, run_soak(args), print_soak)
    ok = report["hung_streams"] == 0 and report["crashes"] == 0 and report["kv_all_free"]
    return 0 if ok else 1


def cmd_bench_strategies(args: argparse.Namespace) -> int:
    from flexmesh.bench.cli import bench_strategies

    return bench_strategies(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flexmesh", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="start the mesh and serve gRPC (and HTTP) until Ctrl-C")
    _add_mesh_args(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="start the mesh, replay a minute of a real trace, report")
    _add_mesh_args(p, "demo-full.yaml")
    add_demo_arguments(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("loadgen", help="trace-replay load generator")
    lsub = p.add_subparsers(dest="loadgen_command", required=True)
    add_replay_arguments(lsub.add_parser("replay", help="replay a trace against a gateway"))
    p.set_defaults(func=cmd_loadgen)

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

    p = sub.add_parser("doctor", help="what this machine offers FlexMesh, what to install")
    p.add_argument("--models-dir", default=None, help="where the demo models are (or would be)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)

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
    q.add_argument("--long-context-tokens", type=int, default=None)
    q.add_argument("--route", action="append", default=[], help="intent=model[:strategy][:spill]")
    q.add_argument("--expected-version", type=int, default=0, help="reject unless at this version")

    p = sub.add_parser("probe", help="intent probe utilities")
    prsub = p.add_subparsers(dest="probe_command", required=True)
    q = prsub.add_parser("eval", help="accuracy and latency of a probe backend on labelled prompts")
    add_eval_arguments(q)
    q.set_defaults(func=cmd_probe_eval)

    p = sub.add_parser("models", help="model utilities")
    msub = p.add_subparsers(dest="models_command", required=True)
    b = msub.add_parser("build-demo", help="write demo-small and demo-large into DIR")
    b.add_argument("dir")
    b.add_argument("--force", action="store_true", help="rebuild even if present")
    b.set_defaults(func=cmd_models)

    p = sub.add_parser("bench", help="benchmarks that print measured ratios side by side")
    bsub = p.add_subparsers(dest="bench_command", required=True)
    b = bsub.add_parser("engine", help="HF generate vs the engine (in-process and via gRPC)")
    b.add_argument("--model", default=None, help="model folder (default: demo-large)")
    b.add_argument("--models-dir", default=None)
    b.add_argument("--new-tokens", type=int, default=64)
    b.add_argument("--concurrency", type=int, default=16)
    b.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians reported")
    b.add_argument("--no-grpc", action="store_true", help="skip the gRPC columns")
    b.add_argument(
        "--profile",
        action="store_true",
        help="instead: where one batch-1 decode step goes (wall clock split, per-op table)",
    )
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench_engine)
    b = bsub.add_parser("routing", help="static-large vs static-small vs adaptive, same workload")
    add_serving_bench_arguments(b, ROUTING_PRESET)
    b.set_defaults(func=cmd_bench_serving)
    b = bsub.add_parser("serve", help="any mesh configs in turn, same workload (--configs)")
    add_serving_bench_arguments(b, ("static-large", "demo"))
    b.set_defaults(func=cmd_bench_serving)
    b = bsub.add_parser("pd", help="co-located vs disaggregated prefill/decode, same trace")
    add_pd_bench_arguments(b)
    b.set_defaults(func=cmd_bench_pd)
    b = bsub.add_parser("policy", help="fixed vs controller-tuned routing, shifting intent mix")
    add_policy_bench_arguments(b)
    b.set_defaults(func=cmd_bench_policy)
    b = bsub.add_parser("kv", help="KV hand-off vs raw send/recv of the same bytes, per transport")
    b.add_argument("--model", default="demo-large")
    b.add_argument("--models-dir", default=None)
    b.add_argument("--lengths", default="128,512,1024,2048", help="prompt lengths (tokens)")
    b.add_argument("--repeats", type=int, default=5, help="measurements per length (medians)")
    b.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="2: prefill and decode worker on two Ray nodes of a local cluster (cross-node)",
    )
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench_kv)
    b = bsub.add_parser("chaos", help="a trace replayed while actors of each kind are killed")
    add_chaos_arguments(b)
    b.set_defaults(func=cmd_bench_chaos)
    b = bsub.add_parser("http", help="the same streams through gRPC and the OpenAI HTTP API")
    add_http_bench_arguments(b)
    b.set_defaults(func=cmd_bench_http)
    b = bsub.add_parser("soak", help="minutes at a multiple of the measured capacity")
    add_soak_arguments(b)
    b.set_defaults(func=cmd_bench_soak)
    b = bsub.add_parser("strategies", help="plain vs PLD vs draft speculation, identical output")
    b.add_argument("--models-dir", default=None)
    b.add_argument("--new-tokens", type=int, default=128)
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench_strategies)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (FileNotFoundError, ValueError) as exc:
        print(f"flexmesh: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
