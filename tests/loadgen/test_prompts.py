"""Prompt synthesis: intent mixes, token-exact lengths, shared Mooncake prefixes."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flexmesh.loadgen.prompts import PromptPool, fit_text, parse_intent_mix
from flexmesh.loadgen.shaping import ShapeConfig, Workload, shape
from flexmesh.loadgen.synth import synthesize
from flexmesh.loadgen.traces import TraceRequest, read_azure, read_mooncake

TOLERANCE = 2
"""Tokens a synthesised prompt may differ from the trace's length."""


def _count(tok: Any, text: str) -> int:
    return len(tok.encode(text, add_special_tokens=False))


def test_parse_intent_mix() -> None:
    assert parse_intent_mix("code=0.3, math=0.2,chat=0.5") == pytest.approx(
        {"code": 0.3, "math": 0.2, "chat": 0.5}
    )
    assert parse_intent_mix("code=3,chat=1,math=0") == {"code": 0.75, "chat": 0.25}
    assert parse_intent_mix({"long_context": 2}) == {"long_context": 1.0}
    for bad, field in [
        ("poetry=1", "unknown intent"),
        ("code=1,code=2", "twice"),
        ("code=-1", ">= 0"),
        ("code", "name=weight"),
        ("code=x", "not a number"),
        ("code=0", "sum"),
        ("", "sum"),
    ]:
        with pytest.raises(ValueError, match=field):
            parse_intent_mix(bad)


def test_fit_text_hits_the_count(tokenizer: Any) -> None:
    text = (
        "The quick brown fox jumps over the lazy dog. 敏捷的棕色狐狸。" * 80
    ) + "def f(x): return x"
    for n in (1, 2, 7, 50, 333, 900):
        cut, got = fit_text(tokenizer, text, n)
        assert text.startswith(cut)
        assert got == _count(tokenizer, cut)
        assert abs(got - n) <= 1
    whole, got = fit_text(tokenizer, "short", 100)
    assert whole == "short" and got == _count(tokenizer, "short")


def test_lengths_and_mix(tokenizer: Any, prompts_dir: Path) -> None:
    targets = [1, 3, 20, 64, 200, 700, 1500]
    reqs = [TraceRequest(i * 0.01, targets[i % len(targets)], 5 + i) for i in range(420)]
    mix = parse_intent_mix("code=0.3,math=0.2,chat=0.5")
    pool = PromptPool.from_dir(prompts_dir, tokenizer, set(mix))
    out = synthesize(Workload(tuple(reqs)), mix, pool, seed=4)
    assert [r.index for r in out] == list(range(420))
    for req, src in zip(out, reqs, strict=True):
        assert abs(_count(tokenizer, req.prompt) - src.input_tokens) <= TOLERANCE
        assert req.prompt_tokens == _count(tokenizer, req.prompt)
        assert req.max_tokens == src.output_tokens and req.ignore_eos
        # The prompt opens with a prompt of its own intent (cut, or followed by more of them).
        starts = [p[: len(req.prompt)] for p in pool.by_intent[req.intent]]
        assert any(req.prompt.startswith(s[: min(len(s), 8)]) for s in starts)
    share = Counter(r.intent for r in out)
    for intent, weight in mix.items():
        assert share[intent] / len(out) == pytest.approx(weight, abs=0.07)  # binomial sd <= 0.025
    again = synthesize(Workload(tuple(reqs)), mix, pool, seed=4)
    assert again == out  # seeded: identical prompts


def test_an_intent_mix_that_shifts_by_phase(tokenizer: Any, prompts_dir: Path) -> None:
    reqs = tuple(TraceRequest(i * 0.1, 20, 5) for i in range(200))  # 0 .. 19.9 s
    pool = PromptPool.from_dir(prompts_dir, tokenizer, {"code", "math", "chat"})
    phases = [(10.0, {"code": 1.0}), (20.0, {"math": 0.5, "chat": 0.5})]
    out = synthesize(Workload(reqs), {"chat": 1.0}, pool, seed=2, phase_mixes=phases)
    assert {r.intent for r in out[:100]} == {"code"}
    later = Counter(r.intent for r in out[100:])
    assert set(later) == {"math", "chat"} and abs(later["math"] - later["chat"]) < 30


def test_pool_rejects_mix_it_cannot_serve(tokenizer: Any, tmp_path: Path) -> None:
    (tmp_path / "x.jsonl").write_text('{"task": "chat", "prompt": "hi"}\n')
    pool = PromptPool.from_dir(tmp_path, tokenizer)
    with pytest.raises(ValueError, match="no prompts"):
        synthesize(Workload((TraceRequest(0, 5, 5),)), {"code": 1.0}, pool)


