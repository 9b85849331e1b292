"""What the gateway saw of its requests lately: arrivals per intent and per model, SLO
attainment per model, the quality budget's downgrades and draft acceptance per route.

The gateway records each request's arrival and end; `summary` reduces the last
`window_s` seconds to what the controller reads, and `capped` tells the router which routes'
downgrades have reached their bound. Pure and stdlib only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
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
    model_arrivals_per_s: dict[str, float] = field(default_factory=dict)
    """Requests per second routed to each model."""
    prompt_tokens_per_s: dict[str, float] = field(default_factory=dict)
    """Prompt tokens per second routed to each model."""
    downgrade_fraction: dict[str, float] = field(default_factory=dict)
    """Per route key (intent or "low_confidence"), the share of its demanding requests routed
    in the window that were downgraded."""
    acceptance: dict[str, float] = field(default_factory=dict)
    """Per route key, draft tokens accepted / proposed by its requests that ended drafting."""


@dataclass(frozen=True)
class Arrival:
    """One routed request, as the window records it."""

    intent: str = ""
    model: str = ""
    prompt_tokens: int = 0
    route_key: str = ""
    demanding: bool = False
    downgraded: bool = False


class TrafficWindow:
    """Sliding record of arrivals and ends (bounded by time and by count)."""

    def __init__(self, window_s: float, max_events: int = 100_000) -> None:
        self.window_s = window_s
        self.arrivals: deque[tuple[float, Arrival]] = deque(maxlen=max_events)
        self.ends: deque[tuple[float, str, bool]] = deque(maxlen=max_events)
        self.drafts: deque[tuple[float, str, int, int]] = deque(maxlen=max_events)
        self._routes: dict[str, list[int]] = {}
        """Per route key, [demanding, downgraded] among `arrivals` (kept with them)."""

    def arrived(self, now: float, a: Arrival) -> None:
        if len(self.arrivals) == self.arrivals.maxlen:
            self._forget(self.arrivals[0][1])
        self.arrivals.append((now, a))
        if a.demanding:
            c = self._routes.setdefault(a.route_key, [0, 0])
            c[0] += 1
            c[1] += a.downgraded

    def ended(self, now: float, model: str, met_slo: bool) -> None:
        self.ends.append((now, model, met_slo))

    def drafted(self, now: float, route_key: str, accepted: int, proposed: int) -> None:
        """A request of `route_key` ended having had `proposed` draft tokens checked."""
        if proposed > 0:
            self.drafts.append((now, route_key, accepted, proposed))

    def capped(
        self, now: float, keys: Iterable[str], bounds: Mapping[str, float], default: float
    ) -> frozenset[str]:
        """The route keys among `keys` where one more downgrade would lift the window's share
        of downgrades among demanding requests above the bound (`bounds`, else `default`)."""
        self._evict(now)
        out = []
        for key in keys:
            n, down = self._routes.get(key, (0, 0))
            if (down + 1) / (n + 1) > bounds.get(key, default):
                out.append(key)
        return frozenset(out)

    def summary(self, now: float) -> Traffic:
        self._evict(now)
        per_s = 1.0 / self.window_s
        rates: dict[str, float] = {}
        model_rates: dict[str, float] = {}
        tokens: dict[str, float] = {}
        for _, a in self.arrivals:
            rates[a.intent] = rates.get(a.intent, 0.0) + per_s
            if a.model:
                model_rates[a.model] = model_rates.get(a.model, 0.0) + per_s
                tokens[a.model] = tokens.get(a.model, 0.0) + a.prompt_tokens * per_s
        counts: dict[str, list[int]] = {}
        for _, model, met in self.ends:
            c = counts.setdefault(model, [0, 0])
            c[0] += 1
            c[1] += met
        models = {m: ModelTraffic(n, ok / n) for m, (n, ok) in counts.items()}
        drafts: dict[str, list[int]] = {}
        for _, key, accepted, proposed in self.drafts:
            d = drafts.setdefault(key, [0, 0])
            d[0] += accepted
            d[1] += proposed
        return Traffic(
            self.window_s,
            rates,
            models,
            model_rates,
            tokens,
            downgrade_fraction={k: down / n for k, (n, down) in self._routes.items() if n},
            acceptance={k: acc / prop for k, (acc, prop) in drafts.items()},
        )

    def _evict(self, now: float) -> None:
        start = now - self.window_s
        while self.arrivals and self.arrivals[0][0] < start:
            self._forget(self.arrivals.popleft()[1])
        for events in (self.ends, self.drafts):
            while events and events[0][0] < start:
                events.popleft()

    def _forget(self, a: Arrival) -> None:
        if a.demanding:
            c = self._routes[a.route_key]
            c[0] -= 1
            c[1] -= a.downgraded
