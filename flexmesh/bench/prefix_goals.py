"""The goal table of `flexmesh bench prefix` (issue 26), from each round's results.

A round's results are `{config: {workload: replay summary}}` (`prefix_bench.run_one`). Each
goal's figure is worked out within one round, from configurations of that round (like against
like), then reduced over the rounds: the median with its spread (min–max), or for goals that
must hold in every round (identical output, a hit at all) the worst round. A goal whose figure
is missing (its configurations not run, nothing completed) is neither met nor missed.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flexmesh.bench.rounds import cell, median, pick, span

Round = Mapping[str, Any]
"""One round's `{config: {workload: summary}}`."""
OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
}
HIT = ("prefix_server", "hit_rate_of_prompt_tokens")


@dataclass(frozen=True)
class Goal:
    """One row of the goal table."""

    section: str
    """The issue's goal it checks: a shared prefix, b Mooncake, c two workers, d no reuse."""
    label: str
    op: str
    """How the figure compares with `bound`: ">=", "<=" or ">"."""
    bound: float
    figure: Callable[[Round], float | None]
    """The figure of one round (None when it cannot be worked out)."""
    every_round: bool = False
    """Judge the worst round, not the median (a property that must always hold)."""

    def met(self, value: float) -> bool:
        return OPS[self.op](value, self.bound)


def _ratio(num: Any, den: Any) -> float | None:
    return (
        num / den if isinstance(num, int | float) and isinstance(den, int | float) and den else None
    )


def _of(config: str, workload: str, *path: Any) -> Callable[[Round], Any]:
    return lambda run: pick(run, config, workload, *path)


def _over(num: Callable[[Round], Any], den: Callable[[Round], Any]) -> Callable[[Round], Any]:
    return lambda run: _ratio(num(run), den(run))


def differing_outputs(run: Round) -> float | None:
    """Requests of the Mooncake window whose greedy output differs with the cache on and off
    (among those that completed in both); None when none can be compared."""
    on = pick(run, "cache-on", "mooncake", "output_digests")
    off = pick(run, "cache-off", "mooncake", "output_digests")
    if not on or not off:
        return None
    pairs = [(a, b) for a, b in zip(on, off, strict=False) if a is not None and b is not None]
    return float(sum(a != b for a, b in pairs)) if pairs else None


def computed_imbalance(config: str) -> Callable[[Round], float | None]:
    """The busier worker's prompt tokens computed over the other's (two workers)."""

    def figure(run: Round) -> float | None:
        per_worker = pick(run, config, "shared_prefix", "prefix_server", "prompt_tokens_computed")
        if not per_worker or len(per_worker) < 2:
            return None
        values = sorted(per_worker.values())
        return _ratio(values[-1], max(values[0], 1))  # one idle worker: a large finite ratio

    return figure


AWARE, LEAST = "pair-cache-aware", "pair-least-loaded"
GOALS = (
    Goal("a", "shared prefix: TTFT p50, cache off / on", ">=", 2.0,
         _over(_of("cache-off", "shared_prefix", "ttft_ms", "p50"),
               _of("cache-on", "shared_prefix", "ttft_ms", "p50"))),
    Goal("a", "shared prefix: output tok/s, cache on / off", ">=", 1.3,
         _over(_of("cache-on", "shared_prefix", "output_tok_s"),
               _of("cache-off", "shared_prefix", "output_tok_s"))),
    Goal("b", "Mooncake: server hit rate / LRU reference of its capacity", ">=", 0.9,
         _over(_of("cache-on", "mooncake", *HIT),
               _of("cache-on", "mooncake", "prefix_reference", "lru_hit_rate"))),
    Goal("b", "Mooncake: server hit rate, cache on", ">", 0.0,
         _of("cache-on", "mooncake", *HIT), every_round=True),
    Goal("b", "Mooncake: requests whose greedy output differs, on vs off", "<=", 0.0,
         differing_outputs, every_round=True),
    Goal("c", "two workers: hit rate, cache-aware / one worker (a)", ">=", 0.9,
         _over(_of(AWARE, "shared_prefix", *HIT), _of("cache-on", "shared_prefix", *HIT))),
    Goal("c", "two workers: prompt tokens computed, busier / other (cache-aware)", "<=", 1.3,
         computed_imbalance(AWARE)),
    Goal("c", "two workers: goodput, cache-aware / least-loaded", ">=", 1.3,
         _over(_of(AWARE, "shared_prefix", "goodput_req_s"),
               _of(LEAST, "shared_prefix", "goodput_req_s"))),
    Goal("d", "no reuse: output tok/s, cache on / off (a cost within 5%)", ">=", 0.95,
         _over(_of("cache-on", "no_reuse", "output_tok_s"),
               _of("cache-off", "no_reuse", "output_tok_s"))),
)  # fmt: skip
"""Issue 26's goals, in its order."""


def goal_report(runs: Sequence[Round], goals: Sequence[Goal] = GOALS) -> list[dict[str, Any]]:
    """Per goal: its figure in each round, their median and spread, the value judged (the
    median, or the worst round's) and whether it is met (None when there is no figure)."""
    out = []
    for g in goals:
        per_round = [g.figure(run) for run in runs]
        values = [float(v) for v in per_round if v is not None and not math.isnan(v)]
        judged: float | None = None
        if values:
            worst = [v for v in values if not g.met(v)]
            judged = (worst[0] if worst else values[0]) if g.every_round else median(values)
        out.append(
            {
                "section": g.section,
                "goal": g.label,
                "op": g.op,
                "bound": g.bound,
                "rounds": per_round,
                "median": median(values) if values else None,
                "spread": span(values) if values else None,
                "judged": judged,
                "every_round": g.every_round,
                "met": None if judged is None else g.met(judged),
            }
        )
    return out


def print_prefix_report(report: Mapping[str, Any]) -> None:
    """The goal table, then the figures behind it (configurations side by side)."""
    from rich.console import Console
    from rich.table import Table

    n = report["rounds"]
    console = Console()
    goals = Table(
        title=f"issue 26 goals: median (min–max) of {n} interleaved round{'s' * (n != 1)}, "
        "ratios worked out within each round"
    )
    for col in ("", "goal", "figure", "bound", "met"):
        goals.add_column(col)
    for g in report["goals"]:
        met = {None: "not measured", True: "met", False: "NOT MET"}[g["met"]]
        bound = f"{g['op']} {g['bound']:g}" + (" every round" if g["every_round"] else "")
        goals.add_row(g["section"], g["goal"], cell(g["median"], g["spread"]), bound, met)
    console.print(goals)
    configs = list(report["configs"])
    figures = Table(title="the figures behind them (medians, min–max)")
    figures.add_column("metric")
    for name in configs:
        figures.add_column(name, justify="right")
    spread = report["spread"].get("extra_rows", {})
    for label, values in report.get("extra_rows", {}).items():
        spreads = spread.get(label, {})
        figures.add_row(label, *(cell(values.get(k), spreads.get(k)) for k in configs))
    console.print(figures)
