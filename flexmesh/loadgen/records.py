"""Data that crosses loadgen's stages: requests ready to send and per-request results."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

OK = "OK"
"""Status of a request that streamed to its end."""
NOT_SENT = "NOT_SENT"
"""Status of a request the replay never sent (its time limit ran out first)."""


@dataclass(frozen=True)
class ReplayRequest:
    """One request with its prompt, ready for `replay`."""

    index: int
    """Position in the workload (arrival order)."""
    arrival_s: float
    """Send time in seconds after the replay starts."""
    prompt: str
    """Prompt text, sized with the target model's tokenizer."""
    prompt_tokens: int
    """Tokens of `prompt` under that tokenizer (the trace asked for `target_prompt_tokens`)."""
    max_tokens: int
    """Tokens to generate (the trace's output length)."""
    intent: str
    """Intent the prompt was drawn from (ground truth for the probe)."""
    target_prompt_tokens: int = 0
    """Prompt length the trace asked for."""
    ignore_eos: bool = True
    """Generate past end-of-sequence so the trace's output length holds."""


@dataclass(frozen=True)
class RequestRecord:
    """What happened to one request. Times are seconds; `*_s` times are from replay start."""

    index: int
    request_id: str
    intent: str
    arrival_s: float
    """Scheduled send time."""
    status: str
    """"OK", a `grpc.StatusCode` name, or "NOT_SENT"."""
    send_s: float | None = None
    """Actual send time (None when never sent)."""
    send_delay_s: float = 0.0
    """How late the send was (waiting for an in-flight slot, or event-loop lag)."""
    end_s: float | None = None
    """When the stream ended or failed."""
    ttft_s: float | None = None
    """From send to the first chunk carrying tokens."""
    e2e_s: float | None = None
    """From send to the end of the stream (also set for failures)."""
    chunk_times_s: tuple[float, ...] = ()
    """Arrival of each token-carrying chunk, from send."""
    chunk_tokens: tuple[int, ...] = ()
    """Tokens in each of those chunks."""
    prompt_tokens: int = 0
    """Prompt tokens (server's count when reported, else the client's)."""
    target_prompt_tokens: int = 0
    max_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""
    error: str = ""
    route_model: str = ""
    route_worker: str = ""
    route_intent: str = ""
    route_strategy: str = ""
    route_confidence: float = 0.0
    route_prefill_worker: str = ""
    migrations: int = 0
    """Times the request moved to another worker after the one serving it broke."""
    demanding: bool = False
    """Its configured route names the large model (False without route info)."""
    downgraded: bool = False
    """Demanding, and served by another model (spilled, or moved by the controller)."""
    token_ids: tuple[int, ...] = ()
    """The completion's token ids (kept only when the replay is asked to)."""
    server_queue_ms: float | None = None
    server_ttft_ms: float | None = None
    server_total_ms: float | None = None
    probe_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def tpot_s(self) -> float | None:
        """Mean time per output token after the first (None with fewer than 2 tokens)."""
        if self.ttft_s is None or self.e2e_s is None or self.completion_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.completion_tokens - 1)

    def token_gaps_s(self) -> list[float]:
        """Per-token inter-token latency: each chunk gap spread over that chunk's tokens."""
        gaps: list[float] = []
        for i in range(1, len(self.chunk_times_s)):
            n = max(1, self.chunk_tokens[i])
            gaps.extend([(self.chunk_times_s[i] - self.chunk_times_s[i - 1]) / n] * n)
        return gaps

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tpot_s"] = self.tpot_s
        return d


ROUTE_FIELDS = {
    "route_model": "model",
    "route_worker": "worker",
    "route_intent": "intent",
    "route_strategy": "strategy",
    "route_confidence": "confidence",
    "route_prefill_worker": "prefill_worker",
    "migrations": "migrations",
    "demanding": "demanding",
    "downgraded": "downgraded",
}
"""`RequestRecord` field <- the same field of the server's route."""
TIMING_FIELDS = {
    "server_queue_ms": "queue_ms",
    "server_ttft_ms": "ttft_ms",
    "server_total_ms": "total_ms",
    "probe_ms": "probe_ms",
}
"""`RequestRecord` field <- the same field of the server's timings."""


def server_fields(
    route: Mapping[str, Any] | None = None, timings: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A record's fields from what FlexMesh reports of a finished request, whichever API it
    came through (the gRPC `Route` and `Timings`, or the HTTP API's `flexmesh` field)."""
    route, timings = route or {}, timings or {}
    out = {rec: route[src] for rec, src in ROUTE_FIELDS.items() if src in route}
    if "route_confidence" in out:
        out["route_confidence"] = round(float(out["route_confidence"]), 4)
    out.update({rec: timings[src] for rec, src in TIMING_FIELDS.items() if src in timings})
    return out


@dataclass
class Stream:
    """What one call received so far (filled by a `Sender`, read into its `RequestRecord`)."""

    times: list[float] = field(default_factory=list)
    """Arrival of each token-carrying message, from send."""
    tokens: list[int] = field(default_factory=list)
    """Tokens in each of those messages."""
    token_ids: list[int] | None = None
    """The streamed ids, when kept."""
    final: dict[str, Any] = field(default_factory=dict)
    """`RequestRecord` fields the last messages report (usage, route, server timings)."""

    def add(self, at_s: float, count: int, ids: Sequence[int] = ()) -> None:
        self.times.append(at_s)
        self.tokens.append(count)
        if self.token_ids is not None:
            self.token_ids.extend(ids)


class ReplayError(Exception):
    """A call that ended with a status other than OK (a gRPC status code name)."""

    def __init__(self, status: str, error: str) -> None:
        super().__init__(f"{status}: {error}")
        self.status, self.error = status, error


Sender = Callable[
    [ReplayRequest, str, "float | None", Stream, Callable[[], float]], Awaitable[None]
]
"""`send(request, request_id, timeout_s, stream, elapsed_s)`: one call that fills `stream` (token
times from `elapsed_s()`) and raises `ReplayError` when it fails."""
