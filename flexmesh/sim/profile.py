"""Cost profiles: what one step, one KV transfer, one probe call and one hop cost on a device.

A profile is one versioned JSON file (docs/sim.md has the format). It comes either from
`flexmesh profile` on a real device (`source: measured`) or from a device's public
specifications (`source: specification`, shipped in `flexmesh/sim/profiles/`, every number
cited). Both have the same fields, so a measured profile replaces a specification profile with
no code change.

Step costs are linear in five features of a step's plan (`step_features`): one step, the
sequences in it, the tokens it computes, the context tokens its attention reads, and the
attention's query x context products. A model measured on the device has its own fit of those
five coefficients (`models`); any other shape is predicted from the device's per-operation fits
(`ops`: matrix products, attention, the other per-layer ops, the step's fixed costs) and the
model's shape (`ModelShape`), per layer, as "Simulating Performance of ML Systems with Offline
Profiling" does. Pure Python: the simulator and `flexmesh profile` both read it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from flexmesh.meshcore.errors import InvalidRequestError

SCHEMA = "flexmesh-profile"
VERSION = 1
"""Version of the profile format; a file of another version is refused by name."""
SPEC_LABEL = "from specification, not measured"
"""How every figure simulated from a specification profile is labelled."""
OPS = ("matmul", "attention", "elementwise", "step", "sequence")
"""The per-operation fits a profile needs to predict a shape (`predict_step_cost`): matrix
products, attention (a layer), the layer's other ops, a step's and a sequence's fixed costs."""
FEATURES = ("step", "seqs", "tokens", "context", "attention")
"""A step's cost features, in the order of `StepCost` coefficients."""
ELEMENTWISE_PASSES = 12
"""Activation passes of a layer's other ops (norms, rotary, residuals, activation), each reading
and writing `tokens x hidden` values: the bytes the `elementwise` op fit is per."""


def _bad(name: str, rule: str) -> InvalidRequestError:
    return InvalidRequestError(name, rule)


