"""The scheduler plans each engine step and applies its result; it never touches tensors.

Each step every scheduled request computes some of its uncomputed tokens (a whole prompt, a
chunk of one, or one decode token plus draft tokens). Running requests go first, oldest first;
when KV blocks run out the newest running request is preempted (its blocks freed, recomputed
later from its tokens). Waiting requests are then admitted while the step's token budget, the
sequence limit and free blocks allow.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from flexmesh.meshcore.block_pool import BlockPool, blocks_needed
from flexmesh.meshcore.config import EngineConfig
from flexmesh.meshcore.errors import InvalidRequestError
from flexmesh.meshcore.request import Request, RequestStatus

PREFILL_EWMA_WEIGHT = 0.2
"""Weight of the newest request in `Scheduler.recent_prefill_ms`."""


@dataclass(frozen=True)
class ScheduledChunk:
    """Tokens `[start, start + num_tokens)` of `request` (the last `num_draft` are drafts).

    `samples` is True when the chunk reaches the request's last token, so the runner samples.
    """

    request: Request
    start: int
    num_tokens: int
    num_draft: int
    samples: bool


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


class Scheduler:
    """Continuous batching over a paged KV cache (see module docstring)."""

    def __init__(self, config: EngineConfig, num_blocks: int, max_model_len_tokens: int) -> None:
        self.config = config
        self.pool = BlockPool(num_blocks)
        self.max_model_len_tokens = max_model_len_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.recent_prefill_ms = 0.0
        """Moving average of a request's first step to its first token: its prefill's cost."""

    # -- admission -------------------------------------------------------------------------

    def add(self, request: Request) -> None:
        """Queue a request; raise `InvalidRequestError` if it can never be served."""
        n = request.num_prompt_tokens
        if n == 0:
            raise InvalidRequestError("prompt", "is empty")
        if n >= self.max_model_len_tokens:
            raise InvalidRequestError(
                "prompt", f"has {n} tokens, the model's context is {self.max_model_len_tokens}"
            )
        if blocks_needed(n + 1, self.config.block_size_tokens) > self.pool.num_blocks:
            raise InvalidRequestError("prompt", f"has {n} tokens, more than the whole KV cache")
        if request.request_id in self.requests:
            raise InvalidRequestError("request_id", f"{request.request_id!r} is already in use")
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def abort(self, request_id: str) -> Request | None:
        """Stop a request wherever it is and free its blocks."""
        return self.finish(request_id, RequestStatus.FINISHED_ABORTED)

    def finish(self, request_id: str, status: RequestStatus) -> Request | None:
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self._release(request)
        request.status = status
        return request

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    # -- planning --------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_batched_tokens
        chunks: list[ScheduledChunk] = []
        preempted: list[str] = []
        finished: list[Request] = []
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            num_draft = min(len(req.spec_token_ids), budget - n) if n == 1 else 0
            if n < req.num_tokens - req.num_computed_tokens and not self.config.chunked_prefill:
                break
            if n + num_draft + req.num_computed_tokens > self.max_model_len_tokens:
                num_draft = 0
            del req.spec_token_ids[num_draft:]
            if not self._grow(req, n + num_draft, preempted):
                if len(self.running) == 0 and req.num_computed_tokens == 0:
                    # Alone it still cannot grow: end it rather than preempt it forever.
                    self.waiting.remove(req)
                    self.requests.pop(req.request_id, None)
                    req.status = RequestStatus.FINISHED_LENGTH
                    finished.append(req)
                continue  # `req` itself was preempted; the list shrank
            chunks.append(self._chunk(req, n, num_draft))
            budget -= n + num_draft
            i += 1
        while self.waiting and not preempted and budget > 0:
            if len(self.running) >= self.config.max_num_seqs:
                break
            req = self.waiting[0]
            remaining = req.num_tokens - req.num_computed_tokens
            n = min(remaining, budget)
            if n < remaining and not self.config.chunked_prefill:
                break
            extra = blocks_needed(req.num_computed_tokens + n, self.config.block_size_tokens)
            extra = max(extra - len(req.block_ids), 0)
            if not self.pool.can_allocate(extra):
                break
            self.waiting.popleft()
            req.block_ids += self.pool.allocate(extra)
            req.status = RequestStatus.RUNNING
            req.spec_token_ids.clear()
            if req.first_scheduled_time is None:
                req.first_scheduled_time = time.monotonic()
            self.running.append(req)
            chunks.append(self._chunk(req, n, 0))
            budget -= n
        return SchedulerOutput(tuple(chunks), tuple(preempted), tuple(finished))

    @staticmethod
    def _chunk(req: Request, n: int, num_draft: int) -> ScheduledChunk:
        start = req.num_computed_tokens
        return ScheduledChunk(req, start, n + num_draft, num_draft, start + n >= req.num_tokens)

    def _grow(self, req: Request, n: int, preempted: list[str]) -> bool:
        """Give `req` blocks for `n` more tokens, preempting the newest running requests."""
        need = blocks_needed(req.num_computed_tokens + n, self.config.block_size_tokens)
        need = max(need - len(req.block_ids), 0)
        while not self.pool.can_allocate(need):
            victim = self.running[-1]
            self._preempt(victim)
            preempted.append(victim.request_id)
            if victim is req:
                return False
        req.block_ids += self.pool.allocate(need)
        return True

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self._release(req)
        req.num_computed_tokens = 0
        req.spec_token_ids.clear()
        req.num_preemptions += 1
        req.status = RequestStatus.PREEMPTED
        self.waiting.appendleft(req)

    def _release(self, req: Request) -> None:
        if req.block_ids:
            self.pool.free(req.block_ids)
            req.block_ids = []

    # -- applying a step's result ----------------------------------------------------------

    def update_from_output(
        self, output: SchedulerOutput, sampled: dict[str, list[int]]
    ) -> list[Request]:
        """Apply sampled tokens (accepted drafts then one new token per sampling request).

        Returns the requests that received tokens or finished in this step.
        """
        touched: list[Request] = list(output.finished)
        for chunk in output.chunks:
            req = chunk.request
            if req.finished or req.request_id not in self.requests:
                continue  # aborted while the step ran
            req.num_computed_tokens = chunk.start + chunk.num_tokens - chunk.num_draft
            if not chunk.samples:
                continue
            tokens = sampled[req.request_id]
            accepted = len(tokens) - 1
            req.num_computed_tokens += accepted
            req.draft_tokens_proposed += chunk.num_draft
            req.draft_tokens_accepted += accepted
            req.spec_token_ids.clear()
            if req.first_token_time is None:
                req.first_token_time = time.monotonic()
                start = req.first_scheduled_time or req.arrival_time
                prefill_ms = (req.first_token_time - start) * 1000.0
                self.recent_prefill_ms += PREFILL_EWMA_WEIGHT * (
                    prefill_ms - self.recent_prefill_ms
                )
            status = None
            for token in tokens:
                status = req.append_token(token)
                if status is None and req.num_tokens >= self.max_model_len_tokens:
                    status = RequestStatus.FINISHED_LENGTH
                if status is not None:
                    break
            if status is not None:
                self.finish(req.request_id, status)
            touched.append(req)
        return touched

    # -- telemetry -------------------------------------------------------------------------

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_awaiting_first_token(self) -> int:
        """Requests still before their first token (waiting, or running through their prefill)."""
        return len(self.waiting) + sum(1 for r in self.running if r.first_token_time is None)

    def queue_delay_ms(self, now: float) -> float:
        """Expected wait before a new request's prefill starts.

        Every request still before its first token costs the recent prefill time first (an
        overestimate when prefills share a step, which only makes spilling start sooner); the
        oldest waiter's age is a floor when steps are held up by something else (KV blocks).
        An idle worker reads 0, so a model that spilled takes its intents back once drained.
        """
        oldest = min((r.arrival_time for r in self.waiting), default=now)
        backlog_ms = self.num_awaiting_first_token * self.recent_prefill_ms
        return max((now - oldest) * 1000.0, backlog_ms)
