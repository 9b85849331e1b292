"""The controller's prefill/decode policy: pure, `decide(snapshot, state, pins) -> (actions,
state)`, called by the controller actor's reconcile loop (`actors/controller.py`).

Per model with two or more live workers it reads two signals from an immutable snapshot of the
workers' reports: the TTFT risk (the longest expected wait before a new prompt's prefill on a
prefill-capable worker) and the TPOT risk (the slowest decode-only step on a decode-capable
worker that is decoding), each against its SLO. TTFT at risk while TPOT is not: a decode worker
becomes `mixed`, adding prefill capacity (dynamic co-location). TPOT at risk while TTFT is
safe: a `mixed` worker becomes `decode`, taking prefill work out of its decode batches (dynamic
disaggregation). Hysteresis: "at risk" is above `high_fraction` of the SLO, "safe" below
`low_fraction`, and a model's roles change at most once per `min_dwell_ms`. An operator's pin
wins: a pinned worker is never changed. Every action keeps one prefill-capable and one
decode-capable worker per model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from flexmesh.meshcore.config import ControllerConfig
from flexmesh.meshcore.messages import WorkerStatus
from flexmesh.meshcore.pool import DECODE_ROLES, PREFILL_ROLES


@dataclass(frozen=True)
class Snapshot:
    """What the controller sees at one instant (immutable)."""

    t_s: float
    """Monotonic time of the snapshot, in seconds."""
    workers: tuple[WorkerStatus, ...]
    """Every worker's report; `alive=False` for one that did not answer in time."""


@dataclass(frozen=True)
class RoleChange:
    """One decision: a worker's new role, why, and the signals it was taken on."""

    worker: str
    model: str
    old: str
    new: str
    reason: str
    inputs: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PDState:
    """The policy's memory between decisions: when each model's roles last changed."""

    last_change_s: Mapping[str, float] = field(default_factory=dict)


def signals(workers: list[WorkerStatus]) -> dict[str, float]:
    """TTFT and TPOT signals of one model's live workers, in milliseconds."""
    prefill = [w for w in workers if w.role in PREFILL_ROLES and not w.draining]
    decoding = [w for w in workers if w.role in DECODE_ROLES and w.decode_batch > 0]
    return {
        "queue_delay_ms": max((w.queue_delay_ms for w in prefill), default=0.0),
        "tpot_ms": max((w.tpot_ms for w in decoding), default=0.0),
    }


def decide(
    snap: Snapshot, state: PDState, pins: frozenset[str], cfg: ControllerConfig
) -> tuple[list[RoleChange], PDState]:
    """At most one role change per model per call (see module docstring)."""
    actions: list[RoleChange] = []
    last = dict(state.last_change_s)
    for model in sorted({w.model for w in snap.workers}):
        workers = [w for w in snap.workers if w.model == model and w.alive]
        if len(workers) < 2 or snap.t_s - last.get(model, -1e18) < cfg.min_dwell_ms / 1000.0:
            continue
        s = signals(workers)
        ttft_ratio = s["queue_delay_ms"] / cfg.ttft_slo_ms
        tpot_ratio = s["tpot_ms"] / cfg.tpot_slo_ms
        change = None
        if ttft_ratio >= cfg.high_fraction and tpot_ratio < cfg.high_fraction:
            change = _switch(workers, pins, "decode", "mixed", "ttft_at_risk")
        elif tpot_ratio >= cfg.high_fraction and ttft_ratio < cfg.low_fraction:
            change = _switch(workers, pins, "mixed", "decode", "tpot_at_risk")
        if change is not None:
            actions.append(RoleChange(**change, inputs={**s, "ttft_ratio": ttft_ratio,
                                                        "tpot_ratio": tpot_ratio}))  # fmt: skip
            last[model] = snap.t_s
    return actions, PDState(last)


def _switch(
    workers: list[WorkerStatus], pins: frozenset[str], old: str, new: str, reason: str
) -> dict[str, str] | None:
    """The least busy unpinned worker in role `old` moved to `new`, if the invariant holds."""
    candidates = [w for w in workers if w.role == old and w.name not in pins and not w.draining]
    for w in sorted(candidates, key=lambda w: (w.decode_batch, w.prefill_tokens_waiting)):
        after = [new if x is w else x.role for x in workers if not x.draining]
        if any(r in PREFILL_ROLES for r in after) and any(r in DECODE_ROLES for r in after):
            return {"worker": w.name, "model": w.model, "old": old, "new": new, "reason": reason}
    return None
