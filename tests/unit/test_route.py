"""The route machine alone: every row of docs/pd.md's failure table and every migration rule of
docs/reliability.md, driven through `step` with hand-made events (no Ray, no clock)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flexmesh.meshcore import route as rt
from flexmesh.meshcore.config import FALLBACKS
from flexmesh.meshcore.messages import RequestOutput, RequestState
from flexmesh.meshcore.route_diagram import mermaid
from flexmesh.meshcore.sampling import SamplingParams

SAMPLING = SamplingParams(max_tokens=8)
PROMPT_IDS = (7,) * 20


def _new(
    fallback: str = "recompute", max_migrations: int = 2, ids: tuple[int, ...] = ()
) -> rt.RouteState:
    return rt.RouteState("r", "a prompt", ids, SAMPLING, rt.RouteRules(fallback, max_migrations))


def _run(
    state: rt.RouteState, *events: rt.RouteEvent
) -> tuple[rt.RouteState, list[rt.RouteAction]]:
    """Apply `events` in order; return the final state and every action taken."""
    actions: list[rt.RouteAction] = []
    for event in events:
        state, new = rt.step(state, event)
        actions += new
    return state, actions


def _out(offset: int, n: int = 1, finished: bool = False, handoff: bool = False) -> RequestOutput:
    state = RequestState("r", PROMPT_IDS, (0,), SAMPLING, 20, sent_tokens=1) if handoff else None
    ids = tuple(range(offset, offset + n))
    return RequestOutput("r", ids, "t" * n, finished=finished, offset=offset, handoff=state)


def _kinds(actions: Iterable[rt.RouteAction]) -> list[str]:
    return [type(a).__name__ for a in actions]


HANDED_OFF = (rt.Placed("d", "p", 0), rt.Output("p", _out(0, handoff=True)))
"""Prefilled on p, first token streamed, handed off to d."""


def test_a_long_prompt_prefills_on_p_hands_off_and_decodes_on_d() -> None:
    s, acts = _run(_new(), rt.Placed("d", "p", 0))
    assert (s.phase, s.worker, acts) == (rt.Phase.PREFILLING, "p", [rt.Prefill("p")])
    assert s.load == {"p": "prefilling"}
    s, acts = rt.step(s, rt.Output("p", _out(0, handoff=True)))
    assert s.phase is rt.Phase.HANDED_OFF and s.worker == "d" and s.load == {"d": "decoding"}
    assert _kinds(acts) == ["Forward", "Resume"]
    resume = acts[1]
    assert isinstance(resume, rt.Resume) and (resume.worker, resume.src, resume.src_rank) == (
        "d",
        "p",
        0,
    )
    assert s.prompt_token_ids == PROMPT_IDS, "ids come with the hand-off: no second tokenising"
    s, acts = _run(s, rt.StreamEnded("p"), rt.Output("d", _out(1, 3)))
    assert s.phase is rt.Phase.DECODING and _kinds(acts) == ["Forward"]
    s, acts = _run(s, rt.Output("d", _out(4, 1, finished=True)), rt.StreamEnded("d"))
    assert s.phase is rt.Phase.FINISHED and s.tokens == (0, 1, 2, 3, 4)
    assert (s.prefill_worker, s.worker, s.migrations) == ("p", "d", 0) and s.load == {}


def test_a_short_prompt_runs_on_its_decode_worker_alone() -> None:
    s, acts = _run(_new(), rt.Placed("d"))
    assert acts == [rt.Run("d")] and s.load == {"d": "prefilling"}
    s, _ = rt.step(s, rt.Output("d", _out(0)))
    assert s.phase is rt.Phase.DECODING and s.load == {"d": "decoding"}


def test_a_first_token_that_ends_the_request_never_reaches_the_decode_worker() -> None:
    s, acts = _run(_new(), rt.Placed("d", "p", 0), rt.Output("p", _out(0, finished=True)))
    assert s.phase is rt.Phase.FINISHED and _kinds(acts) == ["Prefill", "Forward"]


# -- docs/pd.md, failure table -------------------------------------------------------------


@pytest.mark.parametrize("outcome", ["error", "timeout"])
def test_a_failed_transfer_recomputes_on_the_decode_worker(outcome: str) -> None:
    s, acts = _run(_new(), *HANDED_OFF, rt.TransferFailed("d", outcome, "checksum"))
    assert s.phase is rt.Phase.DECODING and s.kv_note == f"recompute ({outcome})"
    (resume,) = acts[3:]
    assert isinstance(resume, rt.Resume) and (resume.worker, resume.src) == ("d", "")
    assert resume.state.output_token_ids == (0,) and resume.state.sent_tokens == 1
    assert s.migrations == 0, "a recompute on the same worker is no migration"


def test_a_failed_transfer_fails_unavailable_with_fallback_fail() -> None:
    s, acts = _run(_new("fail"), *HANDED_OFF, rt.TransferFailed("d", "timeout", "late"))
    assert s.phase is rt.Phase.FAILED and s.status == "UNAVAILABLE"
    assert acts[3:] == [rt.Abort("d"), rt.Abort("p"), rt.Fail("UNAVAILABLE", s.error)]


@pytest.mark.parametrize("lost", [True, False])
def test_a_prefill_worker_dying_mid_prefill_falls_back_to_another_worker(lost: bool) -> None:
    s, acts = _run(_new(), rt.Placed("d", "p", 0), rt.StreamFailed("p", "died", lost=lost))
    assert s.phase is rt.Phase.MIGRATING and s.moving == "prefill_fallback"
    assert acts[1:] == [
        rt.Abort("p"),
        *([rt.MarkLost("p")] if lost else []),
        rt.FindWorker(frozenset({"p"})),
    ]
    s, acts = rt.step(s, rt.Replacement("d"))
    assert acts == [rt.Moved("p", "d", "prefill_fallback", 0, "died"), rt.Run("d")]
    assert s.phase is rt.Phase.PREFILLING and s.migrations == 0, "a fallback is no migration"


def test_a_prefill_worker_dying_mid_prefill_fails_with_fallback_fail() -> None:
    s, acts = _run(_new("fail"), rt.Placed("d", "p", 0), rt.StreamFailed("p", "died", True))
    assert s.status == "UNAVAILABLE" and acts[-1] == rt.Fail("UNAVAILABLE", "died")


def test_a_prefill_worker_dying_mid_transfer_leaves_the_request_on_its_decode_worker() -> None:
    s, acts = _run(_new(), *HANDED_OFF, rt.WorkersLost(frozenset({"p"})))
    assert s.phase is rt.Phase.HANDED_OFF and s.worker == "d" and acts[3:] == []
    s, _ = rt.step(s, rt.TransferFailed("d", "error", "peer closed"))  # d's receive fails
    assert s.kv_note == "recompute (error)" and s.worker == "d"


@pytest.mark.parametrize("when", ["before the import", "mid-decode"])
def test_a_decode_worker_dying_migrates_the_request(when: str) -> None:
    events: list[rt.RouteEvent] = [*HANDED_OFF]
    if when == "mid-decode":
        events.append(rt.Output("d", _out(1, 2)))
    s, acts = _run(_new(), *events, rt.StreamFailed("d", "died", lost=True))
    held = [rt.Abort("d"), rt.Abort("p")] if when == "before the import" else [rt.Abort("d")]
    n = len(acts) - len(held) - 2
    assert acts[n:] == [*held, rt.MarkLost("d"), rt.FindWorker(frozenset({"d"}))]
    s, acts = rt.step(s, rt.Replacement("p"))
    assert s.migrations == 1 and s.phase is rt.Phase.DECODING
    (moved, resume) = acts
    assert isinstance(moved, rt.Moved) and moved.kind == "migration"
    assert isinstance(resume, rt.Resume) and resume.src == ""
    assert resume.state.output_token_ids == s.tokens and resume.state.sent_tokens == len(s.tokens)
    assert resume.state.prompt_token_ids == PROMPT_IDS and resume.state.prompt == ""


def test_a_cancelled_request_is_aborted_wherever_it_holds_blocks() -> None:
    s, acts = _run(_new(), *HANDED_OFF, rt.Cancel())
    assert acts[3:] == [rt.Abort("d"), rt.Abort("p")] and s.status == "CANCELLED"
    s, acts = _run(_new(), rt.Placed("d"), rt.Cancel())
    assert acts[1:] == [rt.Abort("d")]


# -- docs/reliability.md, migration rules ----------------------------------------------------


@pytest.mark.parametrize(
    "breaks",
    [
        rt.StreamFailed("d", "engine failed"),
        rt.StreamEnded("d"),
        rt.Output("d", _out(3)),  # a gap: token 2 never came
    ],
    ids=["engine-failed", "ended-without-final", "gap"],
)
def test_a_broken_stream_migrates_and_resumes_from_what_the_client_has(
    breaks: rt.RouteEvent,
) -> None:
    s, acts = _run(_new(ids=(5, 6)), rt.Placed("d"), rt.Output("d", _out(0, 2)), breaks)
    assert s.phase is rt.Phase.MIGRATING and s.moving == "migration"
    assert rt.MarkLost("d") not in acts, "only a dead actor leaves the pool"
    s, acts = rt.step(s, rt.Replacement("p"))
    resume = acts[-1]
    assert isinstance(resume, rt.Resume) and resume.state.output_token_ids == (0, 1)
    assert resume.state.sent_text_chars == 2 and resume.state.prompt_token_ids == (5, 6)


def test_text_prompts_travel_as_text_until_ids_are_known() -> None:
    s, acts = _run(_new(), rt.Placed("d"), rt.Output("d", _out(0)), rt.StreamFailed("d", "x"))
    s, acts = rt.step(s, rt.Replacement("p"))
    resume = acts[-1]
    assert isinstance(resume, rt.Resume) and resume.state.prompt == "a prompt"


def test_nothing_streamed_yet_starts_afresh_elsewhere() -> None:
    s, acts = _run(_new(), rt.Placed("d"), rt.StreamFailed("d", "died", True), rt.Replacement("p"))
    assert acts[-1] == rt.Run("p") and s.phase is rt.Phase.PREFILLING and s.migrations == 1


def test_the_migration_bound_fails_unavailable() -> None:
    s, acts = _run(
        _new(max_migrations=1),
        rt.Placed("d"),
        rt.StreamFailed("d", "first", True),
        rt.Replacement("p"),
        rt.StreamFailed("p", "second", True),
    )
    assert s.phase is rt.Phase.FAILED and acts[-1] == rt.Fail("UNAVAILABLE", "second")
    s, acts = _run(_new(max_migrations=0), rt.Placed("d"), rt.StreamEnded("d"))
    assert s.status == "UNAVAILABLE" and "final chunk" in s.error


def test_no_live_worker_left_fails_unavailable_naming_both_causes() -> None:
    _, acts = _run(
        _new(), rt.Placed("d"), rt.StreamFailed("d", "died", True), rt.NoWorker("none left")
    )
    assert acts[-1] == rt.Fail("UNAVAILABLE", "died; none left")


def test_a_broken_worker_is_never_the_rescue() -> None:
    _, acts = _run(
        _new(),
        rt.Placed("d"),
        rt.StreamFailed("d", "a"),
        rt.Replacement("p"),
        rt.StreamFailed("p", "b"),
    )
    assert acts[-1] == rt.FindWorker(frozenset({"d", "p"}))


def test_a_request_waiting_on_a_worker_found_dead_moves_at_once() -> None:
    s, acts = _run(_new(), rt.Placed("d"), rt.WorkersLost(frozenset({"d"})))
    assert s.phase is rt.Phase.MIGRATING and acts[-1] == rt.FindWorker(frozenset({"d"}))
    s, acts = _run(_new(), rt.Placed("d"), rt.WorkersLost(frozenset({"x"})))
    assert s.phase is rt.Phase.PREFILLING and acts[1:] == [], "another worker's death"


def test_a_decode_worker_lost_before_the_hand_off_is_never_called() -> None:
    s, acts = _run(_new(), rt.Placed("d", "p", 0), rt.WorkersLost(frozenset({"d"})))
    assert s.phase is rt.Phase.PREFILLING and acts[1:] == []
    s, acts = rt.step(s, rt.Output("p", _out(0, handoff=True)))
    assert not any(isinstance(a, (rt.Resume, rt.Run)) or a == rt.Abort("d") for a in acts)
    assert acts[-1] == rt.FindWorker(frozenset({"d"})) and acts[1] == rt.Abort("p")
    s, acts = rt.step(s, rt.Replacement("p"))
    assert s.migrations == 1 and isinstance(acts[-1], rt.Resume) and acts[-1].worker == "p"


def test_a_refusal_fails_with_its_own_status_and_never_migrates() -> None:
    s, acts = _run(_new(), rt.Placed("d"), rt.Refused("d", "INVALID_ARGUMENT", "prompt: too long"))
    assert acts[-1] == rt.Fail("INVALID_ARGUMENT", "prompt: too long") and s.migrations == 0


def test_the_deadline_aborts_and_fails() -> None:
    _, acts = _run(_new(), *HANDED_OFF, rt.Deadline("late"))
    assert acts[3:] == [rt.Abort("d"), rt.Abort("p"), rt.Fail("DEADLINE_EXCEEDED", "late")]


def test_stale_and_late_events_change_nothing() -> None:
    s, _ = _run(_new(), *HANDED_OFF)
    for stale in (rt.Output("p", _out(1)), rt.StreamFailed("p", "x", True), rt.StreamEnded("p")):
        assert rt.step(s, stale) == (s, [])
    done, _ = _run(_new(), rt.Placed("d"), rt.Output("d", _out(0, finished=True)))
    for late in (rt.Cancel(), rt.Deadline("x"), rt.StreamFailed("d", "x"), rt.Replacement("p")):
        assert rt.step(done, late) == (done, [])


def test_a_hand_off_nobody_asked_for_breaks_the_stream() -> None:
    s, _ = _run(_new(), rt.Placed("d"), rt.Output("d", _out(0, handoff=True)))
    assert s.phase is rt.Phase.MIGRATING and "unasked" in s.error


def test_rules_refuse_unknown_values() -> None:
    with pytest.raises(ValueError, match="fallback"):
        rt.RouteRules("retry")
    with pytest.raises(ValueError, match="max_migrations"):
        rt.RouteRules(max_migrations=-1)


# -- invariants over any sequence of events ----------------------------------------------------

WORKERS = ("p", "d", "x")
_events = st.one_of(
    st.builds(
        lambda w, o, n, f: rt.Output(w, _out(o, n, finished=f)),
        st.sampled_from(WORKERS),
        st.integers(0, 6),
        st.integers(0, 3),
        st.booleans(),
    ),
    st.builds(lambda w: rt.Output(w, _out(0, handoff=True)), st.sampled_from(WORKERS)),
    st.builds(rt.StreamEnded, st.sampled_from(WORKERS)),
    st.builds(rt.StreamFailed, st.sampled_from(WORKERS), st.just("e"), st.booleans()),
    st.builds(
        rt.TransferFailed,
        st.sampled_from(WORKERS),
        st.sampled_from(["error", "timeout"]),
        st.just("e"),
    ),
    st.builds(rt.WorkersLost, st.frozensets(st.sampled_from(WORKERS))),
    st.builds(rt.Replacement, st.sampled_from(WORKERS)),
    st.builds(rt.NoWorker, st.just("none")),
    st.builds(rt.Deadline, st.just("late")),
    st.just(rt.Cancel()),
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([rt.Placed("d", "p", 0), rt.Placed("d")]),
    st.lists(_events, max_size=30),
    st.sampled_from(FALLBACKS),
    st.integers(0, 2),
)
def test_any_event_sequence_keeps_the_stream_whole_and_the_bounds(
    placed: rt.Placed, events: list[rt.RouteEvent], fallback: str, max_migrations: int
) -> None:
    state, actions = rt.step(_new(fallback, max_migrations), placed)
    forwarded: list[RequestOutput] = []
    for event in events:
        was_over = state.phase.over
        state, actions = rt.step(state, event)
        if was_over:
            assert actions == []
        forwarded += [a.output for a in actions if isinstance(a, rt.Forward)]
        for a in actions:
            if isinstance(a, (rt.Prefill, rt.Run, rt.Resume)):
                assert a.worker == state.worker, "a call always goes to the worker it follows"
        assert state.migrations <= max_migrations
        if state.phase is rt.Phase.FAILED and not was_over and state.status != "CANCELLED":
            assert actions[-1] == rt.Fail(state.status, state.error), "a failure is told"
    offsets = [o.offset for o in forwarded]
    sizes = [len(o.token_ids) for o in forwarded]
    assert offsets == [sum(sizes[:i]) for i in range(len(forwarded))], "contiguous from 0"
    assert state.tokens == tuple(t for o in forwarded for t in o.token_ids)
    assert sum(1 for o in forwarded if o.finished) == (state.phase is rt.Phase.FINISHED)


def test_the_diagram_in_docs_is_the_machine_s_own() -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"
    fresh = mermaid()
    assert fresh in doc.read_text(), "stale: run `python scripts/route_diagram.py`"
    assert "MIGRATING --> DECODING: replacement" in fresh  # the search reaches a migration
