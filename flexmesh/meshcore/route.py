"""One request's route through its model's workers, as a pure state machine.

`step(state, event) -> (state, actions)` is the only place that decides where a request goes
next: prefill on one worker and hand it off to another, follow the decode worker, fall back
when the prefill worker breaks, migrate when the worker serving it breaks, and when to give up.
The gateway's loop (`services/core/dispatch.py`) turns worker messages into events and actions into
calls; it holds no rule of its own. The simulator runs the same function on a virtual clock.

    PLACED ──Placed──► PREFILLING ──hand-off output──► HANDED_OFF ──output──► DECODING
                           │ (one worker: first token ──────────────────────►)    │
                           └──── stream broke ───► MIGRATING ◄── stream broke ────┘
                                                       │ Replacement ─► PREFILLING or DECODING
    any phase ── final output ─► FINISHED;  deadline, cancel, no worker left, bounds ─► FAILED

A break is a *prefill fallback* while the request is on the prefill worker of a hand-off that
has not happened (`pd.fallback`: recompute elsewhere, or fail), else a *migration* (bounded by
`gateway.max_migrations`): another live worker computes the prompt plus every token already
streamed and continues at the next offset. A KV transfer that fails is reported by the decode
worker; `pd.fallback` decides between recomputing there and failing. docs/pd.md has the failure
table, docs/reliability.md the migration rules, and tests/unit/test_route.py one test per row.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from flexmesh.meshcore.config import FALLBACKS, MeshConfig
from flexmesh.meshcore.messages import RequestState
from flexmesh.meshcore.route_events import (
    Abort,
    Cancel,
    Deadline,
    Fail,
    FindWorker,
    Forward,
    MarkLost,
    Moved,
    NoWorker,
    Output,
    Placed,
    Prefill,
    Refused,
    Replacement,
    Resume,
    RouteAction,
    RouteEvent,
    Run,
    StreamEnded,
    StreamFailed,
    TransferFailed,
    WorkersLost,
)
from flexmesh.meshcore.sampling import SamplingParams

__all__ = [
    "Abort",
    "Cancel",
    "Deadline",
    "Fail",
    "FindWorker",
    "Forward",
    "MarkLost",
    "Moved",
    "NoWorker",
    "Output",
    "Phase",
    "Placed",
    "Prefill",
    "Refused",
    "Replacement",
    "Resume",
    "RouteAction",
    "RouteEvent",
    "RouteRules",
    "RouteState",
    "Run",
    "Step",
    "StreamEnded",
    "StreamFailed",
    "TransferFailed",
    "WorkersLost",
    "step",
]


class Phase(enum.IntEnum):
    """Where a request stands across workers; the two ends last."""

    PLACED = 0
    """Workers chosen, nothing called yet."""
    PREFILLING = 1
    """On its first worker, before its first token (a hand-off's prefill worker, or the one
    worker that serves it all)."""
    HANDED_OFF = 2
    """First token out; the decode worker takes the KV from the prefill worker."""
    DECODING = 3
    """Streaming from the one worker that holds it."""
    MIGRATING = 4
    """The worker it followed broke; waiting for the worker that takes it over."""
    FINISHED = 5
    FAILED = 6

    @property
    def over(self) -> bool:
        return self >= Phase.FINISHED


@dataclass(frozen=True)
class RouteRules:
    """The bounds a route moves within (from `pd` and `gateway` config)."""

    fallback: str = "recompute"
    """`pd.fallback`: a failed hand-off recomputes (`recompute`) or fails (`fail`)."""
    max_migrations: int = 2
    """`gateway.max_migrations`: moves after a broken stream before UNAVAILABLE."""

    @classmethod
    def of(cls, config: MeshConfig) -> RouteRules:
        return cls(config.pd.fallback, config.gateway.max_migrations)

    def __post_init__(self) -> None:
        if self.fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {self.fallback!r}")
        if self.max_migrations < 0:
            raise ValueError(f"max_migrations must be >= 0, got {self.max_migrations}")


@dataclass(frozen=True)
class RouteState:
    """One request's route: what the client has and which worker it follows."""

    request_id: str
    prompt: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams
    rules: RouteRules = RouteRules()
    phase: Phase = Phase.PLACED
    worker: str = ""
    """The worker whose stream the request follows now."""
    prefill_worker: str = ""
    """The worker that computed (or computes) its prompt."""
    decode_worker: str = ""
    """The worker that decodes it (the prefill worker too when nothing is handed off)."""
    prefill_rank: int = -1
    """The prefill worker's rank in the model's KV collective group."""
    tokens: tuple[int, ...] = ()
    """Output tokens forwarded to the client so far."""
    text_chars: int = 0
    queue_ms: float = 0.0
    prefill_ms: float = 0.0
    dead: frozenset[str] = frozenset()
    """The model's workers known dead now."""
    failed: frozenset[str] = frozenset()
    """Workers whose stream of this request broke: never its rescue."""
    migrations: int = 0
    moving: str = ""
    """While MIGRATING: "prefill_fallback" or "migration"."""
    broken: str = ""
    """While MIGRATING: the worker it left."""
    error: str = ""
    """Why it last broke, or why it failed."""
    status: str = ""
    """The status code of a FAILED route (CANCELLED when the client left)."""
    kv_note: str = ""
    """How the KV reached the decode worker when the route itself knows better than the
    worker (a failed transfer that was recomputed: "recompute (timeout)")."""

    def resume_state(self) -> RequestState:
        """The request as another worker resumes it: everything the client received."""
        return RequestState(
            self.request_id,
            self.prompt_token_ids,
            self.tokens,
            self.sampling,
            sent_tokens=len(self.tokens),
            sent_text_chars=self.text_chars,
            queue_ms=self.queue_ms,
            prefill_ms=self.prefill_ms,
            prompt="" if self.prompt_token_ids else self.prompt,
        )

    @property
    def over(self) -> bool:
        """Finished or failed: nothing more happens to it."""
        return self.phase.over

    @property
    def holders(self) -> tuple[str, ...]:
        """Workers holding the request's blocks now (what an abort must reach)."""
        if self.phase is Phase.HANDED_OFF:
            return (self.decode_worker, self.prefill_worker)
        if self.phase in (Phase.PREFILLING, Phase.DECODING):
            return (self.worker,)
        return ()

    @property
    def load(self) -> dict[str, str]:
        """How the request loads each worker for placement: "prefilling" before its first
        token, "decoding" after it (a prefill worker that handed it off carries nothing)."""
        if self.phase is Phase.PREFILLING:
            return {self.worker: "prefilling"}
        if self.phase in (Phase.HANDED_OFF, Phase.DECODING):
            return {self.worker: "decoding"}
        return {}


