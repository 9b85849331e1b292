"""Routing policy: table, confidence threshold, load spill with hysteresis, overrides, updates."""

from __future__ import annotations

from dataclasses import replace

import pytest

from flexmesh.meshcore.errors import InvalidRequestError, UnknownModelError
from flexmesh.meshcore.routing import (
    INTENTS,
    PolicyVersionError,
    ProbeResult,
    Route,
    RouteDecision,
    Router,
    RouterState,
    RoutingConfig,
    apply_update,
    decide,
)

SMALL, LARGE = "demo-small", "demo-large"
POLICY = RoutingConfig(
    spill_queue_ms=200.0,
    return_queue_ms=50.0,
    small_spill_queue_ms=200.0,
    small_return_queue_ms=50.0,
)


def probe(intent: str, confidence: float = 0.9) -> ProbeResult:
    return ProbeResult(intent=intent, confidence=confidence, backend="fake")


def route(
    intent: str, loads: dict[str, float] | None = None, conf: float = 0.9, **kw: str
) -> RouteDecision:
    return decide(probe(intent, conf), loads or {}, POLICY, RouterState(), **kw)[0]


@pytest.mark.parametrize(
    ("intent", "model", "strategy"),
    [
        ("code", SMALL, "pld"),
        ("chat", SMALL, "none"),
        ("math", LARGE, "spec"),
        ("knowledge_qa", LARGE, "spec"),
        ("chinese_exam", LARGE, "spec"),
        ("long_context", SMALL, "pld"),
    ],
)
def test_table_defaults(intent: str, model: str, strategy: str) -> None:
    d = route(intent)
    assert (d.model, d.strategy, d.reason, d.intent) == (model, strategy, "table", intent)
    assert d.policy_version == 1


def test_low_confidence_goes_to_large_model() -> None:
    d = route("chat", conf=0.29)
    assert (d.model, d.reason, d.confidence) == (LARGE, "low_confidence", 0.29)
    assert route("chat", conf=0.3).reason == "table"  # the threshold itself is confident


def test_spill_and_return_with_hysteresis() -> None:
    state = RouterState()
    seq = []
    # small queue delay: rises past spill (200), sits between, falls below return (50)
    for delay in (10.0, 150.0, 250.0, 150.0, 60.0, 40.0, 150.0):
        d, state = decide(probe("code"), {SMALL: delay, LARGE: 0.0}, POLICY, state)
        seq.append(d.model)
    assert seq == [SMALL, SMALL, LARGE, LARGE, LARGE, SMALL, SMALL]


def test_each_direction_spills_at_its_own_thresholds() -> None:
    policy = replace(POLICY, small_spill_queue_ms=1000.0, small_return_queue_ms=900.0)
    loads = {SMALL: 500.0, LARGE: 500.0}
    up, _ = decide(probe("code"), loads, policy, RouterState())
    down, _ = decide(probe("knowledge_qa"), {SMALL: 0.0, LARGE: 500.0}, policy, RouterState())
    assert (up.model, up.reason) == (SMALL, "table"), "the small model's own 1,000 ms"
    assert (down.model, down.reason) == (SMALL, "spill"), "the large model's 200 ms"
    with pytest.raises(InvalidRequestError, match="small_return_queue_ms"):
        replace(POLICY, small_return_queue_ms=300.0)


def test_demanding_requests_are_downgraded_only_within_the_quality_budget() -> None:
    loads = {SMALL: 0.0, LARGE: 1000.0}
    qa, _ = decide(probe("knowledge_qa"), loads, POLICY, RouterState())
    assert (qa.model, qa.route_key, qa.demanding, qa.downgraded) == (
        SMALL, "knowledge_qa", True, True
    )  # fmt: skip
    kept, _ = decide(probe("knowledge_qa"), loads, POLICY, RouterState(), capped=frozenset(
        {"knowledge_qa"}))  # fmt: skip
    assert (kept.model, kept.reason, kept.downgraded) == (LARGE, "quality_budget", False)
    # A lowered confidence threshold sends an unsure chat prompt to its intent's route: a
    # downgrade of the configured low-confidence route, refused once that route is capped.
    low = replace(POLICY, confidence_threshold=0.05)
    unsure = probe("chat", confidence=0.1)
    d, _ = decide(unsure, {}, low, RouterState(), base=POLICY)
    assert (d.model, d.route_key, d.downgraded) == (SMALL, "low_confidence", True)
    d, _ = decide(unsure, {}, low, RouterState(), base=POLICY, capped=frozenset({"low_confidence"}))
    assert (d.model, d.reason) == (LARGE, "quality_budget")
    chat, _ = decide(probe("chat"), {SMALL: 1000.0}, POLICY, RouterState())
    assert (chat.model, chat.demanding, chat.downgraded) == (LARGE, False, False)  # an upgrade
    asked, _ = decide(probe("math"), {}, POLICY, RouterState(), model=SMALL)
    assert asked.demanding and not asked.downgraded, "the caller's own choice is no downgrade"


