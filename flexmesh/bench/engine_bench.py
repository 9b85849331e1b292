"""`flexmesh bench engine`: Hugging Face `generate` vs the engine, measured in one run.

Same prompts, same output lengths (EOS ignored on both sides), greedy. Columns: HF batch 1,
engine batch 1 (one request at a time), engine with 16 concurrent requests, and optionally the
same single and 16-way streams through the gRPC gateway (see `grpc_columns`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

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
    """Requests in flight for the batched column."""
    repeats: int = 1
    """Passes over the prompts for the batch-1 columns."""


def measure_bandwidth_gbs(size_bytes: int = 256 * 1024 * 1024, reps: int = 5) -> float:
    """Memory bandwidth seen by torch: a large copy reads and writes each byte once."""
    src = torch.empty(size_bytes // 4, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * size_bytes / best / 1e9


def _prompt_ids(tokenizer: Any) -> list[list[int]]:
    return [tokenizer.encode(p, add_special_tokens=False) for p in BENCH_PROMPTS]


def hf_batch1_tok_s(model_path: str, prompts: list[list[int]], s: BenchSettings) -> float:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    tokens = 0
    hf.generate(torch.tensor([prompts[0]]), max_new_tokens=4, do_sample=False)  # warm-up
    t0 = time.perf_counter()
    with torch.inference_mode():
        for _ in range(s.repeats):
            for ids in prompts:
                out = hf.generate(
                    torch.tensor([ids]),
                    max_new_tokens=s.new_tokens,
                    min_new_tokens=s.new_tokens,
                    do_sample=False,
                    use_cache=True,
                )
                tokens += out.shape[1] - len(ids)
    elapsed = time.perf_counter() - t0
    del hf
    return tokens / elapsed


def engine_tok_s(
    engine: Any, prompts: list[list[int]], s: BenchSettings, concurrency: int
) -> float:
    sp = SamplingParams(max_tokens=s.new_tokens, ignore_eos=True)
    engine.generate([prompts[0]], SamplingParams(max_tokens=4, ignore_eos=True))  # warm-up
    if concurrency == 1:
        work = [[p] for _ in range(s.repeats) for p in prompts]
    else:
        work = [[prompts[i % len(prompts)] for i in range(concurrency)]]
    t0 = time.perf_counter()
    tokens = sum(len(o) for batch in work for o in engine.generate(batch, sp))
    return tokens / (time.perf_counter() - t0)


def run_engine_bench(s: BenchSettings, engine_config: EngineConfig | None = None) -> dict[str, Any]:
    """Measure all in-process columns; returns the JSON report."""
    from flexmesh.actors.runner.engine import Engine

    engine = Engine(s.model_path, engine_config or EngineConfig())
    prompts = _prompt_ids(engine.tokenizer)
    weight_bytes = engine.runner.model.weight_bytes
    engine_b1 = engine_tok_s(engine, prompts, s, 1)
    engine_c = engine_tok_s(engine, prompts, s, s.concurrency)
    del engine
    hf_b1 = hf_batch1_tok_s(s.model_path, prompts, s)
    bandwidth = measure_bandwidth_gbs()
    return {
        "model": Path(s.model_path).name,
        "new_tokens": s.new_tokens,
        "concurrency": s.concurrency,
        "hf_b1_tok_s": round(hf_b1, 2),
        "engine_b1_tok_s": round(engine_b1, 2),
        f"engine_c{s.concurrency}_tok_s": round(engine_c, 2),
        "ratio_b1": round(engine_b1 / hf_b1, 2),
        f"ratio_c{s.concurrency}": round(engine_c / hf_b1, 2),
        "weight_bytes": weight_bytes,
        "bandwidth_gb_s": round(bandwidth, 1),
        "roofline_b1_tok_s": round(bandwidth * 1e9 / weight_bytes, 1),
        "threads": torch.get_num_threads(),
    }
