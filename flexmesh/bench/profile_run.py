"""`flexmesh profile`: a cost profile (`flexmesh.sim.profile.Profile`) measured on the device it
runs on, with the real engine.

Per model: its real engine steps, prefill chunks over chunk and context lengths, decode steps
over batch and context, mixed steps (`profile_steps`), fitted into the model's own `StepCost`
(non-negative least squares on `step_features`). Per device: the per-operation fits
(`profile_ops`: matrix products micro-benchmarked through the model's own `linear`; attention and
the other per-layer ops from the profiled models' forward passes re-run without their matrix
products; the step's and the sequence's fixed costs from the steps' time outside their forward
passes), which predict a shape never profiled (`predict_step_cost`); the KV transports, the Ray
and gateway hops and the probe (`profile_hops`). Draft models are not loaded: speculative steps
are not profiled.

The prediction check: each model's `prediction_error_pct` is the error of its measured steps
predicted from op fits made without it (the other profiled models' steps and the matmul grid);
with one model profiled there is nothing to check it against (None). `prediction_checks` also
splits it by kind of step and gives its median sign (`flexmesh profile` prints both).

Threads: every measurement runs at the engine's `num_threads`, set as `flexmesh serve` sets a
worker's (its model's `num_cpus`: one here, where a mesh runs two one-core workers).
"""

from __future__ import annotations

import gc
import importlib.metadata
import os
import platform
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from flexmesh.actors.runner.engine import Engine
from flexmesh.bench import profile_hops as hops
from flexmesh.bench.profile_ops import (
    MatmulPoint,
    Measured,
    fit_matmul,
    fit_ops,
    fit_step_cost,
    matmul_grid,
    measure_matmuls,
    prediction_breakdown,
    time_other_ops,
)
from flexmesh.bench.profile_steps import FULL_GRID, QUICK_GRID, Grid, Run, StepBench, median_point
from flexmesh.meshcore.config import EngineConfig
from flexmesh.meshcore.errors import InvalidRequestError
from flexmesh.sim.profile import (
    FEATURES,
    DeviceInfo,
    ModelFit,
    ModelShape,
    Overheads,
    Profile,
    TransportFit,
)


@dataclass(frozen=True)
class ProfileSettings:
    """What one `flexmesh profile` run measures."""

    models: dict[str, str]
    """Model name -> Hugging Face folder, profiled in this order."""
    engines: dict[str, EngineConfig]
    """Each model's engine config (its threads set)."""
    quick: bool = False
    """A reduced grid (tests, a first look)."""
    prompts_dir: Path | None = None
    """Development prompt files for the probe's cost (None: the classifier's exemplars)."""
    hops: bool = True
    """Measure the Ray figures (gloo transfer, control calls, streams): one Ray session."""


@dataclass
class Measurements:
    """Everything one run measured, before any fit."""

    device: torch.device
    threads: int
    """Torch threads of every measurement."""
    dtype_bytes: int
    models: dict[str, Measured]
    matmul: list[MatmulPoint]
    export_import: dict[int, tuple[float, float]]
    """Per KV byte count: export and import ms."""
    transfer: dict[int, float] = field(default_factory=dict)
    """Per KV byte count: gloo send/recv ms (empty without Ray)."""
    overheads: Overheads = field(default_factory=Overheads)


def run_profile(s: ProfileSettings) -> tuple[Profile, dict[str, dict[str, float]]]:
    """Measure everything `s` asks for; return the profile and, per model, how well op fits
    made without it predict its steps (`prediction_checks`)."""
    measured = measure(s)
    checks = prediction_checks(measured)
    return build_profile(s, measured, checks), checks