def test_the_most_demanding_intent_found_decides() -> None:
    # A maths problem behind a chatty greeting: the whole reads chat, a part reads maths.
    mixed = ProbeResult("chat", 0.8, intents={"math": 0.7, "code": 0.9})
    d, _ = decide(mixed, {}, POLICY, RouterState())
    assert (d.model, d.strategy, d.intent, d.route_key) == (LARGE, "spec", "math", "math")
    assert d.confidence == 0.7 and d.demanding
    # Two demanding intents: the surer one's route.
    both = ProbeResult("knowledge_qa", 0.5, intents={"math": 0.9})
    assert decide(both, {}, POLICY, RouterState())[0].route_key == "math"
    # A part below the confidence threshold does not count; nothing demanding: the whole's.
    faint = ProbeResult("chat", 0.8, intents={"math": 0.2, "code": 0.9})
    assert decide(faint, {}, POLICY, RouterState())[0].route_key == "chat"
    # An unsure whole with a sure demanding part: that part's route, not low_confidence.
    unsure = ProbeResult("chat", 0.1, intents={"chinese_exam": 0.6})
    assert decide(unsure, {}, POLICY, RouterState())[0].route_key == "chinese_exam"


def test_one_definition_of_demanding_for_mixed_intents_and_the_budget() -> None:
    # Knowledge served small by the table: no longer demanding, for routing and budget alike.
    table = replace(POLICY.routes, knowledge_qa=Route("small", "none", True))
    policy = replace(POLICY, routes=table)
    assert not policy.is_demanding("knowledge_qa") and policy.is_demanding("math")
    mixed = ProbeResult("chat", 0.9, intents={"knowledge_qa": 0.9})
    d, _ = decide(mixed, {}, policy, RouterState())
    assert (d.model, d.route_key, d.demanding, d.downgraded) == (SMALL, "chat", False, False)
    with pytest.raises(InvalidRequestError):
        ProbeResult("chat", 0.9, intents={"poetry": 0.9})


def test_a_route_variant_serves_in_its_models_place() -> None:
    q8 = "demo-small-int8"
    table = replace(
        POLICY.routes,
        chat=Route("small", "none", True, variant=q8),
        code=Route("small", "pld", True),
    )
    policy = replace(POLICY, routes=table)
    assert policy.routing_models() == (SMALL, LARGE, q8) and policy.role_of(q8) == "small"
    chat = decide(probe("chat"), {}, policy, RouterState())[0]
    code = decide(probe("code"), {}, policy, RouterState())[0]
    assert (chat.model, code.model) == (q8, SMALL)
    # The variant's own queue, at the small model's thresholds, spills it to the large model.
    spilled, state = decide(probe("chat"), {q8: 300.0}, policy, RouterState())
    assert (spilled.model, spilled.reason) == (LARGE, "spill") and q8 in state.spilling
    assert decide(probe("code"), {q8: 300.0}, policy, state)[0].model == SMALL
    # The caller may name it; it is a small model, so speculation on it is refused.
    assert decide(probe("math"), {}, policy, RouterState(), model=q8)[0].model == q8
    with pytest.raises(InvalidRequestError):
        decide(probe("math"), {}, policy, RouterState(), model=q8, strategy="spec")
    with pytest.raises(UnknownModelError):
        decide(probe("chat"), {}, POLICY, RouterState(), model=q8)  # no route names it
    # A large variant: demanding and served as configured is no downgrade.
    big = replace(POLICY, routes=replace(POLICY.routes, math=Route("large", "none", variant="l8")))
    d = decide(probe("math"), {}, big, RouterState())[0]
    assert (d.model, d.demanding, d.downgraded) == ("l8", True, False)
    with pytest.raises(InvalidRequestError, match="standing in for"):
        replace(POLICY, routes=replace(table, math=Route("large", "spec", variant=q8)))


def test_spilled_route_keeps_pld_but_drops_spec_on_small() -> None:
    loads = {SMALL: 0.0, LARGE: 1000.0}
    code = route("code", {SMALL: 1000.0})
    assert (code.model, code.strategy, code.reason) == (LARGE, "pld", "spill")
    qa = route("knowledge_qa", loads)
    assert (qa.model, qa.strategy, qa.reason) == (SMALL, "none", "spill")


