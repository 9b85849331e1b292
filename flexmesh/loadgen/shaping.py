"""Workload shaping: cut a time window out of a trace, change its rate, bound it, fit lengths.

Order of operations (each on the previous one's output):
1. window: keep arrivals in `[start_s, start_s + duration_s)` of trace time, re-based to 0 at
   `start_s` (an idle gap at the start of the window is kept, as in the trace);
2. rate_scale: < 1 thins (each request kept with that probability), > 1 replicates (each
   request gets floor(s) copies plus one more with probability frac(s); copies land uniformly
   between the original's arrival and the next arrival, so the time profile is kept);
3. speedup: divides every arrival time (the same requests, compressed in time);
4. max_requests: the first N arrivals;
5. lengths: `max_input_tokens` / `max_output_tokens`. Mode "scale" (default) multiplies every
   length by one common factor so the longest fits, which keeps the distribution's shape and
   the ratios between requests (and Mooncake's 512-token prefix blocks scale with it); mode
   "clip" cuts only the lengths above the bound. Lengths never fall below 1 token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from flexmesh.loadgen.traces import MOONCAKE_BLOCK_TOKENS, TraceRequest, trace_lengths

LengthMode = Literal["scale", "clip"]


@dataclass(frozen=True)
class ShapeConfig:
    """How a raw trace becomes the workload that is replayed."""

    start_s: float = 0.0
    """Start of the trace-time window, in seconds from the trace origin."""
    duration_s: float | None = None
    """Length of the trace-time window; None runs to the end of the trace."""
    speedup: float = 1.0
    """Divide arrival times by this (2 replays an hour of trace in 30 minutes)."""
    rate_scale: float = 1.0
    """Multiply the request rate by thinning (< 1) or replicating (> 1) arrivals."""
    max_requests: int | None = None
    """Keep only the first N requests after the steps above."""
    max_input_tokens: int | None = None
    """Longest prompt allowed, in tokens."""
    max_output_tokens: int | None = None
    """Longest output allowed, in tokens."""
    length_mode: LengthMode = "scale"
    """"scale": one common factor per direction so the longest fits; "clip": cut at the bound."""
    seed: int = 0
    """Seed of thinning / replication."""

    def __post_init__(self) -> None:
        if self.start_s < 0:
            raise ValueError(f"start_s: must be >= 0, got {self.start_s}")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError(f"duration_s: must be > 0, got {self.duration_s}")
        if self.speedup <= 0:
            raise ValueError(f"speedup: must be > 0, got {self.speedup}")
        if self.rate_scale <= 0:
            raise ValueError(f"rate_scale: must be > 0, got {self.rate_scale}")
        if self.max_requests is not None and self.max_requests < 1:
            raise ValueError(f"max_requests: must be >= 1, got {self.max_requests}")
        for name in ("max_input_tokens", "max_output_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}: must be >= 1, got {value}")
        if self.length_mode not in ("scale", "clip"):
            raise ValueError(f"length_mode: must be 'scale' or 'clip', got {self.length_mode!r}")


@dataclass(frozen=True)
class Workload:
    """Shaped requests plus the length factors applied to them."""

    requests: tuple[TraceRequest, ...]
    input_scale: float = 1.0
    """Factor applied to prompt lengths (1 when clipped or untouched)."""
    output_scale: float = 1.0
    """Factor applied to output lengths."""
    prefix_block_tokens: int = MOONCAKE_BLOCK_TOKENS
    """Tokens of one prefix block (one `hash_ids` entry) before length scaling."""

    @property
    def block_tokens(self) -> int:
        """Tokens of one prefix block after length scaling."""
        return max(1, round(self.prefix_block_tokens * self.input_scale))


def window(
    requests: Sequence[TraceRequest], start_s: float, duration_s: float | None
) -> list[TraceRequest]:
    """Requests in `[start_s, start_s + duration_s)`, arrivals re-based to `start_s`."""
    end = math.inf if duration_s is None else start_s + duration_s
    return [
        TraceRequest(r.arrival_s - start_s, r.input_tokens, r.output_tokens, r.hash_ids)
        for r in requests
        if start_s <= r.arrival_s < end
    ]


def scale_rate(
    requests: Sequence[TraceRequest], rate_scale: float, rng: np.random.Generator
) -> list[TraceRequest]:
    """Thin (< 1) or replicate (> 1) arrivals; see the module docstring."""
    if rate_scale == 1.0 or not requests:
        return list(requests)
    if rate_scale < 1.0:
        keep = rng.random(len(requests)) < rate_scale
        return [r for r, k in zip(requests, keep, strict=True) if k]
    whole = int(rate_scale)
    extra = rng.random(len(requests)) < rate_scale - whole
    out: list[TraceRequest] = []
    for i, r in enumerate(requests):
        nxt = requests[i + 1].arrival_s if i + 1 < len(requests) else r.arrival_s
        copies = whole - 1 + int(extra[i])
        out.append(r)
        for t in rng.uniform(r.arrival_s, max(nxt, r.arrival_s), size=copies):
            out.append(TraceRequest(float(t), r.input_tokens, r.output_tokens, r.hash_ids))
    out.sort(key=lambda q: q.arrival_s)
    return out


def _fit(n: int, bound: int | None, factor: float) -> int:
    # At least one token: the gateway rejects max_tokens = 0 and an empty prompt means nothing.
    if bound is None:
        return max(1, n)
    return max(1, min(bound, round(n * factor)))


def fit_lengths(
    requests: Sequence[TraceRequest],
    max_input_tokens: int | None,
    max_output_tokens: int | None,
    mode: LengthMode = "scale",
) -> Workload:
    """Bring every prompt / output within its bound (see the module docstring)."""
    longest_in, longest_out = trace_lengths(requests)
    in_scale = out_scale = 1.0
    if mode == "scale":
        if max_input_tokens is not None and longest_in > max_input_tokens:
            in_scale = max_input_tokens / longest_in
        if max_output_tokens is not None and longest_out > max_output_tokens:
            out_scale = max_output_tokens / longest_out
    fitted = tuple(
        TraceRequest(
            r.arrival_s,
            _fit(r.input_tokens, max_input_tokens, in_scale),
            _fit(r.output_tokens, max_output_tokens, out_scale),
            r.hash_ids,
        )
        for r in requests
    )
    return Workload(fitted, in_scale, out_scale)


def shape(requests: Sequence[TraceRequest], config: ShapeConfig) -> Workload:
    """Apply window, rate_scale, speedup, max_requests and length bounds, in that order."""
    rng = np.random.default_rng([config.seed, 7])
    out = window(requests, config.start_s, config.duration_s)
    out = scale_rate(out, config.rate_scale, rng)
    if config.speedup != 1.0:
        out = [
            TraceRequest(r.arrival_s / config.speedup, r.input_tokens, r.output_tokens, r.hash_ids)
            for r in out
        ]
    out = out[: config.max_requests]
    return fit_lengths(out, config.max_input_tokens, config.max_output_tokens, config.length_mode)
