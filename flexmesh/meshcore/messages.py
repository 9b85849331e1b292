"""Frozen messages that cross actor boundaries (plain fields only, so msgpack/pickle is cheap)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RequestOutput:
    """New tokens of one request since its previous output; the last one has `finished`."""

    request_id: str
    token_ids: tuple[int, ...]
    text: str
    finished: bool = False
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_ms: float = 0.0
    """Arrival at the engine to the first step that computed the request."""
    prefill_ms: float = 0.0
    """First step that computed the request to its first token."""
    draft_tokens_proposed: int = 0
    draft_tokens_accepted: int = 0
    strategy: str = "none"
    """Decoding strategy the engine applied."""
