"""A `Request` owns its tokens, its block table and its status; nothing else does."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from flexmesh.meshcore.sampling import SamplingParams


class RequestStatus(enum.IntEnum):
    """One ordered status: waiting and transfer states first, finished states last.

    It is the scheduler's one truth about where a request is: `WAITING` in its queue (a
    preempted request too: it waits to be recomputed, `num_preemptions` counts how often),
    `RUNNING` in its batch, and the two hand-off states parked outside the step loop until
    their `Request.deadline`: `WAITING_FOR_KV` (blocks reserved on a decode worker while the KV
    travels) and `KV_IN_FLIGHT` (a prefill worker holds the KV for a decode worker).
    """

    WAITING = 0
    WAITING_FOR_KV = 1
    KV_IN_FLIGHT = 2
    RUNNING = 3
    FINISHED_STOPPED = 4
    FINISHED_LENGTH = 5
    FINISHED_ABORTED = 6

    @property
    def parked(self) -> bool:
        """A hand-off state: never scheduled, bounded by the request's deadline."""
        return self in (RequestStatus.WAITING_FOR_KV, RequestStatus.KV_IN_FLIGHT)

    @property
    def finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED

    @property
    def finish_reason(self) -> str:
        return {
            RequestStatus.FINISHED_STOPPED: "stop",
            RequestStatus.FINISHED_LENGTH: "length",
            RequestStatus.FINISHED_ABORTED: "abort",
        }.get(self, "")


@dataclass(eq=False)
class Request:
    """One generation request as the scheduler sees it.

    `num_computed_tokens` catches up with `num_tokens`: there are no prefill or decode phases.
    A request that arrives with imported KV is simply computed up to its prompt. With
    `hand_off`, the request stops after its first token and holds its KV (`KV_IN_FLIGHT`) for a
    decode worker instead of decoding here.
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    eos_token_ids: frozenset[int] = frozenset()
    arrival_time: float = 0.0
    """When the request reached the engine, on the owner's clock (seconds): the core has none."""
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    block_ids: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    deadline: float | None = None
    """While parked (`status.parked`): when the hand-off wait ends, on the scheduler's clock
    (seconds); None in every other status."""
    hand_off: bool = False
    num_preemptions: int = 0
    draft_tokens_proposed: int = 0
    draft_tokens_accepted: int = 0
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    block_hashes: list[bytes] = field(default_factory=list)
    """Names of its full prompt blocks (`prefix_cache.chain_hashes`), when a prefix cache runs."""
    num_cached_blocks: int = 0
    """Leading blocks of `block_ids` that are in the prefix cache (found there or put there)."""

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def timings_ms(self) -> tuple[float, float]:
        """(queue, prefill) ms as measured where it was computed: arrival to its first step,
        that step to its first token (0 for a stage not reached)."""
        return (
            _ms(self.arrival_time, self.first_scheduled_time),
            _ms(self.first_scheduled_time, self.first_token_time),
        )

    @property
    def finished(self) -> bool:
        return self.status.finished

    def append_token(self, token_id: int) -> RequestStatus | None:
        """Add one sampled token; return the finished status it causes, if any."""
        self.output_token_ids.append(token_id)
        sp = self.sampling
        if token_id in sp.stop_token_ids:
            return RequestStatus.FINISHED_STOPPED
        if not sp.ignore_eos and token_id in self.eos_token_ids:
            return RequestStatus.FINISHED_STOPPED
        if len(self.output_token_ids) >= sp.max_tokens:
            return RequestStatus.FINISHED_LENGTH
        return None


def _ms(start: float | None, end: float | None) -> float:
    return 0.0 if start is None or end is None else (end - start) * 1000.0
