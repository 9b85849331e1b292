"""Frozen messages that cross actor boundaries (plain fields only, so msgpack/pickle is cheap)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from flexmesh.meshcore.sampling import SamplingParams


@dataclass(frozen=True)
class RequestState:
    """Everything that defines a request between workers: the one request message, carried
    unchanged from the gateway to the engine, for a new request (no output tokens yet), a
    hand-off, a fallback and a migration alike.

        A decode worker continues from it as if it had computed the request itself: the same
        tokens (seeded sampling draws each position from its own seed, so it gives the same tokens
        either way), and stream positions past what the client already received.
    """

    request_id: str
    prompt_token_ids: tuple[int, ...]
    output_token_ids: tuple[int, ...]
    sampling: SamplingParams
    num_kv_tokens: int = 0
    """Leading tokens whose KV the sender holds for transfer (0 = none: recompute them)."""
    sent_tokens: int = 0
    """Output tokens already streamed to the client (the next chunk's offset)."""
    sent_text_chars: int = 0
    """Characters of decoded output already streamed (the detokeniser's position)."""
    queue_ms: float = 0.0
    """Queue time measured where the request was first computed."""
    prefill_ms: float = 0.0
    """Prefill time measured where the request was first computed."""
    draft_tokens_proposed: int = 0
    draft_tokens_accepted: int = 0
    handed_off_at: float = 0.0
    """Wall-clock time (`time.time()`) the sender's prefill ended and the hand-off began."""
    prompt: str = ""
    """The prompt text, when its token ids are not known (the receiving worker tokenizes it)."""
    hand_off: bool = False
    """A new request that stops after its first token and holds its KV for a decode worker."""
    kv_group: str = ""
    """After a hand-off: the prefill worker's usable KV collective group ("" = none)."""
    kv_node: str = ""
    """After a hand-off: the Ray node of the prefill worker (the transport depends on it)."""


@dataclass(frozen=True)
class RequestOutput:
    """New tokens of one request since its previous output; the last one has `finished`."""

    request_id: str
    token_ids: tuple[int, ...]
    text: str
    finished: bool = False
    finish_reason: str = ""
    offset: int = 0
    """Index of this output's first token in the completion (outputs are contiguous)."""
    handoff: RequestState | None = None
    """Set on a prefill worker's last output: the state a decode worker continues from while
    the prefill worker holds the request's KV for it."""
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
    kv_transport: str = ""
    """How the request's KV reached this worker ("" = prefilled here)."""
    kv_bytes: int = 0
    """Bytes of KV received from the prefill worker."""
    kv_transfer_ms: float = 0.0
    """From the prefill worker's prefill ending to the KV imported here (wall clocks)."""


def merge_outputs(outputs: list[RequestOutput]) -> RequestOutput:
    """Coalesce consecutive outputs of one request into one chunk (the last one's metadata)."""
    last = outputs[-1]
    if len(outputs) == 1:
        return last
    return replace(
        last,
        offset=outputs[0].offset,
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
    prefill_tokens_waiting: int = 0
    """Prompt tokens queued or in a running prefill, not yet computed."""
    decode_batch: int = 0
    """Running requests past their prompt."""
    step_ms: float = 0.0
    """Recent average wall time of one engine step."""
    tpot_ms: float = 0.0
    """Recent average wall time of a decode-only step (the time per output token)."""
    kv_blocks_in_flight: int = 0
    """KV blocks held for hand-offs: waiting to be sent from here, or reserved to receive."""
    kv_blocks_cached: int = 0
    """Blocks the prefix cache keeps with no request holding them (not in `kv_blocks_used`)."""
    prefix_cache: dict[str, float] = field(default_factory=dict)
    """The prefix cache's counters (`load.prefix_figures`); empty when it is off."""
    prompt_tokens_computed: int = 0
    """Prompt tokens this worker's steps computed since it started (cache hits excluded)."""
    kv_transport: str = ""
    """Backend of this worker's usable KV collective group ("" = object store only)."""
    prefill_budget_tokens: int = 0
    """Most prompt tokens one step computes (the rest of the step budget is for decodes)."""
    max_batched_tokens: int = 0
    """The whole token budget of one step."""
    draft_acceptance: dict[str, float] = field(default_factory=dict)
    """Per strategy (pld, spec), recent fraction of draft tokens accepted."""
    decode_step_ms: float = 0.0
    """Recent wall time of a step without prompt tokens."""
    prefill_ms_per_token: float = 0.0
    """Recent time one prompt token adds to a step (with `decode_step_ms`, what a step with a
    given prefill share will cost)."""
    percentiles: dict[str, float] = field(default_factory=dict)
    """Windowed p50/p90/p99 of step_ms, tpot_ms and queue_ms (`load.StepStats.percentiles`)."""
    draining: bool = False
    """The gateway sends this worker no new requests."""
    pinned: bool = False
    """The operator set this worker's role: the controller leaves it alone."""
    alive: bool = True


@dataclass(frozen=True)
class Decision:
    """One change made while serving, by the operator or the controller, and why."""

    t_unix: float
    kind: str
    """"role" (a worker's role), "prefill_budget" (a mixed worker's prefill share of each
    step), "policy" (a routing policy field) or "balance" (a model's cache-aware placement
    bound)."""
    target: str
    """The worker, the policy field (e.g. "spill_queue_ms", "routes.code.strategy") or the
    model (balance)."""
    old: str
    new: str
    by: str
    """"operator" or "controller"."""
    reason: str = ""
    """The controller's rule, e.g. "ttft_at_risk" ("" for the operator)."""
    inputs: dict[str, float] = field(default_factory=dict)
    """The signals the decision was taken on."""
