"""A `Request` owns its tokens, its block table and its status; nothing else does."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from flexmesh.meshcore.sampling import SamplingParams


class RequestStatus(enum.IntEnum):
    """One ordered status: waiting and transfer states first, finished states last."""

    WAITING = 0
    WAITING_FOR_KV = 1
    KV_IN_FLIGHT = 2
    RUNNING = 3
    PREEMPTED = 4
    FINISHED_STOPPED = 5
    FINISHED_LENGTH = 6
    FINISHED_ABORTED = 7

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
    arrival_time: float = field(default_factory=time.monotonic)
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    block_ids: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    hand_off: bool = False
    num_preemptions: int = 0
    draft_tokens_proposed: int = 0
    draft_tokens_accepted: int = 0
    first_scheduled_time: float | None = None
    first_token_time: float | None = None

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
