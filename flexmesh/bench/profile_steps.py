"""Timing a model's real engine steps for `flexmesh profile`.

Every point is a whole `Engine.step()` (plan, forward, sampling, scheduler update, detokenising),
timed from outside; the step's plan, forward batch and forward time are recorded on the way
(`StepRecorder`) for its features and for re-running its other ops
(`profile_ops.time_other_ops`). The grid is measured in `Grid.rounds` rounds and each point is
the median of its steps from all of them; every sequence of a timed step samples (as in serving,
where a step with prompt chunks nearly always carries decodes too):

- prefill (chunk, context): a fresh prompt of context + chunk tokens is computed up to `context`
  (untimed steps), then its last chunk of `chunk` tokens is the timed step;
- decode (batch, context): `batch` prompts of `context` tokens are prefilled, then their decode
  steps are timed;
- mixed (batch, chunk): `batch` decodes (after 32-token prompts) plus one fresh prompt of
  `chunk` tokens in one step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from flexmesh.actors.runner.engine import Engine
from flexmesh.actors.runner.model import ForwardBatch
from flexmesh.bench.profile_ops import Chunks, StepPoint, Stopwatch, guarded, median_of
from flexmesh.meshcore.block_pool import blocks_needed
from flexmesh.meshcore.sampling import SamplingParams


@dataclass(frozen=True)
class Grid:
    """The steps measured on one model."""

    prefill_chunks: tuple[int, ...]
    """Prompt chunk sizes (tokens)."""
    prefill_contexts: tuple[int, ...]
    """Context already computed before the chunk (tokens, multiples of the KV block)."""
    decode_batches: tuple[int, ...]
    decode_contexts: tuple[int, ...]
    """Prompt length of every decoding sequence (tokens)."""
    decode_max_tokens: int
    """Largest batch x context prefilled for a decode point (bounds the profile's time)."""
    mixed: tuple[tuple[int, int], ...]
    """(decodes, prompt chunk tokens) of the mixed steps."""
    rounds: int = 3
    """Rounds over every point; a point is the median of its steps from all rounds, so a
    moment of contention on a shared machine moves one of them, not the whole point."""

    def points(self) -> list[tuple[str, int, int]]:
        """(kind, a, b) of every point: prefill (chunk, context), decode (batch, context),
        mixed (batch, chunk)."""
        out = [("prefill", t, c) for c in self.prefill_contexts for t in self.prefill_chunks]
        out += [
            ("decode", b, c)
            for b in self.decode_batches
            for c in self.decode_contexts
            if b * c <= self.decode_max_tokens
        ]
        return out + [("mixed", b, t) for b, t in self.mixed]


FULL_GRID = Grid(
    prefill_chunks=(16, 32, 64, 128, 256, 512),
    prefill_contexts=(0, 512, 1536),
    decode_batches=(1, 2, 4, 8, 16, 32),
    decode_contexts=(32, 256, 1024),
    decode_max_tokens=2048,
    mixed=((1, 64), (4, 256), (8, 128), (16, 480), (31, 32), (31, 256)),
)
QUICK_GRID = Grid(
    prefill_chunks=(16, 128),
    prefill_contexts=(0, 128),
    decode_batches=(1, 8),
    decode_contexts=(32,),
    decode_max_tokens=512,
    mixed=((4, 64),),
)


STEPS_PER_ROUND = 3
"""Timed steps of a decode or mixed point per round (consecutive: they cost no extra prompt);
a prefill point times one per round (each needs its context computed first)."""


class StepRecorder:
    """Times `Engine.step` whole and keeps the plan and the forward batch of the step timed."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._chunks: Chunks = ()
        self._batch: ForwardBatch | None = None
        self._forward_ms = 0.0
        self.guard = guarded(engine.device)
        schedule, forward = engine.scheduler.schedule, engine.model.forward

        def record_plan(now: float, drafts: Any = None) -> Any:
            plan = schedule(now, drafts)
            self._chunks = tuple((c.num_tokens, c.start + c.num_tokens) for c in plan.chunks)
            return plan

        def record_batch(batch: ForwardBatch, kv_cache: Any) -> Any:
            self._batch = batch
            t0 = time.perf_counter()
            logits = forward(batch, kv_cache)
            self._forward_ms = (time.perf_counter() - t0) * 1000.0
            return logits

        # Instance attributes shadow the methods until `close`.
        setattr(engine.scheduler, "schedule", record_plan)  # noqa: B010
        setattr(engine.model, "forward", record_batch)  # noqa: B010

    def close(self) -> None:
        del self.engine.scheduler.schedule, self.engine.model.forward

    def step(self) -> Run:
        self._batch = None
        watch = Stopwatch(self.guard)
        self.engine.step()
        ms, preempted = watch.stop()
        return Run(self._chunks, ms, self._forward_ms, self._batch, preempted)


@dataclass(frozen=True)
class Run:
    """One timed step: its chunks, its wall time and its forward pass's, its forward batch."""

    chunks: Chunks
    ms: float
    forward_ms: float
    batch: ForwardBatch | None
    preempted: bool = False
    """Another process held this core for part of the step (`profile_ops.Stopwatch`)."""


Timed = tuple[StepPoint, ForwardBatch]
"""A point and the forward batch of its median step."""


def median_point(kind: str, runs: Sequence[Run]) -> Timed:
    """The point of the median of `runs` (its chunks and forward batch are that step's), of the
    steps not preempted when there are any."""
    run = median_of(runs, lambda r: r.ms, lambda r: r.preempted)
    assert run.batch is not None
    return StepPoint(kind, run.chunks, run.ms, run.forward_ms), run.batch


class StepBench:
    """Times steps of a `Grid`'s points on one engine, a round at a time (module docstring)."""

    def __init__(self, engine: Engine, steps_per_round: int = STEPS_PER_ROUND) -> None:
        self.engine, self.steps = engine, steps_per_round
        self.recorder = StepRecorder(engine)
        self.cfg = engine.config
        self._seed = 0
        engine.set_prefill_budget(self.cfg.max_batched_tokens)  # every step may take a chunk

    def close(self) -> None:
        self.recorder.close()

    def measure(self, kind: str, a: int, b: int) -> list[Run] | None:
        """One round's steps of a point, or None when it does not fit this engine (its step
        budget, sequence limit, KV blocks or context)."""
        method: Callable[[int, int], list[Run] | None] = getattr(self, f"_{kind}")
        return method(a, b)

    def _ids(self, n: int) -> list[int]:
        self._seed += 1
        vocab = self.engine.model.embed.shape[0]  # rows of the embedding: the vocabulary
        return [(7 * i + 13 * self._seed) % (vocab - 16) + 16 for i in range(n)]

    def _add(self, n: int, max_tokens: int) -> str:
        sampling = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
        return self.engine.add_request(prompt_token_ids=self._ids(n), sampling=sampling)

    def _fits(self, sequences: int, tokens_each: int) -> bool:
        blocks = sequences * blocks_needed(tokens_each + 1, self.cfg.block_size_tokens)
        room = tokens_each + 1 < self.engine.max_model_len_tokens
        return room and blocks <= self.engine.runner.num_blocks

    def _prefill(self, chunk: int, context: int) -> list[Run] | None:
        cfg, engine = self.cfg, self.engine
        if chunk > cfg.max_batched_tokens or not self._fits(1, context + chunk):
            return None
        try:
            rid = self._add(context + chunk, 1)
            req = engine.scheduler.requests[rid]
            while req.num_computed_tokens < context:  # untimed: up to the context
                engine.set_prefill_budget(context - req.num_computed_tokens)
                engine.step()
            engine.set_prefill_budget(chunk)
            run = self.recorder.step()
        finally:
            engine.set_prefill_budget(cfg.max_batched_tokens)
        _expect(run.chunks, ((chunk, context + chunk),))
        return [run]

    def _start_decodes(self, batch: int, context: int) -> list[str] | None:
        """`batch` requests decoding after prompts of `context` tokens (None: no room); they
        last for an untimed decode step and `self.steps` timed ones, one output token a step
        (also while the batch's later prompts are prefilled)."""
        prefill_steps = -(-batch * context // self.cfg.max_batched_tokens) + batch
        out = prefill_steps + self.steps + 2
        if batch > self.cfg.max_num_seqs or not self._fits(batch, context + out):
            return None
        rids = [self._add(context, out) for _ in range(batch)]
        sched = self.engine.scheduler
        while sched.waiting or sched.num_decoding < batch:
            self.engine.step()
        self.engine.step()  # one untimed decode step
        return rids

    def _decode(self, batch: int, context: int) -> list[Run] | None:
        rids = self._start_decodes(batch, context)
        if rids is None:
            return None
        try:
            runs = [self.recorder.step() for _ in range(self.steps)]
        finally:
            for rid in rids:
                self.engine.abort(rid)
        for run in runs:
            _expect_shape(run.chunks, [1] * batch)
        return runs

    def _mixed(self, batch: int, chunk: int) -> list[Run] | None:
        cfg = self.cfg
        if batch + chunk > cfg.max_batched_tokens or batch + 1 > cfg.max_num_seqs:
            return None
        if not self._fits(1, chunk):
            return None
        rids = self._start_decodes(batch, 32)
        if rids is None:
            return None
        runs = []
        try:
            for _ in range(self.steps):
                self._add(chunk, 1)  # it samples its first token and ends in this step
                runs.append(self.recorder.step())
        finally:
            for rid in rids:
                self.engine.abort(rid)
        for run in runs:
            _expect_shape(run.chunks, [1] * batch + [chunk])
        return runs


def _expect(chunks: Chunks, expected: Chunks) -> None:
    if chunks != expected:
        raise RuntimeError(f"the engine planned {chunks}, not the profiled step {expected}")


def _expect_shape(chunks: Chunks, tokens: list[int]) -> None:
    if sorted(n for n, _ in chunks) != sorted(tokens):
        raise RuntimeError(f"the engine planned {chunks}, not the profiled step of {tokens}")