Step = tuple[RouteState, list[RouteAction]]


# -- the machine -------------------------------------------------------------------------------


def step(state: RouteState, event: RouteEvent) -> Step:
    """The route after `event`, and what to do about it. Events that no longer concern the
    request (a stale worker's, or any after it ended) change nothing."""
    if state.phase.over:
        return state, []
    if state.phase is Phase.PLACED and not isinstance(event, (Placed, Deadline, Cancel)):
        return state, []  # no worker holds it yet
    match event:
        case Placed():
            return _placed(state, event)
        case Output():
            return _output(state, event) if event.worker == state.worker else (state, [])
        case StreamEnded():
            if event.worker != state.worker or state.phase is Phase.MIGRATING:
                return state, []
            end = (
                f"the stream of {state.request_id} on {event.worker} ended without its final chunk"
            )
            return _break(state, end)
        case StreamFailed():
            if event.worker != state.worker or state.phase is Phase.MIGRATING:
                return state, []
            return _break(state, event.error, lost=event.lost)
        case TransferFailed():
            return _transfer_failed(state, event)
        case Refused():
            if event.worker != state.worker or state.phase is Phase.MIGRATING:
                return state, []
            return _fail(state, event.status, event.error)
        case WorkersLost():
            state = replace(state, dead=event.dead)
            if state.phase is Phase.MIGRATING or state.worker not in event.dead:
                return state, []
            lost = f"worker {state.worker} was lost while the request waited on it"
            return _break(state, lost)
        case Replacement():
            return _replaced(state, event.worker)
        case NoWorker():
            if state.phase is not Phase.MIGRATING:
                return state, []
            return _fail(state, "UNAVAILABLE", f"{state.error}; {event.error}")
        case Deadline():
            return _fail(state, "DEADLINE_EXCEEDED", event.error)
        case Cancel():
            aborts: list[RouteAction] = [Abort(w) for w in state.holders]
            return replace(state, phase=Phase.FAILED, status="CANCELLED"), aborts
    raise TypeError(f"not a route event: {event!r}")


def _placed(state: RouteState, event: Placed) -> Step:
    if state.phase is not Phase.PLACED:
        return state, []
    if event.prefill and event.prefill != event.decode:
        p = event.prefill
        state = replace(
            state,
            phase=Phase.PREFILLING,
            worker=p,
            prefill_worker=p,
            decode_worker=event.decode,
            prefill_rank=event.prefill_rank,
        )
        return state, [Prefill(p)]
    d = event.decode
    state = replace(state, phase=Phase.PREFILLING, worker=d, prefill_worker=d, decode_worker=d)
    return state, [Run(d)]


