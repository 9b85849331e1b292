"""From a trace file (or a synthetic process) and shaping options to prompts ready to replay."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

from flexmesh.loadgen.prefix import SharedPrefixConfig, shared_prefix_trace
from flexmesh.loadgen.prompts import PromptPool, Tokenizer, VocabularyPool
from flexmesh.loadgen.records import ReplayRequest
from flexmesh.loadgen.servegen import synthesize_servegen
from flexmesh.loadgen.shaping import ShapeConfig, Workload, shape
from flexmesh.loadgen.synth import synthesize
from flexmesh.loadgen.traces import TraceRequest, read_azure, read_mooncake, synthetic_trace

log = structlog.get_logger(__name__)

TraceFormat = Literal["azure", "mooncake", "servegen", "poisson", "gamma", "shared-prefix"]
FORMATS: tuple[TraceFormat, ...] = (
    "azure",
    "mooncake",
    "servegen",
    "poisson",
    "gamma",
    "shared-prefix",
)


@dataclass(frozen=True)
class SyntheticConfig:
    """Arrival process and lengths of the `poisson` / `gamma` formats."""

    rate_rps: float = 1.0
    """Mean request rate."""
    cv: float = 2.0
    """Coefficient of variation of inter-arrival times (gamma only; poisson is 1)."""
    input_tokens: int = 256
    """Prompt length of every request."""
    output_tokens: int = 64
    """Output length of every request."""

    def __post_init__(self) -> None:
        for name in ("input_tokens", "output_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")


def infer_format(path: str | Path) -> TraceFormat:
    """Guess a trace's format from its file name."""
    name = Path(path).name
    if "client_windows" in name:
        return "servegen"
    if name.endswith((".jsonl", ".jsonl.gz")):
        return "mooncake"
    if name.endswith(".csv"):
        return "azure"
    raise ValueError(f"format: cannot infer the format of {name!r}; pass it explicitly")


def servegen_lengths_for(windows_path: str | Path) -> Path | None:
    """The `*_client_length_dists.jsonl.gz` beside a ServeGen windows file, if it exists."""
    p = Path(windows_path)
    sibling = p.with_name(
        re.sub(r"client_windows\.csv(\.gz)?$", "client_length_dists.jsonl.gz", p.name)
    )
    return sibling if sibling != p and sibling.exists() else None


def load_workload(
    fmt: TraceFormat,
    trace: str | Path | None,
    config: ShapeConfig,
    *,
    lengths: str | Path | None = None,
    synthetic: SyntheticConfig = SyntheticConfig(),
    shared_prefix: SharedPrefixConfig | None = None,
) -> Workload:
    """Read or synthesise a trace and shape it (`shaping.shape`)."""
    raw: list[TraceRequest]
    shared_prefix = shared_prefix or SharedPrefixConfig()
    if fmt == "shared-prefix":
        # Like poisson/gamma, the rate scale applies to the process itself; the window and
        # max_requests still cut the synthesised requests.
        rate = shared_prefix.rate_rps * config.rate_scale
        raw = shared_prefix_trace(dataclasses.replace(shared_prefix, rate_rps=rate), config.seed)
        config = dataclasses.replace(config, rate_scale=1.0)
    elif fmt in ("poisson", "gamma"):
        # A stationary process has no interesting window: start is ignored, the duration (60 s
        # when neither bound is given) and max_requests bound the arrivals directly.
        no_bound = config.duration_s is None and config.max_requests is None
        raw = synthetic_trace(
            rate_rps=synthetic.rate_rps * config.rate_scale,
            cv=1.0 if fmt == "poisson" else synthetic.cv,
            duration_s=60.0 if no_bound else config.duration_s,
            max_requests=config.max_requests,
            input_tokens=synthetic.input_tokens,
            output_tokens=synthetic.output_tokens,
            seed=config.seed,
        )
        config = dataclasses.replace(config, start_s=0.0, duration_s=None, rate_scale=1.0)
    elif trace is None:
        raise ValueError(f"trace: format {fmt!r} needs a trace file")
    elif fmt == "azure":
        raw = read_azure(trace)
    elif fmt == "mooncake":
        raw = read_mooncake(trace)
    elif fmt == "servegen":
        raw = synthesize_servegen(
            trace,
            lengths if lengths is not None else servegen_lengths_for(trace),
            start_s=config.start_s,
            duration_s=config.duration_s,
            max_requests=config.max_requests,
            rate_scale=config.rate_scale,
            seed=config.seed,
        )
        # Rate scaling and the request bound were applied during synthesis.
        config = dataclasses.replace(config, rate_scale=1.0)
    else:
        raise ValueError(f"format: must be one of {FORMATS}, got {fmt!r}")
    workload = shape(raw, config)
    if fmt == "shared-prefix":
        workload = dataclasses.replace(workload, prefix_block_tokens=shared_prefix.block_tokens)
    log.info(
        "workload_ready",
        format=fmt,
        raw_requests=len(raw),
        requests=len(workload.requests),
        input_scale=round(workload.input_scale, 6),
        output_scale=round(workload.output_scale, 6),
    )
    return workload


