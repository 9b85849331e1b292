"""What the gateway saw of its requests lately: arrivals per intent, SLO attainment per model.

The gateway records each request's arrival and end; `summary` reduces the last
`window_s` seconds to what the controller's routing policy reads. Pure and stdlib only.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelTraffic:
    """One model's requests that ended in the window."""

    requests: int = 0
    """Requests that ended (well or not) in the window."""
    slo_attainment: float = 1.0
    """Fraction of them that met both the TTFT and the TPOT objective (1.0 with none)."""


@dataclass(frozen=True)
class Traffic:
    """The gateway's view over the last window."""

    window_s: float = 0.0
    arrivals_per_s: dict[str, float] = field(default_factory=dict)
    """Requests per second by intent ("" when the request was not probed)."""
    models: dict[str, ModelTraffic] = field(default_factory=dict)


class TrafficWindow:
    """Sliding record of arrivals and ends (bounded by time and by count)."""

    def __init__(self, window_s: float, max_events: int = 100_000) -> None:
        self.window_s = window_s
        self.arrivals: deque[tuple[float, str]] = deque(maxlen=max_events)
        self.ends: deque[tuple[float, str, bool]] = deque(maxlen=max_events)

    def arrived(self, now: float, intent: str) -> None:
        self.arrivals.append((now, intent))

    def ended(self, now: float, model: str, met_slo: bool) -> None:
        self.ends.append((now, model, met_slo))

    def summary(self, now: float) -> Traffic:
        start = now - self.window_s
        for events in (self.arrivals, self.ends):
            while events and events[0][0] < start:
                events.popleft()
        rates: dict[str, float] = {}
        for _, intent in self.arrivals:
            rates[intent] = rates.get(intent, 0.0) + 1.0 / self.window_s
        counts: dict[str, list[int]] = {}
        for _, model, met in self.ends:
            c = counts.setdefault(model, [0, 0])
            c[0] += 1
            c[1] += met
        models = {m: ModelTraffic(n, ok / n) for m, (n, ok) in counts.items()}
        return Traffic(self.window_s, rates, models)
