"""`flexmesh profile`: measure this device's cost profile with the real engine, for `flexmesh sim`
(the measurements are `flexmesh.bench.profile_run`'s)."""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from flexmesh.cli.output import show
from flexmesh.meshcore.errors import InvalidRequestError
from flexmesh.sim.profile import FEATURES, OpFit, Profile

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "deploy" / "configs" / "demo.yaml"


def add_profile_command(sub: Any) -> None:
    """The `profile` command on `sub` (the top-level sub-parsers)."""
    p = sub.add_parser("profile", help="measure this device's cost profile (for flexmesh sim)")
    p.add_argument("--config", default=None, help="mesh YAML: profile each of its models "
                   f"(default {DEFAULT_CONFIG.relative_to(REPO)})")  # fmt: skip
    p.add_argument("--model-path", default=None, help="profile this one model folder instead")
    p.add_argument("--models-dir", default=None, help="where the config's models live / are built")
    p.add_argument("--out", required=True, help="profile JSON to write")
    p.add_argument("--quick", action="store_true", help="a reduced grid (tests, a first look)")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per worker (default: the model's num_cpus, as `serve` sets them)",
    )
    p.add_argument("--data", default=None, help="shared data folder whose prompts/ time the probe")
    p.add_argument("--no-ray", action="store_true", help="skip the gloo transfer and the hops")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_profile)


def cmd_profile(args: argparse.Namespace) -> int:
    from flexmesh.bench.profile_run import run_profile

    out = _output_path(args.out)
    t0 = time.perf_counter()
    profile, checks = run_profile(settings_from_args(args))
    profile.write(out)
    show(args, report(profile, checks, time.perf_counter() - t0, out), print_report)
    return 0


def settings_from_args(args: argparse.Namespace) -> Any:
    """The `ProfileSettings` the parsed arguments ask for; bad input raises naming the option."""
    from flexmesh.bench.profile_run import ProfileSettings
    from flexmesh.meshcore.config import EngineConfig

    if args.threads < 0:
        raise InvalidRequestError("--threads", f"must be >= 0, got {args.threads}")
    cfg = _mesh_config(args)
    engine = replace(cfg.engine if cfg else EngineConfig(), chunked_prefill=True)
    if args.model_path:
        path = Path(args.model_path).expanduser()
        if not (path / "config.json").is_file():
            raise InvalidRequestError(
                "--model-path", f"{path} is no Hugging Face model folder (no config.json)"
            )
        paths, threads = {path.name: str(path)}, {path.name: 1.0}
    else:
        from flexmesh.launch.mesh import resolve_model_paths

        assert cfg is not None
        paths = resolve_model_paths(cfg)
        threads = {m.name: m.num_cpus for m in cfg.models}
    _check_models(paths, "--model-path" if args.model_path else "models")
    engines = {
        name: replace(
            engine, num_threads=args.threads or engine.num_threads or max(1, int(threads[name]))
        )
        for name in paths
    }
    data = Path(args.data) if args.data else REPO.parent / "shared" / "data"
    prompts = data / "prompts"
    return ProfileSettings(
        models=paths,
        engines=engines,
        quick=args.quick,
        prompts_dir=prompts if prompts.is_dir() else None,
        hops=not args.no_ray,
    )


def _check_models(paths: dict[str, str], option: str) -> None:
    """Refuse a folder the engine cannot load before any measuring starts."""
    from flexmesh.actors.runner.runner import check_architecture

    for name, path in paths.items():
        try:
            check_architecture(path)
        except (OSError, ValueError) as exc:
            where = option if option.startswith("--") else f"{option}.{name}"
            raise InvalidRequestError(where, str(exc)) from exc


