"""What an engine reports about its load (`EngineLoad`, its worker's status fields) and the
step figures it keeps for that (`StepStats`). The real engine and the simulator's worker
(`flexmesh/sim/worker.py`) both keep their figures here, so the controller reads the same
signals from either."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from flexmesh.meshcore.plan import SchedulerOutput
from flexmesh.meshcore.scheduler import Scheduler

STEP_EWMA_WEIGHT = 0.1
"""Weight of the newest step in the moving averages of `StepStats`."""
PERCENTILE_WINDOW = 256
"""Steps (and first tokens) behind the windowed percentiles an engine reports."""
QUANTILES = (50, 90, 99)
MIN_FIT_PROMPT_TOKENS = 16
"""Fewest prompt tokens in a step for it to update `StepStats.prefill_ms_per_token` (fewer:
the step's noise, divided by a few tokens, would swamp the figure)."""


def percentiles(name: str, values: Iterable[float]) -> dict[str, float]:
    """`{name}_p50`, `_p90`, `_p99` of `values` (nearest rank; nothing when empty)."""
    ordered = sorted(values)
    if not ordered:
        return {}
    n = len(ordered)
    return {f"{name}_p{q}": ordered[min(n - 1, (q * n - 1) // 100)] for q in QUANTILES}


@dataclass
class StepStats:
    """An engine's recent step figures, moving averages over its steps."""

    steps: int = 0
    recent_step_ms: float = 0.0
    """Wall time of one step."""
    recent_decode_step_ms: float = 0.0
    """Wall time of a step that decodes (the time per output token)."""
    decode_step_ms: float = 0.0
    """Wall time of a step without prompt tokens (the decode batch alone)."""
    prefill_ms_per_token: float = 0.0
    """What one prompt token adds to a step: a step costs about `decode_step_ms` plus this
    per prompt token it computes (the controller predicts step times from the two)."""
    draft_acceptance: dict[str, float] = field(default_factory=dict)
    """Per strategy (pld, spec), the fraction of draft tokens accepted."""
    prompt_tokens: int = 0
    """Prompt tokens computed by every step so far (cache hits and imported KV are not)."""
    window: deque[tuple[float, bool]] = field(
        default_factory=lambda: deque(maxlen=PERCENTILE_WINDOW)
    )
    """The latest steps: (wall ms, decodes)."""

    def observe(
        self, plan: SchedulerOutput, sampled: Mapping[str, list[int]], step_ms: float
    ) -> None:
        """Count one step of `plan` that took `step_ms` and sampled `sampled`."""
        self.steps += 1
        self.recent_step_ms += STEP_EWMA_WEIGHT * (step_ms - self.recent_step_ms)
        decoding = [c for c in plan.chunks if c.start > 0 and c.num_tokens - c.num_draft == 1]
        if decoding:
            self.recent_decode_step_ms += STEP_EWMA_WEIGHT * (step_ms - self.recent_decode_step_ms)
        self.window.append((step_ms, bool(decoding)))
        prompt_tokens = plan.num_batched_tokens - sum(c.num_tokens for c in decoding)
        self.prompt_tokens += prompt_tokens
        if prompt_tokens == 0:
            self.decode_step_ms += STEP_EWMA_WEIGHT * (step_ms - self.decode_step_ms)
        elif prompt_tokens >= MIN_FIT_PROMPT_TOKENS:
            per_token = max(0.0, step_ms - self.decode_step_ms) / prompt_tokens
            old = self.prefill_ms_per_token or per_token
            self.prefill_ms_per_token = old + STEP_EWMA_WEIGHT * (per_token - old)
        for c in plan.chunks:
            if c.num_draft == 0 or c.request_id not in sampled:
                continue
            rate = (len(sampled[c.request_id]) - 1) / c.num_draft
            strategy = c.sampling.strategy  # drafts come only from an applied strategy
            old = self.draft_acceptance.get(strategy, rate)
            self.draft_acceptance[strategy] = old + STEP_EWMA_WEIGHT * (rate - old)

    def percentiles(self, queue_ms: Iterable[float]) -> dict[str, float]:
        """Windowed percentiles of step time, of a step that decodes (TPOT) and of `queue_ms`
        (the queue times of the latest first tokens)."""
        return {
            **percentiles("step_ms", (ms for ms, _ in self.window)),
            **percentiles("tpot_ms", (ms for ms, decodes in self.window if decodes)),
            **percentiles("queue_ms", queue_ms),
        }


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
    kv_blocks_cached: int
    """Blocks the prefix cache keeps with no request holding them (evictable on demand; not in
    `kv_blocks_used`)."""
    prefix_cache: Mapping[str, float]
    """With `engine.prefix_cache`: hit_tokens, queried_tokens, hit_rate, evictions and
    cached_blocks since the engine started; empty when it is off."""
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
    decode_step_ms: float
    """Recent wall time of a step without prompt tokens."""
    prefill_ms_per_token: float
    """Recent time one prompt token adds to a step."""
    percentiles: Mapping[str, float]
    """Windowed p50/p90/p99 of step_ms, tpot_ms and queue_ms (`StepStats.percentiles`)."""
    prefill_budget_tokens: int
    """Most prompt tokens one step computes."""
    max_batched_tokens: int
    """The whole token budget of one step."""
    draft_acceptance: Mapping[str, float]
    """Per strategy (pld, spec), recent fraction of draft tokens accepted."""
    tokens_generated: int
    """Output tokens produced since the warm-up."""
    prompt_tokens_computed: int
    """Prompt tokens this engine's steps computed since it started (`StepStats.prompt_tokens`):
    its prefill work, which cache-aware placement spreads."""

    @classmethod
    def of(cls, s: Scheduler, now: float, stats: StepStats, tokens_generated: int) -> EngineLoad:
        """The load of scheduler `s` at `now`, with the engine's own step figures."""
        cached = s.cache.num_evictable if s.cache is not None else 0
        return cls(
            queue_length=s.num_waiting,
            running_requests=s.num_running,
            kv_blocks_used=s.pool.num_used - cached,
            kv_blocks_total=s.pool.num_blocks,
            kv_blocks_in_flight=s.num_blocks_in_flight,
            kv_blocks_cached=cached,
            prefix_cache=prefix_figures(s),
            queue_delay_ms=s.queue_delay_ms(now),
            prefill_ms=s.recent_prefill_ms,
            prefill_tokens_waiting=s.num_prefill_tokens_waiting,
            decode_batch=s.num_decoding,
            step_ms=stats.recent_step_ms,
            tpot_ms=stats.recent_decode_step_ms,
            decode_step_ms=stats.decode_step_ms,
            prefill_ms_per_token=stats.prefill_ms_per_token,
            percentiles=stats.percentiles(s.recent_queue_ms),
            prefill_budget_tokens=s.prefill_budget_tokens,
            max_batched_tokens=s.config.max_batched_tokens,
            draft_acceptance=dict(stats.draft_acceptance),
            tokens_generated=tokens_generated,
            prompt_tokens_computed=stats.prompt_tokens,
        )


def prefix_figures(s: Scheduler) -> dict[str, float]:
    """The prefix cache's counters as `EngineLoad.prefix_cache` reports them."""
    if s.cache is None:
        return {}
    st = s.cache.stats()
    figures = {
        "hit_tokens": float(st.hit_tokens),
        "queried_tokens": float(st.queried_blocks * s.config.block_size_tokens),
        "evictions": float(st.evictions),
        "cached_blocks": float(st.cached_blocks),
    }
    if st.hit_rate is not None:
        figures["hit_rate"] = st.hit_rate
    return figures
