"""`flexmesh profile`'s per-operation measurements and every fit of the profile.

- matmul: micro-benchmarked through the model's own `PagedCausalLM.linear` (on CPU in fp32:
  oneDNN-packed weights and bucketed row counts, exactly what a projection calls) over a fixed
  device grid of (tokens, in, out): both demo models' projections and LM heads and wider
  layers, at every power-of-two row count and one past each (padded to the next bucket, as
  prompt chunks of any size are). Each point cycles through copies of its weight larger than
  the last-level cache together, as a step streams its layers' weights. The grid does not
  depend on which models are profiled, so the prediction check never fits on its target.
  NOTE: one `a + bytes / gb_s + flops / tflops` over all row counts cannot follow oneDNN's
  1-2-row path (slower per weight byte than 4 rows here): decode steps of batch 1-2 of a model
  whose weights dominate are predicted too fast (see `prediction_breakdown`).
- attention and elementwise: the profiled model's own forward pass re-run on the batches of its
  measured steps with every projection answered from a cache (no matrix work left), its
  `_attend` timed inside it. Per layer, attention = `a + context bytes / gb_s + query x context
  flops / tflops` and elementwise = the rest of the layer, `a + ELEMENTWISE_PASSES x tokens x
  hidden bytes / gb_s` (it also carries the step's embedding, rotary tables and KV writes).
- step and sequence: each measured step's time outside its forward pass (planning, tensors,
  arg-max, bookkeeping, detokenising), fitted as a fixed cost per step and per sequence.

Every fit is non-negative least squares of the relative error (`fit`). On a shared CPU a sample
during which another process held this core is left out of its point's median (`Stopwatch`);
contention for memory bandwidth cannot be told apart and stays in the figures.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from scipy.optimize import nnls

from flexmesh.actors.runner.model import PACK_BATCH_HINT, ForwardBatch, PagedCausalLM
from flexmesh.sim.profile import (
    ELEMENTWISE_PASSES,
    ModelShape,
    OpFit,
    StepCost,
    fit_error_pct,
    predict_step_cost,
    step_features,
)

Chunks = tuple[tuple[int, int], ...]
"""(tokens computed, context after them) per sequence of a step."""

MATMUL_SHAPES = (
    (256, 512), (256, 256), (256, 1280), (640, 256), (256, 8192),  # demo-small, LM head last
    (768, 1280), (768, 768), (768, 3584), (1792, 768), (768, 8192),  # demo-large
    (2048, 2560), (2048, 11264), (5632, 2048), (4096, 4096),  # wider (2B-7B class layers)
)  # fmt: skip
"""(in, out) of the matmul grid."""
MATMUL_TOKENS = (1, 2, 4, 8, 16, 17, 32, 33, 64, 65, 128, 129, 256, 257, 512)
"""Exact row buckets and one past each (`model.padded_rows` pads 65 rows to 80): a step's
chunks come in every size."""
QUICK_MATMUL_SHAPES = ((256, 512), (256, 8192), (768, 3584), (1792, 768))
QUICK_MATMUL_TOKENS = (1, 8, 65, 256)
STREAM_BYTES = 96 << 20
"""Weight bytes a matmul point cycles through: well beyond the last-level cache (32 MiB here)."""


RAN_SHARE = 0.95
"""A sample during which this thread ran less than this share of the wall time was preempted
(another process took its core on a shared machine): a point's median leaves such samples out
when it has others. Only where the work runs on the timing thread (CPU, one torch thread)."""
T = TypeVar("T")


def guarded(device: torch.device) -> bool:
    """Whether a sample on `device` can tell preemption (the work runs on this thread)."""
    return device.type == "cpu" and torch.get_num_threads() == 1


class Stopwatch:
    """Wall time of a span and whether this thread ran for (nearly) all of it."""

    def __init__(self, guard: bool) -> None:
        self.guard = guard
        self.wall_s, self.cpu_s = time.perf_counter(), time.thread_time()

    def stop(self) -> tuple[float, bool]:
        """(wall ms, preempted)."""
        wall = time.perf_counter() - self.wall_s
        cpu = time.thread_time() - self.cpu_s
        return wall * 1000.0, self.guard and cpu < RAN_SHARE * wall


def median_of(samples: Sequence[T], ms: Callable[[T], float], preempted: Callable[[T], bool]) -> T:
    """The median sample by `ms`, of those not preempted (of all when every one was)."""
    pool = [s for s in samples if not preempted(s)] or list(samples)
    return sorted(pool, key=ms)[len(pool) // 2]


def fit(rows: Sequence[Sequence[float]], measured: Sequence[float]) -> tuple[list[float], float]:
    """Non-negative coefficients minimising the squared relative error of `rows @ coef` to
    `measured` (`scipy.optimize.nnls`, columns scaled), and the fit's median absolute error (%)."""
    a = np.asarray(rows, dtype=float)
    y = np.asarray(measured, dtype=float)
    weighted = a / y[:, None]
    scale = np.abs(weighted).max(axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(weighted / scale, np.ones_like(y))
    coef = coef / scale
    return [float(c) for c in coef], fit_error_pct(list(y), list(a @ coef))


def op_fit(coef: Sequence[float], error_pct: float, points: int) -> OpFit:
    """An `OpFit` from (a_ms, ms per byte, ms per flop) coefficients (0 per unit: unbounded)."""
    per_byte = coef[1] if len(coef) > 1 else 0.0
    per_flop = coef[2] if len(coef) > 2 else 0.0
    return OpFit(
        a_ms=coef[0],
        gb_s=1.0 / (per_byte * 1e6) if per_byte > 0 else math.inf,
        tflops=1.0 / (per_flop * 1e9) if per_flop > 0 else math.inf,
        error_pct=error_pct,
        points=points,
    )


# -- matmul --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatmulPoint:
    tokens: int
    k: int
    n: int
    ms: float

    def features(self, dtype_bytes: int) -> list[float]:
        k, n, t = self.k, self.n, self.tokens
        return [1.0, float((k * n + t * (k + n)) * dtype_bytes), float(2 * t * k * n)]


def matmul_grid(quick: bool) -> list[tuple[int, int, int]]:
    """(tokens, in, out) of every matmul point."""
    shapes = QUICK_MATMUL_SHAPES if quick else MATMUL_SHAPES
    tokens = QUICK_MATMUL_TOKENS if quick else MATMUL_TOKENS
    return [(t, k, n) for k, n in shapes for t in tokens]


def measure_matmuls(
    model: PagedCausalLM,
    grid: Sequence[tuple[int, int, int]],
    repeats: int,
    tick: Callable[[], None],
) -> list[MatmulPoint]:
    """The time of one `model.linear` call at each (tokens, in, out) of `grid`: calls in turn
    on copies of the weight that together exceed the last-level cache (as a step streams the
    layers' weights), the median of `repeats` rounds."""
    points: list[MatmulPoint] = []
    guard = guarded(model.device)
    with torch.inference_mode():
        for k, n in dict.fromkeys((k, n) for _, k, n in grid):
            size = k * n * model.dtype.itemsize
            copies = [_weight(model, k, n) for _ in range(-(-STREAM_BYTES // size))]
            for tokens in [t for t, k2, n2 in grid if (k2, n2) == (k, n)]:
                x = torch.randn(tokens, k, dtype=model.dtype, device=model.device)
                model.linear(x, copies[0])  # builds the shape's kernel
                rounds = []
                for _ in range(repeats):
                    watch = Stopwatch(guard)
                    for w in copies:
                        model.linear(x, w)
                    rounds.append(watch.stop())
                ms, _ = median_of(rounds, lambda r: r[0], lambda r: r[1])
                points.append(MatmulPoint(tokens, k, n, ms / len(copies)))
                tick()
            del copies
    return points


def _weight(model: PagedCausalLM, k: int, n: int) -> torch.Tensor:
    w = torch.randn(n, k, dtype=model.dtype, device=model.device)
    if model.packed:  # the layout `PagedCausalLM.pack_weights` gives every projection
        w = torch.ops.mkldnn._reorder_linear_weight(w, PACK_BATCH_HINT)
    return w


def fit_matmul(points: Sequence[MatmulPoint], dtype_bytes: int) -> OpFit:
    coef, err = fit([p.features(dtype_bytes) for p in points], [p.ms for p in points])
    return op_fit(coef, err, len(points))


# -- attention and the other per-layer ops -------------------------------------------------


@dataclass(frozen=True)
class StepPoint:
    """One measured step of a model: its chunks, its wall time, its forward pass's, and (when
    timed) its forward pass with the projections answered from a cache and its attention."""

    kind: str
    chunks: Chunks
    ms: float
    forward_ms: float
    other_ms: float = math.nan
    attention_ms: float = math.nan

    @property
    def outside_ms(self) -> float:
        """The step's time outside its forward pass."""
        return self.ms - self.forward_ms


def time_other_ops(
    model: PagedCausalLM, kv_cache: torch.Tensor, batch: ForwardBatch, repeats: int
) -> tuple[float, float]:
    """(forward ms, of which attention ms), medians of `repeats`, with every projection of the
    forward answered from a cache: what the step's ops other than matrix products cost."""
    outputs: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}
    linear, attend = model.linear, model._attend
    spent = [0.0]

    def cached(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        key = (x.shape[0], tuple(w.shape))
        if key not in outputs:
            outputs[key] = linear(x, w, b)
        return outputs[key]

    def timed_attend(q: torch.Tensor, g: Any, cache: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = attend(q, g, cache)
        spent[0] += time.perf_counter() - t0
        return out

    setattr(model, "linear", cached)  # noqa: B010  (an instance attribute shadows the method)
    setattr(model, "_attend", timed_attend)  # noqa: B010
    guard = guarded(model.device)
    try:
        model.forward(batch, kv_cache)  # fills the projection cache
        runs = []
        for _ in range(repeats):
            spent[0] = 0.0
            watch = Stopwatch(guard)
            model.forward(batch, kv_cache)
            ms, preempted = watch.stop()
            runs.append((ms, spent[0] * 1000.0, preempted))
    finally:
        del model.linear, model._attend
    ms, attention_ms, _ = median_of(runs, lambda r: r[0], lambda r: r[2])
    return ms, attention_ms


def attention_features(shape: ModelShape, chunks: Chunks) -> list[float]:
    """Per layer: 1, context K/V bytes read, query x context flops (`predict_step_cost`)."""
    _, _, _, context, pairs = step_features(chunks)
    kv_token = 2 * shape.num_kv_heads * shape.head_dim * shape.dtype_bytes
    return [1.0, context * kv_token, pairs * 4 * shape.num_heads * shape.head_dim]


def elementwise_features(shape: ModelShape, chunks: Chunks) -> list[float]:
    tokens = step_features(chunks)[2]
    return [1.0, ELEMENTWISE_PASSES * tokens * shape.hidden_size * shape.dtype_bytes]


@dataclass(frozen=True)
class Measured:
    """A profiled model's shape and measured steps."""

    shape: ModelShape
    steps: tuple[StepPoint, ...]


def fit_step_cost(steps: Sequence[StepPoint]) -> StepCost:
    """A model's own step fit: non-negative coefficients of `step_features`."""
    coef, err = fit([step_features(s.chunks) for s in steps], [s.ms for s in steps])
    return StepCost(coef[0], coef[1], coef[2], coef[3], coef[4], err, len(steps))


def fit_ops(matmul: OpFit, models: Sequence[Measured]) -> dict[str, OpFit]:
    """Attention, elementwise, step and sequence from `models`' steps, beside `matmul`: every
    op `predict_step_cost` needs."""
    timed = [(m.shape, s) for m in models for s in m.steps if math.isfinite(s.other_ms)]
    att_rows = [attention_features(sh, s.chunks) for sh, s in timed]
    att_ms = [s.attention_ms / sh.num_layers for sh, s in timed]
    coef, err = fit(att_rows, att_ms)
    attention = op_fit(coef, err, len(timed))
    el_rows = [elementwise_features(sh, s.chunks) for sh, s in timed]
    el_ms = [(s.other_ms - s.attention_ms) / sh.num_layers for sh, s in timed]
    coef, err = fit(el_rows, el_ms)
    elementwise = op_fit(coef, err, len(timed))
    # The step's time outside its forward pass (planning, tensors, arg-max, bookkeeping,
    # detokenising): a cost per step and per sequence.
    steps = [s for m in models for s in m.steps]
    coef, err = fit(
        [[1.0, step_features(s.chunks)[1]] for s in steps], [s.outside_ms for s in steps]
    )
    return {
        "matmul": matmul,
        "attention": attention,
        "elementwise": elementwise,
        "step": OpFit(a_ms=coef[0], error_pct=err, points=len(steps)),
        "sequence": OpFit(a_ms=coef[1], error_pct=err, points=len(steps)),
    }


def prediction_breakdown(ops: dict[str, OpFit], model: Measured) -> dict[str, float]:
    """How well `ops` predict `model`'s measured steps: the median absolute error (%) over all
    of them and per kind of step, and the median signed error (`bias_pct`, < 0: too fast)."""
    cost = predict_step_cost(ops, model.shape)
    predicted = [cost.ms(s.chunks) for s in model.steps]
    measured = [s.ms for s in model.steps]
    kinds = [s.kind for s in model.steps]
    out = {"all": fit_error_pct(measured, predicted)}
    for kind in dict.fromkeys(kinds):
        pick = [i for i, k in enumerate(kinds) if k == kind]
        out[kind] = fit_error_pct([measured[i] for i in pick], [predicted[i] for i in pick])
    signed = sorted((p - m) / m * 100.0 for m, p in zip(measured, predicted, strict=True))
    out["bias_pct"] = signed[len(signed) // 2]
    return out
