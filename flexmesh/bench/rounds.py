"""Reducing interleaved benchmark rounds: each figure's median over the rounds and its spread.

The side-by-side benchmarks (`bench routing|serve|pd|policy|strategies|prefix`) run every
configuration once per round, rounds interleaved, because the machine drifts 10-20% from minute
to minute: interleaving puts every configuration through the same moments. A round's results
are `{config: summary}`; `rounds_report` folds them into one summary per configuration whose
numbers are the medians over the rounds, a parallel tree of `[min, max]` spreads, and ratio
rows worked out within each round (like against like) before they are reduced the same way.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Rows = dict[str, dict[str, float]]
"""Table rows beside the summaries: label -> {config: value}."""

RATIO_FIGURES = ("output_tok_s", "req_s", "goodput_req_s")
"""Summary figures the tables also give as a ratio to the first configuration."""


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _empty(tree: Any) -> bool:
    return tree is None or tree == {} or (isinstance(tree, list) and all(map(_empty, tree)))


def fold(values: Sequence[Any], reduce: Callable[[list[float]], Any], keep_other: bool) -> Any:
    """One tree from same-shaped per-round trees: numbers become `reduce(numbers)` (None and NaN
    left out; None when nothing is left), dicts and equal-length lists are folded key by key
    (a key missing from a round counts as None there). Anything else stays when every round
    agrees, else becomes the list of per-round values; with `keep_other` False it is dropped
    (with any container left empty), so the tree holds only the reduced numbers."""
    present = [v for v in values if v is not None]
    if present and all(_number(v) for v in present):
        nums = [float(v) for v in present if not math.isnan(v)]
        return reduce(nums) if nums else None
    if present and all(isinstance(v, Mapping) for v in present):
        keys = list(dict.fromkeys(k for v in present for k in v))
        folded = {k: fold([v.get(k) for v in present], reduce, keep_other) for k in keys}
        return folded if keep_other else {k: x for k, x in folded.items() if not _empty(x)}
    lists = all(isinstance(v, list) for v in present)
    if present and lists and len({len(v) for v in present}) == 1:
        items = [fold(list(i), reduce, keep_other) for i in zip(*present, strict=True)]
        return None if not keep_other and all(_empty(x) for x in items) else items
    if not keep_other:
        return None
    return values[0] if all(v == values[0] for v in values) else list(values)


def median(nums: list[float]) -> float:
    """The median, rounded like the replay's own figures."""
    return round(statistics.median(nums), 4)


def span(nums: list[float]) -> list[float]:
    """`[min, max]`."""
    return [round(min(nums), 4), round(max(nums), 4)]


def ratios_to_first(run: Mapping[str, Mapping[str, Any]], figure: str) -> dict[str, float]:
    """Each configuration's `figure` over the first configuration's, within one round (NaN when
    either is missing or the first is zero)."""
    return over_ref(run, next(iter(run.values())), lambda summary: summary.get(figure))


def over_ref(
    results: Mapping[str, Any], ref: Any, get: Callable[[Any], float | None]
) -> dict[str, float]:
    """Each result's figure over `ref`'s: NaN when either is missing or `ref`'s is zero (a
    missing figure is no figure, not 0)."""
    den = get(ref)
    out = {}
    for k, v in results.items():
        num = get(v)
        out[k] = num / den if num is not None and den else math.nan
    return out


def rounds_report(
    runs: Sequence[Mapping[str, Any]],
    rows: Callable[[Mapping[str, Any]], Rows] | None = None,
    ratio_figures: Sequence[str] = RATIO_FIGURES,
) -> dict[str, Any]:
    """The report of interleaved rounds (`runs[r]` = round r's `{config: summary}`).

    `configs`: each configuration's summary with every number the median over the rounds;
    `ratios`: per `ratio_figures`, each configuration's per-round ratio to the first one,
    reduced to the median; `extra_rows`: `rows(round)` worked out per round and reduced the
    same way; `spread`: the same three with `[min, max]` in place of each median; `samples`:
    each configuration's raw per-round summaries.
    """
    if not runs:
        raise ValueError("runs: need at least one round, got none")
    names = list(runs[0])
    samples = {name: [run[name] for run in runs] for name in names}
    per_round = {
        "ratios": [{f: ratios_to_first(run, f) for f in ratio_figures} for run in runs],
        "extra_rows": [rows(run) if rows else {} for run in runs],
    }
    report: dict[str, Any] = {
        "rounds": len(runs),
        "configs": {name: fold(s, median, keep_other=True) for name, s in samples.items()},
        **{k: fold(v, median, keep_other=False) or {} for k, v in per_round.items()},
        "spread": {
            "configs": {name: fold(s, span, keep_other=False) for name, s in samples.items()},
            **{k: fold(v, span, keep_other=False) or {} for k, v in per_round.items()},
        },
        "samples": samples,
    }
    return report


def cell(value: Any, spread: Any = None, digits: int = 2) -> str:
    """`median (min–max)` for the tables; the bare value when the rounds agree or there is
    no spread; `-` for a missing figure."""
    if value is None:
        return "-"
    text = f"{value:.{digits}f}"
    if isinstance(spread, list) and len(spread) == 2 and spread[0] != spread[1]:
        text += f" ({spread[0]:.{digits}f}–{spread[1]:.{digits}f})"
    return text


def pick(tree: Any, *path: Any) -> Any:
    """`tree[path[0]][path[1]]...`, None where any step is missing."""
    for key in path:
        if isinstance(tree, Mapping):
            tree = tree.get(key)
        elif isinstance(tree, list) and isinstance(key, int) and key < len(tree):
            tree = tree[key]
        else:
            return None
    return tree
