"""Draft proposals that need no model: prompt-lookup decoding (PLD)."""

from __future__ import annotations


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