def _output(state: RouteState, event: Output) -> Step:
    out = event.output
    if state.phase is Phase.MIGRATING:
        return state, []
    if out.offset != len(state.tokens):
        gap = (
            f"stream of {state.request_id} broke on {state.worker}: chunk at token "
            f"{out.offset}, expected {len(state.tokens)}"
        )
        return _break(state, gap)
    handing_off = out.handoff is not None and not out.finished
    if handing_off and not _hands_off(state):
        return _break(state, f"{state.worker} handed off {state.request_id} unasked")
    state = replace(
        state,
        tokens=state.tokens + out.token_ids,
        text_chars=state.text_chars + len(out.text),
        queue_ms=out.queue_ms or state.queue_ms,
        prefill_ms=out.prefill_ms or state.prefill_ms,
    )
    if out.finished:
        return replace(state, phase=Phase.FINISHED), [Forward(out)]
    if out.handoff is not None:
        handoff = out.handoff
        d = state.decode_worker
        state = replace(
            state,
            phase=Phase.HANDED_OFF,
            worker=d,
            prompt_token_ids=state.prompt_token_ids or handoff.prompt_token_ids,
        )
        if d in state.dead:
            # Lost since placement: only the prefill worker holds the request (its KV).
            lost = f"worker {d} was lost before the hand-off"
            broken, actions = _break(state, lost, holders=(state.prefill_worker,))
            return broken, [Forward(out), *actions]
        resume = Resume(d, handoff, src=state.prefill_worker, src_rank=state.prefill_rank)
        return state, [Forward(out), resume]
    if out.token_ids and state.phase in (Phase.PREFILLING, Phase.HANDED_OFF):
        state = replace(state, phase=Phase.DECODING)
    return state, [Forward(out)]


def _hands_off(state: RouteState) -> bool:
    """On the prefill worker of a hand-off that has not happened yet."""
    return state.phase is Phase.PREFILLING and state.worker != state.decode_worker


def _break(
    state: RouteState, error: str, lost: bool = False, holders: tuple[str, ...] | None = None
) -> Step:
    """The stream the request follows broke: fall back, migrate, or fail."""
    broken = state.worker
    actions: list[RouteAction] = [Abort(w) for w in (state.holders if holders is None else holders)]
    if lost:
        actions.append(MarkLost(broken))
    kind = "prefill_fallback" if _hands_off(state) else "migration"
    state = replace(
        state,
        failed=state.failed | {broken},
        dead=state.dead | {broken} if lost else state.dead,
        error=error,
    )
    if kind == "prefill_fallback" and state.rules.fallback == "fail":
        return _ended(state, "UNAVAILABLE", error, actions)
    if kind == "migration":
        if state.migrations >= state.rules.max_migrations:
            return _ended(state, "UNAVAILABLE", error, actions)
        state = replace(state, migrations=state.migrations + 1)
    state = replace(state, phase=Phase.MIGRATING, moving=kind, broken=broken)
    return state, [*actions, FindWorker(state.failed)]


def _replaced(state: RouteState, worker: str) -> Step:
    if state.phase is not Phase.MIGRATING:
        return state, []
    moved = Moved(state.broken, worker, state.moving, len(state.tokens), state.error)
    phase = Phase.DECODING if state.tokens else Phase.PREFILLING
    state = replace(
        state,
        phase=phase,
        worker=worker,
        prefill_worker=worker,
        decode_worker=worker,
        moving="",
        broken="",
    )
    call: RouteAction = Resume(worker, state.resume_state()) if state.tokens else Run(worker)
    return state, [moved, call]


def _transfer_failed(state: RouteState, event: TransferFailed) -> Step:
    if event.worker != state.worker or state.phase is not Phase.HANDED_OFF:
        return state, []
    error = f"KV of {state.request_id} did not reach {event.worker}: {event.error}"
    if state.rules.fallback == "fail":
        return _fail(state, "UNAVAILABLE", error)
    # Recompute on the decode worker (it freed its reservation; the prefill worker's hold
    # was released by it or expires).
    state = replace(state, phase=Phase.DECODING, kv_note=f"recompute ({event.outcome})")
    return state, [Resume(event.worker, state.resume_state())]


def _fail(state: RouteState, status: str, error: str) -> Step:
    return _ended(state, status, error, [Abort(w) for w in state.holders])


def _ended(state: RouteState, status: str, error: str, actions: list[RouteAction]) -> Step:
    state = replace(state, phase=Phase.FAILED, status=status, error=error)
    return state, [*actions, Fail(status, error)]
