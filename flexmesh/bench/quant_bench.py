"""`flexmesh bench quant`: what int8 weight-only quantisation changes, quality and speed, measured
in one run on one model (demo-large by default).

Quality: random-weight demo models have no accuracy to lose, so the benchmark measures what
quantisation changes: each position's next-token distribution against the fp32 model's on the
same development prompts (shared/data/prompts, never holdout), teacher forced (every model
reads the same tokens). Top-1 agreement and mean KL(fp32 || other), for int8, for int8 with an
fp32 LM head, and for bf16 as the reference of an accepted precision change.

Speed: engine tokens/s at batch 1 and at 16 concurrent requests, fp32 and int8, beside the read
bandwidth of `bench engine` (a 1 GiB sum on the engine's threads) and each model's chain of
projections alone, all measured once per round, rounds interleaved, medians and spread.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from flexmesh.actors.probe.data import DEV_SOURCES, read_prompts
from flexmesh.actors.runner.model import AttentionGroup, ForwardBatch, PagedCausalLM
from flexmesh.actors.runner.quant import DEQUANT_ROWS
from flexmesh.bench.engine_bench import (
    BENCH_PROMPTS,
    READ_BYTES,
    BenchSettings,
    engine_tok_s,
    gemv_chain_tok_s,
    read_bandwidth_gbs,
)
from flexmesh.bench.rounds import cell, pick, rounds_report
from flexmesh.bench.serving import SHARED_DATA
from flexmesh.meshcore.config import EngineConfig

QUALITY_SOURCES = tuple(f for f in DEV_SOURCES if not f.startswith("leval"))
"""Development prompt files the quality half reads (never shared/data/holdout): all but the
long-context one, whose documents the prompt cut would reduce to their first lines."""
QUALITY_PROMPT_TOKENS = 120
"""Prompts are cut to this, below `quant.DEQUANT_ROWS`: every position then goes through the int8
kernel decode uses (longer prompt chunks run a dequantised weight through fp32 GEMM)."""
GOAL_B1_OF_FP32_ROOFLINE = 1.0
GOAL_C16_OVER_FP32 = 1.3
GOAL_TOP1_MARGIN = 0.02
"""int8's top-1 agreement may fall at most this far below bf16's."""


def teacher_forced_logits(model: PagedCausalLM, seqs: list[list[int]]) -> list[torch.Tensor]:
    """Next-token logits `[len(seq), vocab]` (fp32) at every position of every sequence, from
    one forward pass over all of them together (one causal attention group each) in a scratch
    KV cache; pass one sequence at a time for batch 1."""
    block = 16
    total = sum(map(len, seqs))
    kv = model.allocate_kv_cache(-(-total // block), block)
    dev = model.device
    groups, row = [], 0
    for seq in seqs:
        n = len(seq)
        slots = torch.arange(row, row + n, device=dev)
        valid = torch.ones(1, n, dtype=torch.bool, device=dev)
        groups.append(AttentionGroup(row, n, valid, slots[None], None, is_causal=True))
        row += n
    rows = torch.arange(total, device=dev)
    positions = torch.cat([torch.arange(len(s), device=dev) for s in seqs])
    ids = torch.tensor([t for s in seqs for t in s], dtype=torch.long, device=dev)
    batch = ForwardBatch(ids, positions, rows, tuple(groups), rows)
    return list(model.forward(batch, kv).split([len(s) for s in seqs]))


def agreement(reference: list[torch.Tensor], other: list[torch.Tensor]) -> dict[str, float]:
    """Top-1 agreement (share of positions whose arg-max is the reference's) and mean
    KL(reference || other) in nats over every position of every sequence."""
    ref, oth = torch.cat(reference).double(), torch.cat(other).double()
    log_p, log_q = F.log_softmax(ref, dim=-1), F.log_softmax(oth, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    top1 = (ref.argmax(-1) == oth.argmax(-1)).double()
    return {"top1_agreement": top1.mean().item(), "kl": kl.mean().item(), "positions": len(kl)}


def quality_prompts(
    tokenizer: Any,
    data_dir: Path,
    per_source: int,
    max_tokens: int,
    tasks: frozenset[str] = frozenset(),
) -> list[list[int]]:
    """Token ids of the first `per_source` prompts (of intents `tasks`, when given) of each
    development source, cut to `max_tokens`."""
    prompts = []
    for f in QUALITY_SOURCES:
        rows = [r for r in read_prompts(data_dir / f) if not tasks or r["task"] in tasks]
        prompts += [r["prompt"] for r in rows[:per_source]]
    return [tokenizer.encode(p, add_special_tokens=False)[:max_tokens] for p in prompts]


def quality(models: dict[str, PagedCausalLM], prompts: list[list[int]]) -> dict[str, Any]:
    """Every model's agreement with `models["fp32"]`, teacher forced, one prompt at a time."""
    logits = {
        name: [teacher_forced_logits(m, [p])[0] for p in prompts]
        for name, m in tqdm(models.items(), desc="quality", unit="model")
    }
    ref = logits.pop("fp32")
    return {name: agreement(ref, out) for name, out in logits.items()}


def run_quant_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Quality, then `args.rounds` interleaved speed rounds; the JSON report."""
    from flexmesh.actors.runner.engine import Engine
    from flexmesh.bench.engine_grpc import demo_large_path

    path = demo_large_path(args.model, args.models_dir)
    engines = {"fp32": Engine(path, EngineConfig()), "int8": Engine(path, quantization="int8")}
    small_kv = EngineConfig(num_kv_blocks=1)  # models that only answer teacher-forced passes
    plain = Engine(path, replace(small_kv, cpu_packed_weights=False)).model
    plain.quantize("int8", lm_head=False)
    plain.pack_weights()
    bf16 = Engine(path, replace(small_kv, dtype="bfloat16")).model
    tok = engines["fp32"].tokenizer
    data = Path(args.data_dir or SHARED_DATA) / "prompts"
    tasks = frozenset(t for t in getattr(args, "tasks", "").split(",") if t)
    prompts = quality_prompts(tok, data, args.per_source, QUALITY_PROMPT_TOKENS, tasks)
    models = {"fp32": engines["fp32"].model, "int8": engines["int8"].model}
    q = quality({**models, "int8_fp32_head": plain, "bf16": bf16}, prompts)
    del plain, bf16
    s = BenchSettings(path, new_tokens=args.new_tokens, concurrency=args.concurrency)
    bench_ids = [tok.encode(p, add_special_tokens=False) for p in BENCH_PROMPTS]
    for e in engines.values():
        e.warm_up()
    buf = torch.ones(READ_BYTES // 4, dtype=torch.float32)
    fp32_bytes = models["fp32"].step_read_bytes
    c = s.concurrency
    runs = []
    for _ in tqdm(range(args.rounds), desc="rounds", unit="round"):
        gbs = read_bandwidth_gbs(buf)
        run = {}
        for name, e in engines.items():
            b1 = engine_tok_s(e, bench_ids, s, 1)
            roofline = gbs * 1e9 / e.model.step_read_bytes
            run[name] = {
                "read_gb_s": gbs,
                "b1_tok_s": b1,
                f"c{c}_tok_s": engine_tok_s(e, bench_ids, s, c),
                "gemv_chain_tok_s": gemv_chain_tok_s(e.model),
                "read_roofline_b1_tok_s": roofline,
                "b1_of_own_read_roofline": b1 / roofline,
                "b1_over_fp32_read_roofline": b1 / (gbs * 1e9 / fp32_bytes),
            }
        runs.append(run)
    return _report(rounds_report(runs, ratio_figures=("b1_tok_s", f"c{c}_tok_s")), q, engines, s)


def _report(
    r: dict[str, Any], q: dict[str, Any], engines: dict[str, Any], s: BenchSettings
) -> dict[str, Any]:
    c = s.concurrency
    top1 = {k: round(v["top1_agreement"], 4) for k, v in q.items()}
    kl = {k: v["kl"] for k, v in q.items()}
    b1_roof = pick(r, "configs", "int8", "b1_over_fp32_read_roofline")
    c16 = pick(r, "ratios", f"c{c}_tok_s", "int8")
    goals = {
        "b1_int8_over_fp32_read_roofline": (b1_roof, GOAL_B1_OF_FP32_ROOFLINE),
        f"c{c}_int8_over_fp32": (c16, GOAL_C16_OVER_FP32),
        "top1_agreement_int8": (top1["int8"], top1["bf16"] - GOAL_TOP1_MARGIN),
    }
    return {
        "model": Path(s.model_path).name,
        "kernel": "cpu: aten._weight_int8pack_mm (bf16 activations); dequantise + oneDNN "
        f"from {DEQUANT_ROWS} rows",
        "b1_int8_over_fp32": pick(r, "ratios", "b1_tok_s", "int8"),
        "b1_int8_over_fp32_read_roofline": b1_roof,
        "b1_int8_of_own_read_roofline": pick(r, "configs", "int8", "b1_of_own_read_roofline"),
        f"c{c}_int8_over_fp32": c16,
        "top1_agreement": top1,
        "kl": kl,
        "quality_positions": q["int8"]["positions"],
        "goals": {
            k: {"value": v, "target": round(t, 4), "met": v >= t} for k, (v, t) in goals.items()
        },
        "step_read_bytes": {k: e.model.step_read_bytes for k, e in engines.items()},
        "weight_bytes": {k: e.model.weight_bytes for k, e in engines.items()},
        "new_tokens": s.new_tokens,
        "concurrency": c,
        "threads": torch.get_num_threads(),
        **r,
    }


def print_quant(r: dict[str, Any]) -> None:
    """Quality beside bf16's, then speed as medians (min–max) of the rounds, then the goals."""
    from rich.console import Console
    from rich.table import Table

    c, spread = r["concurrency"], r["spread"]
    t = Table(title=f"{r['model']}: next-token distribution vs fp32, teacher forced over "
              f"{r['quality_positions']} positions of development prompts")  # fmt: skip
    for col in ("model", "top-1 agreement", "mean KL (nats)"):
        t.add_column(col)
    for name, top1 in r["top1_agreement"].items():
        t.add_row(name, f"{top1:.4f}", f"{r['kl'][name]:.2e}")
    Console().print(t)
    t = Table(title=f"speed: {r['new_tokens']} new tokens, greedy, {r['threads']} threads, "
              f"median (min–max) of {r['rounds']} interleaved rounds")  # fmt: skip
    for col in ("model", "batch 1 tok/s", f"{c} concurrent tok/s", "projections alone tok/s",
                "own read roofline tok/s", "MB read a step"):  # fmt: skip
        t.add_column(col)
    for name, cfg in r["configs"].items():
        sp = spread["configs"][name]
        t.add_row(
            name,
            cell(cfg["b1_tok_s"], sp.get("b1_tok_s"), 1),
            cell(cfg[f"c{c}_tok_s"], sp.get(f"c{c}_tok_s"), 1),
            cell(cfg["gemv_chain_tok_s"], sp.get("gemv_chain_tok_s"), 1),
            cell(cfg["read_roofline_b1_tok_s"], sp.get("read_roofline_b1_tok_s"), 1),
            f"{r['step_read_bytes'][name] / 1e6:.0f}",
        )
    Console().print(t)
    print(f"kernel: {r['kernel']}")
    for name, g in r["goals"].items():
        verdict = "met" if g["met"] else "NOT met"
        print(f"goal {name}: {g['value']} (target >= {g['target']}): {verdict}")
