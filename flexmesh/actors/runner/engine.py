"""Engine: scheduler (decides) + runner (executes) + detokeniser, stepped by its owner.

`step()` is the whole loop body: propose drafts, plan, execute, apply, detokenise. The Ray
worker runs it in a background thread (`AsyncEngine`); tests and benchmarks call it directly.

Hand-off seams (called between steps, on the thread that steps): a request added with
`hand_off` stops after its first token, whose output carries its `RequestState`; at the end of
that step `export_handed_off` copies its KV out and frees its blocks (the planned export: the
worker's KV mover sends the copy, less the leading blocks the decode side holds already); a
decode engine `resume`s that state with blocks reserved (its cached prompt prefix held
instead), then `import_kv` lets it continue (a lost KV is aborted here, and the
gateway's route resumes the request without KV: recomputed). Each seam
checks the request's status (`KV_IN_FLIGHT`, `WAITING_FOR_KV`), the scheduler's one truth.

Owners (the worker actor, its KV hand-off, the engine thread) use only the methods here; the
scheduler and the runner inside stay the engine's own.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch

from flexmesh.actors.runner.detok import IncrementalDetokenizer, eos_token_ids
from flexmesh.actors.runner.draft import DraftProposer
from flexmesh.actors.runner.model import PagedCausalLM
from flexmesh.actors.runner.quant import check_quantization
from flexmesh.actors.runner.runner import ModelRunner, pick_device
from flexmesh.actors.runner.tracked import Tracked, timings
from flexmesh.meshcore.config import EngineConfig
from flexmesh.meshcore.errors import InvalidRequestError
from flexmesh.meshcore.load import EngineLoad, StepStats
from flexmesh.meshcore.messages import RequestOutput, RequestState
from flexmesh.meshcore.request import Request, RequestStatus
from flexmesh.meshcore.sampling import SamplingParams
from flexmesh.meshcore.scheduler import Scheduler
from flexmesh.meshcore.speculation import applied_strategy, plan_drafts

WARM_UP_PROMPT_TOKENS = 128
"""Length of the synthetic prompt `Engine.warm_up` prefills."""


class Engine:
    """A paged-KV continuous-batching engine for one model on one device."""

    def __init__(
        self,
        model_path: str | Path,
        config: EngineConfig | None = None,
        draft_model_path: str | Path | None = None,
        kv_hold_timeout_s: float = 30.0,
        quantization: str = "none",
    ) -> None:
        """`quantization` is the model's `ModelSpec.quantization`: its weights are quantised
        after loading (`PagedCausalLM.quantize`); a draft model stays in full precision."""
        self.config = config or EngineConfig()
        self.kv_hold_timeout_s = kv_hold_timeout_s
        self.model_path = str(model_path)
        self.quantization = quantization
        check_quantization(quantization, pick_device(self.config.device))  # before loading
        if quantization == "none":
            self.runner = ModelRunner(model_path, self.config)
        else:
            # Quantised from the plain weights, then packed (oneDNN's blocked layout is not
            # read back); whatever stays unquantised is packed as usual.
            self.runner = ModelRunner(model_path, replace(self.config, cpu_packed_weights=False))
            self.runner.model.quantize(quantization)
            if self.config.cpu_packed_weights:
                self.runner.model.pack_weights()
        self.draft = (
            DraftProposer(draft_model_path, self.config, self.runner.model.vocab_size)
            if draft_model_path
            else None
        )
        self.tokenizer = self.runner.tokenizer
        self.scheduler = Scheduler(
            self.config, self.runner.num_blocks, self.runner.model.max_model_len_tokens
        )
        self.eos_token_ids = eos_token_ids(self.runner.generation_config, self.tokenizer)
        self._tracked: dict[str, Tracked] = {}
        self._ids = itertools.count()
        self.tokens_generated = 0
        self.stats = StepStats()
        """Moving averages of step times and draft acceptance (prefill chunks sharing a step
        with decodes count toward the time per output token, since the decodes wait for them)."""

    @property
    def max_model_len_tokens(self) -> int:
        return self.scheduler.max_model_len_tokens

    # -- requests --------------------------------------------------------------------------

    def add_request(
        self,
        prompt: str | None = None,
        *,
        prompt_token_ids: list[int] | None = None,
        sampling: SamplingParams | None = None,
        request_id: str | None = None,
        hand_off: bool = False,
    ) -> str:
        """Queue a request (text or token ids); return its id. Bad input raises typed errors.

        With `hand_off`, the request stops after its first token and holds its KV for a decode
        worker (its output then carries the `RequestState` to continue from).
        """
        rid = request_id or f"req-{next(self._ids)}"
        ids = tuple(prompt_token_ids or ())
        sampling = sampling or SamplingParams()
        self.add(RequestState(rid, ids, (), sampling, prompt=prompt or "", hand_off=hand_off))
        return rid

    def add(self, state: RequestState) -> None:
        """Queue a new request (`state` has no output tokens); bad input raises typed errors."""
        sampling = state.sampling
        self._check_vocabulary("stop_token_ids", sampling.stop_token_ids)
        if state.prompt_token_ids:
            ids = [int(t) for t in state.prompt_token_ids]
            self._check_vocabulary("prompt_token_ids", ids)
        else:
            ids = self._encode(state.prompt)
        rid = state.request_id
        request = Request(
            rid, ids, sampling, self.eos_token_ids, time.monotonic(), hand_off=state.hand_off
        )
        self.scheduler.add(request)
        self._tracked[rid] = Tracked(request, IncrementalDetokenizer(self.tokenizer, sampling.stop))

    def _encode(self, prompt: str | None) -> list[int]:
        if not prompt:
            raise InvalidRequestError("prompt", "is empty")
        return list(self.tokenizer.encode(prompt, add_special_tokens=False))

    def _check_vocabulary(self, field: str, ids: Sequence[int]) -> None:
        vocab = self.runner.model.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise InvalidRequestError(field, f"ids out of the vocabulary of {vocab}: {bad[:5]}")

    def resume(self, state: RequestState, kv_deadline: float | None) -> tuple[int, int]:
        """Continue a request another worker started; return (leading blocks of its KV this
        engine holds already, blocks the rest goes into): the transfer skips the first and
        fills the second.

        With `kv_deadline`, blocks for the state's KV are reserved (the request waits for
        `import_kv` or an abort until then), the cached prefix of its prompt held instead
        (`engine.prefix_cache`); with none, or when the blocks are not free, the request
        recomputes its tokens here and both are 0.
        """
        if self.scheduler.get(state.request_id, RequestStatus.KV_IN_FLIGHT) is not None:
            # Prefilled here for a hand-off not exported yet: it continues here now.
            self.scheduler.finish(state.request_id, RequestStatus.FINISHED_STOPPED)
        now = time.monotonic()
        prompt_ids = list(state.prompt_token_ids) or self._encode(state.prompt)
        request = Request(
            state.request_id,
            prompt_ids,
            state.sampling,
            self.eos_token_ids,
            arrival_time=now,
            output_token_ids=list(state.output_token_ids),
            first_scheduled_time=now,
            first_token_time=now,  # its prefill was measured elsewhere
            draft_tokens_proposed=state.draft_tokens_proposed,
            draft_tokens_accepted=state.draft_tokens_accepted,
        )
        reserved = kv_deadline is not None and self.scheduler.reserve_for_kv(
            request, state.num_kv_tokens, kv_deadline
        )
        if not reserved:
            self.scheduler.add(request)
        detok = IncrementalDetokenizer(self.tokenizer, state.sampling.stop, state.sent_text_chars)
        self._tracked[state.request_id] = Tracked(
            request, detok, state.sent_tokens, (state.queue_ms, state.prefill_ms)
        )
        if not reserved:
            return 0, 0
        return request.num_cached_blocks, len(request.block_ids) - request.num_cached_blocks

    def export_handed_off(
        self, stage: Callable[[tuple[int, ...]], torch.Tensor] | None = None
    ) -> list[tuple[str, torch.Tensor]]:
        """The planned export: every request parked `KV_IN_FLIGHT` (handed off, its status says
        so), its KV copied `[layers, 2, blocks, block, kv_heads, dim]` (into `stage(shape)`, a
        staging buffer, when given) and its blocks freed here. Called at a step boundary, after
        the step's outputs (the first tokens) went out."""
        exported = []
        for req in self.scheduler.parked():
            if req.status != RequestStatus.KV_IN_FLIGHT:
                continue  # waiting for KV from elsewhere
            shape = self.kv_shape(len(req.block_ids))
            kv = self.runner.gather_kv(req.block_ids, stage(shape) if stage else None)
            self.scheduler.finish(req.request_id, RequestStatus.FINISHED_STOPPED)
            exported.append((req.request_id, kv))
        return exported

    def kv_shape(self, num_blocks: int) -> tuple[int, ...]:
        """The shape of `num_blocks` blocks of KV as a hand-off carries them."""
        return self.runner.kv_shape(num_blocks)

    def import_kv(self, request_id: str, kv: torch.Tensor, num_kv_tokens: int) -> None:
        """Write received KV into the request's reserved blocks (after the prefix it held here
        already: `resume`); it then decodes from there."""
        req = self.scheduler.get(request_id, RequestStatus.WAITING_FOR_KV)
        if req is None:
            raise KeyError(f"{request_id} is not waiting for KV (expired or aborted)")
        self.runner.scatter_kv(req.block_ids[req.num_cached_blocks :], kv)
        self.scheduler.kv_arrived(request_id, num_kv_tokens)

    def expire(self) -> list[str]:
        """Free hand-off holds past their deadline; return the ids of requests dropped here."""
        dropped, _ = self.scheduler.expire(time.monotonic())
        for req in dropped:
            self._tracked.pop(req.request_id, None)
            self._release(req.request_id)
        return [r.request_id for r in dropped]

    def abort(self, request_id: str) -> bool:
        """Abort a request and free its KV blocks; False when it is unknown or already done."""
        self._tracked.pop(request_id, None)
        self._release(request_id)
        return self.scheduler.abort(request_id) is not None

    def _release(self, request_id: str) -> None:
        self.runner.release(request_id)
        if self.draft is not None:
            self.draft.release(request_id)

    def has_unfinished(self) -> bool:
        """True when a step has work (parked requests wait outside the step loop)."""
        return self.scheduler.has_unfinished()

    def next_deadline(self) -> float | None:
        """When the earliest hand-off hold or KV wait ends (`time.monotonic()` seconds), so an
        idle loop knows when to wake for `expire`; None when nothing is parked."""
        return self.scheduler.next_deadline()

    def request_ids(self) -> list[str]:
        """Ids of every request held here, parked ones included."""
        return list(self.scheduler.requests)

    # -- what the owner reads and tunes ----------------------------------------------------

    @property
    def device(self) -> torch.device:
        """The device the model and its KV cache live on."""
        return self.runner.device

    @property
    def model(self) -> PagedCausalLM:
        """The model itself, for benchmarks that time its parts (`bench engine --profile`)."""
        return self.runner.model

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model and its KV cache (what a hand-off moves)."""
        return self.runner.dtype

    def set_prefill_budget(self, tokens: int) -> int:
        """Change the prefill share of each step's token budget (from the next step on);
        return it clamped to [1, max_batched_tokens]."""
        return self.scheduler.set_prefill_budget(tokens)

    def load(self, now: float) -> EngineLoad:
        """The engine's load at `now` (`time.monotonic()` seconds)."""
        return EngineLoad.of(self.scheduler, now, self.stats, self.tokens_generated)

    def next_token_logits(self, token_ids: list[int]) -> list[float]:
        """One stand-alone forward pass over `token_ids` (own scratch KV, outside any batch):
        the last position's logits (the `lm` probe's question to the small model)."""
        return self.runner.next_token_logits(token_ids)

    # -- the loop body ---------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        start = time.monotonic()
        plan = self.scheduler.schedule(start, self._propose_drafts())
        if not plan.chunks:
            return [out for req in plan.finished if (out := self._output(req)) is not None]
        sampled = self.runner.execute(plan)
        now = time.monotonic()
        touched = self.scheduler.update_from_output(
            plan, sampled, now, hold_deadline=now + self.kv_hold_timeout_s
        )
        self.stats.observe(plan, sampled, (now - start) * 1000.0)
        return [out for req in touched if (out := self._output(req)) is not None]

    def strategy_of(self, req: Request) -> str:
        """The strategy actually applied to `req`."""
        return applied_strategy(req.sampling.strategy, self.draft is not None)

    def _propose_drafts(self) -> dict[str, list[int]]:
        """Draft tokens for this step of decoding PLD / spec requests."""
        running = self.scheduler.running
        drafts, room = plan_drafts(
            running, self.config, self.max_model_len_tokens, self.draft is not None
        )
        if room and self.draft is not None:
            spec = [r for r in running if r.request_id in room]
            drafts.update(self.draft.propose(spec, room))
        return drafts

    def _output(self, req: Request) -> RequestOutput | None:
        tracked = self._tracked.get(req.request_id)
        if tracked is None:
            return None
        offset = tracked.sent_tokens
        new_ids = tuple(req.output_token_ids[offset:])
        tracked.sent_tokens = len(req.output_token_ids)
        self.tokens_generated += len(new_ids)
        text, stopped = tracked.detok.update(req.output_token_ids, final=req.finished)
        if stopped and not req.finished:
            self.scheduler.finish(req.request_id, RequestStatus.FINISHED_STOPPED)
        if req.status == RequestStatus.KV_IN_FLIGHT:
            queue_ms, prefill_ms = timings(tracked)
            del self._tracked[req.request_id]
            state = RequestState(
                request_id=req.request_id,
                prompt_token_ids=tuple(req.prompt_token_ids),
                output_token_ids=tuple(req.output_token_ids),
                sampling=req.sampling,
                num_kv_tokens=req.num_computed_tokens,
                sent_tokens=tracked.sent_tokens,
                sent_text_chars=tracked.detok.emitted,
                queue_ms=queue_ms,
                prefill_ms=prefill_ms,
                draft_tokens_proposed=req.draft_tokens_proposed,
                draft_tokens_accepted=req.draft_tokens_accepted,
                handed_off_at=time.time(),
            )
            self._release(req.request_id)
            return RequestOutput(req.request_id, new_ids, text, offset=offset, handoff=state)
        if not req.finished:
            return RequestOutput(req.request_id, new_ids, text, offset=offset)
        self._tracked.pop(req.request_id, None)
        self._release(req.request_id)
        queue_ms, prefill_ms = timings(tracked)
        return RequestOutput(
            request_id=req.request_id,
            token_ids=new_ids,
            text=text,
            finished=True,
            finish_reason=req.status.finish_reason,
            offset=offset,
            prompt_tokens=req.num_prompt_tokens,
            completion_tokens=len(req.output_token_ids),
            queue_ms=queue_ms,
            prefill_ms=prefill_ms,
            draft_tokens_proposed=req.draft_tokens_proposed,
            draft_tokens_accepted=req.draft_tokens_accepted,
            strategy=self.strategy_of(req),
        )

    # -- convenience -----------------------------------------------------------------------

    def generate(
        self, prompts: list[str] | list[list[int]], sampling: SamplingParams | None = None
    ) -> list[list[int]]:
        """Run prompts to completion together; return each one's output token ids."""
        rids = []
        for p in prompts:
            if isinstance(p, str):
                rids.append(self.add_request(p, sampling=sampling))
            else:
                rids.append(self.add_request(prompt_token_ids=p, sampling=sampling))
        tokens: dict[str, list[int]] = {r: [] for r in rids}
        while self.has_unfinished():
            for out in self.step():
                tokens[out.request_id] += out.token_ids
        return [tokens[r] for r in rids]

    def warm_up(self, prompt_tokens: int = WARM_UP_PROMPT_TOKENS) -> None:
        """One prefill of a synthetic prompt before serving.

        The first requests then do not pay for lazy allocations, and the scheduler starts with
        a measured prefill time, so the router's load signal works from the first burst on.
        """
        n = max(1, min(prompt_tokens, self.max_model_len_tokens - 1))
        ids = [i % self.runner.model.vocab_size for i in range(n)]
        self.generate([ids], SamplingParams(max_tokens=1, ignore_eos=True))
        self.tokens_generated = 0
