"""Frozen messages that cross actor boundaries (plain fields only, so msgpack/pickle is cheap)."""

from __future__ import annotations

from dataclasses import dataclass, replace


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


def merge_outputs(outputs: list[RequestOutput]) -> RequestOutput:
    """Coalesce consecutive outputs of one request into one chunk (the last one's metadata)."""
    last = outputs[-1]
    if len(outputs) == 1:
        return last
    return replace(
        last,
        token_ids=tuple(t for o in outputs for t in o.token_ids),
        text="".join(o.text for o in outputs),
    )


@dataclass(frozen=True)
class WorkerStatus:
    """A worker's load and identity, as `Admin/GetStatus` and the router read it."""

    name: str
    model: str
    model_path: str
    role: str
    device: str
    queue_length: int
    running_requests: int
    kv_blocks_used: int
    kv_blocks_total: int
    uptime_s: float
    tokens_generated: int
    queue_delay_ms: float = 0.0
    """Expected wait before a new request's prefill starts (feeds the router's spill rule)."""
    prefill_ms: float = 0.0
    """Recent average time from a request's first step to its first token."""
    alive: bool = True
