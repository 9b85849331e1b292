"""The scheduler plans each engine step and applies its result; it never touches tensors.

Each step every scheduled request computes some of its uncomputed tokens (a whole prompt, a
chunk of one, or one decode token plus draft tokens). Running requests go first, oldest first;
when KV blocks run out the newest running request is preempted (its blocks freed, recomputed
later from its tokens). Waiting requests are then admitted while the step's token budget, the
sequence limit and free blocks allow.

The step's budget is split: prompt tokens (prefill chunks) may take at most
`prefill_budget_tokens` of it, decode tokens the rest. That is FlexNPU's co-location knob on one
worker, which the controller turns while serving: the whole budget when TTFT is at risk
(prefill-first), a small share when TPOT is (decode-first: steps stay short for the decodes).
A step with no prefill yet always takes one chunk, so prompts never starve; without chunked
prefill that chunk is the whole prompt.

A request's `status` is the one truth about where it is: `WAITING` in `waiting` (a preempted
request too), `RUNNING` in `running`. Hand-off between workers adds two parked statuses outside
the step loop, never scheduled and never keeping the engine spinning: `KV_IN_FLIGHT`, a prefill
worker's request that has its first token and holds its KV for a decode worker, and
`WAITING_FOR_KV`, a decode worker's request whose blocks are reserved while its KV travels. A
parked request is in neither queue, only in `requests`; its `Request.deadline` bounds the wait,
and `expire` ends what outlived it.

The plan is a snapshot: each `ScheduledChunk` copies the tokens and block ids the runner needs,
so the runner never reads live request state, and only the scheduler mutates requests.

With `engine.prefix_cache`, blocks come and go through a `PrefixCache` over the pool: a request
starting from scratch is computed up to its longest cached prompt prefix before its first
chunk (like imported KV), a request reserved for imported KV holds that prefix and waits only
for the rest, its prompt blocks enter the cache as they are computed or imported, and
releasing a request leaves cached blocks for the next one until the pool needs them back.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

from flexmesh.meshcore.block_pool import BlockPool, blocks_needed
from flexmesh.meshcore.config import EngineConfig
from flexmesh.meshcore.errors import InvalidRequestError
from flexmesh.meshcore.plan import ScheduledChunk, SchedulerOutput, plan_chunk
from flexmesh.meshcore.prefix_cache import PrefixCache, chain_hashes
from flexmesh.meshcore.request import Request, RequestStatus

PREFILL_EWMA_WEIGHT = 0.2
"""Weight of the newest request in `Scheduler.recent_prefill_ms`."""
QUEUE_WINDOW = 256
"""First tokens whose queue times `Scheduler.recent_queue_ms` keeps."""


class Scheduler:
    """Continuous batching over a paged KV cache (see module docstring)."""

    def __init__(self, config: EngineConfig, num_blocks: int, max_model_len_tokens: int) -> None:
        self.config = config
        self.pool = BlockPool(num_blocks)
        self.cache = (
            PrefixCache(self.pool, config.block_size_tokens) if config.prefix_cache else None
        )
        """The prefix cache over `pool` (`engine.prefix_cache`); None when off."""
        self.max_model_len_tokens = max_model_len_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        """Every request held here by id, parked ones included (they are in no queue)."""
        self.recent_prefill_ms = 0.0
        """Moving average of a request's first step to its first token: its prefill's cost."""
        self.recent_queue_ms: deque[float] = deque(maxlen=QUEUE_WINDOW)
        """The latest first tokens' queue times (arrival to first step), in ms."""
        self.prefill_budget_tokens = config.prefill_budget_tokens or config.max_batched_tokens
        """Most prompt tokens one step computes (the rest of the budget is for decodes)."""
        self._prefill_left = 0
        self._prefilled = False
        """Planning state of the step being scheduled: prefill share left, a chunk taken."""

    def set_prefill_budget(self, tokens: int) -> int:
        """Change the prefill share of the step budget (clamped to [1, max_batched_tokens])."""
        self.prefill_budget_tokens = max(1, min(int(tokens), self.config.max_batched_tokens))
        return self.prefill_budget_tokens

    # -- admission -------------------------------------------------------------------------

    def _check(self, request: Request) -> None:
        """Raise `InvalidRequestError` if `request` can never be served here."""
        n = request.num_prompt_tokens
        if n == 0:
            raise InvalidRequestError("prompt", "is empty")
        if request.num_tokens >= self.max_model_len_tokens:
            raise InvalidRequestError(
                "prompt", f"has {n} tokens, the model's context is {self.max_model_len_tokens}"
            )
        left = self.max_model_len_tokens - n
        if request.sampling.max_tokens > left:
            raise InvalidRequestError(
                "max_tokens",
                f"is {request.sampling.max_tokens}, the model's context of "
                f"{self.max_model_len_tokens} leaves {left} after the {n}-token prompt",
            )
        if blocks_needed(request.num_tokens + 1, self.config.block_size_tokens) > (
            self.pool.num_blocks
        ):
            raise InvalidRequestError("prompt", f"has {n} tokens, more than the whole KV cache")
        if request.request_id in self.requests:
            raise InvalidRequestError("request_id", f"{request.request_id!r} is already in use")

    def add(self, request: Request) -> None:
        """Queue a request (tokens it already has are recomputed); raise if unservable."""
        self._check(request)
        request.num_computed_tokens = 0
        request.status = RequestStatus.WAITING
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def reserve_for_kv(self, request: Request, num_kv_tokens: int, deadline: float) -> bool:
        """Park `request` with blocks for `num_kv_tokens` imported tokens until `deadline`.

        With the prefix cache, the longest cached prefix of its prompt (whole blocks before the
        last KV token, so at least one block still travels) is held rather than reserved: those
        leading `num_cached_blocks` blocks are skipped by the transfer, which fills the rest.
        False (nothing reserved, nothing queued) when the blocks are not free now; the caller
        then adds it for recomputation instead. `kv_arrived` or `kv_failed` ends the wait.
        """
        self._check(request)
        if not 0 < num_kv_tokens < request.num_tokens:
            raise ValueError(f"num_kv_tokens {num_kv_tokens} outside (0, {request.num_tokens})")
        size = self.config.block_size_tokens
        queried = (num_kv_tokens - 1) // size
        held = self._hold_prefix(request, queried)
        need = blocks_needed(num_kv_tokens, size) - held
        if not self._can_allocate(need):
            self._release(request)  # the hits go back to the cache
            return False
        if self.cache is not None:
            self.cache.count_lookup(min(queried, len(request.block_hashes)), held)
        request.block_ids += self._allocate(need)
        request.num_computed_tokens = 0
        self.requests[request.request_id] = request
        self._park(request, RequestStatus.WAITING_FOR_KV, deadline)
        return True

    def get(self, request_id: str, status: RequestStatus) -> Request | None:
        """The request `request_id` if it is held here in `status`, else None."""
        req = self.requests.get(request_id)
        return req if req is not None and req.status == status else None

    def kv_arrived(self, request_id: str, num_kv_tokens: int) -> None:
        """The reserved blocks hold the KV of the first `num_kv_tokens` tokens: queue it. Its
        imported prompt blocks enter the prefix cache like computed ones."""
        req = self.get(request_id, RequestStatus.WAITING_FOR_KV)
        if req is None:
            raise KeyError(f"{request_id} is not waiting for KV")
        req.num_computed_tokens = num_kv_tokens
        self._cache_computed(req)
        self._requeue(req)  # it is mid-stream: its client already has a token

    def kv_failed(self, request_id: str) -> None:
        """The KV will not come: free the reservation and recompute the request here."""
        req = self.get(request_id, RequestStatus.WAITING_FOR_KV)
        if req is None:
            return
        self._release(req)
        req.num_computed_tokens = 0
        self._requeue(req)

    def _park(self, req: Request, status: RequestStatus, deadline: float) -> None:
        """Move `req` (in no queue) to a parked status, outside the step loop until `deadline`."""
        req.status = status
        req.deadline = deadline

    def _requeue(self, req: Request) -> None:
        """Unpark `req` at the head of the queue."""
        req.status = RequestStatus.WAITING
        req.deadline = None
        self.waiting.appendleft(req)

    def abort(self, request_id: str) -> Request | None:
        """Stop a request wherever it is and free its blocks."""
        return self.finish(request_id, RequestStatus.FINISHED_ABORTED)

    def finish(self, request_id: str, status: RequestStatus) -> Request | None:
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        if request.status == RequestStatus.RUNNING:
            self.running.remove(request)
        elif request.status == RequestStatus.WAITING:
            self.waiting.remove(request)
        self._release(request)
        request.status = status
        request.deadline = None
        return request

    def parked(self) -> list[Request]:
        """Requests parked for a hand-off (`KV_IN_FLIGHT`, `WAITING_FOR_KV`), in arrival order.

        NOTE: read from the statuses, never kept beside them. The scan costs a few microseconds
        per hundred requests held, next to a step's milliseconds.
        """
        return [r for r in self.requests.values() if r.status.parked]

    def expire(self, now: float) -> tuple[list[Request], list[str]]:
        """End holds past their deadline: (in-flight requests aborted, KV waits recomputed)."""
        late = [r for r in self.parked() if r.deadline is not None and r.deadline <= now]
        dropped = [
            r
            for r in late
            if r.status == RequestStatus.KV_IN_FLIGHT and self.abort(r.request_id) is not None
        ]
        recomputed = [r.request_id for r in late if r.status == RequestStatus.WAITING_FOR_KV]
        for rid in recomputed:
            self.kv_failed(rid)
        return dropped, recomputed

    def next_deadline(self) -> float | None:
        """The earliest hold deadline, so an idle engine knows when to wake for `expire`."""
        return min((r.deadline for r in self.parked() if r.deadline is not None), default=None)

    def has_unfinished(self) -> bool:
        """True when a step has work (parked requests wait outside the step loop)."""
        return bool(self.waiting or self.running)

    # -- planning --------------------------------------------------------------------------

    def schedule(
        self, now: float, drafts: Mapping[str, Sequence[int]] | None = None
    ) -> SchedulerOutput:
        """Plan one step; `drafts` are proposed tokens for decoding requests (PLD, draft model)."""
        drafts = drafts or {}
        budget = self.config.max_batched_tokens
        self._prefill_left = self.prefill_budget_tokens
        self._prefilled = False
        chunks: list[ScheduledChunk] = []
        preempted: list[str] = []
        finished: list[Request] = []
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            remaining = req.num_tokens - req.num_computed_tokens
            n = self._room(remaining, budget)
            if n == 0:
                i += 1  # a prefill past this step's prefill share: it goes on next step
                continue
            spec = drafts.get(req.request_id, ()) if n == 1 else ()
            spec = spec[: max(0, budget - n)]
            if n < remaining and not self.config.chunked_prefill:
                break
            if n + len(spec) + req.num_computed_tokens > self.max_model_len_tokens:
                spec = ()
            if not self._grow(req, n + len(spec), preempted):
                if len(self.running) == 0 and req.num_computed_tokens == 0:
                    # Alone it still cannot grow: end it rather than preempt it forever.
                    self.waiting.remove(req)
                    self.requests.pop(req.request_id, None)
                    req.status = RequestStatus.FINISHED_LENGTH
                    finished.append(req)
                continue  # `req` itself was preempted; the list shrank
            chunks.append(plan_chunk(req, n, spec))
            budget -= n + len(spec)
            self._took(remaining, n)
            i += 1
        while self.waiting and not preempted and budget > 0:
            if len(self.running) >= self.config.max_num_seqs:
                break
            req = self.waiting[0]
            looked_up = self._reuse_prefix(req)
            remaining = req.num_tokens - req.num_computed_tokens
            n = self._room(remaining, budget)
            extra = blocks_needed(req.num_computed_tokens + n, self.config.block_size_tokens)
            extra = max(extra - len(req.block_ids), 0)
            if n == 0 or (n < remaining and not self.config.chunked_prefill):
                self._forget_prefix(req)
                break
            if not self._can_allocate(extra):
                self._forget_prefix(req)
                break
            self.waiting.popleft()
            if looked_up and self.cache is not None:  # counted once, when admitted
                self.cache.count_lookup(len(req.block_hashes), req.num_cached_blocks)
            req.block_ids += self._allocate(extra)
            req.status = RequestStatus.RUNNING
            if req.first_scheduled_time is None:
                req.first_scheduled_time = now
            self.running.append(req)
            chunks.append(plan_chunk(req, n))
            budget -= n
            self._took(remaining, n)
        return SchedulerOutput(tuple(chunks), tuple(preempted), tuple(finished))

    def _room(self, remaining: int, budget: int) -> int:
        """Tokens a request with `remaining` uncomputed tokens may compute in this step."""
        if remaining <= 1:
            return min(remaining, budget)  # a decode token (or a one-token prompt)
        if not self._prefilled:  # the step's first prefill chunk is never held back
            cap = self._prefill_left if self.config.chunked_prefill else remaining
            return min(remaining, budget, max(cap, self.config.block_size_tokens))
        return min(remaining, budget, self._prefill_left)

    def _took(self, remaining: int, n: int) -> None:
        if remaining > 1:
            self._prefill_left = max(0, self._prefill_left - n)
            self._prefilled = True

    def _grow(self, req: Request, n: int, preempted: list[str]) -> bool:
        """Give `req` blocks for `n` more tokens, preempting the newest running requests."""
        need = blocks_needed(req.num_computed_tokens + n, self.config.block_size_tokens)
        need = max(need - len(req.block_ids), 0)
        while not self._can_allocate(need):
            victim = self.running[-1]
            self._preempt(victim)
            preempted.append(victim.request_id)
            if victim is req:
                return False
        req.block_ids += self._allocate(need)
        return True

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self._release(req)
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        req.status = RequestStatus.WAITING
        self.waiting.appendleft(req)

    def _release(self, req: Request) -> None:
        if req.block_ids:
            if self.cache is not None:
                self.cache.release(req.block_ids)  # cached blocks stay, evictable
            else:
                self.pool.free(req.block_ids)
            req.block_ids = []
        req.num_cached_blocks = 0

    # -- the prefix cache ------------------------------------------------------------------

    def _can_allocate(self, n: int) -> bool:
        """`n` blocks are free, or free once unheld cached blocks are evicted."""
        return self.cache.can_allocate(n) if self.cache is not None else self.pool.can_allocate(n)

    def _allocate(self, n: int) -> list[int]:
        return self.cache.allocate(n) if self.cache is not None else self.pool.allocate(n)

    def _reuse_prefix(self, req: Request) -> bool:
        """A request starting from scratch takes the longest cached prefix of its prompt and
        computes from there (at least its last prompt token is computed: it gives the logits).
        True when it looked the cache up (the lookup is counted if the request is admitted)."""
        if self.cache is None or req.num_computed_tokens or req.block_ids:
            return False
        req.num_computed_tokens = self._hold_prefix(req) * self.config.block_size_tokens
        return True

    def _hold_prefix(self, req: Request, max_blocks: int | None = None) -> int:
        """Hold the longest cached prefix of `req`'s prompt (at most `max_blocks` blocks) as the
        start of its empty block table; return its length in blocks (0 without a cache). The
        prompt's block names are made once, here: `_cache_computed` inserts under them."""
        if self.cache is None:
            return 0
        if not req.block_hashes:
            size = self.config.block_size_tokens
            req.block_hashes = chain_hashes(req.prompt_token_ids[:-1], size, "")
        hit = self.cache.match(req.block_hashes[:max_blocks], count=False)
        self.cache.hold(hit)
        req.block_ids = list(hit)
        req.num_cached_blocks = len(hit)
        return len(hit)

    def _forget_prefix(self, req: Request) -> None:
        """Undo `_reuse_prefix` for a request that stays waiting (its hits stay cached)."""
        if self.cache is not None and req.status == RequestStatus.WAITING and req.block_ids:
            if req.num_computed_tokens == req.num_cached_blocks * self.config.block_size_tokens:
                self._release(req)
                req.num_computed_tokens = 0

    def _cache_computed(self, req: Request) -> None:
        """Put the prompt blocks `req` has computed since into the cache (prompt blocks only:
        drafted and sampled tokens never enter it)."""
        if self.cache is None:
            return
        size = self.config.block_size_tokens
        done = min(req.num_computed_tokens, req.num_prompt_tokens) // size
        for i in range(req.num_cached_blocks, min(done, len(req.block_hashes))):
            self.cache.insert(req.block_hashes[i], req.block_ids[i])
        req.num_cached_blocks = max(req.num_cached_blocks, min(done, len(req.block_hashes)))

    # -- applying a step's result ----------------------------------------------------------

    def update_from_output(
        self,
        output: SchedulerOutput,
        sampled: Mapping[str, Sequence[int]],
        now: float,
        hold_deadline: float = 0.0,
    ) -> list[Request]:
        """Apply sampled tokens (accepted drafts then one new token per sampling request).

        A `hand_off` request that got its first token and goes on parks as `KV_IN_FLIGHT` with
        its blocks, held until `hold_deadline`. Returns the requests that received tokens or
        finished in this step.
        """
        touched: list[Request] = list(output.finished)
        for chunk in output.chunks:
            req = self.requests.get(chunk.request_id)
            if req is None or req.status != RequestStatus.RUNNING:
                continue  # aborted while the step ran
            req.num_computed_tokens = chunk.start + chunk.num_tokens - chunk.num_draft
            self._cache_computed(req)
            if not chunk.samples:
                continue
            tokens = sampled[req.request_id]
            accepted = len(tokens) - 1
            req.num_computed_tokens += accepted
            req.draft_tokens_proposed += chunk.num_draft
            req.draft_tokens_accepted += accepted
            if req.first_token_time is None:
                req.first_token_time = now
                start = req.first_scheduled_time or req.arrival_time
                prefill_ms = (now - start) * 1000.0
                self.recent_prefill_ms += PREFILL_EWMA_WEIGHT * (
                    prefill_ms - self.recent_prefill_ms
                )
                self.recent_queue_ms.append((start - req.arrival_time) * 1000.0)
            status = None
            for token in tokens:
                status = req.append_token(token)
                if status is None and req.num_tokens >= self.max_model_len_tokens:
                    status = RequestStatus.FINISHED_LENGTH
                if status is not None:
                    break
            if status is not None:
                self.finish(req.request_id, status)
            elif req.hand_off:
                self.running.remove(req)
                self._park(req, RequestStatus.KV_IN_FLIGHT, hold_deadline)
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
    def num_decoding(self) -> int:
        """Running requests past their prompt: the decode batch."""
        return sum(1 for r in self.running if r.num_computed_tokens >= r.num_tokens - 1)

    @property
    def num_prefill_tokens_waiting(self) -> int:
        """Prompt tokens not yet computed, queued or in a running prefill."""
        pending = [*self.waiting, *(r for r in self.running if r.first_token_time is None)]
        return sum(r.num_tokens - r.num_computed_tokens for r in pending)

    @property
    def num_blocks_in_flight(self) -> int:
        """Blocks held for a hand-off: sent from here, or reserved while KV arrives."""
        return sum(len(r.block_ids) for r in self.parked())

    @property
    def num_awaiting_first_token(self) -> int:
        """Requests still before their first token (waiting, or running through their prefill)."""
        return sum(1 for r in (*self.waiting, *self.running) if r.first_token_time is None)

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
