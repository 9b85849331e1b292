"""`flexmesh sim`: the mesh's own decision code on a virtual clock (docs/sim.md).

`sim run` replays a workload on a simulated mesh and writes a replay's reports.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from flexmesh.cli.loadgen import print_summary


def add_sim_commands(sub: Any) -> None:
    """The `sim` command and its sub-commands on `sub` (the top-level sub-parsers)."""
    from flexmesh.sim.run import add_sim_run_arguments

    p = sub.add_parser("sim", help="simulate the mesh on a cost profile (docs/sim.md)")
    ssub = p.add_subparsers(dest="sim_command", required=True)
    r = ssub.add_parser("run", help="replay a workload on a simulated mesh")
    add_sim_run_arguments(r)
    r.set_defaults(func=cmd_sim_run)


def cmd_sim_run(args: argparse.Namespace) -> int:
    from flexmesh.logs import configure_logging
    from flexmesh.meshcore.errors import FlexMeshError
    from flexmesh.sim.run import run_sim

    configure_logging(level="WARNING")  # one line per simulated request would drown the rest
    try:
        summary = run_sim(args)
    except FlexMeshError as exc:
        print(f"flexmesh: error: {exc}", file=sys.stderr)
        return 2
    sim = summary["simulated"]
    print_summary(summary)
    print(f"simulated on {sim['profile']} in {sim['wall_s']} s of wall time")
    return 0