def test_non_spillable_and_both_busy_stay() -> None:
    assert route("math", {LARGE: 1000.0}).model == LARGE  # math is not spillable
    both = {SMALL: 1000.0, LARGE: 1000.0}
    assert route("code", both).reason == "table"  # nowhere better to go


def test_state_updates_even_for_overridden_requests() -> None:
    _, state = decide(probe("code"), {SMALL: 300.0}, POLICY, RouterState(), model=SMALL)
    assert state.spilling == frozenset({SMALL})


def test_overrides() -> None:
    d = route("math", model=SMALL)
    assert (d.model, d.strategy, d.reason) == (SMALL, "none", "override")
    assert route("chat", model="auto").reason == "table"
    d = route("chat", strategy="pld")
    assert (d.model, d.strategy, d.reason) == (SMALL, "pld", "override")
    d = route("chat", strategy="spec")  # spec exists only on the large model
    assert (d.model, d.strategy) == (LARGE, "spec")
    d = route("code", {SMALL: 1000.0}, model=SMALL, strategy="none")
    assert (d.model, d.strategy, d.reason) == (SMALL, "none", "override")


def test_bad_overrides_are_typed_errors() -> None:
    with pytest.raises(InvalidRequestError, match="strategy"):
        route("chat", strategy="medusa")
    with pytest.raises(InvalidRequestError, match="spec"):
        route("chat", model=SMALL, strategy="spec")
    with pytest.raises(UnknownModelError):
        route("chat", model="gpt-9")


def test_apply_update_bumps_version_and_keeps_other_fields() -> None:
    p = apply_update(POLICY, {"routes": {"math": {"strategy": "none"}}}, expected_version=1)
    assert p.version == 2
    assert (p.routes.math.model, p.routes.math.strategy) == ("large", "none")
    assert p.routes.code == POLICY.routes.code and p.spill_queue_ms == 200.0
    p3 = apply_update(p, {"confidence_threshold": 0.7}, expected_version=2)
    assert (p3.version, p3.confidence_threshold) == (3, 0.7)


def test_apply_update_rejects_stale_version_and_bad_values() -> None:
    with pytest.raises(PolicyVersionError) as err:
        apply_update(POLICY, {"confidence_threshold": 0.7}, expected_version=0)
    assert isinstance(err.value, InvalidRequestError) and err.value.current == 1
    cases = [
        ({"confidence_threshold": 1.5}, "confidence_threshold"),
        ({"return_queue_ms": 500.0}, "return_queue_ms"),
        ({"routes": {"chat": {"model": "medium"}}}, "routes.chat.model"),
        ({"routes": {"chat": {"strategy": "spec"}}}, "routes.chat.strategy"),
        ({"routes": {"poetry": {}}}, "routes.poetry"),
        ({"spill_queue_ms": "fast"}, "spill_queue_ms"),
        ({"version": 7}, "version"),
    ]
    for changes, name in cases:
        with pytest.raises(InvalidRequestError) as err:
            apply_update(POLICY, changes, expected_version=1)
        assert err.value.field == f"routing.{name}", changes


def test_from_dict_partial_routes_and_round_trip() -> None:
    p = RoutingConfig.from_dict(
        {
            "small_model": "qwen-1.5b",
            "large_model": "qwen-7b",
            "spill_queue_ms": 300,
            "routes": {"math": {"strategy": "pld"}},
        }
    )
    assert p.spill_queue_ms == 300.0 and p.routes.math.model == "large"
    assert RoutingConfig.from_dict(p.to_dict()) == p
    d = decide(probe("math"), {}, p, RouterState())[0]
    assert (d.model, d.strategy) == ("qwen-7b", "pld")


def test_validation_raises_value_error_naming_field_and_value() -> None:
    with pytest.raises(ValueError, match=r"routing\.spill_queue_ms.*-1"):
        RoutingConfig(spill_queue_ms=-1.0)
    with pytest.raises(ValueError, match="large_model"):
        RoutingConfig(small_model="m", large_model="m")
    with pytest.raises(ValueError, match="intent"):
        ProbeResult(intent="poetry", confidence=1.0)


def test_router_wrapper_holds_policy_and_state() -> None:
    r = Router(POLICY)
    assert r.route(probe("code"), {SMALL: 300.0}).reason == "spill"
    assert r.route(probe("code"), {SMALL: 100.0}).reason == "spill"  # hysteresis band
    assert r.update({"spill_queue_ms": 1000.0}, expected_version=1).version == 2
    assert r.route(probe("code"), {SMALL: 10.0}).model == SMALL
    assert set(INTENTS) == {"code", "math", "knowledge_qa", "chinese_exam", "chat", "long_context"}