def measure(s: ProfileSettings) -> Measurements:
    """Every measurement of the profile, under one progress bar over its points."""
    grid = QUICK_GRID if s.quick else FULL_GRID
    mm_grid = matmul_grid(s.quick)
    kv_sizes = hops.QUICK_KV_SIZES_BYTES if s.quick else hops.KV_SIZES_BYTES
    total = (
        (grid.rounds + 1) * len(s.models) * len(grid.points()) + len(mm_grid) + len(kv_sizes) + 1
    )
    total += (len(kv_sizes) + 3) if s.hops else 0
    bar = tqdm(total=total, desc="profile", unit="point")

    def tick() -> None:
        bar.update(1)

    found: Measurements | None = None
    try:
        for name, path in s.models.items():
            bar.set_postfix_str(name)
            engine = Engine(path, s.engines[name])
            engine.warm_up()
            model = measure_model(engine, grid, tick)
            if len(model.steps) < len(FEATURES):
                raise InvalidRequestError(
                    f"models.{name}",
                    f"only {len(model.steps)} profiled steps fit its engine (KV blocks, step "
                    f"budget, context); {len(FEATURES)} are needed for a fit",
                )
            if found is None:
                bar.set_postfix_str("device")
                found = Measurements(
                    engine.device,
                    torch.get_num_threads(),
                    engine.dtype.itemsize,
                    {},
                    measure_matmuls(engine.model, mm_grid, grid.rounds, tick),
                    hops.measure_export_import(engine, kv_sizes, grid.rounds, tick),
                )
            found.models[name] = model
            del engine
            gc.collect()
        assert found is not None, "no model to profile"
        if s.hops:
            bar.set_postfix_str("ray")
            found.transfer, found.overheads = _ray_figures(
                list(found.export_import), grid.rounds, tick
            )
        bar.set_postfix_str("probe")
        per_file = 8 if s.quick else hops.PROBE_PROMPTS_PER_FILE
        prompts = hops.probe_prompts(s.prompts_dir, per_file)
        found.overheads = replace(found.overheads, probe_ms=hops.measure_probe(prompts))
        tick()
    finally:
        bar.close()
    return found


def build_profile(
    s: ProfileSettings, m: Measurements, checks: dict[str, dict[str, float]]
) -> Profile:
    """Every fit of `m`, as one profile (`checks`: `prediction_checks(m)`)."""
    matmul = fit_matmul(m.matmul, m.dtype_bytes)
    transports = {"local": TransportFit()}
    if m.transfer:
        transports["gloo"] = hops.gloo_transport(m.export_import, m.transfer)
    link = "gloo" if m.transfer else "local"
    return Profile(
        source="measured",
        device=replace(
            device_info(m.device, m.threads), intra_node_transport=link, inter_node_transport=link
        ),
        ops=fit_ops(matmul, list(m.models.values())),
        models={
            name: ModelFit(model.shape, fit_step_cost(model.steps), checks.get(name, {}).get("all"))
            for name, model in m.models.items()
        },
        transports=transports,
        overheads=m.overheads,
        software=software_versions(),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        sources=_sources(s, m),
    )


def measure_model(engine: Engine, grid: Grid, tick: Callable[[], None]) -> Measured:
    """A model's shape and its measured steps (`grid.rounds` rounds over the points, each
    point the median of its steps), each with its other ops timed."""
    points = grid.points()
    runs: list[list[Run]] = [[] for _ in points]
    unfit: set[int] = set()
    bench = StepBench(engine)
    try:
        for _ in range(grid.rounds):
            for i, (kind, a, b) in enumerate(points):
                got = None if i in unfit else bench.measure(kind, a, b)
                if got is None:
                    unfit.add(i)  # it does not fit this engine
                else:
                    runs[i] += got
                tick()
    finally:
        bench.close()
    steps = []
    for (kind, _, _), point_runs in zip(points, runs, strict=True):
        if point_runs:
            step, batch = median_point(kind, point_runs)
            other_ms, attention_ms = time_other_ops(
                engine.model, engine.runner.kv_cache, batch, grid.rounds
            )
            steps.append(replace(step, other_ms=other_ms, attention_ms=attention_ms))
        tick()
    hf_config: Any = engine.model.config  # a transformers PretrainedConfig
    shape = ModelShape.from_hf_config(hf_config.to_dict(), engine.dtype.itemsize)
    return Measured(shape, tuple(steps))


