"""Which decoding requests draft tokens this step, and how many; and the drafts that need no
model (prompt-lookup decoding, PLD). The draft model's own proposals run in the engine."""

from __future__ import annotations

from collections.abc import Iterable

from flexmesh.meshcore.config import EngineConfig
from flexmesh.meshcore.request import Request


def applied_strategy(strategy: str, has_draft_model: bool) -> str:
    """The strategy a request actually runs: "spec" needs a draft model, else it is "none"."""
    return strategy if strategy == "pld" or (strategy == "spec" and has_draft_model) else "none"


def plan_drafts(
    running: Iterable[Request], config: EngineConfig, max_model_len_tokens: int, has_draft: bool
) -> tuple[dict[str, list[int]], dict[str, int]]:
    """For this step's decoding requests: (PLD drafts by request id, room for draft-model
    tokens by request id). A request drafts only when decoding one token at a time, and never
    past its `max_tokens`, the model's context or `engine.num_draft_tokens`."""
    pld: dict[str, list[int]] = {}
    spec: dict[str, int] = {}
    for req in running:
        strategy = applied_strategy(req.sampling.strategy, has_draft)
        if strategy == "none" or req.num_computed_tokens != req.num_tokens - 1:
            continue
        k = min(
            req.sampling.max_tokens - len(req.output_token_ids) - 1,
            max_model_len_tokens - req.num_tokens - 1,
            config.num_draft_tokens,
        )
        if k <= 0:
            continue
        if strategy == "pld":
            pld[req.request_id] = propose_prompt_lookup(
                req.all_token_ids, config.pld_ngram_tokens, k
            )
        else:
            spec[req.request_id] = k
    return pld, spec


def propose_prompt_lookup(tokens: list[int], max_ngram: int, num_draft: int) -> list[int]:
    """Find the latest earlier occurrence of the longest suffix n-gram and propose what followed.

    Tries n-grams from `max_ngram` down to 1 tokens; returns at most `num_draft` tokens, or none.
    """
    n_tokens = len(tokens)
    for n in range(min(max_ngram, n_tokens - 1), 0, -1):
        suffix = tokens[n_tokens - n :]
        # Scan right to left so recent context (e.g. the code being edited) wins.
        for start in range(n_tokens - n - 1, -1, -1):
            if tokens[start : start + n] == suffix:
                follow = tokens[start + n : start + n + num_draft]
                if follow:
                    return follow
    return []
