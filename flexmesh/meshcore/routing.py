"""Routing policy: which resident model serves a request and with which decoding acceleration.

A-IO keeps a small and a large model of one family resident. Decode is memory-bound, so a
request served by the small model streams ~1/5 of the bytes per token. The probe names the
prompt's intent; `decide` maps it through the policy table, sends low-confidence prompts to the
large model, spills spillable intents to the other model while the target's queue is long
(hysteresis, a pair of thresholds per direction: the large model spills above
`spill_queue_ms` and takes back below `return_queue_ms`, the small one above
`small_spill_queue_ms` / below `small_return_queue_ms`; held in `RouterState`), never past the
quality budget, and lets explicit request fields override everything. Pure and stdlib only.

The quality budget (docs/controller.md): a request is *demanding* when its configured route
(the policy as configured, before any spill or controller change) names the large model; a
*downgrade* is a demanding request served by another model. The caller passes the routes whose
share of downgrades in its window has reached `controller.max_downgrade_fraction` (`capped`);
a request of such a route is not downgraded, whatever the load.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flexmesh.meshcore.errors import InvalidRequestError, UnknownModelError
from flexmesh.meshcore.fields import build, check

INTENTS = ("code", "math", "knowledge_qa", "chinese_exam", "chat", "long_context")
"""Intents the probe names, in a fixed order (score vectors and tables use it)."""
ROUTE_MODELS = ("small", "large")
"""Symbolic models a route names; the policy maps them to resident model names."""
ROUTE_STRATEGIES = ("none", "pld", "spec")
"""Decoding accelerations: none, prompt-lookup decoding, draft-model speculation."""
ROUTE_KEYS = (*INTENTS, "low_confidence")
"""The routes of a `RouteTable`: one per intent and the low-confidence route."""
THRESHOLDS = (
    "confidence_threshold",
    "spill_queue_ms",
    "return_queue_ms",
    "small_spill_queue_ms",
    "small_return_queue_ms",
)
"""The policy's numeric thresholds: the routing lever's knobs."""


class PolicyVersionError(InvalidRequestError):
    """An update named a policy version that is no longer current (lost update avoided)."""

    def __init__(self, expected: int, current: int) -> None:
        super().__init__("expected_version", f"stale: expected {expected}, current is {current}")
        self.expected = expected
        self.current = current


def _check(cond: bool, name: str, value: object, rule: str) -> None:
    check(cond, f"routing.{name}", value, rule)


@dataclass(frozen=True)
class ProbeResult:
    """What the probe sensed about one prompt."""

    intent: str
    """One of `INTENTS`."""
    confidence: float
    """Softmax margin: probability of `intent` minus the runner-up's, in [0, 1]."""
    scores: dict[str, float] = field(default_factory=dict)
    """Per-intent probabilities (or normalised scores) behind the decision."""
    probe_ms: float = 0.0
    """Wall time the probe spent on this prompt."""
    backend: str = ""
    """Backend that produced it: classifier, lm or rule."""
    intents: dict[str, float] = field(default_factory=dict)
    """Every intent found in the prompt's parts (and the whole), with its confidence; empty
    when only the whole was read (then `found` is `{intent: confidence}`)."""

    def __post_init__(self) -> None:
        for intent in (self.intent, *self.intents):
            if intent not in INTENTS:
                raise InvalidRequestError("intent", f"must be one of {INTENTS}, got {intent!r}")

    @property
    def found(self) -> dict[str, float]:
        """Intents found with their confidence, the whole prompt's intent included."""
        return {self.intent: self.confidence, **self.intents}


@dataclass(frozen=True)
class Route:
    """Where one intent goes when nothing overrides it."""

    model: str = "small"
    """Symbolic model: small or large."""
    strategy: str = "none"
    """Decoding acceleration: none, pld or spec (spec drafts with the small model)."""
    spillable: bool = False
    """May move to the other resident model while the target's queue is long."""
    variant: str = ""
    """Resident model that serves this route in place of `model`'s (e.g. a quantised copy of
    it, with its own workers): "" = `model`'s own. It plays `model`'s part everywhere else
    (spill, the quality budget, the controller); spilled, the route goes to the other model."""

    def validate(self, name: str) -> None:
        _check(self.model in ROUTE_MODELS, f"{name}.model", self.model, f"one of {ROUTE_MODELS}")
        rule = f"one of {ROUTE_STRATEGIES}"
        _check(self.strategy in ROUTE_STRATEGIES, f"{name}.strategy", self.strategy, rule)
        # The small model is the draft model; speculating on it would need a third model.
        ok = not (self.strategy == "spec" and self.model == "small")
        _check(ok, f"{name}.strategy", self.strategy, "pld or none on the small model")


