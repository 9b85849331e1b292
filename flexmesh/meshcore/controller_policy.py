"""The controller's policies: pure, `decide(snapshot, state, cfg) -> (actions, state)`, called
by the controller actor's reconcile loop (`actors/controller.py`) and by the simulator's mesh
(`sim/mesh.py`) on an immutable snapshot. docs/controller.md argues each rule.

**Predict, then act.** Every worker reports what a step costs: `decode_step_ms` for its decode
batch alone and `prefill_ms_per_token` for each prompt token a step adds. From these and the
prompt tokens waiting the policies predict, for any prefill share, the time per output token
(`step_ms`) and the wait for a new prompt's first token (`ttft_ms`), so a burst is answered in
the round that sees it, before the moving averages show it. A signal is *at risk* at or above
`high_fraction` of its SLO, *safe* below `low_fraction`; the levers aim at the middle.

**Three levers, the cheapest that removes the risk** (per model, each round):

1. *Prefill budget* of each `mixed` worker: acts within a step, costs TPOT. The share is set
   to the largest power of two whose predicted step keeps TPOT under the target line (all of
   the step when nothing decodes). It removes the risk when that share also drains the waiting
   prompt tokens in time (`budget_band`); when no share does both, the worker's TTFT comes
   first (a share of at least what drains them, as co-location would) and the risk is left to
   the next lever.
2. *Role* of a worker, when a model has two or more and budgets cannot remove its risk: acts
   after a drain, costs no quality. TTFT at risk: a `decode` worker with TPOT headroom becomes
   `mixed`; TPOT at risk with TTFT safe: a `prefill` worker becomes `mixed`, else a `mixed`
   one `decode`. At most one per model per `min_dwell_ms`; one prefill-capable and one
   decode-capable worker always remain.
3. *Routing thresholds*, when the mesh routes between a small and a large model and one of
   them is under pressure that its own budgets and roles did not remove this round: acts per
   request, costs quality. Pressure is predicted too: prompt tokens arriving faster than the
   model's prefill capacity, or its expected queue wait at risk (SLO attainment below
   `attainment_target`, known only as requests end, still counts). The large model under
   pressure: it spills sooner (`spill_queue_ms` to its floor) and fewer unsure prompts go to it
   (`confidence_threshold` steps down), never past the quality budget: the router refuses a
   downgrade once its route's share reached `controller.max_downgrade_fraction`, and the
   controller does not lower a threshold whose demanding routes have spent theirs. The small
   one: it spills to the large model sooner (`small_spill_queue_ms`), which costs no quality.
   With no model under pressure each threshold returns to the configured policy.
   A route's PLD or speculation goes off while its own draft acceptance (per route, from the
   requests that ended) is below `min_acceptance` or its model decodes `spec_max_batch`
   requests at once, and back on once the batch is small.

**Beside them, the placement balance** of a model whose gateway places prompts by cache
(`affinity.pick`): affinity sends a prefix's prompts to the worker holding it, which can pile
prefill onto one worker while another idles. While one prefill-capable worker's first-token wait
is at risk and another's is safe, the bound halves (down to 1: load nearly alone decides);
once every one is safe it doubles back toward `pd.cache_balance_ratio`. An operator's bound is
a pin (`placement_balance.<model>`) it leaves alone.

**No flapping.** A knob may move again at once the way it last moved (a growing burst), but
turns back only after its dwell (`min_dwell_ms` for roles, thresholds and drafting;
`budget_dwell_ms` for a share that is only guarded or relaxed, while a share that breaks an
objective now is corrected at once); shares move on a power-of-two grid and hold inside their
band. Pins win: the controller never touches a worker or a policy field the operator set.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from flexmesh.meshcore.config import ControllerConfig
from flexmesh.meshcore.messages import WorkerStatus
from flexmesh.meshcore.pool import DECODE_ROLES, PREFILL_ROLES
from flexmesh.meshcore.routing import RouteTable, RoutingConfig, is_pinned
from flexmesh.meshcore.traffic import Traffic

BALANCE_PIN = "placement_balance"
"""The policy pin of a model's placement bound: `placement_balance.<model>` (the operator's
`SetPolicy` sets it; the balance lever leaves a pinned one alone)."""
MIN_SLO_SAMPLES = 3
"""Requests a model must have ended in the window before its SLO attainment counts."""


@dataclass(frozen=True)
class Snapshot:
    """What the controller sees at one instant (immutable)."""

    t_s: float
    """Monotonic time of the snapshot, in seconds (the controller's clock)."""
    workers: tuple[WorkerStatus, ...]
    """Every worker's latest report; `alive=False` for one that did not answer in time."""
    policy: RoutingConfig | None = None
    """The live routing policy (None: the mesh does not route between two models)."""
    base_policy: RoutingConfig | None = None
    """The configured policy the routing lever returns to when nothing is under pressure."""
    policy_pins: frozenset[str] = frozenset()
    """Policy fields the operator set ("spill_queue_ms", "routes.code", ...)."""
    traffic: Traffic = field(default_factory=Traffic)
    balance: Mapping[str, float] = field(default_factory=dict)
    """Per model placed by cache, the live placement bound (`WorkerPool.balance`)."""
    base_balance: float = 2.0
    """The configured bound the balance lever returns to (`pd.cache_balance_ratio`)."""


@dataclass(frozen=True)
class Action:
    """One decision: what changes, to what, why, and the signals it was taken on."""

    kind: str
    """"role", "prefill_budget", "policy" or "balance" (a model's placement bound)."""
    target: str
    """A worker name, or a policy field ("spill_queue_ms", "routes.code.strategy")."""
    old: str | int | float
    new: str | int | float
    reason: str
    inputs: Mapping[str, float] = field(default_factory=dict)
    model: str = ""


@dataclass(frozen=True)
class ControllerState:
    """The policies' memory between rounds: when each knob last moved and which way (by key:
    a worker, a model for its roles, a policy field)."""

    last_change_s: Mapping[str, float] = field(default_factory=dict)
    direction: Mapping[str, int] = field(default_factory=dict)
    """+1 up, -1 down: the way the knob last moved."""


class _Knobs:
    """The round's view of `ControllerState`: may a knob move now, and record that it did."""

    def __init__(self, now: float, state: ControllerState) -> None:
        self.now = now
        self.last = dict(state.last_change_s)
        self.direction = dict(state.direction)

    def free(self, key: str, direction: int, dwell_ms: float) -> bool:
        """Moving `key` the way it last moved is free at once; the other way after the dwell."""
        if self.direction.get(key, direction) == direction:
            return True
        return self.now - self.last.get(key, -math.inf) >= dwell_ms / 1000.0

    def moved(self, key: str, direction: int) -> None:
        self.last[key] = self.now
        self.direction[key] = direction

    def state(self) -> ControllerState:
        return ControllerState(self.last, self.direction)


def decide(
    snap: Snapshot, state: ControllerState, cfg: ControllerConfig
) -> tuple[list[Action], ControllerState]:
    """Every lever's actions for this round (see the module docstring)."""
    knobs = _Knobs(snap.t_s, state)
    actions: list[Action] = []
    unresolved: set[str] = set()
    """Models whose risk neither their budgets nor a role change removed this round."""
    for model in sorted({w.model for w in snap.workers}):
        workers = [w for w in snap.workers if w.model == model and w.alive]
        prefill = sum(w.role in PREFILL_ROLES and not w.draining for w in workers)
        arriving = snap.traffic.prompt_tokens_per_s.get(model, 0.0) / max(1, prefill)
        short = False
        for w in workers:
            action, removed = _budget_action(w, knobs, cfg, arriving)
            short |= not removed
            if action is None:
                continue
            if "budget" not in cfg.levers:  # the lever is off: the share stays, so does the risk
                short = True
                continue
            actions.append(action)
            knobs.moved(w.name, 1 if int(action.new) > int(action.old) else -1)
        s = signals(workers)
        risk = _model_risk(s, cfg)
        if short or (risk and not any(w.role == "mixed" for w in workers)):
            role = _role_action(workers, s, knobs, cfg, risk) if "role" in cfg.levers else None
            if role is not None:
                actions.append(role)
            else:
                unresolved.add(model)
        if "balance" in cfg.levers and model in snap.balance:
            balance = _balance_action(model, workers, snap, knobs, cfg)
            actions += [balance] if balance is not None else []
    routed = snap.policy is not None and snap.base_policy is not None
    if routed and "routing" in cfg.levers:
        actions += _routing_actions(snap, knobs, cfg, unresolved)
    return actions, knobs.state()


# -- predictions -----------------------------------------------------------------------------


def step_ms(w: WorkerStatus, prompt_tokens: int) -> float:
    """Predicted wall time of one of `w`'s steps computing `prompt_tokens` prompt tokens beside
    its decode batch."""
    base = w.decode_step_ms or w.tpot_ms or w.step_ms
    return base + w.prefill_ms_per_token * prompt_tokens


def share_of(w: WorkerStatus) -> int:
    return w.prefill_budget_tokens or w.max_batched_tokens


def ttft_ms(w: WorkerStatus, share: int = 0) -> float:
    """Expected wait before a new prompt's first token on `w` at prefill share `share` (0: its
    current one): its queue delay, or the time to compute every prompt token it holds at that
    share (`prefill_tokens_waiting` tokens, `share` a step)."""
    share = share or share_of(w)
    waiting = w.prefill_tokens_waiting
    if waiting <= 0 or share <= 0:
        return w.queue_delay_ms
    per_step = step_ms(w, min(share, waiting)) if w.prefill_ms_per_token else w.step_ms
    return max(w.queue_delay_ms, math.ceil(waiting / share) * per_step)


def tpot_ms(w: WorkerStatus, share: int = 0) -> float:
    """Expected time per output token on `w` at prefill share `share` (0: its current one):
    its predicted step with the prompt tokens waiting, or, without a cost model yet, its recent
    steps that decoded. 0 when nothing decodes."""
    if w.decode_batch <= 0:
        return 0.0
    if not w.prefill_ms_per_token:
        return w.tpot_ms
    return step_ms(w, min(share or share_of(w), w.prefill_tokens_waiting))


def budget_band(
    w: WorkerStatus, cfg: ControllerConfig, arriving_per_s: float = 0.0
) -> tuple[int, int]:
    """(lo, hi): the prefill shares that keep `w`'s predicted TTFT (at least lo) and TPOT (at
    most hi) under the target line, midway between safe and at risk. The prompt tokens to
    drain in time are those waiting and those arriving meanwhile (`arriving_per_s`, this
    worker's part of its model's prompt tokens per second). lo > hi: no share does both."""
    target = (cfg.low_fraction + cfg.high_fraction) / 2
    top, per_token = w.max_batched_tokens, w.prefill_ms_per_token
    base = step_ms(w, 0)
    hi = top
    if w.decode_batch > 0 and per_token > 0:
        hi = min(top, math.floor((target * cfg.tpot_slo_ms - base) / per_token))
    lo = 1
    waiting = w.prefill_tokens_waiting + arriving_per_s * target * cfg.ttft_slo_ms / 1000.0
    if waiting > 0 and per_token > 0:
        room_ms = target * cfg.ttft_slo_ms - waiting * per_token  # what steps' base may take
        lo = math.ceil(waiting * base / room_ms) if room_ms > 0 else top + 1
    return lo, hi


def _grid(tokens: int, lo: int, cfg: ControllerConfig, top: int) -> int:
    """`tokens` within [min share, whole step], rounded down to a power of two unless that
    falls below `lo` (a coarse grid: small changes in the signals move nothing)."""
    if tokens >= top:
        return top
    tokens = max(cfg.min_prefill_budget_tokens, tokens)
    power = 1 << (tokens.bit_length() - 1)
    return power if power >= lo else tokens


def _ratios(ttft: float, tpot: float, cfg: ControllerConfig) -> dict[str, float]:
    return {
        "ttft_ms": ttft,
        "tpot_ms": tpot,
        "ttft_ratio": ttft / cfg.ttft_slo_ms,
        "tpot_ratio": tpot / cfg.tpot_slo_ms,
    }


# -- lever 1: prefill budgets ----------------------------------------------------------------


def _budget_action(
    w: WorkerStatus, knobs: _Knobs, cfg: ControllerConfig, arriving_per_s: float = 0.0
) -> tuple[Action | None, bool]:
    """One mixed worker's share for this round (not yet recorded in `knobs`), and whether
    budgets remove its risk."""
    if w.role != "mixed" or w.draining or w.max_batched_tokens <= 0:
        return None, True
    old, top = share_of(w), w.max_batched_tokens
    now = _ratios(ttft_ms(w), tpot_ms(w), cfg)
    at_risk = now["ttft_ratio"] >= cfg.high_fraction or now["tpot_ratio"] >= cfg.high_fraction
    if w.pinned:
        return None, not at_risk
    if w.prefill_ms_per_token:
        lo, hi = budget_band(w, cfg, arriving_per_s)
        removed = lo <= hi or not at_risk
        if lo > hi:
            new = _grid(max(hi, min(lo, top)), 0, cfg, top)
        elif lo <= old <= hi and (hi < top or old == top):
            new = old  # inside the band: hold (the band moves with every report)
        else:  # outside it, or nothing decodes: the whole step
            new = _grid(hi, lo, cfg, top)
    else:  # no cost model yet (nothing prefilled here): react to what the steps show
        lo = hi = 0
        new = old
        if now["tpot_ratio"] >= cfg.high_fraction and now["ttft_ratio"] < cfg.high_fraction:
            new = max(cfg.min_prefill_budget_tokens, old // 2)
        elif now["ttft_ratio"] >= cfg.high_fraction and now["tpot_ratio"] < cfg.low_fraction:
            new = min(top, old * 2)
        removed = new != old or not at_risk
        if knobs.now - knobs.last.get(w.name, -math.inf) < cfg.budget_dwell_ms / 1000.0:
            return None, removed  # lagging signals: one change per dwell
    if new == old:
        return None, removed
    direction = 1 if new > old else -1
    if direction < 0:
        reason = "tpot_at_risk" if now["tpot_ratio"] >= cfg.high_fraction else "tpot_guard"
    else:
        reason = "ttft_at_risk" if now["ttft_ratio"] >= cfg.high_fraction else "relax"
    # A risk is answered at once; a change that only prepares or relaxes waits out the dwell
    # after a change the other way (so a budget round-trips at most once per dwell).
    if not reason.endswith("at_risk") and not knobs.free(w.name, direction, cfg.budget_dwell_ms):
        return None, removed
    after = _ratios(ttft_ms(w, new), tpot_ms(w, new), cfg)
    inputs = {
        **now,
        "predicted_ttft_ms": after["ttft_ms"],
        "predicted_tpot_ms": after["tpot_ms"],
        "band_lo": float(lo),
        "band_hi": float(hi),
        "prefill_tokens_waiting": float(w.prefill_tokens_waiting),
        "prompt_tokens_arriving_per_s": arriving_per_s,
    }
    return Action("prefill_budget", w.name, old, new, reason, inputs, w.model), removed


# -- lever 2: roles --------------------------------------------------------------------------


def signals(workers: list[WorkerStatus]) -> dict[str, float]:
    """TTFT and TPOT signals of one model's live workers, in milliseconds: the longest
    expected first-token wait on a prefill-capable worker, the slowest expected step that
    decodes on a decode-capable one."""
    prefill = [w for w in workers if w.role in PREFILL_ROLES and not w.draining]
    decoding = [w for w in workers if w.role in DECODE_ROLES and w.decode_batch > 0]
    return {
        "queue_delay_ms": max((ttft_ms(w) for w in prefill), default=0.0),
        "tpot_ms": max((tpot_ms(w) for w in decoding), default=0.0),
    }


def _model_risk(s: Mapping[str, float], cfg: ControllerConfig) -> str:
    """ "ttft", "tpot" or "" from a model's `signals` (TTFT first: a prompt that waits misses
    its SLO for sure)."""
    if s["queue_delay_ms"] >= cfg.high_fraction * cfg.ttft_slo_ms:
        return "ttft"
    if s["tpot_ms"] >= cfg.high_fraction * cfg.tpot_slo_ms:
        return "tpot"
    return ""


def _role_action(
    workers: list[WorkerStatus],
    s: Mapping[str, float],
    knobs: _Knobs,
    cfg: ControllerConfig,
    risk: str,
) -> Action | None:
    if len(workers) < 2 or not risk:
        return None
    model = workers[0].model
    if knobs.now - knobs.last.get(model, -math.inf) < cfg.min_dwell_ms / 1000.0:
        return None
    r = _ratios(s["queue_delay_ms"], s["tpot_ms"], cfg)
    inputs = {**r, "queue_delay_ms": s["queue_delay_ms"]}
    action = None
    if risk == "ttft":
        # Only a decode worker with TPOT headroom of its own can take prompts on.
        def roomy(w: WorkerStatus) -> bool:
            return tpot_ms(w) < cfg.high_fraction * cfg.tpot_slo_ms or w.decode_batch == 0

        action = _switch(workers, "decode", "mixed", "ttft_at_risk", inputs, roomy)
    elif r["ttft_ratio"] < cfg.low_fraction:
        action = _switch(workers, "prefill", "mixed", "tpot_at_risk", inputs) or _switch(
            workers, "mixed", "decode", "tpot_at_risk", inputs
        )
    if action is not None:
        knobs.moved(model, 0)
        knobs.moved(action.target, 0)
    return action


def _switch(
    workers: list[WorkerStatus],
    old: str,
    new: str,
    reason: str,
    inputs: Mapping[str, float],
    eligible: Callable[[WorkerStatus], bool] = lambda w: True,
) -> Action | None:
    """The least busy unpinned eligible worker in role `old` moved to `new`, if the invariant
    holds."""
    candidates = [
        w for w in workers if w.role == old and not w.pinned and not w.draining and eligible(w)
    ]
    for w in sorted(candidates, key=lambda w: (w.decode_batch, w.prefill_tokens_waiting)):
        after = [new if x is w else x.role for x in workers if not x.draining]
        if any(r in PREFILL_ROLES for r in after) and any(r in DECODE_ROLES for r in after):
            return Action("role", w.name, old, new, reason, inputs, w.model)
    return None


# -- the placement balance ------------------------------------------------------------------


def _balance_action(
    model: str, workers: list[WorkerStatus], snap: Snapshot, knobs: _Knobs, cfg: ControllerConfig
) -> Action | None:
    """Halve the model's placement bound while prefill piles up on one worker, double it back
    once all are safe (see the module docstring)."""
    prefill = [w for w in workers if w.role in PREFILL_ROLES and not w.draining]
    if len(prefill) < 2:
        return None
    waits = [ttft_ms(w) for w in prefill]
    hi, lo = max(waits), min(waits)
    old, base = snap.balance[model], snap.base_balance
    if hi >= cfg.high_fraction * cfg.ttft_slo_ms and lo < cfg.low_fraction * cfg.ttft_slo_ms:
        new, reason, way = max(1.0, old / 2), "prefill_imbalance", -1
    elif hi < cfg.low_fraction * cfg.ttft_slo_ms and old < base:
        new, reason, way = min(base, old * 2), "prefill_balanced", 1
    else:
        return None
    key = f"{BALANCE_PIN}.{model}"
    if new == old or is_pinned(key, snap.policy_pins) or not knobs.free(key, way, cfg.min_dwell_ms):
        return None
    knobs.moved(key, way)
    inputs = {"ttft_max_ms": hi, "ttft_min_ms": lo}
    return Action("balance", model, old, new, reason, inputs, model)


# -- lever 3: routing ------------------------------------------------------------------------


def prefill_capacity(w: WorkerStatus) -> float:
    """Prompt tokens per second `w` computes at its whole step budget (0: unknown yet)."""
    top = w.max_batched_tokens
    ms = step_ms(w, top) if w.prefill_ms_per_token else 0.0
    return top * 1000.0 / ms if ms > 0 else 0.0


def model_signals(snap: Snapshot, model: str, cfg: ControllerConfig) -> dict[str, float]:
    """One model's routing signals: queue delay, TPOT, prefill load (prompt tokens arriving
    over what its prefill-capable workers compute), SLO attainment, decode batch; pressured
    (attainment missed or a signal at risk) / relaxed (attainment met, every signal safe)."""
    live = [w for w in snap.workers if w.model == model and w.alive]
    prefill = [w for w in live if w.role in PREFILL_ROLES and not w.draining]
    traffic = snap.traffic.models.get(model)
    counted = traffic is not None and traffic.requests >= MIN_SLO_SAMPLES
    capacity = sum(prefill_capacity(w) for w in prefill)
    arriving = snap.traffic.prompt_tokens_per_s.get(model, 0.0)
    out = {
        "queue_delay_ms": min((ttft_ms(w) for w in prefill), default=0.0),
        "tpot_ms": signals(live)["tpot_ms"],
        "prefill_load": arriving / capacity if capacity > 0 else 0.0,
        "slo_attainment": traffic.slo_attainment if counted and traffic else 1.0,
        "decode_batch": float(sum(w.decode_batch for w in live)),
    }
    ratios = (
        out["queue_delay_ms"] / cfg.ttft_slo_ms,
        out["tpot_ms"] / cfg.tpot_slo_ms,
        out["prefill_load"],
    )
    met = out["slo_attainment"] >= cfg.attainment_target
    out["pressured"] = float(not met or max(ratios) >= cfg.high_fraction)
    out["relaxed"] = float(met and max(ratios) < cfg.low_fraction)
    return out


def _routing_actions(
    snap: Snapshot, knobs: _Knobs, cfg: ControllerConfig, unresolved: set[str]
) -> list[Action]:
    policy, base = snap.policy, snap.base_policy
    assert policy is not None and base is not None
    small = model_signals(snap, policy.small_model, cfg)
    large = model_signals(snap, policy.large_model, cfg)
    inputs = {f"{k}_{m}": v for m, s in (("small", small), ("large", large)) for k, v in s.items()}

    # The cheapest lever first: a model whose budgets or roles removed its risk this round
    # needs no route moved.
    def hot(s: Mapping[str, float], model: str, other: Mapping[str, float]) -> bool:
        short = (
            model in unresolved
            or s["prefill_load"] >= cfg.high_fraction
            or s["slo_attainment"] < cfg.attainment_target  # missing for a reason unseen
        )
        return bool(s["pressured"]) and short and bool(other["relaxed"])

    large_hot = hot(large, policy.large_model, small)
    small_hot = hot(small, policy.small_model, large)
    spent = _quality_spent(snap, base, cfg)
    inputs["quality_budget_spent"] = float(spent)
    actions: list[Action] = []

    def move(key: str, old: float, new: float, why: str, extra: Mapping[str, float]) -> None:
        direction = 1 if new > old else -1
        if new == old or is_pinned(key, snap.policy_pins):
            return
        if not knobs.free(key, direction, cfg.min_dwell_ms):
            return
        knobs.moved(key, direction)
        actions.append(Action("policy", key, old, new, why, extra))

    for prefix, s, moving, why in (
        ("", large, large_hot and not spent, "large_overloaded"),
        ("small_", small, small_hot, "small_overloaded"),
    ):
        spill, ret = policy.spill_thresholds(prefix)
        base_spill, base_ret = base.spill_thresholds(prefix)
        if is_pinned(f"{prefix}return_queue_ms", snap.policy_pins):
            continue
        if moving:
            new_spill = min(spill, cfg.min_spill_queue_ms)
        else:  # back to the configured policy once the pressure is gone
            new_spill, why = (spill if s["pressured"] else base_spill), "back_to_config"
        before = len(actions)
        move(f"{prefix}spill_queue_ms", spill, new_spill, why, inputs)
        if len(actions) > before:
            new_ret = round(new_spill * base_ret / base_spill, 3)
            a = actions[-1]
            actions.append(Action("policy", f"{prefix}return_queue_ms", ret, new_ret, a.reason))
    thr = policy.confidence_threshold
    if large_hot and not spent:
        new_thr = max(cfg.min_confidence_threshold, thr - cfg.confidence_step)
        why = "large_overloaded"
    else:
        new_thr, why = base.confidence_threshold, "back_to_config"
        if large["pressured"]:
            new_thr = thr  # hold while the large model is still under pressure
    move("confidence_threshold", thr, round(new_thr, 4), why, inputs)
    actions += _strategy_actions(snap, policy, base, small, large, knobs, cfg)
    return actions


def _quality_spent(snap: Snapshot, base: RoutingConfig, cfg: ControllerConfig) -> bool:
    """Every demanding route a lower threshold would downgrade has spent its quality budget."""
    keys = [
        f.name
        for f in dataclasses.fields(RouteTable)
        if base.routes.get(f.name).model == "large"
        and (base.routes.get(f.name).spillable or f.name == "low_confidence")
    ]
    fractions = snap.traffic.downgrade_fraction
    return bool(keys) and all(fractions.get(k, 0.0) >= cfg.downgrade_bound(k) for k in keys)


def _strategy_actions(
    snap: Snapshot,
    policy: RoutingConfig,
    base: RoutingConfig,
    small: Mapping[str, float],
    large: Mapping[str, float],
    knobs: _Knobs,
    cfg: ControllerConfig,
) -> list[Action]:
    actions = []
    for intent in (f.name for f in dataclasses.fields(RouteTable)):
        key = f"routes.{intent}.strategy"
        route, base_route = policy.routes.get(intent), base.routes.get(intent)
        if base_route.strategy == "none" or route.model != base_route.model:
            continue
        if is_pinned(key, snap.policy_pins):
            continue
        s = dict(large if route.model == "large" else small)
        acceptance = snap.traffic.acceptance.get(intent)
        if acceptance is not None:
            s["acceptance"] = acceptance
        new, why = route.strategy, ""
        if route.strategy != "none":
            if acceptance is not None and acceptance < cfg.min_acceptance:
                new, why = "none", "low_acceptance"
            elif s["decode_batch"] >= cfg.spec_max_batch:
                new, why = "none", "large_batch"
        elif s["decode_batch"] < cfg.spec_max_batch / 2:
            new, why = base_route.strategy, "small_batch"
        direction = -1 if new == "none" else 1
        if new != route.strategy and knobs.free(key, direction, cfg.min_dwell_ms):
            knobs.moved(key, direction)
            actions.append(Action("policy", key, route.strategy, new, why, s))
    return actions


def policy_changes(actions: list[Action]) -> dict[str, object]:
    """The nested change set (`routing.apply_update`'s form) of the policy actions."""
    changes: dict[str, object] = {}
    for a in actions:
        if a.kind != "policy":
            continue
        node = changes
        *parents, leaf = a.target.split(".")
        for p in parents:
            node = node.setdefault(p, {})  # type: ignore[assignment]
        node[leaf] = a.new
    return changes