@dataclass(frozen=True)
class ModelShape:
    """What the cost of a transformer step depends on (a Hugging Face config's fields)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    head_dim: int = 0
    dtype_bytes: int = 2
    max_position_tokens: int = 32768
    """The model's context (`max_position_embeddings`)."""

    def __post_init__(self) -> None:
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)

    @classmethod
    def from_hf_config(cls, cfg: Mapping[str, Any], dtype_bytes: int) -> ModelShape:
        return cls(
            hidden_size=int(cfg["hidden_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=int(cfg["num_attention_heads"]),
            num_kv_heads=int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"]),
            intermediate_size=int(cfg["intermediate_size"]),
            vocab_size=int(cfg["vocab_size"]),
            head_dim=int(cfg.get("head_dim") or 0),
            dtype_bytes=dtype_bytes,
            max_position_tokens=int(cfg.get("max_position_embeddings") or 32768),
        )

    @property
    def projections(self) -> tuple[tuple[int, int], ...]:
        """(in, out) of each matrix product of one layer: q/k/v, o, gate/up, down."""
        h, d = self.hidden_size, self.head_dim
        return (
            (h, (self.num_heads + 2 * self.num_kv_heads) * d),
            (self.num_heads * d, h),
            (h, 2 * self.intermediate_size),
            (self.intermediate_size, h),
        )

    @property
    def kv_bytes_per_token(self) -> int:
        """KV cache bytes of one token over all layers (what a hand-off moves per token)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def weight_bytes(self) -> int:
        layer = sum(k * n for k, n in self.projections)
        return (self.num_layers * layer + 2 * self.vocab_size * self.hidden_size) * (
            self.dtype_bytes
        )


@dataclass(frozen=True)
class OpFit:
    """Time of one operation: `a_ms + bytes / gb_s + flops / tflops` (in ms), fitted on the
    device (or set from its specification), with the fit's error on its own points."""

    a_ms: float = 0.0
    gb_s: float = math.inf
    tflops: float = math.inf
    error_pct: float | None = None
    """Median absolute error of the fit on the points it was fitted on (None: not fitted)."""
    points: int = 0

    def ms(self, nbytes: float, flops: float = 0.0) -> float:
        return self.a_ms + nbytes / (self.gb_s * 1e6) + flops / (self.tflops * 1e9)

    def per_byte_ms(self) -> float:
        return 1.0 / (self.gb_s * 1e6)

    def per_flop_ms(self) -> float:
        return 1.0 / (self.tflops * 1e9)


@dataclass(frozen=True)
class StepCost:
    """A step's time, linear in `step_features`: ms = Σ coefficient x feature."""

    step_ms: float
    seq_ms: float
    token_ms: float
    context_ms: float
    attention_ms: float
    error_pct: float | None = None
    """The fit's median absolute error on its points (None: predicted from ops)."""
    points: int = 0
    predicted: bool = False
    """True when derived from the device's op fits and the shape, not fitted on this model."""

    @property
    def coefficients(self) -> tuple[float, ...]:
        return (self.step_ms, self.seq_ms, self.token_ms, self.context_ms, self.attention_ms)

    def ms(self, chunks: Iterable[tuple[int, int]]) -> float:
        """Time of a step computing `chunks`: (tokens, context after the chunk) per sequence."""
        return sum(c * f for c, f in zip(self.coefficients, step_features(chunks), strict=True))


def step_features(chunks: Iterable[tuple[int, int]]) -> tuple[float, ...]:
    """`FEATURES` of a step: (tokens computed, context tokens after them) per sequence."""
    seqs = tokens = context = attention = 0
    for n, ctx in chunks:
        seqs += 1
        tokens += n
        context += ctx
        attention += n * ctx
    return (1.0, float(seqs), float(tokens), float(context), float(attention))


def predict_step_cost(ops: Mapping[str, OpFit], shape: ModelShape) -> StepCost:
    """A shape's step cost from the device's op fits, layer by layer.

    Per layer: each projection is a matrix product (its weights read once a step, activations
    and 2·k·n flops per token); attention reads each sequence's context K and V (per context
    token) and does 4·heads·head_dim flops per query x context pair; the other ops stream the
    activations `ELEMENTWISE_PASSES` times. The LM head is a product per sampled sequence; the
    fixed costs of a step (`step`) and of each sequence in it (`sequence`: sampling and
    bookkeeping) are the rest.
    """
    for name in OPS:
        if name not in ops:
            raise _bad(f"ops.{name}", "is missing: the profile cannot predict a shape")
    mm, att, el = ops["matmul"], ops["attention"], ops["elementwise"]
    b, L = shape.dtype_bytes, shape.num_layers
    h, v = shape.hidden_size, shape.vocab_size
    const = ops["step"].a_ms
    per_token = 0.0
    for k, n in shape.projections:
        const += L * (mm.a_ms + k * n * b * mm.per_byte_ms())
        per_token += L * ((k + n) * b * mm.per_byte_ms() + 2 * k * n * mm.per_flop_ms())
    const += L * (att.a_ms + el.a_ms)
    per_token += L * ELEMENTWISE_PASSES * h * b * el.per_byte_ms()
    kv_token = 2 * shape.num_kv_heads * shape.head_dim * b
    per_context = L * kv_token * att.per_byte_ms()
    per_attention = L * 4 * shape.num_heads * shape.head_dim * att.per_flop_ms()
    # The LM head: its weights once a step, a row of h x v per sampled sequence.
    const += mm.a_ms + h * v * b * mm.per_byte_ms()
    per_seq = ops["sequence"].a_ms + (h + v) * b * mm.per_byte_ms() + 2 * h * v * mm.per_flop_ms()
    return StepCost(const, per_seq, per_token, per_context, per_attention, predicted=True)


@dataclass(frozen=True)
class TransportFit:
    """Moving one request's KV between two workers: export (gather into a buffer), the
    transfer itself, import (scatter into the receiver's blocks), each `a_ms + bytes/gb_s`."""

    export: OpFit = OpFit()
    transfer: OpFit = OpFit()
    import_: OpFit = OpFit()

    def ms(self, nbytes: float) -> float:
        return self.export.ms(nbytes) + self.transfer.ms(nbytes) + self.import_.ms(nbytes)


@dataclass(frozen=True)
class Overheads:
    """Costs outside the model: the gateway and the process hops."""

    request_ms: float = 0.0
    """Gateway admission and routing plus opening a worker stream, per request."""
    chunk_ms: float = 0.0
    """A streamed message from a worker through the gateway to the client."""
    control_ms: float = 0.0
    """A control call round trip (status, abort, role change)."""
    probe_ms: float = 0.0
    """One probe classification."""


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    kind: str
    """cpu, cuda or npu."""
    max_devices: int
    """Most workers (one device each) a mesh simulated on this profile may have."""
    memory_gb: float = 0.0
    devices_per_node: int = 1
    intra_node_transport: str = "local"
    """The `transports` entry a KV hand-off between two devices of one node takes ("local":
    it costs nothing); also the copy a worker's exports and imports cost."""
    inter_node_transport: str = "local"
    """The `transports` entry a hand-off between two nodes takes."""
    notes: str = ""


@dataclass(frozen=True)
class ModelFit:
    """One model measured on the device: its shape and its own step fit."""

    shape: ModelShape
    step: StepCost
    prediction_error_pct: float | None = None
    """Error of this model's step times predicted from the ops alone (the shape check)."""


@dataclass(frozen=True)
class Profile:
    source: str
    """measured or specification."""
    device: DeviceInfo
    ops: dict[str, OpFit] = field(default_factory=dict)
    models: dict[str, ModelFit] = field(default_factory=dict)
    transports: dict[str, TransportFit] = field(default_factory=dict)
    overheads: Overheads = Overheads()
    software: dict[str, str] = field(default_factory=dict)
    created: str = ""
    sources: dict[str, str] = field(default_factory=dict)
    """Per field path, where its number comes from (a specification profile cites each)."""
    unverified: tuple[str, ...] = ()
    """Field paths whose number could not be verified."""
    path: str = ""

    @property
    def label(self) -> str:
        """What every figure simulated on this profile says it comes from."""
        what = SPEC_LABEL if self.source == "specification" else "measured"
        return f"{self.device.name} profile ({what}){f': {self.path}' if self.path else ''}"

    def step_cost(self, model: str, shape: ModelShape | None) -> StepCost:
        """`model`'s step cost: its own fit when measured here, else predicted from the ops."""
        fit = self.models.get(model)
        if fit is not None:
            return fit.step
        if shape is None:
            raise _bad(f"models.{model}", "has no fit in the profile and no shape to predict")
        if not self.ops:
            raise _bad(
                "ops",
                f"the profile has no op fits, so it cannot predict model {model!r}; it has fits "
                f"for {sorted(self.models) or 'no model'}",
            )
        return predict_step_cost(self.ops, shape)

    def shape_of(self, model: str) -> ModelShape | None:
        fit = self.models.get(model)
        return fit.shape if fit else None

    def transport(self, name: str) -> TransportFit:
        if name not in self.transports:
            raise _bad("transports", f"has no {name!r} (has {sorted(self.transports)})")
        return self.transports[name]

    def check_size(self, workers: int) -> None:
        if workers > self.device.max_devices:
            raise _bad(
                "mesh_size",
                f"is {workers} workers, more than the {self.device.max_devices} devices of "
                f"profile {self.device.name!r}",
            )

    # -- file ----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("path")
        for t in data["transports"].values():
            t["import"] = t.pop("import_")
        return {"schema": SCHEMA, "version": VERSION, **_finite(data)}

    def write(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return p

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str = "") -> Profile:
        if data.get("schema") != SCHEMA:
            raise _bad("schema", f"must be {SCHEMA!r}, got {data.get('schema')!r}")
        if data.get("version") != VERSION:
            raise _bad(
                "version",
                f"is {data.get('version')!r}; this FlexMesh reads profile version {VERSION} "
                "(re-run `flexmesh profile`)",
            )
        try:
            source = str(data["source"])
            if source not in ("measured", "specification"):
                raise _bad("source", f"must be measured or specification, got {source!r}")
            return cls(
                source=source,
                device=DeviceInfo(**data["device"]),
                ops={k: _op(v) for k, v in data.get("ops", {}).items()},
                models={
                    k: ModelFit(
                        ModelShape(**v["shape"]),
                        StepCost(**{**v["step"]}),
                        v.get("prediction_error_pct"),
                    )
                    for k, v in data.get("models", {}).items()
                },
                transports={
                    k: TransportFit(_op(v["export"]), _op(v["transfer"]), _op(v["import"]))
                    for k, v in data.get("transports", {}).items()
                },
                overheads=Overheads(**data.get("overheads", {})),
                software=dict(data.get("software", {})),
                created=str(data.get("created", "")),
                sources=dict(data.get("sources", {})),
                unverified=tuple(data.get("unverified", ())),
                path=path,
            )
        except (KeyError, TypeError) as exc:
            raise _bad("profile", f"is malformed: {exc!r}") from exc

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        """A profile file, or a shipped specification profile by name (`ascend-910b`...)."""
        p = Path(path)
        if not p.exists():
            shipped = resources.files("flexmesh.sim") / "profiles" / f"{path}.json"
            if not shipped.is_file():
                names = ", ".join(shipped_profiles())
                raise _bad("profile", f"{str(path)!r} is no file and no shipped device ({names})")
            return cls.from_dict(json.loads(shipped.read_text()), f"{path} (shipped)")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise _bad("profile", f"{p} is not JSON: {exc}") from exc
        return cls.from_dict(data, str(p))


def shipped_profiles() -> list[str]:
    folder = resources.files("flexmesh.sim") / "profiles"
    return sorted(
        f.name.removesuffix(".json") for f in folder.iterdir() if f.name.endswith(".json")
    )


def _op(data: Mapping[str, Any]) -> OpFit:
    return OpFit(
        **{k: (math.inf if v is None and k in ("gb_s", "tflops") else v) for k, v in data.items()}
    )


def _finite(value: Any) -> Any:
    """JSON has no infinity: an unbounded rate is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def fit_error_pct(measured: Sequence[float], predicted: Sequence[float]) -> float:
    """Median absolute relative error, in percent."""
    errs = sorted(abs(p - m) / m * 100.0 for m, p in zip(measured, predicted, strict=True) if m > 0)
    if not errs:
        return math.nan
    mid = len(errs) // 2
    return errs[mid] if len(errs) % 2 else (errs[mid - 1] + errs[mid]) / 2