def _mesh_config(args: argparse.Namespace) -> Any:
    """The mesh config of `--config` (None: `--model-path` alone and no default config)."""
    import yaml

    from flexmesh.launch.config_file import load_mesh_config
    from flexmesh.meshcore.config import MeshConfig

    path = Path(args.config) if args.config else DEFAULT_CONFIG
    if args.config and not path.is_file():
        raise InvalidRequestError("--config", f"{path} is no file")
    if not path.is_file():
        if args.model_path:
            return None
        cfg = MeshConfig.from_dict({"models": [{"name": "demo-large"}, {"name": "demo-small"}]})
    else:
        try:
            cfg = load_mesh_config(path)
        except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
            raise InvalidRequestError("--config", f"{path} cannot be read: {exc}") from exc
        except ValueError as exc:  # names the config's own field
            raise InvalidRequestError("--config", f"{path}: {exc}") from exc
    return replace(cfg, models_dir=args.models_dir or cfg.models_dir)


def _output_path(out: str) -> Path:
    """`--out`, checked before minutes of measuring: a file in a writable folder."""
    path = Path(out).expanduser()
    if path.is_dir():
        raise InvalidRequestError("--out", f"{path} is a folder, not a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidRequestError("--out", f"cannot create {path.parent}: {exc}") from exc
    if not os.access(path.parent, os.W_OK):
        raise InvalidRequestError("--out", f"{path.parent} is not writable")
    return path


def report(
    profile: Profile, checks: dict[str, dict[str, float]], wall_s: float, out: Path
) -> dict[str, Any]:
    """What `flexmesh profile` prints: wall time, every fit and its error, the prediction
    check (each model's steps predicted from op fits made without it), transports, hops."""

    def fit(o: OpFit) -> dict[str, Any]:
        finite = {k: v if math.isfinite(v) else None for k, v in asdict(o).items() if v is not None}
        return {**finite, "error_pct": o.error_pct}

    return {
        "out": str(out),
        "wall_s": round(wall_s, 1),
        "device": profile.device.name,
        "models": {
            n: {
                "fit_error_pct": m.step.error_pct,
                "points": m.step.points,
                "coefficients_ms": dict(zip(FEATURES, m.step.coefficients, strict=True)),
                "predicted_from_ops_without_it": checks.get(n),
            }
            for n, m in profile.models.items()
        },
        "ops": {n: fit(o) for n, o in profile.ops.items()},
        "transports": {
            n: {"export": fit(t.export), "transfer": fit(t.transfer), "import": fit(t.import_)}
            for n, t in profile.transports.items()
        },
        "overheads": asdict(profile.overheads),
    }


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _pct(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec) + "%"


def print_report(r: dict[str, Any]) -> None:
    """The profile's figures on one screen."""
    print(f"profile of {r['device']} written to {r['out']} in {r['wall_s']} s")
    print(f"{'':<29}{'its steps predicted from ops fitted without it':>45}")
    print(f"{'model':<14}{'steps':>6}{'fit err':>9}{'all':>9}{'prefill':>9}{'decode':>9}"
          f"{'mixed':>9}{'bias':>9}")  # fmt: skip
    for name, m in r["models"].items():
        c = m["predicted_from_ops_without_it"] or {}
        cols = "".join(f"{_pct(c.get(k)):>9}" for k in ("all", "prefill", "decode", "mixed"))
        print(
            f"{name:<14}{m['points']:>6}{_pct(m['fit_error_pct']):>9}{cols}"
            f"{_pct(c.get('bias_pct'), '+.1f'):>9}"
        )
    print(f"{'op':<14}{'a_ms':>9}{'GB/s':>9}{'TFLOP/s':>9}{'fit err':>9}")
    for name, o in r["ops"].items():
        print(
            f"{name:<14}{o['a_ms']:>9.4f}{_num(o['gb_s'], '.2f'):>9}{_num(o['tflops'], '.3f'):>9}"
            f"{_pct(o['error_pct']):>9}"
        )
    for name, parts in r["transports"].items():
        text = ", ".join(
            f"{part} {f['a_ms']:.3f} ms + bytes / {_num(f['gb_s'], '.2f')} GB/s"
            for part, f in parts.items()
        )
        print(f"transport {name}: {text}")
    o = r["overheads"]
    print(
        f"overheads: request {o['request_ms']:.3f} ms, chunk {o['chunk_ms']:.3f} ms, control "
        f"{o['control_ms']:.3f} ms, probe {o['probe_ms']:.3f} ms"
    )
