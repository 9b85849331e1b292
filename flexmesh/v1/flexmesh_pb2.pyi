from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateRequest(_message.Message):
    __slots__ = ("prompt", "prompt_token_ids", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "ignore_eos", "model", "request_id", "stop_token_ids", "strategy")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EOS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STOP_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    ignore_eos: bool
    model: str
    request_id: str
    stop_token_ids: _containers.RepeatedScalarFieldContainer[int]
    strategy: str
    def __init__(self, prompt: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., ignore_eos: _Optional[bool] = ..., model: _Optional[str] = ..., request_id: _Optional[str] = ..., stop_token_ids: _Optional[_Iterable[int]] = ..., strategy: _Optional[str] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("token_ids", "text", "finish_reason", "usage", "timings", "route", "request_id", "offset")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    finish_reason: str
    usage: Usage
    timings: Timings
    route: Route
    request_id: str
    offset: int
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ..., finish_reason: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., route: _Optional[_Union[Route, _Mapping]] = ..., request_id: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("queue_ms", "prefill_ms", "ttft_ms", "total_ms", "probe_ms")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_MS_FIELD_NUMBER: _ClassVar[int]
    TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    PROBE_MS_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    prefill_ms: float
    ttft_ms: float
    total_ms: float
    probe_ms: float
    def __init__(self, queue_ms: _Optional[float] = ..., prefill_ms: _Optional[float] = ..., ttft_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., probe_ms: _Optional[float] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("model", "worker", "intent", "confidence", "strategy", "probe_ms", "draft_tokens_accepted", "draft_tokens_proposed", "prefill_worker", "kv_transport", "kv_bytes", "kv_transfer_ms", "migrations", "demanding", "downgraded", "intents", "quantised")
    class IntentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    INTENT_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    PROBE_MS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_TOKENS_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DRAFT_TOKENS_PROPOSED_FIELD_NUMBER: _ClassVar[int]
    PREFILL_WORKER_FIELD_NUMBER: _ClassVar[int]
    KV_TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_TRANSFER_MS_FIELD_NUMBER: _ClassVar[int]
    MIGRATIONS_FIELD_NUMBER: _ClassVar[int]
    DEMANDING_FIELD_NUMBER: _ClassVar[int]
    DOWNGRADED_FIELD_NUMBER: _ClassVar[int]
    INTENTS_FIELD_NUMBER: _ClassVar[int]
    QUANTISED_FIELD_NUMBER: _ClassVar[int]
    model: str
    worker: str
    intent: str
    confidence: float
    strategy: str
    probe_ms: float
    draft_tokens_accepted: int
    draft_tokens_proposed: int
    prefill_worker: str
    kv_transport: str
    kv_bytes: int
    kv_transfer_ms: float
    migrations: int
    demanding: bool
    downgraded: bool
    intents: _containers.ScalarMap[str, float]
    quantised: bool
    def __init__(self, model: _Optional[str] = ..., worker: _Optional[str] = ..., intent: _Optional[str] = ..., confidence: _Optional[float] = ..., strategy: _Optional[str] = ..., probe_ms: _Optional[float] = ..., draft_tokens_accepted: _Optional[int] = ..., draft_tokens_proposed: _Optional[int] = ..., prefill_worker: _Optional[str] = ..., kv_transport: _Optional[str] = ..., kv_bytes: _Optional[int] = ..., kv_transfer_ms: _Optional[float] = ..., migrations: _Optional[int] = ..., demanding: _Optional[bool] = ..., downgraded: _Optional[bool] = ..., intents: _Optional[_Mapping[str, float]] = ..., quantised: _Optional[bool] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("prompt",)
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    def __init__(self, prompt: _Optional[str] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("intent", "confidence", "scores", "probe_ms", "backend", "intents")
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class IntentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    INTENT_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    PROBE_MS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    INTENTS_FIELD_NUMBER: _ClassVar[int]
    intent: str
    confidence: float
    scores: _containers.ScalarMap[str, float]
    probe_ms: float
    backend: str
    intents: _containers.ScalarMap[str, float]
    def __init__(self, intent: _Optional[str] = ..., confidence: _Optional[float] = ..., scores: _Optional[_Mapping[str, float]] = ..., probe_ms: _Optional[float] = ..., backend: _Optional[str] = ..., intents: _Optional[_Mapping[str, float]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ("cached",)
    CACHED_FIELD_NUMBER: _ClassVar[int]
    cached: bool
    def __init__(self, cached: _Optional[bool] = ...) -> None: ...

class WorkerStatus(_message.Message):
    __slots__ = ("name", "model", "model_path", "role", "device", "queue_length", "running_requests", "kv_blocks_used", "kv_blocks_total", "uptime_s", "alive", "tokens_generated", "prefill_tokens_waiting", "decode_batch", "step_ms", "tpot_ms", "kv_blocks_in_flight", "kv_transport", "draining", "queue_delay_ms", "prefill_ms", "pinned", "prefill_budget_tokens", "max_batched_tokens", "draft_acceptance", "decode_step_ms", "prefill_ms_per_token", "percentiles", "kv_blocks_cached", "prefix_cache", "prompt_tokens_computed")
    class DraftAcceptanceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class PercentilesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class PrefixCacheEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    RUNNING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCKS_USED_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_GENERATED_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_WAITING_FIELD_NUMBER: _ClassVar[int]
    DECODE_BATCH_FIELD_NUMBER: _ClassVar[int]
    STEP_MS_FIELD_NUMBER: _ClassVar[int]
    TPOT_MS_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCKS_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    KV_TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_MS_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    PREFILL_BUDGET_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_ACCEPTANCE_FIELD_NUMBER: _ClassVar[int]
    DECODE_STEP_MS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_MS_PER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PERCENTILES_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCKS_CACHED_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_COMPUTED_FIELD_NUMBER: _ClassVar[int]
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
    alive: bool
    tokens_generated: int
    prefill_tokens_waiting: int
    decode_batch: int
    step_ms: float
    tpot_ms: float
    kv_blocks_in_flight: int
    kv_transport: str
    draining: bool
    queue_delay_ms: float
    prefill_ms: float
    pinned: bool
    prefill_budget_tokens: int
    max_batched_tokens: int
    draft_acceptance: _containers.ScalarMap[str, float]
    decode_step_ms: float
    prefill_ms_per_token: float
    percentiles: _containers.ScalarMap[str, float]
    kv_blocks_cached: int
    prefix_cache: _containers.ScalarMap[str, float]
    prompt_tokens_computed: int
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., model_path: _Optional[str] = ..., role: _Optional[str] = ..., device: _Optional[str] = ..., queue_length: _Optional[int] = ..., running_requests: _Optional[int] = ..., kv_blocks_used: _Optional[int] = ..., kv_blocks_total: _Optional[int] = ..., uptime_s: _Optional[float] = ..., alive: _Optional[bool] = ..., tokens_generated: _Optional[int] = ..., prefill_tokens_waiting: _Optional[int] = ..., decode_batch: _Optional[int] = ..., step_ms: _Optional[float] = ..., tpot_ms: _Optional[float] = ..., kv_blocks_in_flight: _Optional[int] = ..., kv_transport: _Optional[str] = ..., draining: _Optional[bool] = ..., queue_delay_ms: _Optional[float] = ..., prefill_ms: _Optional[float] = ..., pinned: _Optional[bool] = ..., prefill_budget_tokens: _Optional[int] = ..., max_batched_tokens: _Optional[int] = ..., draft_acceptance: _Optional[_Mapping[str, float]] = ..., decode_step_ms: _Optional[float] = ..., prefill_ms_per_token: _Optional[float] = ..., percentiles: _Optional[_Mapping[str, float]] = ..., kv_blocks_cached: _Optional[int] = ..., prefix_cache: _Optional[_Mapping[str, float]] = ..., prompt_tokens_computed: _Optional[int] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("t_unix", "kind", "target", "old", "new", "by", "reason", "inputs")
    class InputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    T_UNIX_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    OLD_FIELD_NUMBER: _ClassVar[int]
    NEW_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    t_unix: float
    kind: str
    target: str
    old: str
    new: str
    by: str
    reason: str
    inputs: _containers.ScalarMap[str, float]
    def __init__(self, t_unix: _Optional[float] = ..., kind: _Optional[str] = ..., target: _Optional[str] = ..., old: _Optional[str] = ..., new: _Optional[str] = ..., by: _Optional[str] = ..., reason: _Optional[str] = ..., inputs: _Optional[_Mapping[str, float]] = ...) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("workers", "in_flight", "max_queue_len", "policy_version", "decisions", "policy")
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_LEN_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerStatus]
    in_flight: int
    max_queue_len: int
    policy_version: int
    decisions: _containers.RepeatedCompositeFieldContainer[Decision]
    policy: Policy
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerStatus, _Mapping]]] = ..., in_flight: _Optional[int] = ..., max_queue_len: _Optional[int] = ..., policy_version: _Optional[int] = ..., decisions: _Optional[_Iterable[_Union[Decision, _Mapping]]] = ..., policy: _Optional[_Union[Policy, _Mapping]] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class IntentRoute(_message.Message):
    __slots__ = ("intent", "model", "strategy", "spillable", "variant")
    INTENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    SPILLABLE_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    intent: str
    model: str
    strategy: str
    spillable: bool
    variant: str
    def __init__(self, intent: _Optional[str] = ..., model: _Optional[str] = ..., strategy: _Optional[str] = ..., spillable: _Optional[bool] = ..., variant: _Optional[str] = ...) -> None: ...

class Policy(_message.Message):
    __slots__ = ("version", "routes", "confidence_threshold", "spill_queue_ms", "return_queue_ms", "long_context_tokens", "large_model", "small_model", "pinned", "small_spill_queue_ms", "small_return_queue_ms", "placement_balance")
    class PlacementBalanceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SPILL_QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    RETURN_QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    LONG_CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LARGE_MODEL_FIELD_NUMBER: _ClassVar[int]
    SMALL_MODEL_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    SMALL_SPILL_QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    SMALL_RETURN_QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_BALANCE_FIELD_NUMBER: _ClassVar[int]
    version: int
    routes: _containers.RepeatedCompositeFieldContainer[IntentRoute]
    confidence_threshold: float
    spill_queue_ms: float
    return_queue_ms: float
    long_context_tokens: int
    large_model: str
    small_model: str
    pinned: _containers.RepeatedScalarFieldContainer[str]
    small_spill_queue_ms: float
    small_return_queue_ms: float
    placement_balance: _containers.ScalarMap[str, float]
    def __init__(self, version: _Optional[int] = ..., routes: _Optional[_Iterable[_Union[IntentRoute, _Mapping]]] = ..., confidence_threshold: _Optional[float] = ..., spill_queue_ms: _Optional[float] = ..., return_queue_ms: _Optional[float] = ..., long_context_tokens: _Optional[int] = ..., large_model: _Optional[str] = ..., small_model: _Optional[str] = ..., pinned: _Optional[_Iterable[str]] = ..., small_spill_queue_ms: _Optional[float] = ..., small_return_queue_ms: _Optional[float] = ..., placement_balance: _Optional[_Mapping[str, float]] = ...) -> None: ...

class SetPolicyRequest(_message.Message):
    __slots__ = ("confidence_threshold", "spill_queue_ms", "return_queue_ms", "long_context_tokens", "routes", "expected_version", "small_spill_queue_ms", "small_return_queue_ms", "placement_balance")
    class PlacementBalanceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CONFIDENCE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SPILL_QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    RETURN_QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    LONG_CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    SMALL_SPILL_QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    SMALL_RETURN_QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_BALANCE_FIELD_NUMBER: _ClassVar[int]
    confidence_threshold: float
    spill_queue_ms: float
    return_queue_ms: float
    long_context_tokens: int
    routes: _containers.RepeatedCompositeFieldContainer[IntentRoute]
    expected_version: int
    small_spill_queue_ms: float
    small_return_queue_ms: float
    placement_balance: _containers.ScalarMap[str, float]
    def __init__(self, confidence_threshold: _Optional[float] = ..., spill_queue_ms: _Optional[float] = ..., return_queue_ms: _Optional[float] = ..., long_context_tokens: _Optional[int] = ..., routes: _Optional[_Iterable[_Union[IntentRoute, _Mapping]]] = ..., expected_version: _Optional[int] = ..., small_spill_queue_ms: _Optional[float] = ..., small_return_queue_ms: _Optional[float] = ..., placement_balance: _Optional[_Mapping[str, float]] = ...) -> None: ...

class SetWorkerRoleRequest(_message.Message):
    __slots__ = ("worker", "role")
    WORKER_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    worker: str
    role: str
    def __init__(self, worker: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class DrainWorkerRequest(_message.Message):
    __slots__ = ("worker", "resume")
    WORKER_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    worker: str
    resume: bool
    def __init__(self, worker: _Optional[str] = ..., resume: _Optional[bool] = ...) -> None: ...

class UnpinPolicyRequest(_message.Message):
    __slots__ = ("fields",)
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    fields: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, fields: _Optional[_Iterable[str]] = ...) -> None: ...

class UnpinWorkerRequest(_message.Message):
    __slots__ = ("worker",)
    WORKER_FIELD_NUMBER: _ClassVar[int]
    worker: str
    def __init__(self, worker: _Optional[str] = ...) -> None: ...
