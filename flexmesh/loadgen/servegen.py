"""ServeGen synthesis: per-client 10-minute rate windows become individual request arrivals.

ServeGen (alibaba/ServeGen, arXiv 2505.09999) publishes, per client and 600-s window, a mean
rate and a fitted inter-arrival distribution whose `(dist_arg1, dist_arg2)` are the (shape,
scale) of scipy's `gamma` / `weibull_min`. As ServeGen itself does, a window's inter-arrival
times are drawn from that distribution and then rescaled so the window holds the published
rate: the fitted shape sets the burstiness, the rate sets the count. Here the count is the
expected count `rate x 600` rounded stochastically (so its mean is exact), and one extra gap is
drawn so the last arrival falls strictly inside the window.

Pools are huge (up to ~3,000 req/s), so only windows overlapping the requested span are read,
windows are synthesised in time order and synthesis stops once `max_requests` are in hand.
Each (client, window) has its own seeded generator, so a window's arrivals do not depend on
which span or pool subset was asked for.
"""

from __future__ import annotations

import ast
import csv
import gzip
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from flexmesh.loadgen.traces import TraceRequest

log = structlog.get_logger(__name__)

WINDOW_S = 600.0
"""Length of one ServeGen rate window."""
DEFAULT_SPAN_S = 600.0
"""Span synthesised when neither a duration nor a request bound is given."""
_INPUT_FIELDS = ("input_tokens", "text_tokens")
"""Prompt-length field: language/reason pools name it input_tokens, mm-image text_tokens."""


@dataclass(frozen=True)
class ClientWindow:
    """One row of a `*_client_windows.csv.gz` file (active windows only)."""

    client_id: int
    window_start_s: float
    rate_rps: float
    cv: float
    iat_dist: str
    arg1: float
    arg2: float


def read_client_windows(
    path: str | Path, start_s: float = 0.0, end_s: float = float("inf")
) -> list[ClientWindow]:
    """Active (rate > 0) windows overlapping `[start_s, end_s)`, sorted by (start, client)."""
    out: list[ClientWindow] = []
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        for row in reader:
            ws = float(row["window_start_s"])
            if ws + WINDOW_S <= start_s or ws >= end_s:
                continue
            rate = float(row["rate_rps"] or 0.0)
            if rate <= 0.0 or not row["iat_dist"]:
                continue
            out.append(
                ClientWindow(
                    int(row["client_id"]),
                    ws,
                    rate,
                    float(row["cv"] or 0.0),
                    row["iat_dist"],
                    float(row["dist_arg1"] or 0.0),
                    float(row["dist_arg2"] or 0.0),
                )
            )
    out.sort(key=lambda w: (w.window_start_s, w.client_id))
    return out


def _gaps(rng: np.random.Generator, window: ClientWindow, n: int) -> np.ndarray:
    """`n` inter-arrival gaps from the window's fitted distribution (scale is irrelevant)."""
    name = window.iat_dist.lower()
    if name == "gamma" and window.arg1 > 0:
        return rng.gamma(window.arg1, 1.0, size=n)
    if name == "weibull" and window.arg1 > 0:
        return rng.weibull(window.arg1, size=n)
    if name in ("exponential", "poisson"):
        return rng.exponential(1.0, size=n)
    # Unknown family: a Gamma with the window's measured CV keeps its burstiness.
    cv = window.cv if window.cv > 0 else 1.0
    return rng.gamma(1.0 / (cv * cv), 1.0, size=n)


def client_window_arrivals(window: ClientWindow, rate_scale: float, seed: int) -> np.ndarray:
    """Sorted arrival times (absolute trace seconds) of one client in one window."""
    rng = np.random.default_rng([seed, window.client_id, int(window.window_start_s)])
    expected = window.rate_rps * rate_scale * WINDOW_S
    n = int(expected) + int(rng.random() < expected - int(expected))
    if n == 0:
        return np.empty(0)
    gaps = _gaps(rng, window, n + 1)
    total = float(gaps.sum())
    if not np.isfinite(total) or total <= 0.0:
        # Degenerate draw (every gap underflowed to 0): spread the arrivals evenly instead.
        gaps = np.ones(n + 1)
        total = float(n + 1)
    times = window.window_start_s + np.cumsum(gaps[:n]) * (WINDOW_S / total)
    # Rounding may land the last arrival on the window's end, which belongs to the next window.
    return np.minimum(times, np.nextafter(window.window_start_s + WINDOW_S, 0.0))


