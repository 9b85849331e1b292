"""The probe front: one interface for every backend plus the rules they share.

A prompt longer than `long_context_tokens` is `long_context` without a forward pass: its class
is settled by its length (the routing question is where its KV fits), and running a classifier
over 100k tokens would cost more than the routing saves. A shorter prompt loses its routing
talk (`parts.strip_routing_talk`); then a batched backend (the classifier) reads the whole and
its views (`parts.views`: the text before and after each cut between sentences) in one pass.
The whole prompt's intent is `intent`; every other intent a view shows with at least
`part_confidence` is reported in `intents`, so the router can serve the most demanding of them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Protocol

from flexmesh.actors.probe.parts import segments, strip_routing_talk
from flexmesh.meshcore.config import ProbeConfig
from flexmesh.meshcore.routing import INTENTS, ProbeResult

CHARS_PER_TOKEN = 4.0
"""Characters per token of ASCII text (English and code) for the cheap length estimate."""
NON_ASCII_CHARS_PER_TOKEN = 1.5
"""Characters per token of non-ASCII text (CJK runs ~1-2 characters per token in Qwen2)."""


class ProbeBackend(Protocol):
    """Senses one prompt's intent. Implementations: `ClassifierProbe`, `LMProbe`."""

    name: str

    def classify(self, prompt: str) -> ProbeResult: ...


def estimate_tokens(text: str) -> int:
    """Token count estimate without a tokenizer, O(len) in C: ASCII /4, non-ASCII /1.5."""
    ascii_chars = len(text.encode("ascii", "ignore"))
    other = len(text) - ascii_chars
    return int(ascii_chars / CHARS_PER_TOKEN + other / NON_ASCII_CHARS_PER_TOKEN + 0.5)


class ProbeFront:
    """Applies the long-context rule, then asks the backend; `probe_ms` covers both."""

    def __init__(
        self,
        backend: ProbeBackend,
        long_context_tokens: int = 2048,
        count_tokens: Callable[[str], int] = estimate_tokens,
        part_confidence: float = ProbeConfig.part_confidence,
    ) -> None:
        if long_context_tokens <= 0:
            raise ValueError(f"long_context_tokens must be > 0, got {long_context_tokens!r}")
        if not 0.0 <= part_confidence <= 1.0:
            raise ValueError(f"part_confidence must be in [0, 1], got {part_confidence!r}")
        self.backend = backend
        self.name = backend.name
        self.long_context_tokens = long_context_tokens
        self.part_confidence = part_confidence
        self._count_tokens = count_tokens

    def is_long(self, prompt: str) -> bool:
        # Every token spans at least one character, so short strings skip the count.
        return len(prompt) > self.long_context_tokens and (
            self._count_tokens(prompt) > self.long_context_tokens
        )

    def classify(self, prompt: str) -> ProbeResult:
        start = time.perf_counter()
        if self.is_long(prompt):
            return ProbeResult(
                intent="long_context",
                confidence=1.0,
                scores={i: float(i == "long_context") for i in INTENTS},
                probe_ms=(time.perf_counter() - start) * 1000.0,
                backend="rule",
            )
        text = strip_routing_talk(prompt)
        # Parts need a backend that reads them in one batch (the classifier); the lm backend,
        # a forward pass per reading, reads the whole prompt only.
        read = getattr(self.backend, "classify_parts", None)
        whole, *parts = read(text, segments(text)) if read else [self.backend.classify(text)]
        found: dict[str, float] = {}
        for part in parts:
            if part.confidence >= self.part_confidence and part.intent != whole.intent:
                found[part.intent] = max(found.get(part.intent, 0.0), part.confidence)
        return dataclasses.replace(
            whole, intents=found, probe_ms=(time.perf_counter() - start) * 1000.0
        )
