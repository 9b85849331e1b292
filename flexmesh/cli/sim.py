"""`flexmesh sim`: the mesh's own decision code on a virtual clock (docs/sim.md).

`sim run` replays a workload on a simulated mesh and writes a replay's reports; `sim compare`
replays one workload on variants of a config side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from flexmesh.cli.loadgen import print_summary
from flexmesh.cli.output import show

YAML = (".yaml", ".yml")
OPEN_LOOP = 1_000_000
"""`--max-in-flight` of `sim compare` and `plan`: no client-side bound, so an overloaded
configuration shows its queue in TTFT instead of hiding it in the replay's send delays."""


def add_sim_commands(sub: Any) -> None:
    """The `sim` command and its sub-commands, and `plan`, on `sub` (the top-level sub-parsers)."""
    from flexmesh.sim.run import add_sim_run_arguments

    p = sub.add_parser("sim", help="simulate the mesh on a cost profile (docs/sim.md)")
    ssub = p.add_subparsers(dest="sim_command", required=True)
    r = ssub.add_parser("run", help="replay a workload on a simulated mesh")
    add_sim_run_arguments(r)
    r.set_defaults(func=cmd_sim_run)
    c = ssub.add_parser("compare", help="one workload on variants of a config, side by side")
    add_sim_run_arguments(c)
    c.add_argument(
        "--variants",
        default="colocated,pd,dynamic",
        help="comma-separated: as-is, colocated, dynamic, pd (every P:D split), P:D, "
        "budget=TOKENS, spill=MS, confidence=X, or another config's YAML path; the first is "
        "the baseline",
    )
    c.add_argument("--variant-model", default="", help="the model the variants change")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_sim_compare, max_in_flight=OPEN_LOOP)
    v = ssub.add_parser("validate", help="the same workloads live and simulated, the errors")
    from flexmesh.bench.sim_validate import add_validate_arguments

    add_validate_arguments(v)
    v.set_defaults(func=cmd_sim_validate)

    p = sub.add_parser("plan", help="the cheapest configuration meeting the SLOs (simulated)")
    add_sim_run_arguments(p)
    p.add_argument("--devices", type=int, required=True, help="the most devices to use")
    p.add_argument("--attainment", type=float, default=0.9, help="SLO attainment to meet")
    p.add_argument("--variant-model", default="", help="the model the P:D splits change")
    p.add_argument("--write", help="the config file to write (default: OUT/plan.yaml)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan, max_in_flight=OPEN_LOOP)


def _refusing(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A command whose bad input ends in one line naming the field and exit code 2."""

    def command(args: argparse.Namespace) -> int:
        from flexmesh.logs import configure_logging
        from flexmesh.meshcore.errors import FlexMeshError

        configure_logging(level="WARNING")  # a line per simulated request would drown the rest
        try:
            return run(args)
        except FlexMeshError as exc:
            print(f"flexmesh: error: {exc}", file=sys.stderr)
            return 2

    return command


@_refusing
def cmd_sim_run(args: argparse.Namespace) -> int:
    from flexmesh.sim.run import run_sim

    summary = run_sim(args)
    sim = summary["simulated"]
    print_summary(summary)
    print(f"simulated on {sim['profile']} in {sim['wall_s']} s of wall time")
    return 0


@_refusing
def cmd_sim_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from flexmesh.sim.compare import expand, headline, run_variants, table, target_model, variant
    from flexmesh.sim.profile import Profile
    from flexmesh.sim.run import load_sim_config

    base = load_sim_config(args.config, args.mesh_size, args.models_dir)
    n = target_model(base, args.variant_model).num_workers
    names = expand([v.strip() for v in args.variants.split(",") if v.strip()], n)
    configs = {
        Path(name).stem if name.endswith(YAML) else name: (
            load_sim_config(name, args.mesh_size, args.models_dir)
            if name.endswith(YAML)
            else variant(base, name, args.variant_model)
        )
        for name in names
    }
    profile = Profile.load(args.profile)
    out = Path(args.out)
    results = run_variants(configs, profile, args, out, _progress(args))
    report = {"profile": profile.label, "configs": results, "headline": headline(results)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(report, indent=2))

    def print_table(r: dict[str, Any]) -> None:
        show_table(table(r["configs"]), f"simulated on {r['profile']}")
        for k, v in r["headline"].items():
            print(f"{k}: {v}")
        print(f"reports in {out}")

    show(args, report, print_table)
    return 0


@_refusing
def cmd_sim_validate(args: argparse.Namespace) -> int:
    from flexmesh.bench.sim_validate import run_validate, table_rows

    def print_table(r: dict[str, Any]) -> None:
        title = f"simulated ({r['profile']}) against live, {r['rounds']} interleaved rounds"
        show_table(table_rows(r), title)

    show(args, run_validate(args), print_table)
    return 0


@_refusing
def cmd_plan(args: argparse.Namespace) -> int:
    from pathlib import Path

    from flexmesh.sim.plan import search, write_plan
    from flexmesh.sim.profile import Profile
    from flexmesh.sim.run import load_sim_config

    base = load_sim_config(args.config, None, args.models_dir)
    profile = Profile.load(args.profile)
    result = search(base, profile, args, args.devices, args.attainment, _progress(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {k: v for k, v in result.items() if k != "config"}
    slos = (
        f"TTFT {args.ttft_slo_ms:g} ms and TPOT {args.tpot_slo_ms:g} ms for {args.attainment:.0%}"
    )
    if result["devices"] is not None:
        path = write_plan(result, args.write or out / "plan.yaml", profile, slos)
        report["config_file"] = str(path)
    (out / "plan.json").write_text(json.dumps(report, indent=2))

    def print_plan(r: dict[str, Any]) -> None:
        if r["devices"] is None:
            print(f"no configuration of {args.devices} devices meets {slos} on {profile.label}")
            return
        s = r["summary"]
        print(
            f"cheapest: {r['devices']} devices, {r['variant']} (SLO attainment "
            f"{s['slo_attainment']}, goodput {s['goodput_req_s']} req/s, TTFT p99 "
            f"{s['ttft_ms']['p99']} ms, TPOT p99 {s['tpot_ms']['p99']} ms) on {profile.label}"
        )
        print(f"config: {r['config_file']}  (flexmesh serve --config {r['config_file']})")

    show(args, report, print_plan)
    return 0 if result["devices"] is not None else 1


def _progress(args: argparse.Namespace) -> Callable[[str], None]:
    """Progress lines: to stderr under `--json`, so stdout stays one JSON document."""
    return (lambda m: print(m, file=sys.stderr)) if args.json else print


def show_table(rows: list[list[str]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for i, name in enumerate(rows[0]):
        t.add_column(name, justify="left" if i == 0 else "right")
    for row in rows[1:]:
        t.add_row(*row)
    Console().print(t)
