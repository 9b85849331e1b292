"""`flexmesh plan`: the cheapest configuration that meets the SLOs, found in simulation.

For a workload (a trace and the replay's shaping options), SLOs, a device profile and at most
`--devices` devices, it simulates the static configurations (every P:D split of the served
model, static prefill budgets, routing thresholds when the config routes) and dynamic (the
controller on) at a device count, and bisects the device count down to the fewest devices at
which one of them meets the SLO attainment target. The winner, the one with the most goodput
there, is written as a config file for `flexmesh serve --config`.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import yaml

from flexmesh.meshcore.config import MeshConfig
from flexmesh.meshcore.errors import InvalidRequestError
from flexmesh.sim.compare import run_variants, target_model, variant
from flexmesh.sim.mesh import scale_config
from flexmesh.sim.profile import Profile

MAX_SPLITS = 5
"""P:D splits tried per device count (spread evenly), so a large mesh is not 100 runs."""
BUDGET_SHARES = (8, 2)
"""Static prefill budgets tried: 1/8 and 1/2 of the step's token budget (beside all of it)."""
ROUTING = ("spill=250", "spill=1000", "confidence=0.15", "confidence=0.5")
"""Routing threshold variants tried when the config routes between two models."""


def candidates(config: MeshConfig, model: str = "") -> list[str]:
    """The variant names `plan` tries on `config` (see the module docstring)."""
    n = target_model(config, model).num_workers
    splits = sorted({max(1, min(n - 1, round(n * f))) for f in (0.125, 0.25, 0.5, 0.75)})
    step = config.engine.max_batched_tokens
    names = ["colocated", *(f"budget={step // k}" for k in BUDGET_SHARES)]
    names += [f"{p}:{n - p}" for p in splits[:MAX_SPLITS]] if n > 1 else []
    names += list(ROUTING) if config.adaptive else []
    return [*names, "dynamic"]


def meets(summary: dict[str, Any], attainment: float) -> bool:
    """Attainment met, nothing failed, and no request held back by the replay's own bound."""
    attained = (summary["slo_attainment"] or 0.0) >= attainment
    return attained and summary["failed"] == 0 and summary["sends_delayed_over_10ms"] == 0


def search(
    base: MeshConfig,
    profile: Profile,
    args: argparse.Namespace,
    devices: int,
    attainment: float,
    progress: Any = print,
) -> dict[str, Any]:
    """Bisect the device count for the fewest devices where a candidate meets `attainment`."""
    if devices < len(base.models):
        raise InvalidRequestError("devices", f"is {devices}, fewer than {len(base.models)} models")
    profile.check_size(devices)
    tried: dict[int, dict[str, Any]] = {}

    def at(d: int) -> tuple[str, dict[str, Any]] | None:
        config = scale_config(base, d)
        configs = {name: variant(config, name, args.variant_model) for name in candidates(config)}
        progress(f"-- {d} devices: {', '.join(configs)}")
        results = run_variants(configs, profile, args, progress=progress)
        tried[d] = {n: _brief(s) for n, s in results.items()}
        ok = {n: s for n, s in results.items() if meets(s, attainment)}
        if not ok:
            return None
        best = max(ok, key=lambda n: ok[n]["goodput_req_s"])
        return best, {"config": configs[best], "summary": results[best]}

    found = at(devices)
    if found is None:
        return {"devices": None, "tried": tried}
    lo, hi, best = len(base.models), devices, (devices, found)
    while lo < hi:
        mid = (lo + hi) // 2
        here = at(mid)
        if here is None:
            lo = mid + 1
        else:
            hi, best = mid, (mid, here)
    d, (name, chosen) = best
    return {"devices": d, "variant": name, **chosen, "tried": tried}


def _brief(s: dict[str, Any]) -> dict[str, Any]:
    return {
        "slo_attainment": s["slo_attainment"],
        "goodput_req_s": s["goodput_req_s"],
        "output_tok_s": s["output_tok_s"],
        "ttft_p99_ms": s["ttft_ms"]["p99"],
        "tpot_p99_ms": s["tpot_ms"]["p99"],
        "failed": s["failed"],
    }


def config_yaml(config: MeshConfig, header: str) -> str:
    """`config` as YAML that `flexmesh serve --config` reads back to the same config."""

    def plain(v: Any) -> Any:
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    body = yaml.safe_dump(plain(dataclasses.asdict(config)), sort_keys=False)
    return "".join(f"# {line}\n" for line in header.splitlines()) + body


def write_plan(result: dict[str, Any], path: str | Path, profile: Profile, slos: str) -> Path:
    s = result["summary"]
    header = (
        f"flexmesh plan: the cheapest configuration meeting {slos}, simulated on "
        f"{profile.label}.\n{result['devices']} devices, variant {result['variant']}: "
        f"SLO attainment {s['slo_attainment']}, goodput {s['goodput_req_s']} req/s, "
        f"{s['output_tok_s']} output tok/s, TTFT p99 {s['ttft_ms']['p99']} ms, "
        f"TPOT p99 {s['tpot_ms']['p99']} ms."
    )
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(config_yaml(result["config"], header))
    return p
