"""`EngineLoad`: what an engine reports about its load (`Engine.load`), read by its worker."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from flexmesh.meshcore.scheduler import Scheduler


@dataclass(frozen=True)
class EngineLoad:
    """What an engine reports about its load; fields are named as in `WorkerStatus`."""

    queue_length: int
    """Requests waiting to be scheduled (not parked for a hand-off)."""
    running_requests: int
    """Requests in the running batch."""
    kv_blocks_used: int
    """KV blocks taken (parked requests' included)."""
    kv_blocks_total: int
    """KV blocks in the cache."""
    kv_blocks_in_flight: int
    """Blocks held for hand-offs: waiting to be sent from here, or reserved to receive."""
    queue_delay_ms: float
    """Expected wait before a new request's prefill starts."""
    prefill_ms: float
    """Recent average time from a request's first step to its first token."""
    prefill_tokens_waiting: int
    """Prompt tokens queued or in a running prefill, not yet computed."""
    decode_batch: int
    """Running requests past their prompt."""
    step_ms: float
    """Recent average wall time of one step."""
    tpot_ms: float
    """Recent average wall time of a step that decodes (the time per output token)."""
    prefill_budget_tokens: int
    """Most prompt tokens one step computes."""
    max_batched_tokens: int
    """The whole token budget of one step."""
    draft_acceptance: Mapping[str, float]
    """Per strategy (pld, spec), recent fraction of draft tokens accepted."""
    tokens_generated: int
    """Output tokens produced since the warm-up."""

    @classmethod
    def of(
        cls,
        s: Scheduler,
        now: float,
        step_ms: float,
        tpot_ms: float,
        draft_acceptance: Mapping[str, float],
        tokens_generated: int,
    ) -> EngineLoad:
        """The load of scheduler `s` at `now`, with the engine's own step figures."""
        return cls(
            queue_length=s.num_waiting,
            running_requests=s.num_running,
            kv_blocks_used=s.pool.num_used,
            kv_blocks_total=s.pool.num_blocks,
            kv_blocks_in_flight=s.num_blocks_in_flight,
            queue_delay_ms=s.queue_delay_ms(now),
            prefill_ms=s.recent_prefill_ms,
            prefill_tokens_waiting=s.num_prefill_tokens_waiting,
            decode_batch=s.num_decoding,
            step_ms=step_ms,
            tpot_ms=tpot_ms,
            prefill_budget_tokens=s.prefill_budget_tokens,
            max_batched_tokens=s.config.max_batched_tokens,
            draft_acceptance=draft_acceptance,
            tokens_generated=tokens_generated,
        )
