"""`flexmesh bench engine`: Hugging Face `generate` vs the engine, measured in one run.

Same prompts, same output lengths (EOS ignored on both sides), greedy. Columns: the batch-1
read roofline (a 1 GiB read on the engine's threads: the step's weight bytes at that speed),
a chain of the model's own matrix-vector products (the kernels alone), HF batch 1, engine
batch 1 (one request at a time), HF `generate` on one left-padded batch of the same 16 prompts
the engine's batched column runs, engine with 16 concurrent requests, and optionally the same
single and 16-way streams through the gRPC gateway (`extra_columns`, from `engine_grpc.py`).
Every column is measured once per round, rounds interleaved, medians reported with their
spread (min and max over the rounds).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from flexmesh.meshcore.config import EngineConfig
from flexmesh.meshcore.sampling import SamplingParams

BENCH_PROMPTS = (
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "Explain why the sky is blue in two sentences.",
    "Janet has 16 eggs and eats three for breakfast. How many are left?",
    "import numpy as np\n\nclass Matrix:\n    def __init__(self, rows):\n",
)


@dataclass(frozen=True)
class BenchSettings:
    """What one engine benchmark run measures."""

    model_path: str
    new_tokens: int = 64
    """Tokens generated per request."""
    concurrency: int = 16
    """Requests in flight for the batched columns."""
    rounds: int = 3
    """Interleaved rounds over all columns; each column reports its median round."""


READ_BYTES = 1 << 30
"""Bytes one read-roofline pass streams (well beyond every cache)."""


def read_bandwidth_gbs(buf: torch.Tensor, reps: int = 5) -> float:
    """Memory read bandwidth as decode sees it: `buf` summed on the engine's own threads (each
    byte read once, nothing written); the median of `reps` passes."""
    with torch.inference_mode():
        seconds = statistics.median(_seconds(buf.sum) for _ in range(reps))
    return buf.numel() * buf.element_size() / seconds / 1e9


def gemv_chain_tok_s(model: Any, reps: int = 5) -> float:
    """Batch-1 "steps" of nothing but the model's matrix-vector products, in a step's order,
    on its own weights through its own kernel: what the kernels alone stream, without
    attention, norms or Python."""
    matrices = model.decode_matrices()
    inputs = {m.shape[1]: torch.randn(1, m.shape[1], dtype=m.dtype) for m in matrices}

    def chain() -> None:
        for m in matrices:
            model.linear(inputs[m.shape[1]], m)

    with torch.inference_mode():
        return 1.0 / statistics.median(_seconds(chain) for _ in range(reps))


def _prompt_ids(tokenizer: Any) -> list[list[int]]:
    return [tokenizer.encode(p, add_special_tokens=False) for p in BENCH_PROMPTS]


def concurrent_prompts(prompts: list[list[int]], concurrency: int) -> list[list[int]]:
    """The prompts of the batched columns: `concurrency` requests cycling through `prompts`."""
    return [prompts[i % len(prompts)] for i in range(concurrency)]


def hf_batch1_tok_s(hf: Any, prompts: list[list[int]], s: BenchSettings) -> float:
    tokens = 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for ids in prompts:
            out = hf.generate(
                torch.tensor([ids]),
                max_new_tokens=s.new_tokens,
                min_new_tokens=s.new_tokens,
                do_sample=False,
                use_cache=True,
            )
            tokens += out.shape[1] - len(ids)
    return tokens / (time.perf_counter() - t0)


def hf_batched_tok_s(
    hf: Any, prompts: list[list[int]], s: BenchSettings, concurrency: int
) -> float:
    """HF `generate` on one batch of the batched columns' prompts, left-padded (the padding
    masked out), so it compares with the engine at the same concurrency."""
    batch = concurrent_prompts(prompts, concurrency)
    width = max(map(len, batch))
    pad = hf.generation_config.pad_token_id
    pad = 0 if pad is None else pad
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])  # [batch, width]
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = hf.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=s.new_tokens,
            min_new_tokens=s.new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=pad,
        )
    return out[:, width:].numel() / (time.perf_counter() - t0)


def engine_tok_s(
    engine: Any, prompts: list[list[int]], s: BenchSettings, concurrency: int
) -> float:
    sp = SamplingParams(max_tokens=s.new_tokens, ignore_eos=True)
    if concurrency == 1:
        work = [[p] for p in prompts]
    else:
        work = [concurrent_prompts(prompts, concurrency)]
    t0 = time.perf_counter()
    tokens = sum(len(o) for batch in work for o in engine.generate(batch, sp))
    return tokens / (time.perf_counter() - t0)


def run_engine_bench(
    s: BenchSettings,
    engine_config: EngineConfig | None = None,
    extra_columns: Mapping[str, Callable[[], float]] | None = None,
) -> dict[str, Any]:
    """Measure every column in `s.rounds` interleaved rounds; returns the JSON report.

    Interleaving puts each column through the same moments of a noisy machine (tokens/s of the
    same run varies by 10-20% here from minute to minute), so ratios compare like with like.
    `extra_columns` (e.g. the gRPC streams) join each round after the in-process columns.
    """
    from transformers import AutoModelForCausalLM

    from flexmesh.actors.runner.engine import Engine

    engine = Engine(s.model_path, engine_config or EngineConfig())
    prompts = _prompt_ids(engine.tokenizer)
    hf = AutoModelForCausalLM.from_pretrained(s.model_path, dtype=torch.float32).eval()
    engine.warm_up()
    hf.generate(torch.tensor([prompts[0]]), max_new_tokens=4, do_sample=False)
    c = s.concurrency
    model = engine.model
    step_bytes = model.step_read_bytes
    buf = torch.ones(READ_BYTES // 4, dtype=torch.float32)
    columns: dict[str, Callable[[], float]] = {
        "read_roofline_b1_tok_s": lambda: read_bandwidth_gbs(buf) * 1e9 / step_bytes,
        "gemv_chain_tok_s": lambda: gemv_chain_tok_s(model),
        "hf_b1_tok_s": lambda: hf_batch1_tok_s(hf, prompts, s),
        "engine_b1_tok_s": lambda: engine_tok_s(engine, prompts, s, 1),
        f"hf_c{c}_tok_s": lambda: hf_batched_tok_s(hf, prompts, s, c),
        f"engine_c{c}_tok_s": lambda: engine_tok_s(engine, prompts, s, c),
        **(extra_columns or {}),
    }
    samples: dict[str, list[float]] = {k: [] for k in columns}
    for _ in tqdm(range(s.rounds), desc="rounds", unit="round"):
        for key, measure in columns.items():
            samples[key].append(round(measure(), 2))
    report: dict[str, Any] = {k: round(statistics.median(v), 2) for k, v in samples.items()}
    hf_b1, roofline = report["hf_b1_tok_s"], report["read_roofline_b1_tok_s"]
    report.update(
        {
            "model": Path(s.model_path).name,
            "new_tokens": s.new_tokens,
            "concurrency": c,
            "rounds": s.rounds,
            "samples": samples,
            "spread": {k: [min(v), max(v)] for k, v in samples.items()},
            "ratio_b1": round(report["engine_b1_tok_s"] / hf_b1, 2),
            f"ratio_c{c}": round(report[f"engine_c{c}_tok_s"] / hf_b1, 2),
            f"ratio_c{c}_vs_hf_c{c}": round(
                report[f"engine_c{c}_tok_s"] / report[f"hf_c{c}_tok_s"], 2
            ),
            "step_read_bytes": step_bytes,
            "read_gb_s": round(roofline * step_bytes / 1e9, 1),
            "engine_b1_of_roofline": round(report["engine_b1_tok_s"] / roofline, 3),
            "gemv_chain_of_roofline": round(report["gemv_chain_tok_s"] / roofline, 3),
            "threads": torch.get_num_threads(),
        }
    )
    return report


def profile_decode_step(
    model_path: str, steps: int = 50, context_tokens: int = 64, table_rows: int = 15
) -> dict[str, Any]:
    """Where one batch-1 decode step of the model goes (`bench engine --profile`).

    Wall clock, medians over `steps`: the engine's step, and its time outside the forward
    pass; the forward pass; the same forward with every projection answered from a cache (what
    the other ops cost); and, as the difference, the projections inside the forward. Beside
    them the GEMV chain alone and the read roofline's time for the step's bytes, then
    torch.profiler's per-op table of `steps` real steps (self CPU time; the profiler's own
    cost inflates the small ops).
    """
    from torch.profiler import ProfilerActivity, profile

    from flexmesh.actors.runner.engine import Engine

    engine = Engine(model_path, EngineConfig())
    engine.warm_up()
    model = engine.model
    prompt = [i % model.vocab_size for i in range(1, context_tokens + 1)]
    sampling = SamplingParams(max_tokens=3 * steps + 8, ignore_eos=True)
    engine.add_request(prompt_token_ids=prompt, sampling=sampling)
    for _ in range(4):  # prefill, then a few decode steps
        engine.step()
    forward = model.forward
    batches: list[Any] = []
    forward_s: list[float] = []

    def timed_forward(batch: Any, kv: torch.Tensor) -> torch.Tensor:
        batches.append((batch, kv))
        t0 = time.perf_counter()
        out = forward(batch, kv)
        forward_s.append(time.perf_counter() - t0)
        return out

    model.forward = timed_forward
    step_s = [_seconds(engine.step) for _ in range(steps)]
    del model.forward
    outside_ms = statistics.median(s - f for s, f in zip(step_s, forward_s, strict=True)) * 1e3
    batch, kv = batches[-1]
    forward_ms = _median_ms(lambda: forward(batch, kv), steps)
    outputs: dict[tuple[int, int], torch.Tensor] = {}
    linear = model.linear

    def cached(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        key = (x.shape[0], w.shape[0])
        if key not in outputs:
            outputs[key] = linear(x, w, b)
        return outputs[key]

    model.linear = cached
    other_ms = _median_ms(lambda: forward(batch, kv), steps)
    del model.linear
    buf = torch.ones(READ_BYTES // 4, dtype=torch.float32)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            engine.step()
    return {
        "model": Path(model_path).name,
        "context_tokens": context_tokens,
        "steps": steps,
        "step_ms": round(statistics.median(step_s) * 1e3, 2),
        "forward_ms": forward_ms,
        "projections_ms": round(forward_ms - other_ms, 2),
        "other_ops_ms": other_ms,
        "outside_forward_ms": round(outside_ms, 2),
        "gemv_chain_ms": round(1e3 / gemv_chain_tok_s(model, reps=steps), 2),
        "roofline_ms": round(model.step_read_bytes / (read_bandwidth_gbs(buf) * 1e9) * 1e3, 2),
        "step_read_bytes": model.step_read_bytes,
        "ops": prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=table_rows),
    }


def _seconds(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _median_ms(fn: Callable[[], Any], reps: int) -> float:
    return round(statistics.median(_seconds(fn) for _ in range(reps)) * 1e3, 2)
