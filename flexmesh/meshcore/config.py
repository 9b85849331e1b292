"""Frozen configuration dataclasses composed into one `MeshConfig`, built from plain data.

Every field has a default, its unit in its name and a one-line docstring. Validation raises
`ValueError` naming the field and the value. Nothing below reads the environment or files
(`launch/config_file.py` parses YAML into the plain data `MeshConfig.from_dict` takes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flexmesh.meshcore.fields import build, check
from flexmesh.meshcore.routing import ROUTE_KEYS, RoutingConfig


@dataclass(frozen=True)
class EngineConfig:
    """How one worker's engine batches requests and sizes its paged KV cache."""

    block_size_tokens: int = 16
    """Tokens held by one KV block."""
    kv_cache_bytes: int = 256 * 1024 * 1024
    """Device memory given to the KV cache when `num_kv_blocks` is 0."""
    num_kv_blocks: int = 0
    """Exact number of KV blocks (0 = derive from `kv_cache_bytes`)."""
    max_num_seqs: int = 32
    """Most requests decoded together in one step."""
    max_batched_tokens: int = 512
    """Token budget of one step (prompt chunks plus decode tokens)."""
    prefill_budget_tokens: int = 0
    """Most prompt tokens one step computes at start (0 = the whole `max_batched_tokens`); a
    static co-location split. The controller (or an operator) changes it while serving."""
    chunked_prefill: bool = True
    """Split prompts longer than the step budget across steps."""
    prefix_cache: bool = True
    """Keep the KV of computed prompt blocks after their request and start a new request after
    its longest cached prefix (`meshcore/prefix_cache.py`); the gateway then places prompts
    by cache too (`pd.placement`). On by default: with nothing to reuse it cost 2% of output
    throughput (`flexmesh bench prefix`, no-reuse rows; the bound was 5%)."""
    dtype: str = "auto"
    """Weight dtype: auto (fp32 on CPU, bf16 on NPU/CUDA), float32, float16 or bfloat16."""
    device: str = "auto"
    """Device: auto (npu, then cuda, then cpu), npu, cuda or cpu."""
    num_threads: int = 0
    """CPU threads for torch (0 = leave torch's default)."""
    cpu_packed_weights: bool = True
    """On CPU in fp32, hold the projection weights in oneDNN's blocked layout (faster GEMV and
    GEMM here than MKL's sgemm on plain weights; same memory)."""
    pld_ngram_tokens: int = 3
    """Longest n-gram matched by prompt-lookup decoding."""
    num_draft_tokens: int = 4
    """Draft tokens proposed per step by PLD or a draft model."""

    def __post_init__(self) -> None:
        check(self.block_size_tokens > 0, "engine.block_size_tokens", self.block_size_tokens, "> 0")
        check(self.kv_cache_bytes > 0, "engine.kv_cache_bytes", self.kv_cache_bytes, "> 0")
        check(self.num_kv_blocks >= 0, "engine.num_kv_blocks", self.num_kv_blocks, ">= 0")
        check(self.max_num_seqs > 0, "engine.max_num_seqs", self.max_num_seqs, "> 0")
        check(
            self.max_batched_tokens >= self.max_num_seqs,
            "engine.max_batched_tokens",
            self.max_batched_tokens,
            ">= engine.max_num_seqs",
        )
        budget = self.prefill_budget_tokens
        rule = "in [0, engine.max_batched_tokens]"
        ok = 0 <= budget <= self.max_batched_tokens
        check(ok, "engine.prefill_budget_tokens", budget, rule)
        dtypes = ("auto", "float32", "float16", "bfloat16")
        check(self.dtype in dtypes, "engine.dtype", self.dtype, f"one of {dtypes}")
        devices = ("auto", "npu", "cuda", "cpu")
        check(self.device in devices, "engine.device", self.device, f"one of {devices}")
        check(self.num_draft_tokens > 0, "engine.num_draft_tokens", self.num_draft_tokens, "> 0")
        check(self.pld_ngram_tokens > 0, "engine.pld_ngram_tokens", self.pld_ngram_tokens, "> 0")

    def kv_blocks(self, kv_bytes_per_token: int) -> int:
        """Blocks of a worker's KV cache: `num_kv_blocks`, else as many as `kv_cache_bytes`
        holds at `kv_bytes_per_token` (the engine's and the simulator's one sizing rule)."""
        block_bytes = kv_bytes_per_token * self.block_size_tokens
        return self.num_kv_blocks or max(1, self.kv_cache_bytes // block_bytes)


WORKER_ROLES = ("prefill", "decode", "mixed")
"""What a worker does: prompts only (hands KV over), decoding only (takes KV), or both."""
PLACEMENTS = ("pack", "spread")
"""How a model's workers are placed on nodes (`ModelSpec.placement`)."""
QUANTIZATIONS = ("none", "int8")
"""Weight quantisations a model can ask for (`ModelSpec.quantization`)."""
QUANTIZATION_DEVICES = {"int8": ("cpu", "npu")}
"""Devices each quantisation runs on (`actors/runner/quant.py` holds the kernels); "none" runs
everywhere."""


@dataclass(frozen=True)
class ModelSpec:
    """One resident model and how many workers serve it."""

    name: str = "demo-small"
    """Name clients use in `GenerateRequest.model`."""
    path: str = ""
    """Local Hugging Face folder; empty = `<models_dir>/<name>` (demo models are built there);
    a bare folder name = `<models_dir>/<path>` (a quantised copy of `demo-small`: `demo-small`)."""
    num_workers: int = 1
    """Workers (one device each) holding this model."""
    role: str = "mixed"
    """Initial role of every worker: prefill, decode or mixed."""
    roles: tuple[str, ...] = ()
    """Initial role per worker index (overrides `role`; one entry per worker)."""
    draft_model: str = ""
    """Name of a resident model used for draft-model speculation ("" = none)."""
    num_cpus: float = 1.0
    """CPUs reserved per worker when it runs on CPU (also its torch thread count)."""
    placement: str = "pack"
    """Where the workers go: `pack` = all on one node (one STRICT_PACK Ray placement group), so
    KV hand-offs stay on the node's device link; `spread` = across nodes as far as resources
    allow (Ray's SPREAD strategy), so losing a node loses fewer of them."""
    resources: dict[str, float] = field(default_factory=dict)
    """Extra Ray resources every worker needs (custom ones set on the nodes meant for it, e.g.
    `{pool_a: 1}`), beside its device or CPUs."""
    quantization: str = "none"
    """Weights as loaded ("none") or "int8": int8 weight-only with one scale per output
    channel, built at load time from the same checkpoint (cpu and npu; docs/engine.md)."""

    def __post_init__(self) -> None:
        check(bool(self.name), "models[].name", self.name, "non-empty")
        check(
            self.quantization in QUANTIZATIONS,
            "models[].quantization",
            self.quantization,
            f"one of {QUANTIZATIONS}",
        )
        check(
            self.placement in PLACEMENTS,
            "models[].placement",
            self.placement,
            f"one of {PLACEMENTS}",
        )
        for key, amount in self.resources.items():
            ok = isinstance(amount, int | float) and not isinstance(amount, bool) and amount > 0
            check(ok, f"models[].resources.{key}", amount, "a number > 0")
        check(self.num_workers > 0, "models[].num_workers", self.num_workers, "> 0")
        check(self.num_cpus > 0, "models[].num_cpus", self.num_cpus, "> 0")
        check(self.role in WORKER_ROLES, "models[].role", self.role, f"one of {WORKER_ROLES}")
        check(
            not self.roles or len(self.roles) == self.num_workers,
            "models[].roles",
            self.roles,
            f"one role per worker ({self.num_workers})",
        )
        for role in self.roles:
            check(role in WORKER_ROLES, "models[].roles[]", role, f"one of {WORKER_ROLES}")

    def role_of(self, index: int) -> str:
        """Initial role of worker `index`."""
        return self.roles[index] if self.roles else self.role


@dataclass(frozen=True)
class GatewayConfig:
    """The gRPC front end."""

    host: str = "127.0.0.1"
    """Address the gRPC server binds."""
    port: int = 50051
    """gRPC port (0 = pick a free one)."""
    max_queue_len: int = 256
    """Requests admitted but not finished before new ones get RESOURCE_EXHAUSTED."""
    max_queue_delay_ms: float = 30000.0
    """A request whose model's expected wait for its prefill is longer gets RESOURCE_EXHAUSTED
    at once instead of queueing (0 = no bound): overload is shed, admitted latency bounded."""
    stream_interval_ms: float = 100.0
    """Longest a streamed chunk waits for more tokens (the first token leaves at once)."""
    stream_chunk_tokens: int = 8
    """A streamed chunk leaves as soon as it holds this many tokens."""
    stream_fanout: int = 4
    """Streams a worker chunks at the two bounds above; with more open streams both grow in
    proportion (16 streams: 400 ms, 32 tokens), so a worker sends about as many messages at
    any load and the gateway's work per message stops taking CPU from the model's threads."""
    worker_timeout_s: float = 30.0
    """Longest wait for a worker to answer a control call (status, abort) before UNAVAILABLE."""
    request_timeout_s: float = 600.0
    """Deadline of a Generate call whose client set none (DEADLINE_EXCEEDED after it)."""
    status_poll_ms: float = 250.0
    """Interval of the gateway's poll of every worker's report (router loads, controller
    snapshot, worker gauges)."""
    status_timeout_ms: float = 2000.0
    """A worker that does not report within this reads as not alive in that poll (a report
    waits for the worker's current step); it takes no new request until it reports again."""
    max_migrations: int = 2
    """Times one request may move to another worker when its stream breaks (0 = never: the
    request fails with UNAVAILABLE)."""
    max_prompt_bytes: int = 1 << 20
    """Longest prompt text in UTF-8 bytes (INVALID_ARGUMENT beyond)."""
    max_prompt_tokens: int = 1 << 18
    """Most `prompt_token_ids` in one request (the model's context refuses fewer, at the
    worker)."""
    max_message_bytes: int = 4 << 20
    """gRPC's largest message the gateway receives or sends (RESOURCE_EXHAUSTED beyond)."""
    admin_token: str = ""
    """Bearer token the Admin service requires (`authorization: Bearer <token>` metadata);
    "" = none, unless the FLEXMESH_ADMIN_TOKEN environment variable of `flexmesh serve` sets
    one. Without it every Admin call is UNAUTHENTICATED."""
    tls_cert_file: str = ""
    """PEM certificate chain of the gateway; with `tls_key_file`, gRPC is served over TLS."""
    tls_key_file: str = ""
    """PEM private key of `tls_cert_file`."""
    http_port: int | None = None
    """Port of the OpenAI-compatible HTTP API on `host` (None = off, 0 = pick a free one);
    served over TLS too when `tls_cert_file` is set (docs/http.md)."""
    api_key: str = ""
    """Bearer token the HTTP API requires (`Authorization: Bearer <key>`); "" = none, unless
    the FLEXMESH_API_KEY environment variable of `flexmesh serve` sets one."""

    def __post_init__(self) -> None:
        check(0 <= self.port < 65536, "gateway.port", self.port, "in [0, 65535]")
        for name in ("status_poll_ms", "status_timeout_ms"):
            check(getattr(self, name) > 0, f"gateway.{name}", getattr(self, name), "> 0")
        check(self.max_queue_len > 0, "gateway.max_queue_len", self.max_queue_len, "> 0")
        delay = self.max_queue_delay_ms
        check(delay >= 0, "gateway.max_queue_delay_ms", delay, ">= 0")
        check(
            self.stream_interval_ms >= 0,
            "gateway.stream_interval_ms",
            self.stream_interval_ms,
            ">= 0",
        )
        check(
            self.stream_chunk_tokens > 0,
            "gateway.stream_chunk_tokens",
            self.stream_chunk_tokens,
            "> 0",
        )
        check(self.stream_fanout > 0, "gateway.stream_fanout", self.stream_fanout, "> 0")
        check(
            self.request_timeout_s > 0, "gateway.request_timeout_s", self.request_timeout_s, "> 0"
        )
        check(self.worker_timeout_s > 0, "gateway.worker_timeout_s", self.worker_timeout_s, "> 0")
        check(self.max_migrations >= 0, "gateway.max_migrations", self.max_migrations, ">= 0")
        if self.http_port is not None:
            port = self.http_port
            ok = isinstance(port, int) and 0 <= port < 65536
            check(ok, "gateway.http_port", port, "in [0, 65535] (or null: off)")
        for name in ("max_prompt_bytes", "max_prompt_tokens", "max_message_bytes"):
            check(getattr(self, name) > 0, f"gateway.{name}", getattr(self, name), "> 0")
        check(
            bool(self.tls_cert_file) == bool(self.tls_key_file),
            "gateway.tls_key_file",
            self.tls_key_file,
            "set together with gateway.tls_cert_file",
        )


@dataclass(frozen=True)
class ProbeConfig:
    """The intent probe actor."""

    backend: str = "classifier"
    """classifier (shipped n-gram model) or lm (zero-shot, one forward pass of the small model)."""
    timeout_s: float = 2.0
    """Longest wait for one classification; past it (or when the probe is down) the request
    goes to the large model with reason `probe_unavailable`."""
    part_confidence: float = 0.5
    """Confidence a part of a prompt (the text before or after a cut between its sentences)
    needs for its intent to be reported beside the whole prompt's; 1 reports none."""

    def __post_init__(self) -> None:
        backends = ("classifier", "lm")
        check(self.backend in backends, "probe.backend", self.backend, f"one of {backends}")
        check(self.timeout_s > 0, "probe.timeout_s", self.timeout_s, "> 0")
        pc = self.part_confidence
        check(0.0 <= pc <= 1.0, "probe.part_confidence", pc, "in [0, 1]")


FALLBACKS = ("recompute", "fail")
"""What a failed hand-off does: prefill again elsewhere (or on the decode worker), or fail."""
PD_PLACEMENTS = ("cache_aware", "least_loaded")
"""How the gateway picks a prompt's worker when engines cache prefixes (`pd.placement`)."""


@dataclass(frozen=True)
class PDConfig:
    """Prefill/decode disaggregation: when a request's KV moves between workers, and its bounds."""

    min_prompt_tokens: int = 128
    """Prompts shorter than this prefill on their decode worker (no hand-off)."""
    transport: str = "auto"
    """KV transport: auto (the model's collective group, else the object store), collective
    (gloo on CPU, NCCL on CUDA, HCCL on Ascend) or object_store."""
    transfer_timeout_ms: float = 10_000.0
    """From a decode worker taking a request to its KV imported; past it, the fallback."""
    hold_timeout_ms: float = 30_000.0
    """A prefill worker frees a handed-off request's KV if nobody took it within this."""
    fallback: str = "recompute"
    """When a hand-off fails: recompute (prefill again on the decode worker) or fail
    (UNAVAILABLE)."""
    placement: str = "cache_aware"
    """With `engine.prefix_cache`: `cache_aware` sends a prompt to the worker that probably
    holds its prefix, within `cache_balance_ratio` (`meshcore/affinity.py`); `least_loaded`
    looks at load alone (as without the cache)."""
    cache_balance_ratio: float = 2.0
    """Cache-aware placement: a worker stays eligible for its cached prefix while its load
    (requests before their first token) is within this many times (the least loaded worker's
    + 1); past it, load wins. The controller's balance lever lowers it while prefill piles up
    on one worker."""

    def __post_init__(self) -> None:
        check(self.min_prompt_tokens >= 0, "pd.min_prompt_tokens", self.min_prompt_tokens, ">= 0")
        transports = ("auto", "collective", "object_store")
        check(self.transport in transports, "pd.transport", self.transport, f"one of {transports}")
        check(
            self.transfer_timeout_ms > 0, "pd.transfer_timeout_ms", self.transfer_timeout_ms, "> 0"
        )
        check(
            self.hold_timeout_ms > self.transfer_timeout_ms,
            "pd.hold_timeout_ms",
            self.hold_timeout_ms,
            "> pd.transfer_timeout_ms",
        )
        check(self.fallback in FALLBACKS, "pd.fallback", self.fallback, f"one of {FALLBACKS}")
        check(self.placement in PD_PLACEMENTS, "pd.placement", self.placement,
              f"one of {PD_PLACEMENTS}")  # fmt: skip
        check(
            self.cache_balance_ratio >= 1.0,
            "pd.cache_balance_ratio",
            self.cache_balance_ratio,
            ">= 1",
        )


LEVERS = ("budget", "role", "routing", "balance")
"""The controller's levers, cheapest first (docs/controller.md)."""


@dataclass(frozen=True)
class ControllerConfig:
    """The controller actor: its loop and the SLOs its prefill/decode policy steers by."""

    enabled: bool = False
    """Run the controller (it changes worker roles while serving; off: roles stay as set)."""
    interval_ms: float = 1000.0
    """Time between two reconcile rounds."""
    levers: tuple[str, ...] = LEVERS
    """The levers the controller may move: "budget" (prefill shares), "role" (worker roles),
    "routing" (thresholds and per-route drafting). Fewer: to measure one lever alone."""
    ttft_slo_ms: float = 3000.0
    """Time-to-first-token objective; the expected wait before a prefill is read against it."""
    tpot_slo_ms: float = 150.0
    """Time-per-output-token objective; decode-only step times are read against it."""
    high_fraction: float = 0.8
    """A signal at or above this fraction of its SLO is at risk."""
    low_fraction: float = 0.5
    """A signal below this fraction of its SLO is safe (the gap is the hysteresis)."""
    min_dwell_ms: float = 10_000.0
    """Least time between two role changes of one model's workers, or two changes of one
    routing policy field."""
    min_prefill_budget_tokens: int = 32
    """Smallest prefill share of a mixed worker's step budget (decode-first)."""
    budget_dwell_ms: float = 2000.0
    """Least time between two changes of one worker's prefill budget in opposite directions
    (a change that goes on the same way, as a burst grows, is made at once)."""
    attainment_target: float = 0.9
    """A model whose recent requests meet both SLOs less often than this is under pressure."""
    traffic_window_s: float = 15.0
    """Window of the gateway's SLO attainment and arrival rates."""
    min_spill_queue_ms: float = 50.0
    """Lowest `routing.spill_queue_ms` the controller sets."""
    min_confidence_threshold: float = 0.05
    """Lowest `routing.confidence_threshold` the controller sets."""
    confidence_step: float = 0.1
    """How far one decision moves the confidence threshold."""
    max_downgrade_fraction: dict[str, float] = field(default_factory=dict)
    """The quality budget: per route key (an intent, or "low_confidence"), the largest share
    of its demanding requests in the traffic window that may be downgraded (served by the
    small model although the configured route names the large one), by a spill or by any
    decision of the controller. Keys not given take `default_max_downgrade_fraction`."""
    default_max_downgrade_fraction: float = 0.25
    """The quality budget of a route key that `max_downgrade_fraction` does not name."""
    min_acceptance: float = 0.3
    """A route's PLD/speculation is switched off below this draft acceptance."""
    spec_max_batch: int = 8
    """... or when its model decodes this many requests at once (back on below half)."""
    history: int = 50
    """Decisions kept for `Admin/GetStatus`."""

    def __post_init__(self) -> None:
        for name in ("interval_ms", "ttft_slo_ms", "tpot_slo_ms", "traffic_window_s"):
            value = getattr(self, name)
            check(value > 0, f"controller.{name}", value, "> 0")
        for name in ("min_prefill_budget_tokens", "spec_max_batch", "min_spill_queue_ms"):
            value = getattr(self, name)
            check(value > 0, f"controller.{name}", value, "> 0")
        for name in (
            "attainment_target",
            "min_confidence_threshold",
            "min_acceptance",
            "default_max_downgrade_fraction",
        ):
            value = getattr(self, name)
            check(0 <= value <= 1, f"controller.{name}", value, "in [0, 1]")
        for key, value in self.max_downgrade_fraction.items():
            name = f"controller.max_downgrade_fraction.{key}"
            check(key in ROUTE_KEYS, name, key, f"one of {ROUTE_KEYS}")
            ok = isinstance(value, (int, float)) and 0 <= value <= 1
            check(ok, name, value, "in [0, 1]")
        step = self.confidence_step
        check(0 < step <= 1, "controller.confidence_step", step, "in (0, 1]")
        for name in ("min_dwell_ms", "budget_dwell_ms"):
            value = getattr(self, name)
            check(value >= 0, f"controller.{name}", value, ">= 0")
        check(
            0 < self.low_fraction < self.high_fraction,
            "controller.low_fraction",
            self.low_fraction,
            "in (0, controller.high_fraction)",
        )
        check(self.history > 0, "controller.history", self.history, "> 0")
        for lever in self.levers:
            check(lever in LEVERS, "controller.levers", lever, f"each one of {LEVERS}")

    def downgrade_bound(self, route_key: str) -> float:
        """The quality budget of one route key."""
        return self.max_downgrade_fraction.get(route_key, self.default_max_downgrade_fraction)


@dataclass(frozen=True)
class MeshConfig:
    """Everything one mesh needs, passed down from the CLI."""

    models: tuple[ModelSpec, ...] = (ModelSpec(),)
    """Resident models, the first is the default."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """Engine settings shared by every worker."""
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    """gRPC front end."""
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    """Intent probe."""
    pd: PDConfig = field(default_factory=PDConfig)
    """Prefill/decode disaggregation and KV hand-off."""
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    """The controller that changes worker roles from live telemetry."""
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    """Routing policy between the small and the large resident model (live-settable)."""
    models_dir: str = ""
    """Folder holding model folders by name (empty = the user cache folder)."""
    namespace: str = "flexmesh"
    """Ray namespace of every actor."""
    actor_max_restarts: int = -1
    """Times Ray restarts each of the mesh's actors (workers, probe, gateway, controller) after
    it dies; -1 = every time. A worker's requests migrate meanwhile, the gateway's are lost."""

    def __post_init__(self) -> None:
        check(len(self.models) > 0, "models", self.models, "non-empty")
        names = [m.name for m in self.models]
        check(len(set(names)) == len(names), "models[].name", names, "unique")
        quantized = {m.name: m.quantization for m in self.models if m.quantization != "none"}
        for m in self.models:
            check(
                not m.draft_model or m.draft_model in names,
                "models[].draft_model",
                m.draft_model,
                "a resident model",
            )
            # A worker loads its draft model itself, in full precision: a quantised draft is
            # not supported, so naming one would silently load a different model.
            check(
                m.draft_model not in quantized,
                "models[].draft_model",
                m.draft_model,
                "a model without quantization (a quantised draft model is not supported)",
            )
            devices = QUANTIZATION_DEVICES.get(m.quantization)
            device = self.engine.device
            runs_on = " and ".join(devices or ())
            check(
                devices is None or device == "auto" or device in devices,
                "models[].quantization",
                m.quantization,
                f"one engine.device {device} runs ({m.quantization} runs on {runs_on})",
            )
        for variant in self.routing.variants():
            check(variant in names, "routing.routes[].variant", variant, "a resident model")

    @property
    def adaptive(self) -> bool:
        """True when both routing models are resident, so the probe and router run."""
        names = {m.name for m in self.models}
        return {self.routing.small_model, self.routing.large_model} <= names

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MeshConfig:
        return build(cls, data)
