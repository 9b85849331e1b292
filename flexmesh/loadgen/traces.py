"""Trace readers: every format becomes a list of `TraceRequest`, arrivals in seconds from 0.

Azure LLM 2023 (CSV of wall-clock timestamps), Mooncake FAST'25 (JSONL, ms offsets and
512-token prefix-block hashes) and synthetic Poisson / Gamma arrivals live here; ServeGen's
per-client windows need a synthesiser of their own (`servegen.py`).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np

MOONCAKE_BLOCK_TOKENS = 512
"""Tokens per Mooncake prefix block (one `hash_ids` entry)."""

_AZURE_TS = re.compile(r"^\s*(\d{4}-\d{2}-\d{2})[ T](\d{1,2}):(\d{2}):(\d{2}(?:\.\d*)?)")


@dataclass(frozen=True)
class TraceRequest:
    """One request of a workload, before a prompt is attached."""

    arrival_s: float
    """Arrival time in seconds from the trace's time origin."""
    input_tokens: int
    """Prompt length in tokens."""
    output_tokens: int
    """Tokens to generate."""
    hash_ids: tuple[int, ...] = ()
    """Prefix-block ids (Mooncake): equal leading ids mean a shared prompt prefix."""


def _azure_seconds(text: str) -> tuple[int, float]:
    """(day ordinal, seconds into the day) of an Azure timestamp; any number of fraction digits.

    `datetime.fromisoformat` truncates or rejects 7-digit fractions depending on the Python
    version, so the fields are parsed by hand and the seconds kept as a float.
    """
    m = _AZURE_TS.match(text)
    if m is None:
        raise ValueError(f"TIMESTAMP: cannot parse {text!r}")
    day = date.fromisoformat(m.group(1)).toordinal()
    return day, int(m.group(2)) * 3600 + int(m.group(3)) * 60 + float(m.group(4))


def _column(header: list[str], *names: str) -> int:
    lowered = [h.strip().lower() for h in header]
    for name in names:
        if name.lower() in lowered:
            return lowered.index(name.lower())
    raise ValueError(f"trace header {header!r} has none of the columns {names}")


def read_azure(path: str | Path) -> list[TraceRequest]:
    """Azure LLM inference trace CSV (`TIMESTAMP,ContextTokens,GeneratedTokens`).

    Arrivals are seconds after the first row; rows are sorted by arrival (stable) in case a
    file is not.
    """
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        i_ts = _column(header, "TIMESTAMP")
        i_in = _column(header, "ContextTokens", "input_tokens")
        i_out = _column(header, "GeneratedTokens", "output_tokens")
        stamps: list[tuple[int, float]] = []
        lengths: list[tuple[int, int]] = []
        for row in reader:
            if not row or not row[i_ts].strip():
                continue
            stamps.append(_azure_seconds(row[i_ts]))
            lengths.append((int(row[i_in]), int(row[i_out])))
    if not stamps:
        return []
    day0, sec0 = stamps[0]
    arrivals = [(day - day0) * 86400.0 + (sec - sec0) for day, sec in stamps]
    origin = min(arrivals)
    out = [
        TraceRequest(a - origin, n_in, n_out)
        for a, (n_in, n_out) in zip(arrivals, lengths, strict=True)
    ]
    out.sort(key=lambda r: r.arrival_s)
    return out


def read_mooncake(path: str | Path) -> list[TraceRequest]:
    """Mooncake JSONL (`timestamp` in ms, `input_length`, `output_length`, `hash_ids`)."""
    rows: list[TraceRequest] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            obj = json.loads(line)
            rows.append(
                TraceRequest(
                    float(obj["timestamp"]) / 1000.0,
                    int(obj["input_length"]),
                    int(obj["output_length"]),
                    tuple(int(h) for h in obj.get("hash_ids", ())),
                )
            )
    if not rows:
        return rows
    origin = min(r.arrival_s for r in rows)
    out = [
        TraceRequest(r.arrival_s - origin, r.input_tokens, r.output_tokens, r.hash_ids)
        for r in rows
    ]
    out.sort(key=lambda r: r.arrival_s)
    return out


def renewal_arrivals(
    rng: np.random.Generator,
    rate_rps: float,
    cv: float,
    duration_s: float | None,
    max_requests: int | None,
) -> np.ndarray:
    """Arrival times of a renewal process with Gamma inter-arrivals (cv = 1 is Poisson).

    Stops at `duration_s` or after `max_requests`, whichever comes first; one bound is needed.
    """
    if rate_rps <= 0:
        raise ValueError(f"rate_rps: must be > 0, got {rate_rps}")
    if cv <= 0:
        raise ValueError(f"cv: must be > 0, got {cv}")
    if duration_s is None and max_requests is None:
        raise ValueError("duration_s / max_requests: synthetic arrivals need at least one bound")
    shape = 1.0 / (cv * cv)
    scale = 1.0 / (rate_rps * shape)
    cap = max_requests if max_requests is not None else 1 << 62
    chunks: list[np.ndarray] = []
    t, count = 0.0, 0
    while count < cap:
        # Draw in blocks: a bound on the expected count keeps this to one or two numpy calls.
        want = min(cap - count, max(1024, int(rate_rps * (duration_s or 0.0) * 1.1) + 64))
        times = t + np.cumsum(rng.gamma(shape, scale, size=want))
        if duration_s is not None:
            times = times[times < duration_s]
        chunks.append(times)
        count += len(times)
        if len(times) < want:
            break
        t = float(times[-1])
    arrivals = np.concatenate(chunks) if chunks else np.empty(0)
    return arrivals[:cap]


def synthetic_trace(
    *,
    rate_rps: float,
    cv: float = 1.0,
    duration_s: float | None = 60.0,
    max_requests: int | None = None,
    input_tokens: int = 256,
    output_tokens: int = 64,
    seed: int = 0,
) -> list[TraceRequest]:
    """Poisson (cv = 1) or Gamma (any cv) arrivals with fixed prompt and output lengths."""
    rng = np.random.default_rng(seed)
    arrivals = renewal_arrivals(rng, rate_rps, cv, duration_s, max_requests)
    return [TraceRequest(float(a), input_tokens, output_tokens) for a in arrivals]


def trace_lengths(requests: Iterable[TraceRequest]) -> tuple[int, int]:
    """Longest prompt and longest output of a workload (0, 0 when empty)."""
    max_in = max_out = 0
    for r in requests:
        max_in = max(max_in, r.input_tokens)
        max_out = max(max_out, r.output_tokens)
    return max_in, max_out
