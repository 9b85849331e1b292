"""A step's plan: which tokens of which requests the runner computes (the scheduler's output,
the runner's input). Snapshots: the runner never reads live request state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flexmesh.meshcore.request import Request
from flexmesh.meshcore.sampling import SamplingParams


@dataclass(frozen=True)
class ScheduledChunk:
    """Compute positions `[start, start + num_tokens)` of one request; the last `num_draft` of
    `token_ids` are draft tokens. `samples` is True when the chunk reaches the request's last
    token, so the runner samples. `block_ids` is the request's block table for this step.
    """

    request_id: str
    start: int
    token_ids: tuple[int, ...]
    num_draft: int
    samples: bool
    block_ids: tuple[int, ...]
    sampling: SamplingParams

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def draft_token_ids(self) -> tuple[int, ...]:
        return self.token_ids[len(self.token_ids) - self.num_draft :]


def plan_chunk(req: Request, n: int, drafts: Sequence[int] = ()) -> ScheduledChunk:
    """The snapshot of `req`'s next `n` uncomputed tokens plus `drafts`."""
    start = req.num_computed_tokens
    tokens = req.all_token_ids[start : start + n]
    return ScheduledChunk(
        request_id=req.request_id,
        start=start,
        token_ids=(*tokens, *drafts),
        num_draft=len(drafts),
        samples=start + n >= req.num_tokens,
        block_ids=tuple(req.block_ids),
        sampling=req.sampling,
    )


@dataclass(frozen=True)
class SchedulerOutput:
    """One step's plan."""

    chunks: tuple[ScheduledChunk, ...]
    preempted_ids: tuple[str, ...] = ()
    finished: tuple[Request, ...] = ()
    """Requests ended while planning: alone, they outgrew the whole KV cache."""

    @property
    def num_batched_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)
