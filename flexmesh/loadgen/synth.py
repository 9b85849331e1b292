"""Prompt synthesis: give every shaped trace request a real prompt of the right length and intent.

A request's intent is drawn from the mix with a seeded generator; its prompt is labelled prompts
of that intent, joined when one is too short and cut to the trace's length with the target
tokenizer (see `prompts.fit_text`).

Mooncake requests carry prefix-block ids. Each block id maps deterministically (seed, id and
the intent of its first user) to one text block of about `Workload.block_tokens` tokens, so a
request's prompt is the concatenation of its blocks' texts, then request-specific filler, cut
to length at the end only: requests with equal leading ids share those blocks' text as an
exact prefix. A block takes the intent of the
first request that uses it, and a request that continues another (shares two or more leading
blocks, i.e. more than the system-prompt block every Mooncake request has) inherits that
request's intent, as a conversation keeps its topic. New conversations follow the mix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import structlog
from tqdm import tqdm

from flexmesh.loadgen.prompts import SEPARATOR, PromptPool
from flexmesh.loadgen.records import ReplayRequest
from flexmesh.loadgen.shaping import Workload
from flexmesh.loadgen.traces import TraceRequest

log = structlog.get_logger(__name__)

INHERIT_MIN_SHARED_BLOCKS = 2
"""Shared leading blocks above which a request continues a conversation (keeps its intent)."""
FILLER_SLACK_TOKENS = 16
"""Filler asked for beyond the estimated need, so one round usually suffices."""
MAX_FILL_ROUNDS = 8
"""Bound on filler top-ups when the characters-per-token guess is too low."""


class _Blocks:
    """Text of each prefix block, made once per block id and reused by every request."""

    def __init__(self, pool: PromptPool, block_tokens: int, seed: int) -> None:
        self.pool = pool
        self.block_tokens = block_tokens
        self.seed = seed
        self.text: dict[int, str] = {}
        self.intent: dict[int, str] = {}

    def get(self, block_id: int, intent: str) -> str:
        if block_id not in self.text:
            rng = np.random.default_rng([self.seed, 11, block_id])
            source = self.pool.stream(intent, rng, self.block_tokens).lstrip()
            if self.block_tokens < 3:
                text, _ = self.pool.fit(source, self.block_tokens, tolerance=0)
            else:
                # A block starts with a non-space and ends with a newline, so no BPE merge
                # crosses the seam between blocks and their token counts add up.
                want = self.block_tokens - 1
                for _ in range(3):
                    text, _ = self.pool.fit(source, want, tolerance=0)
                    text = text.rstrip() + "\n"
                    short = self.block_tokens - self.pool.count(text)
                    if short <= 0:
                        break
                    want += short
            self.text[block_id] = text
            self.intent[block_id] = intent
        return self.text[block_id]


def _draw_intents(mix: Mapping[str, float], n: int, rng: np.random.Generator) -> list[str]:
    names = list(mix)
    probs = np.array([mix[k] for k in names], dtype=np.float64)
    picks = rng.choice(len(names), size=n, p=probs / probs.sum())
    return [names[i] for i in picks.tolist()]


def _prefix(req: TraceRequest, drawn: str, blocks: _Blocks) -> tuple[str, str, int]:
    """(intent, text of the request's prefix blocks, their tokens) of a Mooncake request."""
    shared = 0
    while shared < len(req.hash_ids) and req.hash_ids[shared] in blocks.text:
        shared += 1
    intent = drawn
    if shared >= INHERIT_MIN_SHARED_BLOCKS:
        intent = blocks.intent[req.hash_ids[shared - 1]]
    # Blocks past the prompt's length would be cut anyway (clipped lengths leave many), so
    # only the ones that can show up are made.
    needed = req.hash_ids[: req.input_tokens // blocks.block_tokens + 1]
    text = "".join(blocks.get(b, intent) for b in needed)
    return intent, text, len(needed) * blocks.block_tokens


def _fill(
    pool: PromptPool,
    prefix: str,
    prefix_tokens: int,
    target: int,
    intent: str,
    rng: np.random.Generator,
    tolerance: int,
) -> tuple[str, int]:
    """`prefix` plus prompts of `intent`, cut to `target` tokens; topped up when too short."""
    text, need = prefix, max(target - prefix_tokens, 0) + FILLER_SLACK_TOKENS
    prompt, n_tokens = "", 0
    for _ in range(MAX_FILL_ROUNDS):
        filler = pool.stream(intent, rng, need)
        text = f"{text}{SEPARATOR}{filler}" if text else filler
        prompt, n_tokens = pool.fit(text, target, tolerance)
        if n_tokens >= target - tolerance:
            break
        # The characters-per-token guess was too low for this text: add more.
        need = target - n_tokens + FILLER_SLACK_TOKENS
    return prompt, n_tokens


def _intents(
    workload: Workload,
    mix: Mapping[str, float],
    seed: int,
    phase_mixes: Sequence[tuple[float, Mapping[str, float]]],
) -> list[str]:
    """Each request's intent, drawn from its phase's mix."""
    rng = np.random.default_rng([seed, 3])
    drawn = _draw_intents(mix, len(workload.requests), rng)
    for i, req in enumerate(workload.requests):
        phase_mix = next((m for end, m in phase_mixes if req.arrival_s < end), None)
        if phase_mix is not None:
            drawn[i] = _draw_intents(phase_mix, 1, rng)[0]
    return drawn


def placeholders(
    workload: Workload,
    mix: Mapping[str, float],
    seed: int = 0,
    phase_mixes: Sequence[tuple[float, Mapping[str, float]]] = (),
) -> list[ReplayRequest]:
    """The requests `synthesize` makes, with their lengths and intents drawn the same way but
    no text: each prompt is a placeholder naming its intent and index. For the simulator, which
    needs lengths only (its probe then answers from the classifier's confusion matrix)."""
    drawn = _intents(workload, mix, seed, phase_mixes)
    return [
        ReplayRequest(
            index=i,
            arrival_s=req.arrival_s,
            prompt=f"<{drawn[i]} prompt {i}>",
            prompt_tokens=req.input_tokens,
            max_tokens=req.output_tokens,
            intent=drawn[i],
            target_prompt_tokens=req.input_tokens,
        )
        for i, req in enumerate(workload.requests)
    ]


def synthesize(
    workload: Workload,
    mix: Mapping[str, float],
    pool: PromptPool,
    seed: int = 0,
    tolerance: int = 1,
    progress: bool = False,
    phase_mixes: Sequence[tuple[float, Mapping[str, float]]] = (),
) -> list[ReplayRequest]:
    """One `ReplayRequest` per workload request, in arrival order.

    `phase_mixes` (`(end_s, mix)` in time order) gives the requests arriving before each
    `end_s` that mix instead of `mix`: an intent mix that shifts while the replay runs.
    """
    pool.check_covers({k for m in (mix, *(m for _, m in phase_mixes)) for k in m})
    drawn = _intents(workload, mix, seed, phase_mixes)
    blocks = _Blocks(pool, workload.block_tokens, seed)
    out: list[ReplayRequest] = []
    reqs: Sequence[TraceRequest] = workload.requests
    for i, req in enumerate(tqdm(reqs, desc="prompts", unit="req", disable=not progress)):
        intent, prefix, prefix_tokens = drawn[i], "", 0
        if req.hash_ids:
            intent, prefix, prefix_tokens = _prefix(req, drawn[i], blocks)
        rng = np.random.default_rng([seed, 5, i])
        prompt, n_tokens = _fill(
            pool, prefix, prefix_tokens, req.input_tokens, intent, rng, tolerance
        )
        out.append(
            ReplayRequest(
                index=i,
                arrival_s=req.arrival_s,
                prompt=prompt,
                prompt_tokens=n_tokens,
                max_tokens=req.output_tokens,
                intent=intent,
                target_prompt_tokens=req.input_tokens,
            )
        )
    log.info("prompts_synthesised", requests=len(out), blocks=len(blocks.text))
    return out
