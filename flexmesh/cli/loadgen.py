"""`flexmesh loadgen replay`: the replay's options (`flexmesh.loadgen.run`), its run, and the
one-screen summary it prints.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from flexmesh.loadgen.prefix import references_line
from flexmesh.loadgen.run import add_replay_arguments


def add_loadgen_commands(sub: Any) -> None:
    """The `loadgen` command and its `replay` sub-command on `sub` (the top-level sub-parsers)."""
    p = sub.add_parser("loadgen", help="trace-replay load generator")
    lsub = p.add_subparsers(dest="loadgen_command", required=True)
    add_replay_arguments(lsub.add_parser("replay", help="replay a trace against a gateway"))
    p.set_defaults(func=cmd_loadgen)


def cmd_loadgen(args: argparse.Namespace) -> int:
    from flexmesh.loadgen.run import run_replay

    print_summary(asyncio.run(run_replay(args)))
    return 0


def print_summary(summary: dict[str, Any]) -> None:
    """One-screen CLI output of a replay."""
    print(
        f"sent {summary['requests_sent']}, ok {summary['completed']}, failed "
        f"{summary['failed']} {summary['failed_by_status'] or ''} in {summary['duration_s']:.1f} s"
    )
    for m in ("ttft_ms", "tpot_ms", "e2e_ms"):
        p = summary[m]
        print(f"{m:>8}: p50 {p['p50']}  p90 {p['p90']}  p99 {p['p99']}")
    print(
        f"{summary['req_s']} req/s, {summary['output_tok_s']} output tok/s, "
        f"goodput {summary['goodput_req_s']} req/s, SLO attainment {summary['slo_attainment']}"
    )
    if summary.get("demanding_requests"):
        by_intent = ", ".join(
            f"{k} {v}" for k, v in summary["downgrade_fraction_by_intent"].items()
        )
        print(
            f"downgrades {summary['downgraded_requests']}/{summary['demanding_requests']} "
            f"demanding requests, fraction {summary['downgrade_fraction']} ({by_intent})"
        )
    print(references_line(summary.get("prefix_reference"), summary.get("prefix_server")))
    for ph in summary.get("by_phase", []):
        fraction = ph["downgrade_fraction"]
        print(
            f"phase {ph['phase']}: goodput {ph['goodput_req_s']} req/s, downgrade fraction "
            f"{'-' if fraction is None else fraction} of {ph['demanding_requests']} demanding"
        )
    for f in summary.get("files", []):
        print(f"wrote {f}")
