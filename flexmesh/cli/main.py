"""`flexmesh` command line: serve, demo, generate, classify, status, workers, policy, models,
loadgen, bench.

Imports are local to each command so `flexmesh --help` stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from flexmesh.actors.probe.evaluate import add_eval_arguments
from flexmesh.cli.bench import add_bench_commands
from flexmesh.cli.demo import add_demo_arguments
from flexmesh.cli.loadgen import add_loadgen_commands
from flexmesh.cli.mesh_commands import add_generate_command, add_mesh_commands
from flexmesh.cli.output import show
from flexmesh.cli.profile import add_profile_command
from flexmesh.cli.sim import add_sim_commands
from flexmesh.logs import configure_logging

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "deploy" / "configs"


def _default_config(name: str = "demo.yaml") -> str:
    return str(REPO_CONFIGS / name)


def load_config(args: argparse.Namespace) -> Any:
    from flexmesh.launch.config_file import load_mesh_config
    from flexmesh.meshcore.config import MeshConfig

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
    from flexmesh.launch.mesh import start_mesh
    from flexmesh.launch.resources import DevicesMissingError

    try:
        mesh = start_mesh(
            load_config(args),
            address=args.address,
            dashboard=args.dashboard,
            wait_for_devices_s=args.wait_for_devices_s,
        )
    except DevicesMissingError as exc:
        print(f"flexmesh: error: {exc}", file=sys.stderr)
        return 2
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
    from flexmesh.cli.demo import run_demo
    from flexmesh.launch.mesh import resolve_model_paths, start_mesh

    cfg = load_config(args)
    cfg = replace(cfg, gateway=replace(cfg.gateway, port=args.port if args.port is not None else 0))
    print("starting the mesh (Ray, demo models, gateway) ...", flush=True)
    mesh = start_mesh(cfg, address=args.address, dashboard=args.dashboard, log_to_driver=False)
    try:
        tokenizer = resolve_model_paths(cfg)[cfg.models[0].name]
        return run_demo(args, mesh.address, tokenizer, cfg.controller)
    finally:
        mesh.shutdown()


# -- local commands ------------------------------------------------------------------------


def cmd_doctor(args: argparse.Namespace) -> int:
    from flexmesh.cli.doctor import print_report, report

    show(args, report(args.models_dir), print_report)
    return 0


def cmd_probe_eval(args: argparse.Namespace) -> int:
    from flexmesh.actors.probe.evaluate import run_eval

    if not args.config:
        return run_eval(args)
    from flexmesh.launch.config_file import load_mesh_config

    return run_eval(args, load_mesh_config(args.config).routing)


def cmd_models(args: argparse.Namespace) -> int:
    from flexmesh.actors.runner.demo_models import build_demo_models

    for name, path in build_demo_models(args.dir, force=args.force).items():
        print(f"{name}: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flexmesh", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="start the mesh and serve gRPC (and HTTP) until Ctrl-C")
    _add_mesh_args(p)
    p.add_argument(
        "--wait-for-devices-s",
        type=float,
        default=0.0,
        help="wait this long for the NPUs/GPUs (and custom resources) the config's workers need "
        "to join the Ray cluster, then fail naming what is missing (default 0: check once)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="start the mesh, replay a minute of a real trace, report")
    _add_mesh_args(p, "demo-full.yaml")
    add_demo_arguments(p)
    p.set_defaults(func=cmd_demo)

    add_loadgen_commands(sub)
    add_profile_command(sub)
    add_sim_commands(sub)

    add_generate_command(sub)

    p = sub.add_parser("doctor", help="what this machine offers FlexMesh, what to install")
    p.add_argument("--models-dir", default=None, help="where the demo models are (or would be)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)

    add_mesh_commands(sub)

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

    add_bench_commands(sub)
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