def _pmf(text: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(values, cumulative probabilities) of a PMF stored as a Python dict literal string."""
    table = ast.literal_eval(text)  # NOTE: literal_eval only; these strings are never executed.
    if not isinstance(table, dict) or not table:
        return None
    values = np.array(sorted(table), dtype=np.float64)
    probs = np.array([float(table[v]) for v in sorted(table)], dtype=np.float64)
    cdf = np.cumsum(probs)
    if cdf[-1] <= 0:
        return None
    return values, cdf / cdf[-1]


@dataclass(frozen=True)
class LengthPmf:
    """Prompt and output length distributions of one client in one length window."""

    inputs: tuple[np.ndarray, np.ndarray]
    outputs: tuple[np.ndarray, np.ndarray]

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """`n` (input, output) length pairs, each at least 1 token."""
        u = rng.random((2, n))
        ins = self.inputs[0][
            np.minimum(np.searchsorted(self.inputs[1], u[0]), len(self.inputs[0]) - 1)
        ]
        outs = self.outputs[0][
            np.minimum(np.searchsorted(self.outputs[1], u[1]), len(self.outputs[0]) - 1)
        ]
        return np.maximum(ins, 1).astype(np.int64), np.maximum(outs, 1).astype(np.int64)


class LengthDists:
    """Per-client length PMFs (`*_client_length_dists.jsonl.gz`), parsed lazily and cached.

    ServeGen pairs a rate window with the latest length window starting at or before it;
    windows with an empty field are skipped. Clients without any PMF borrow the pool's mixture
    (equal weight per client) so a partial file still yields plausible lengths.
    """

    def __init__(self, path: str | Path) -> None:
        self._raw: dict[int, dict[float, dict[str, str]]] = {}
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    obj = json.loads(line)
                    wins = {float(k): v for k, v in obj["windows"].items()}
                    self._raw[int(obj["client_id"])] = dict(sorted(wins.items()))
        self._cache: dict[tuple[int, float], LengthPmf | None] = {}
        self._pool_cache: dict[float, LengthPmf | None] = {}

    def _parse(self, client_id: int, start_s: float) -> LengthPmf | None:
        key = (client_id, start_s)
        if key not in self._cache:
            fields = self._raw[client_id][start_s]
            in_text = next((fields[k] for k in _INPUT_FIELDS if k in fields), "{}")
            ins, outs = _pmf(in_text), _pmf(fields.get("output_tokens", "{}"))
            self._cache[key] = LengthPmf(ins, outs) if ins and outs else None
        return self._cache[key]

    def _own(self, client_id: int, window_start_s: float) -> LengthPmf | None:
        """The client's own PMF in force at `window_start_s` (a later one if none earlier)."""
        wins = self._raw.get(client_id, {})
        earlier = [s for s in wins if s <= window_start_s]
        later = [s for s in wins if s > window_start_s]
        for start in [*reversed(earlier), *later]:
            pmf = self._parse(client_id, start)
            if pmf is not None:
                return pmf
        return None

    def for_client(self, client_id: int, window_start_s: float) -> LengthPmf | None:
        """The client's PMF in force at `window_start_s`, or the pool mixture."""
        own = self._own(client_id, window_start_s)
        if own is not None:
            return own
        if window_start_s not in self._pool_cache:
            parts = [self._own(c, window_start_s) for c in self._raw]
            self._pool_cache[window_start_s] = _mixture([p for p in parts if p is not None])
        return self._pool_cache[window_start_s]


def _mix(dists: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    probs: dict[float, float] = defaultdict(float)
    for values, cdf in dists:
        for v, p in zip(values, np.diff(cdf, prepend=0.0), strict=True):
            probs[float(v)] += float(p) / len(dists)
    values = np.array(sorted(probs))
    cdf = np.cumsum([probs[v] for v in values])
    return values, cdf / cdf[-1]


def _mixture(pmfs: list[LengthPmf]) -> LengthPmf | None:
    if not pmfs:
        return None
    return LengthPmf(_mix([p.inputs for p in pmfs]), _mix([p.outputs for p in pmfs]))


def synthesize_servegen(
    windows_path: str | Path,
    lengths_path: str | Path | None = None,
    *,
    start_s: float = 0.0,
    duration_s: float | None = None,
    max_requests: int | None = None,
    rate_scale: float = 1.0,
    seed: int = 0,
    default_input_tokens: int = 256,
    default_output_tokens: int = 64,
) -> list[TraceRequest]:
    """Requests of a ServeGen pool in `[start_s, start_s + duration_s)`, absolute trace time.

    `rate_scale` multiplies every client's rate (ServeGen's own way of scaling a pool). Without
    a lengths file every request gets the default lengths.
    """
    if rate_scale <= 0:
        raise ValueError(f"rate_scale: must be > 0, got {rate_scale}")
    if duration_s is None and max_requests is None:
        log.warning("servegen_span_defaulted", duration_s=DEFAULT_SPAN_S)
        duration_s = DEFAULT_SPAN_S
    end_s = start_s + duration_s if duration_s is not None else float("inf")
    windows = read_client_windows(windows_path, start_s, end_s)
    lengths = LengthDists(lengths_path) if lengths_path else None
    by_start: dict[float, list[ClientWindow]] = defaultdict(list)
    for w in windows:
        by_start[w.window_start_s].append(w)
    times: list[np.ndarray] = []
    ins: list[np.ndarray] = []
    outs: list[np.ndarray] = []
    count = 0
    for ws in sorted(by_start):
        for w in by_start[ws]:
            t = client_window_arrivals(w, rate_scale, seed)
            t = t[(t >= start_s) & (t < end_s)]
            if len(t) == 0:
                continue
            pmf = lengths.for_client(w.client_id, ws) if lengths else None
            if pmf is None:
                n_in = np.full(len(t), default_input_tokens)
                n_out = np.full(len(t), default_output_tokens)
            else:
                rng = np.random.default_rng([seed, w.client_id, int(ws), 1])
                n_in, n_out = pmf.sample(rng, len(t))
            times.append(t)
            ins.append(n_in)
            outs.append(n_out)
            count += len(t)
        # Windows are disjoint in time, so once a whole window is in hand the first
        # max_requests arrivals are final.
        if max_requests is not None and count >= max_requests:
            break
    if not times:
        return []
    all_t, all_in, all_out = np.concatenate(times), np.concatenate(ins), np.concatenate(outs)
    order = np.argsort(all_t, kind="stable")[:max_requests]
    log.info("servegen_synthesised", windows=len(windows), requests=len(order))
    return [TraceRequest(float(all_t[i]), int(all_in[i]), int(all_out[i])) for i in order.tolist()]