@dataclass(frozen=True)
class Phase:
    """One segment of a workload that changes character: a window of a trace at a rate."""

    trace: str
    start_s: float
    duration_s: float
    rate_scale: float = 1.0

    @classmethod
    def parse(cls, spec: str) -> Phase:
        """`TRACE:START:DURATION[:RATE_SCALE]`, e.g. `traces/azure_llm_2023_code.csv:0:30:0.3`."""
        parts = spec.rsplit(":", 3)
        if len(parts) == 4 and not _is_number(parts[1]):
            parts = [f"{parts[0]}:{parts[1]}", *parts[2:]]  # a colon inside the path
        try:
            numbers = [float(x) for x in parts[1:]]
        except ValueError:
            numbers = []
        if len(parts) < 3 or len(numbers) != len(parts) - 1:
            raise ValueError(f"phase: {spec!r} is not TRACE:START:DURATION[:RATE_SCALE]")
        return cls(parts[0], *numbers)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_phases(
    phases: list[Phase], config: ShapeConfig, *, lengths: str | Path | None = None
) -> Workload:
    """Phases one after another: each a shaped window of its trace (its own start, duration and
    rate scale; the rest of `config` shared), arrivals offset by the phases before it."""
    requests: list[TraceRequest] = []
    hashed: list[Workload] = []
    for ph, (_, offset_s, _) in zip(phases, phase_bounds(phases, config.speedup), strict=True):
        shaped = dataclasses.replace(
            config, start_s=ph.start_s, duration_s=ph.duration_s, rate_scale=ph.rate_scale
        )
        w = load_workload(infer_format(ph.trace), ph.trace, shaped, lengths=lengths)
        requests += [
            TraceRequest(r.arrival_s + offset_s, r.input_tokens, r.output_tokens, r.hash_ids)
            for r in w.requests
        ]
        if any(r.hash_ids for r in w.requests):
            hashed.append(w)
    if not hashed:
        return Workload(tuple(requests))
    # Prefix blocks keep the scaled size of the phases that carry them, so a block id still
    # marks the same (shorter) run of tokens; phases scaled apart cannot share one size.
    if len({w.block_tokens for w in hashed}) > 1:
        log.warning("phases.block_sizes_differ", sizes=sorted({w.block_tokens for w in hashed}))
    ref = hashed[0]
    return Workload(tuple(requests), ref.input_scale, ref.output_scale, ref.prefix_block_tokens)


def phase_bounds(phases: list[Phase], speedup: float = 1.0) -> list[tuple[str, float, float]]:
    """Each phase's name and its `[start, end)` in replay time (seconds)."""
    bounds, t = [], 0.0
    for ph in phases:
        length = ph.duration_s / speedup
        bounds.append((f"{Path(ph.trace).stem}@{ph.start_s:g}s x{ph.rate_scale:g}", t, t + length))
        t += length
    return bounds


def build_requests(
    workload: Workload,
    mix: Mapping[str, float],
    prompts_dir: str | Path | None,
    tokenizer: Tokenizer,
    seed: int = 0,
    progress: bool = False,
    phase_mixes: Sequence[tuple[float, Mapping[str, float]]] = (),
) -> list[ReplayRequest]:
    """Attach prompts of the mix's intents (per phase: `synthesize`) to a shaped workload;
    without `prompts_dir`, prompts of random tokens of the tokenizer's vocabulary."""
    intents = {k for m in (mix, *(m for _, m in phase_mixes)) for k in m}
    pool = (
        PromptPool.from_dir(prompts_dir, tokenizer, intents)
        if prompts_dir
        else VocabularyPool(tokenizer)
    )
    return synthesize(workload, mix, pool, seed=seed, progress=progress, phase_mixes=phase_mixes)
