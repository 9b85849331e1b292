"""Engine: scheduler (decides) + runner (executes) + detokeniser, stepped by its owner.

`step()` is the whole loop body: propose drafts, plan, execute, apply, detokenise. The Ray
worker runs it in a background thread (`AsyncEngine`); tests and benchmarks call it directly.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from flexmesh.actors.runner.detok import IncrementalDetokenizer
from flexmesh.actors.runner.draft import DraftProposer
from flexmesh.actors.runner.runner import ModelRunner
from flexmesh.meshcore.config import EngineConfig
from flexmesh.meshcore.errors import InvalidRequestError
from flexmesh.meshcore.messages import RequestOutput
from flexmesh.meshcore.request import Request, RequestStatus
from flexmesh.meshcore.sampling import SamplingParams
from flexmesh.meshcore.scheduler import Scheduler
from flexmesh.meshcore.speculation import propose_prompt_lookup

WARM_UP_PROMPT_TOKENS = 128
"""Length of the synthetic prompt `Engine.warm_up` prefills."""


@dataclass
class _Tracked:
    request: Request
    detok: IncrementalDetokenizer
    sent_tokens: int = 0


class Engine:
    """A paged-KV continuous-batching engine for one model on one device."""

    def __init__(
        self,
        model_path: str | Path,
        config: EngineConfig | None = None,
        draft_model_path: str | Path | None = None,
    ) -> None:
        self.config = config or EngineConfig()
        self.model_path = str(model_path)
        self.runner = ModelRunner(model_path, self.config)
        self.draft = (
            DraftProposer(draft_model_path, self.config, self.runner.model.vocab_size)
            if draft_model_path
            else None
        )
        self.tokenizer = self.runner.tokenizer
        self.scheduler = Scheduler(
            self.config, self.runner.num_blocks, self.runner.model.max_model_len_tokens
        )
        self.eos_token_ids = _eos_ids(self.runner.generation_config, self.tokenizer)
        self._tracked: dict[str, _Tracked] = {}
        self._ids = itertools.count()
        self.tokens_generated = 0
        self.steps = 0

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
    ) -> str:
        """Queue a request (text or token ids); return its id. Bad input raises typed errors."""
        sampling = sampling or SamplingParams()
        if prompt_token_ids:
            ids = [int(t) for t in prompt_token_ids]
            bad = [t for t in ids if not 0 <= t < self.runner.model.vocab_size]
            if bad:
                raise InvalidRequestError("prompt_token_ids", f"ids out of vocabulary: {bad[:5]}")
        elif prompt:
            ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        else:
            raise InvalidRequestError("prompt", "is empty")
        rid = request_id or f"req-{next(self._ids)}"
        request = Request(rid, ids, sampling, eos_token_ids=self.eos_token_ids)
        self.scheduler.add(request)
        self._tracked[rid] = _Tracked(
            request, IncrementalDetokenizer(self.tokenizer, sampling.stop)
        )
        return rid

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
        return self.scheduler.has_unfinished()

    # -- the loop body ---------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        self._propose_drafts()
        plan = self.scheduler.schedule()
        if not plan.chunks:
            return []
        sampled = self.runner.execute(plan)
        touched = self.scheduler.update_from_output(plan, sampled)
        self.steps += 1
        return [out for req in touched if (out := self._output(req)) is not None]

    def strategy_of(self, req: Request) -> str:
        """The strategy actually applied: "spec" needs a draft model, else it runs as "none"."""
        s = req.sampling.strategy
        return s if s == "pld" or (s == "spec" and self.draft is not None) else "none"

    def _propose_drafts(self) -> None:
        """Give decoding PLD / spec requests draft tokens for this step."""
        cfg = self.config
        spec: list[Request] = []
        room: dict[str, int] = {}
        for req in self.scheduler.running:
            strategy = self.strategy_of(req)
            if strategy == "none" or req.num_computed_tokens != req.num_tokens - 1:
                continue
            k = min(
                req.sampling.max_tokens - len(req.output_token_ids) - 1,
                self.max_model_len_tokens - req.num_tokens - 1,
                cfg.num_draft_tokens,
            )
            if k <= 0:
                continue
            if strategy == "pld":
                req.spec_token_ids[:] = propose_prompt_lookup(
                    req.all_token_ids, cfg.pld_ngram_tokens, k
                )
            else:
                spec.append(req)
                room[req.request_id] = k
        if spec and self.draft is not None:
            for rid, tokens in self.draft.propose(spec, room).items():
                self.scheduler.requests[rid].spec_token_ids[:] = tokens

    def _output(self, req: Request) -> RequestOutput | None:
        tracked = self._tracked.get(req.request_id)
        if tracked is None:
            return None
        new_ids = req.output_token_ids[tracked.sent_tokens :]
        tracked.sent_tokens = len(req.output_token_ids)
        self.tokens_generated += len(new_ids)
        text, stopped = tracked.detok.update(req.output_token_ids, final=req.finished)
        if stopped and not req.finished:
            self.scheduler.finish(req.request_id, RequestStatus.FINISHED_STOPPED)
        if not req.finished:
            return RequestOutput(req.request_id, tuple(new_ids), text)
        self._tracked.pop(req.request_id, None)
        self._release(req.request_id)
        return RequestOutput(
            request_id=req.request_id,
            token_ids=tuple(new_ids),
            text=text,
            finished=True,
            finish_reason=req.status.finish_reason,
            prompt_tokens=req.num_prompt_tokens,
            completion_tokens=len(req.output_token_ids),
            queue_ms=_ms(req.arrival_time, req.first_scheduled_time),
            prefill_ms=_ms(req.first_scheduled_time, req.first_token_time),
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


def _ms(start: float | None, end: float | None) -> float:
    return 0.0 if start is None or end is None else (end - start) * 1000.0


def _eos_ids(generation_config: object, tokenizer: object) -> frozenset[int]:
    ids: set[int] = set()
    eos = getattr(generation_config, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif eos:
        ids.update(eos)
    tok_eos = getattr(tokenizer, "eos_token_id", None)
    if tok_eos is not None:
        ids.add(tok_eos)
    return frozenset(ids)