def prediction_checks(m: Measurements) -> dict[str, dict[str, float]]:
    """Per model, its steps predicted from op fits made on the other models only (and the
    matmul grid): `prediction_breakdown`. Empty with one model."""
    matmul = fit_matmul(m.matmul, m.dtype_bytes)
    out = {}
    for name, model in m.models.items():
        others = [other for n, other in m.models.items() if n != name]
        if others:
            out[name] = prediction_breakdown(fit_ops(matmul, others), model)
    return out


def _ray_figures(
    sizes: Sequence[int], repeats: int, tick: Callable[[], None]
) -> tuple[dict[int, float], Overheads]:
    """The gloo transfer per byte count and the hops, in one Ray session of this process."""
    import ray

    from flexmesh.launch.mesh import init_ray

    owns = init_ray(None, dashboard=False, namespace="flexmesh-profile", log_to_driver=False)
    try:
        echo = hops.start_echo()
        transfer = hops.measure_gloo_transfer(sizes, repeats)
        for _ in sizes:
            tick()
        return transfer, hops.measure_hops(echo, repeats, tick)
    finally:
        if owns:
            ray.shutdown()


# -- what the profile says about itself ----------------------------------------------------


def device_info(device: torch.device, threads: int) -> DeviceInfo:
    """The device's name, kind, how many one-device workers this machine runs, its memory."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        count = torch.cuda.device_count()
        return DeviceInfo(
            _slug(f"cuda-{props.name}"), "cuda", count, props.total_memory / 2**30, count
        )
    if device.type == "npu":
        npu: Any = getattr(torch, "npu")  # noqa: B009  (registered by torch_npu)
        count = int(npu.device_count())
        memory = npu.get_device_properties(device).total_memory / 2**30
        return DeviceInfo(_slug(f"npu-{npu.get_device_name(device)}"), "npu", count, memory, count)
    cores = len(os.sched_getaffinity(0))
    workers = max(1, cores // max(1, threads))
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return DeviceInfo(
        _slug(f"cpu-{_cpu_model()}-{cores}core"),
        "cpu",
        workers,
        round(memory, 1),
        workers,
        notes=f"{threads} torch thread(s) per worker, one worker per {max(1, threads)} core(s)",
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def software_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("torch", "transformers", "ray", "flexmesh"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "unknown"
    return versions


def _sources(s: ProfileSettings, m: Measurements) -> dict[str, str]:
    grid = QUICK_GRID if s.quick else FULL_GRID
    out = {
        f"models.{n}.step": f"{len(model.steps)} points of {'quick' if s.quick else 'full'} "
        f"grid, each the median of its engine steps in {grid.rounds} rounds, {m.threads} "
        f"thread(s), model folder {Path(s.models[n]).name}"
        for n, model in m.models.items()
    }
    out["ops.matmul"] = "PagedCausalLM.linear over a (tokens, in, out) grid, weights streamed"
    out["ops.attention"] = "the models' own attention in their measured steps' forward passes"
    out["ops.elementwise"] = "the rest of each layer in the same forward passes"
    out["ops.step"] = "the measured steps' time outside their forward passes"
    if s.hops:
        out["transports.gloo"] = "gather+checksum, gloo send/recv between Ray actors, check+scatter"
        out["overheads"] = "WorkerClient over a bare Ray actor; Frontend over an in-process worker"
    out["overheads.probe_ms"] = (
        f"ClassifierProbe behind ProbeFront on {_tail(s.prompts_dir) or 'its exemplars'}"
    )
    return out


def _tail(folder: Path | None) -> str:
    """The last three parts of a folder (no machine's home in a shipped profile)."""
    return "/".join(folder.parts[-3:]) if folder else ""
