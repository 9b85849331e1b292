"""What routing costs in quality: where the probe's readings send each labelled prompt.

The router (`meshcore.routing.decide`, with no load and the given policy) routes every
evaluated prompt. A prompt is *demanding* when its gold intent's configured route names the
large model, the quality budget's definition (`RoutingConfig.is_demanding`). The figures an
operator sets the controller's quality budget from: per intent, the share of demanding prompts
sent to the small model (a downgrade the probe caused before any load did), and, for the
adversarial set, the share of each family that reached the model it must reach.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flexmesh.meshcore.routing import ProbeResult, RouterState, RoutingConfig, decide


def routed_kind(probe: ProbeResult, policy: RoutingConfig) -> str:
    """ "large" or "small": the model an idle mesh serves this reading on."""
    decision, _ = decide(probe, {}, policy, RouterState())
    return policy.role_of(decision.model)  # a variant counts as the model it stands in for


def expected_kind(row: Mapping[str, Any], policy: RoutingConfig) -> str:
    """The model a prompt must reach: the adversarial set's `expect`, else its gold intent's."""
    if row.get("expect"):
        return str(row["expect"])
    return "large" if policy.is_demanding(row["task"]) else "small"


def route_quality(
    rows: Sequence[Mapping[str, Any]], kinds: Sequence[str], policy: RoutingConfig
) -> dict[str, Any]:
    """Per gold intent: prompts, share routed as expected and demanding share sent small; per
    family (rows that have one): prompts and share routed as expected."""
    per_intent: dict[str, dict[str, float]] = {}
    per_family: dict[str, dict[str, float]] = {}
    for row, kind in zip(rows, kinds, strict=True):
        ok = kind == expected_kind(row, policy)
        demanding = expected_kind(row, policy) == "large"
        for table, key in ((per_intent, row["task"]), (per_family, row.get("family"))):
            if key is None:
                continue
            cell = table.setdefault(key, {"n": 0, "as_expected": 0, "demanding": 0, "small": 0})
            cell["n"] += 1
            cell["as_expected"] += ok
            cell["demanding"] += demanding
            cell["small"] += demanding and kind == "small"
    return {
        "per_intent": {k: _shares(v) for k, v in per_intent.items()},
        "per_family": {k: _shares(v) for k, v in per_family.items()},
        **_totals(rows, kinds, policy),
    }


def _shares(cell: Mapping[str, float]) -> dict[str, float]:
    out = {"n": cell["n"], "as_expected": cell["as_expected"] / cell["n"]}
    if cell["demanding"]:
        out["demanding_sent_small"] = cell["small"] / cell["demanding"]
    return out


def _totals(
    rows: Sequence[Mapping[str, Any]], kinds: Sequence[str], policy: RoutingConfig
) -> dict[str, float | None]:
    pairs = [(expected_kind(r, policy), k) for r, k in zip(rows, kinds, strict=True)]
    large = [k for e, k in pairs if e == "large"]
    small = [k for e, k in pairs if e == "small"]
    return {
        "demanding_to_large": large.count("large") / len(large) if large else None,
        "others_kept_small": small.count("small") / len(small) if small else None,
    }