@dataclass(frozen=True)
class RouteTable:
    """Default route per intent, argued in docs/routing.md."""

    code: Route = Route("small", "pld", True)
    """Code tolerates the small model; outputs copy identifiers from the prompt (PLD wins)."""
    math: Route = Route("large", "spec", False)
    """Multi-step arithmetic needs the large model; small-model drafts accept well."""
    knowledge_qa: Route = Route("large", "spec", True)
    """Recall grows with parameters; borderline, so it may spill when the large queue is long."""
    chinese_exam: Route = Route("large", "spec", False)
    """Exam accuracy needs the large model."""
    chat: Route = Route("small", "none", True)
    """Open-ended chat tolerates the small model; little to copy from the prompt."""
    long_context: Route = Route("small", "pld", False)
    """KV of a long prompt is ~5x smaller on the small model; answers quote the prompt (PLD)."""
    low_confidence: Route = Route("large", "spec", False)
    """Used when the probe's confidence is below the threshold: trust the accurate model."""

    def get(self, intent: str) -> Route:
        route: Route = getattr(self, intent)
        return route


@dataclass(frozen=True)
class RoutingConfig:
    """The routing policy, composed into `MeshConfig` as `routing:` and changed via `Admin`."""

    small_model: str = "demo-small"
    """Resident model name behind the symbolic `small`."""
    large_model: str = "demo-large"
    """Resident model name behind the symbolic `large`."""
    confidence_threshold: float = 0.3
    """Probe confidence (softmax margin) below which the `low_confidence` route is used."""
    spill_queue_ms: float = 500.0
    """Queue delay of the large model above which its spillable intents go to the small one."""
    return_queue_ms: float = 100.0
    """Queue delay below which the large model, spilling, takes its spillable intents back."""
    small_spill_queue_ms: float = 500.0
    """Queue delay of the small model above which its spillable intents go to the large one."""
    small_return_queue_ms: float = 100.0
    """Queue delay below which the small model, spilling, takes its spillable intents back."""
    long_context_tokens: int = 2048
    """Prompts longer than this are long_context without a probe forward pass."""
    routes: RouteTable = field(default_factory=RouteTable)
    """Default route per intent (plus the low-confidence route)."""
    version: int = 1
    """Policy version; every accepted update adds exactly 1."""

    def __post_init__(self) -> None:
        _check(bool(self.small_model), "small_model", self.small_model, "non-empty")
        _check(bool(self.large_model), "large_model", self.large_model, "non-empty")
        _check(self.small_model != self.large_model, "large_model", self.large_model, "!= small")
        thr = self.confidence_threshold
        _check(0.0 <= thr <= 1.0, "confidence_threshold", thr, "in [0, 1]")
        for prefix in ("", "small_"):
            spill, ret = self.spill_thresholds(prefix)
            _check(spill > 0, f"{prefix}spill_queue_ms", spill, "> 0")
            rule = f"in [0, {prefix}spill_queue_ms)"
            _check(0 <= ret < spill, f"{prefix}return_queue_ms", ret, rule)
        lct = self.long_context_tokens
        _check(lct > 0, "long_context_tokens", lct, "> 0")
        _check(self.version >= 1, "version", self.version, ">= 1")
        for f in dataclasses.fields(RouteTable):
            self.routes.get(f.name).validate(f"routes.{f.name}")
        plays: dict[str, str] = {self.small_model: "small", self.large_model: "large"}
        for f in dataclasses.fields(RouteTable):
            route = self.routes.get(f.name)
            if route.variant:
                # One resident model plays one part: a variant of small is never also large's.
                part = plays.setdefault(route.variant, route.model)
                rule = f"a resident model standing in for {part}, not for {route.model}"
                _check(part == route.model, f"routes.{f.name}.variant", route.variant, rule)

    def model_name(self, role: str) -> str:
        return self.small_model if role == "small" else self.large_model

    def served_by(self, route: Route) -> str:
        """The resident model a route serves on when nothing moves it: its variant, if any."""
        return route.variant or self.model_name(route.model)

    def variants(self) -> dict[str, str]:
        """Every route variant's resident model name → the symbolic model it stands in for."""
        return {
            r.variant: r.model
            for f in dataclasses.fields(RouteTable)
            if (r := self.routes.get(f.name)).variant
        }

    def role_of(self, model: str) -> str:
        """ "small" or "large": the symbolic model a resident routing model plays."""
        if model == self.small_model:
            return "small"
        return self.variants().get(model, "large")

    def routing_models(self) -> tuple[str, ...]:
        """Every resident model a route can be served on: both models and every variant."""
        return (self.small_model, self.large_model, *sorted(self.variants()))

    def spill_thresholds(self, prefix: str) -> tuple[float, float]:
        """(spill, return) queue delays of the large model (prefix "") or the small one
        ("small_")."""
        spill: float = getattr(self, f"{prefix}spill_queue_ms")
        ret: float = getattr(self, f"{prefix}return_queue_ms")
        return spill, ret

    def thresholds_of(self, model: str) -> tuple[float, float]:
        """(spill, return) queue delays of resident model `model` (a variant: its model's)."""
        return self.spill_thresholds("small_" if self.role_of(model) == "small" else "")

    def is_demanding(self, key: str) -> bool:
        """The route of `key` (an intent or "low_confidence") names the large model: one
        definition for mixed-intent routing and the quality budget."""
        return self.routes.get(key).model == "large"

    def configured_route(self, probe: ProbeResult) -> tuple[str, Route]:
        """The route key (an intent, or "low_confidence") and route this policy gives `probe`
        before load or overrides: the most demanding intent found at or above the confidence
        threshold (the surest of them), else the low-confidence route when the whole prompt's
        confidence is below it, else the whole prompt's intent."""
        thr = self.confidence_threshold
        demanding = [(c, i) for i, c in probe.found.items() if c >= thr and self.is_demanding(i)]
        if demanding:
            key = max(demanding)[1]
        elif probe.confidence < thr:
            key = "low_confidence"
        else:
            key = probe.intent
        return key, self.routes.get(key)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoutingConfig:
        """Build from plain YAML/JSON data, rejecting unknown keys and wrong types by name."""
        return build(cls, data, "routing.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RouteDecision:
    """Where one request goes and why."""

    model: str
    """Resident model name that serves the request."""
    strategy: str
    """Decoding acceleration: none, pld or spec."""
    intent: str
    """Intent that decided: the most demanding one found, else the whole prompt's."""
    confidence: float
    """Probe confidence in `intent`."""
    reason: str
    """table, low_confidence, spill, quality_budget (a downgrade refused) or override."""
    policy_version: int = 0
    """Version of the policy that decided."""
    route_key: str = ""
    """The configured route's key: the intent, or "low_confidence"."""
    demanding: bool = False
    """The configured route names the large model."""
    downgraded: bool = False
    """Demanding, and served by the small model (not by the caller's own choice)."""


@dataclass(frozen=True)
class RouterState:
    """Hysteresis memory: models whose queue passed `spill_queue_ms` and has not yet returned."""

    spilling: frozenset[str] = frozenset()
    """Resident model names currently shedding spillable intents."""


def update_state(
    loads: Mapping[str, float], policy: RoutingConfig, state: RouterState
) -> RouterState:
    """Enter spilling above the model's spill threshold, leave below its return threshold,
    else keep."""
    spilling = set(state.spilling)
    for model, delay_ms in loads.items():
        spill_ms, return_ms = policy.thresholds_of(model)
        if delay_ms > spill_ms:
            spilling.add(model)
        elif delay_ms < return_ms:
            spilling.discard(model)
    return RouterState(frozenset(spilling))


def decide(
    probe: ProbeResult,
    loads: Mapping[str, float],
    policy: RoutingConfig,
    state: RouterState,
    model: str = "",
    strategy: str = "",
    base: RoutingConfig | None = None,
    capped: frozenset[str] = frozenset(),
) -> tuple[RouteDecision, RouterState]:
    """Route one request. `loads` maps model name to queue delay in ms (missing = idle).

    `model` ("" or "auto" = router decides) and `strategy` ("" = router decides) are the
    request's own fields; when set they win over the table, confidence and load. `base` is the
    configured policy (default: `policy`), which says whether the request is demanding;
    `capped` holds the route keys whose downgrades have reached their bound.
    """
    if strategy not in ("", *ROUTE_STRATEGIES):
        raise InvalidRequestError("strategy", f"must be '', none, pld or spec, got {strategy!r}")
    known = policy.routing_models()
    if model not in ("", "auto", *known):
        raise UnknownModelError(f"model {model!r} is not a routing model {known}")
    state = update_state(loads, policy, state)
    key, route = policy.configured_route(probe)
    reason = "low_confidence" if key == "low_confidence" else "table"
    role, strat = route.model, route.strategy
    name = policy.served_by(route)
    if route.spillable:
        other = policy.model_name(_other(role))
        if name in state.spilling and other not in state.spilling:
            role, reason, name = _other(role), "spill", other
    base_key, _ = (base or policy).configured_route(probe)
    demanding = (base or policy).is_demanding(base_key)
    if demanding and role != "large" and base_key in capped:
        # The quality budget of this route is spent: serve it as configured.
        route = policy.routes.get(base_key)
        role, strat, reason = "large", route.strategy, "quality_budget"
        name = policy.served_by(route) if route.model == "large" else policy.large_model
    if model not in ("", "auto"):
        role, reason, name = policy.role_of(model), "override", model
    elif strategy == "spec" and role != "large":
        # Speculation drafts with the small model, so only the large one can use it.
        role, name = "large", policy.large_model
    if strategy:
        strat, reason = strategy, "override"
    if strat == "spec" and role == "small":
        if strategy:
            raise InvalidRequestError("strategy", "spec needs the large model (small is the draft)")
        strat = "none"  # a large-model route spilled to the small model loses its draft
    downgraded = demanding and role != "large" and reason != "override"
    decision = RouteDecision(
        name,
        strat,
        key if key != "low_confidence" else probe.intent,
        probe.found.get(key, probe.confidence),
        reason,
        policy.version,
        base_key,
        demanding,
        downgraded,
    )
    return decision, state


def _other(role: str) -> str:
    return "large" if role == "small" else "small"


class Router:
    """Holds the live policy and the hysteresis state; the gateway's frontend owns one."""

    def __init__(self, policy: RoutingConfig | None = None) -> None:
        self.policy = policy or RoutingConfig()
        self.base = self.policy
        """The configured policy: what a request's configured route is read from."""
        self.state = RouterState()

    def route(
        self,
        probe: ProbeResult,
        loads: Mapping[str, float],
        model: str = "",
        strategy: str = "",
        capped: frozenset[str] = frozenset(),
    ) -> RouteDecision:
        decision, self.state = decide(
            probe, loads, self.policy, self.state, model, strategy, self.base, capped
        )
        return decision

    def update(self, changes: Mapping[str, Any], expected_version: int) -> RoutingConfig:
        self.policy = apply_update(self.policy, changes, expected_version)
        return self.policy


def apply_update(
    policy: RoutingConfig, changes: Mapping[str, Any], expected_version: int
) -> RoutingConfig:
    """Return `policy` with `changes` (nested, partial) applied and `version` + 1.

    Raises `PolicyVersionError` when `expected_version` is not the current version and
    `InvalidRequestError` naming the field when a change is unknown or invalid.
    """
    if expected_version != policy.version:
        raise PolicyVersionError(expected_version, policy.version)
    if "version" in changes:
        raise InvalidRequestError("routing.version", "is set by the policy, not by an update")
    merged = _merge(policy.to_dict(), changes)
    merged["version"] = policy.version + 1
    return RoutingConfig.from_dict(merged)


def is_pinned(path: str, pins: Iterable[str]) -> bool:
    """`path` is a pinned field or lies under one ("routes.code" pins "routes.code.strategy")."""
    return any(path == p or path.startswith(p + ".") for p in pins)


def leaves(changes: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested change set as dotted field paths: {"routes.code.strategy": "none", ...}."""
    out: dict[str, Any] = {}
    for key, value in changes.items():
        if isinstance(value, Mapping):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
