"""Configurations side by side in simulation: `flexmesh sim compare` and what `flexmesh plan`
searches.

A variant is a change of one config: how one model's workers split between prefill and decode
(`colocated`, `P:D`, every split `pd`), a static prefill share (`budget=N`), static routing
thresholds (`spill=MS`, `confidence=X`), the controller on (`dynamic`: starts co-located,
moves budgets, roles and routing), the config as it is with the controller on and only some
levers (`levers=budget+role`, `levers=routing`; `levers=` none), the engines' prefix cache and
the gateway's placement (`cache=off`, `cache=cache_aware`, `cache=least_loaded`), or the config
`as-is`. The
same workload (prepared once) replays on each; the run is deterministic, so one run each.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from flexmesh.meshcore.config import LEVERS, PD_PLACEMENTS, MeshConfig, ModelSpec
from flexmesh.meshcore.errors import InvalidRequestError
from flexmesh.sim.profile import ModelShape, Profile
from flexmesh.sim.run import model_shapes, prepare_requests, simulate_summary, write_sim

FIGURES = (
    ("output tok/s", lambda s: s["output_tok_s"]),
    ("goodput req/s", lambda s: s["goodput_req_s"]),
    ("SLO attainment", lambda s: s["slo_attainment"]),
    ("TTFT p50 ms", lambda s: s["ttft_ms"]["p50"]),
    ("TTFT p99 ms", lambda s: s["ttft_ms"]["p99"]),
    ("TPOT mean ms", lambda s: s["tpot_ms"].get("mean")),
    ("TPOT p99 ms", lambda s: s["tpot_ms"]["p99"]),
    ("completed", lambda s: s["completed"]),
)
"""The rows of a comparison: label and how to read it from a replay summary."""


def target_model(config: MeshConfig, model: str = "") -> ModelSpec:
    """The model a variant changes: `model`, else the routing's large model when the config
    serves it, else the first model."""
    names = [m.name for m in config.models]
    wanted = model or (config.routing.large_model if config.routing.large_model in names else "")
    for spec in config.models:
        if spec.name == (wanted or names[0]):
            return spec
    raise InvalidRequestError("model", f"{model!r} is not in the config (models: {names})")


def expand(names: list[str], workers: int) -> list[str]:
    """`pd` as every split of `workers` workers (1:n-1 to n-1:1), the other names as given."""
    out: list[str] = []
    for name in names:
        out += [f"{p}:{workers - p}" for p in range(1, workers)] if name == "pd" else [name]
    return out


def variant(config: MeshConfig, name: str, model: str = "") -> MeshConfig:
    """`config` changed as `name` says (see the module docstring)."""
    if name == "as-is":
        return config
    if name.startswith("levers="):
        levers = tuple(x for x in name.removeprefix("levers=").split("+") if x)
        controller = replace(config.controller, enabled=bool(levers), levers=levers or LEVERS)
        return replace(config, controller=controller)
    if name.startswith(("spill=", "confidence=")):
        return _routing_variant(config, name)
    if name.startswith("cache="):
        return _cache_variant(config, name)
    spec = target_model(config, model)
    n = spec.num_workers
    controller = replace(config.controller, enabled=False)
    engine = config.engine
    roles: tuple[str, ...] = ("mixed",) * n
    if name == "dynamic":
        controller = replace(controller, enabled=True)
    elif name.startswith("budget="):
        tokens = _int(name.removeprefix("budget="), name)
        engine = replace(engine, prefill_budget_tokens=tokens)
    elif ":" in name:
        p, d = (_int(x, name) for x in name.split(":", 1))
        if p < 1 or d < 1 or p + d != n:
            raise InvalidRequestError(
                "variants", f"{name!r}: P:D needs P, D >= 1 and P + D = {n} ({spec.name}'s workers)"
            )
        roles = ("prefill",) * p + ("decode",) * d
    elif name != "colocated":
        raise InvalidRequestError(
            "variants",
            f"{name!r} is not one of as-is, colocated, dynamic, pd, P:D, budget=TOKENS, "
            "spill=MS, confidence=X, levers=A+B, cache=off|cache_aware|least_loaded",
        )
    models = [replace(m, roles=roles, role="mixed") if m is spec else m for m in config.models]
    return replace(config, models=models, controller=controller, engine=engine)


def _routing_variant(config: MeshConfig, name: str) -> MeshConfig:
    """Static routing thresholds (controller off): `spill=MS` (the return threshold kept in
    proportion) or `confidence=X`."""
    key, _, text = name.partition("=")
    try:
        value = float(text)
    except ValueError:
        raise InvalidRequestError("variants", f"{name!r}: {text!r} is not a number") from None
    r = config.routing
    if key == "spill":
        ret = value * r.return_queue_ms / r.spill_queue_ms
        routing = replace(r, spill_queue_ms=value, return_queue_ms=ret)
    else:
        routing = replace(r, confidence_threshold=value)
    return replace(config, routing=routing, controller=replace(config.controller, enabled=False))


def _cache_variant(config: MeshConfig, name: str) -> MeshConfig:
    """`cache=off`, or the prefix cache on with `cache=<pd.placement>`."""
    how = name.removeprefix("cache=")
    if how == "off":
        return replace(config, engine=replace(config.engine, prefix_cache=False))
    if how not in PD_PLACEMENTS:
        raise InvalidRequestError("variants", f"{name!r}: one of off, {', '.join(PD_PLACEMENTS)}")
    engine = replace(config.engine, prefix_cache=True)
    return replace(config, engine=engine, pd=replace(config.pd, placement=how))


def _int(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidRequestError("variants", f"{name!r}: {text!r} is not a whole number") from None


def run_variants(
    configs: dict[str, MeshConfig],
    profile: Profile,
    args: argparse.Namespace,
    out: Path | None = None,
    progress: Any = print,
) -> dict[str, Any]:
    """Simulate each config on the same workload; summaries by name (reports under `out`)."""
    first = next(iter(configs.values()))
    requests, meta, probe = prepare_requests(args, first)
    shapes: dict[str, ModelShape] = {}
    for config in configs.values():
        shapes.update(model_shapes(config, profile))
    results: dict[str, Any] = {}
    for name, config in configs.items():
        summary, result, mesh = simulate_summary(
            config, profile, shapes, requests, meta, probe, args
        )
        if out is not None:
            write_sim(out / name.replace(":", "-").replace("=", "-"), result, summary, mesh, args)
        results[name] = summary
        progress(
            f"[{name}] {summary['completed']}/{summary['requests_sent']} ok, "
            f"{summary['output_tok_s']} tok/s, goodput {summary['goodput_req_s']} req/s "
            f"({summary['simulated']['wall_s']} s)"
        )
    return results


def table(results: dict[str, Any]) -> list[list[str]]:
    """Rows of figures per configuration, the first column's ratio beside throughput."""
    names = list(results)
    rows = [["figure", *names]]
    for label, get in FIGURES:
        rows.append([label, *(_fmt(get(results[n])) for n in names)])
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:,.2f}" if isinstance(v, float) else str(v)


def headline(results: dict[str, Any]) -> dict[str, float | str]:
    """FlexNPU's two comparisons, when the variants are there: dynamic's p99 TTFT over static
    co-location's (with mean TPOT), and its throughput over the best static disaggregation's."""
    out: dict[str, float | str] = {}
    dyn, colo = results.get("dynamic"), results.get("colocated")
    if dyn and colo and colo["ttft_ms"]["p99"]:
        out["dynamic / colocated TTFT p99"] = round(
            dyn["ttft_ms"]["p99"] / colo["ttft_ms"]["p99"], 3
        )
        if colo["tpot_ms"].get("mean"):
            ratio = dyn["tpot_ms"]["mean"] / colo["tpot_ms"]["mean"]
            out["dynamic / colocated TPOT mean"] = round(ratio, 3)
    splits = {k: v for k, v in results.items() if ":" in k}
    if dyn and splits:
        best = max(splits, key=lambda k: splits[k]["goodput_req_s"])
        out["best static disaggregation (goodput)"] = best
        for figure in ("output_tok_s", "goodput_req_s"):
            if splits[best][figure]:
                ratio = dyn[figure] / splits[best][figure]
                out[f"dynamic / best disaggregation {figure}"] = round(ratio, 3)
    return out
