"""Incremental detokenisation with stop strings: never emit half a character or half a stop."""

from __future__ import annotations

from typing import Any


class IncrementalDetokenizer:
    """Turns a growing list of output token ids into newly finished text."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...], emitted_chars: int = 0) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.hold_chars = max((len(s) for s in stop), default=1) - 1
        self.emitted = emitted_chars
        """Characters of the decoded output already returned (carried across a hand-off)."""

    def update(self, token_ids: list[int], final: bool) -> tuple[str, bool]:
        """Return (new text, stop string hit). After a hit the text ends before the stop."""
        full = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        if self.stop:
            search_from = max(0, self.emitted - self.hold_chars)
            hits = [i for i in (full.find(s, search_from) for s in self.stop) if i >= 0]
            if hits:
                cut = min(hits)
                new = full[self.emitted : cut]
                self.emitted = cut
                return new, True
        end = len(full)
        if not final:
            # Hold back an incomplete UTF-8 character and whatever could start a stop string.
            while end > self.emitted and full[end - 1] == "\ufffd":
                end -= 1
            end = max(self.emitted, end - self.hold_chars)
        new = full[self.emitted : end]
        self.emitted = end
        return new, False


def eos_token_ids(generation_config: object, tokenizer: object) -> frozenset[int]:
    """The ids that end a request: the generation config's EOS ids and the tokenizer's."""
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
