"""`flexmesh sim run`: a replay, simulated. The same config YAML and the same workload options as
`flexmesh loadgen replay` (`loadgen/run.py` shapes the workload and writes the reports), plus a
cost profile and optionally a mesh size; the same reports and plots come out, every figure on
the virtual clock, and the fields only a live run has say it was simulated.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from flexmesh.launch.config_file import DEFAULT_MODELS_DIR, load_mesh_config, model_folders
from flexmesh.loadgen.replay import ReplayResult, replay
from flexmesh.loadgen.run import (
    add_replay_arguments,
    load_tokenizer,
    prepare,
    summarize_replay,
    write_all,
)
from flexmesh.meshcore.config import MeshConfig
from flexmesh.meshcore.errors import InvalidRequestError
from flexmesh.sim import clock
from flexmesh.sim.mesh import SimMesh, scale_config, start, utilisation
from flexmesh.sim.profile import ModelShape, Profile


def add_sim_run_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`loadgen replay`'s options (its `--target` unused) plus the simulation's own."""
    add_replay_arguments(p)
    sim = p.add_argument_group("simulation")
    sim.add_argument("--config", required=True, help="mesh YAML (as `flexmesh serve --config`)")
    sim.add_argument(
        "--profile",
        required=True,
        help="cost profile: a file from `flexmesh profile`, or a shipped device name",
    )
    sim.add_argument("--mesh-size", type=int, help="scale the config's workers to this many")
    sim.add_argument("--models-dir", help="where the models' folders are (shapes, tokenizer)")
    sim.add_argument(
        "--probe",
        choices=("auto", "classifier", "confusion"),
        default="auto",
        help="the real classifier on the prompts, or its measured confusion matrix",
    )
    sim.add_argument(
        "--no-text",
        action="store_true",
        help="no prompt text: requests carry lengths and intents only (much faster to prepare; "
        "the probe then answers from its confusion matrix)",
    )
    return p


def prepare_requests(
    args: argparse.Namespace, config: MeshConfig
) -> tuple[list[Any], dict[str, Any], str]:
    """The workload's requests, their meta, and the probe that reads them."""
    if args.no_text:
        _, requests, meta = prepare(args, None, text=False)
        return requests, meta, "confusion"
    _, requests, meta = prepare(args, tokenizer_for(args, config))
    return requests, meta, args.probe


def load_sim_config(path: str, mesh_size: int | None, models_dir: str | None) -> MeshConfig:
    config = load_mesh_config(path)
    if models_dir:
        config = replace(config, models_dir=models_dir)
    return scale_config(config, mesh_size) if mesh_size else config


def model_shapes(config: MeshConfig, profile: Profile) -> dict[str, ModelShape]:
    """Each model's shape: the profile's own (measured on it), else its folder's config.json,
    else the known shapes; in the dtype the engine uses on the profile's device."""
    from flexmesh.sim.shapes import shape_of

    shapes = {}
    folders = model_folders(config)
    for spec in config.models:
        shape = profile.shape_of(spec.name) or shape_of(spec.name, str(folders[spec.name].parent))
        if shape is None:
            raise InvalidRequestError(
                f"models.{spec.name}",
                f"has no shape: not in profile {profile.label}, no config.json under "
                f"{config.models_dir!r}, and not a known model",
            )
        if spec.name not in profile.models:
            shape = replace(shape, dtype_bytes=_dtype_bytes(config, profile))
        shapes[spec.name] = shape
    return shapes


def _dtype_bytes(config: MeshConfig, profile: Profile) -> int:
    dtype = config.engine.dtype
    if dtype == "auto":
        return 4 if profile.device.kind == "cpu" else 2
    return 4 if dtype == "float32" else 2


def tokenizer_for(args: argparse.Namespace, config: MeshConfig) -> Any:
    """`--tokenizer`, else the tokenizer in the first model folder that has one, else the
    demo models' (built on first use): it only sizes the synthesised prompts."""
    if args.tokenizer:
        return load_tokenizer(args.tokenizer)
    from flexmesh.actors.runner.demo_models import DEMO_MODELS, build_demo_models
    from flexmesh.loadgen.prompts import tokenizer_dir

    found = tokenizer_dir(str(p) for p in model_folders(config).values())
    if found is None:
        found = str(build_demo_models(DEFAULT_MODELS_DIR)[DEMO_MODELS[0].name])
    return load_tokenizer(found)


async def simulate(
    mesh_args: tuple[MeshConfig, Profile, dict[str, ModelShape], dict[str, str], str, int],
    args: argparse.Namespace,
    requests: list[Any],
) -> tuple[ReplayResult, SimMesh]:
    config, profile, shapes, truth, probe, seed = mesh_args
    mesh = start(config, profile, shapes, truth, probe, seed)
    try:
        result = await replay(
            requests,
            "simulated",
            args.max_in_flight,
            deadline_s=args.deadline_s,
            max_duration_s=args.max_duration_s,
            run_id=f"sim{seed}",
            progress=not args.no_progress,
            status_interval_s=args.status_interval_s or 1.0,
            send=mesh.sender(args.model, args.strategy, args.temperature),
            read_status=mesh.status_reader(),
        )
    finally:
        mesh.stop()
    mesh.check()
    return result, mesh


def simulate_summary(
    config: MeshConfig,
    profile: Profile,
    shapes: dict[str, ModelShape],
    requests: list[Any],
    meta: dict[str, Any],
    probe: str,
    args: argparse.Namespace,
) -> tuple[dict[str, Any], ReplayResult, SimMesh]:
    """Replay `requests` on a simulated `config` and summarise it as a replay, the fields only
    a live run has saying it was simulated (`simulated`: profile, probe, decisions...)."""
    truth = {r.prompt: r.intent for r in requests}
    started = time.perf_counter()
    result, mesh = clock.run(
        simulate((config, profile, shapes, truth, probe, args.seed), args, requests)
    )
    wall_s = time.perf_counter() - started
    simulated = {
        "profile": profile.label,
        "profile_source": profile.source,
        "probe": mesh.probe_backend or "none (one model)",
        "workers": len(mesh.workers),
        "virtual_s": round(result.wall_s, 3),
        "wall_s": round(wall_s, 3),
        "decisions": mesh.decisions,
        "busy_fraction": utilisation(mesh, result.wall_s),
        "step_costs": {
            m: ("predicted from ops" if profile.step_cost(m, s).predicted else "measured")
            for m, s in shapes.items()
            if m in {spec.name for spec in config.models}
        },
    }
    meta = {**meta, "target": "simulated", "started_unix": "simulated", "simulated": simulated}
    return summarize_replay(args, result, meta), result, mesh


def write_sim(
    out: Path, result: ReplayResult, summary: dict[str, Any], mesh: SimMesh, args: Any
) -> list[str]:
    """A replay's reports and plots, and `decisions.jsonl` (the controller's, virtual time)."""
    files = write_all(out, result, summary, args)
    decisions = out / "decisions.jsonl"
    decisions.write_text("".join(json.dumps(d) + "\n" for d in mesh.decisions))
    return [*map(str, files), str(decisions)]


def run_sim(args: argparse.Namespace) -> dict[str, Any]:
    """Run `sim run` from parsed `args`; returns the summary (also in `args.out`)."""
    config = load_sim_config(args.config, args.mesh_size, args.models_dir)
    profile = Profile.load(args.profile)
    shapes = model_shapes(config, profile)
    requests, meta, probe = prepare_requests(args, config)
    summary, result, mesh = simulate_summary(config, profile, shapes, requests, meta, probe, args)
    return {**summary, "files": write_sim(Path(args.out), result, summary, mesh, args)}