def _common_len(a: Sequence[object], b: Sequence[object]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _common_tokens(tok: Any, a: str, b: str) -> int:
    return _count(tok, a[: _common_len(a, b)])


def test_shared_hash_ids_share_prefix(tokenizer: Any, prompts_dir: Path) -> None:
    # Blocks of 512 tokens scaled by 1/8 -> 64-token blocks.
    raw = [
        TraceRequest(0.0, 4 * 512, 10, (0, 1, 2, 3)),
        TraceRequest(0.1, 3 * 512 - 100, 10, (0, 1, 2)),  # prefix of the first, shorter
        TraceRequest(0.2, 6 * 512, 10, (0, 1, 2, 3, 4, 5)),  # continues the first
        TraceRequest(0.3, 3 * 512, 10, (0, 6, 7)),  # only the system block in common
        TraceRequest(0.4, 5 * 512, 10, (0, 6, 7, 8, 9)),
    ]
    wl = shape(raw, ShapeConfig(max_input_tokens=6 * 64))
    assert wl.block_tokens == 64
    pool = PromptPool.from_dir(prompts_dir, tokenizer)
    mix = parse_intent_mix("code=0.5,chat=0.5")
    out = synthesize(wl, mix, pool, seed=9)
    p = [r.prompt for r in out]
    for r, src in zip(out, wl.requests, strict=True):
        assert abs(_count(tokenizer, r.prompt) - src.input_tokens) <= TOLERANCE
    assert p[0].startswith(p[1])  # request 1 ends inside block 2, a prefix of request 0
    # Whole shared blocks are a common text prefix (what follows them may differ).
    assert _common_tokens(tokenizer, p[0], p[2]) >= 4 * 64 - TOLERANCE
    assert _common_tokens(tokenizer, p[3], p[4]) >= 3 * 64 - TOLERANCE
    # Only block 0 in common: the shared prefix is about one block, not more.
    assert 64 - 8 <= _common_tokens(tokenizer, p[0], p[3]) < 2 * 64
    # Continuations keep their conversation's intent.
    assert out[2].intent == out[0].intent and out[4].intent == out[3].intent


def test_real_mooncake_prefixes(tokenizer: Any, data_dir: Path) -> None:
    reqs = read_mooncake(data_dir / "traces" / "mooncake_fast25_conversation_trace.jsonl")
    wl = shape(reqs, ShapeConfig(max_requests=600, max_input_tokens=2048, max_output_tokens=64))
    pool = PromptPool.from_dir(data_dir / "prompts", tokenizer)
    mix = parse_intent_mix("code=0.3,math=0.3,chat=0.4")
    out = synthesize(wl, mix, pool, seed=0)
    for r, src in zip(out, wl.requests, strict=True):
        assert abs(r.prompt_tokens - src.input_tokens) <= TOLERANCE
    by_second_block: dict[int, list[int]] = {}
    checked = 0
    for j, b in enumerate(wl.requests):
        if len(b.hash_ids) < 2:
            continue
        for i in by_second_block.get(b.hash_ids[1], []):
            a = wl.requests[i]
            k = _common_len(a.hash_ids, b.hash_ids)
            # The whole shared blocks lie inside both prompts when both extend past them.
            if min(a.input_tokens, b.input_tokens) > (k + 1) * wl.block_tokens:
                common = _common_tokens(tokenizer, out[i].prompt, out[j].prompt)
                assert common >= k * wl.block_tokens - 2 * TOLERANCE
                assert out[j].intent == out[i].intent
                checked += 1
        by_second_block.setdefault(b.hash_ids[1], []).append(j)
    assert checked >= 10


def test_real_prompts_mix(tokenizer: Any, data_dir: Path) -> None:
    reqs = read_azure(data_dir / "traces" / "azure_llm_2023_conv.csv")
    wl = shape(reqs, ShapeConfig(max_requests=300, max_input_tokens=256, max_output_tokens=32))
    mix = parse_intent_mix("code=0.3,math=0.2,chat=0.5")
    pool = PromptPool.from_dir(data_dir / "prompts", tokenizer, set(mix))
    out = synthesize(wl, mix, pool, seed=1)
    share = Counter(r.intent for r in out)
    for intent, weight in mix.items():
        assert share[intent] / len(out) == pytest.approx(weight, abs=0.09)
    assert all(abs(r.prompt_tokens - r.target_prompt_tokens) <= TOLERANCE for r in out)


def test_a_mooncake_window_scaled_far_down_gives_only_valid_requests(
    tokenizer: Any, prompts_dir: Path, tmp_path: Path
) -> None:
    """Lengths from 1 to 200k tokens scaled to at most 512: many prompts become 1-token ones
    (with 2-token prefix blocks), and none may come out empty or ask for no output."""
    rng = np.random.default_rng(0)
    path = tmp_path / "mooncake.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(400):
            n = int(np.exp(rng.uniform(0, np.log(200_000))))
            blocks = list(range(i % 7, i % 7 + n // 512 + 1))  # conversations share blocks
            row = {"timestamp": i * 50, "input_length": n, "output_length": int(rng.integers(1, 9)),
                   "hash_ids": blocks}  # fmt: skip
            f.write(json.dumps(row) + "\n")
    wl = shape(read_mooncake(path), ShapeConfig(max_input_tokens=512, max_output_tokens=4))
    out = synthesize(wl, parse_intent_mix("code=0.5,chat=0.5"), PromptPool.from_dir(
        prompts_dir, tokenizer), seed=0)  # fmt: skip
    assert sum(r.target_prompt_tokens == 1 for r in out) >= 50  # the case this is about
    assert all(_count(tokenizer, r.prompt) >= 1 and r.prompt_tokens >= 1 for r in out)
    assert all(r.max_tokens >= 1 for r in out)
