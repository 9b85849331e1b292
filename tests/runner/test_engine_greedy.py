"""Greedy engine output equals Hugging Face `generate` token for token."""

from __future__ import annotations

import time

import pytest

from flexmesh.actors.runner.engine import Engine
from flexmesh.meshcore.config import EngineConfig
from flexmesh.meshcore.sampling import SamplingParams
from tests.runner.conftest import PROMPTS, hf_greedy

NEW_TOKENS = 24


def _run_staggered(engine: Engine, prompts: list[list[int]], sp: SamplingParams) -> list[list[int]]:
    """Submit prompts at different steps, so requests join a batch already decoding."""
    outputs: dict[str, list[int]] = {}
    rids: list[str] = []
    pending = list(prompts)
    step = 0
    while pending or engine.has_unfinished():
        if pending and step % 3 == 0:
            rids.append(engine.add_request(prompt_token_ids=pending.pop(0), sampling=sp))
        for out in engine.step():
            outputs.setdefault(out.request_id, []).extend(out.token_ids)
        step += 1
    return [outputs[r] for r in rids]


@pytest.mark.parametrize("chunk_tokens", [512, 16])
def test_staggered_batch_matches_hf(model_path: str, chunk_tokens: int) -> None:
    engine = Engine(model_path, EngineConfig(max_batched_tokens=chunk_tokens, max_num_seqs=8))
    prompts = [engine.tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
    got = _run_staggered(engine, prompts, SamplingParams(max_tokens=NEW_TOKENS))
    for ids, out in zip(prompts, got, strict=True):
        assert out == hf_greedy(model_path, tuple(ids), NEW_TOKENS)
    assert engine.load(time.monotonic()).kv_blocks_used == 0 and not engine.request_ids()


def test_preemption_under_block_pressure_keeps_tokens(small_path: str) -> None:
    # 10 blocks of 8 tokens: four ~20-token prompts growing by 24 tokens cannot all fit.
    cfg = EngineConfig(block_size_tokens=8, num_kv_blocks=10, max_batched_tokens=64)
    engine = Engine(small_path, cfg)
    prompts = [engine.tokenizer.encode(p, add_special_tokens=False)[:20] for p in PROMPTS[:4]]
    rids = [
        engine.add_request(prompt_token_ids=p, sampling=SamplingParams(max_tokens=NEW_TOKENS))
        for p in prompts
    ]
    outputs: dict[str, list[int]] = {r: [] for r in rids}
    preempted = 0
    while engine.has_unfinished():
        preempted += sum(r.num_preemptions for r in engine.scheduler.running)  # white-box
        for out in engine.step():
            outputs[out.request_id] += out.token_ids
    assert preempted > 0, "the test must exercise preemption"
    for ids, rid in zip(prompts, rids, strict=True):
        assert outputs[rid] == hf_greedy(small_path, tuple(ids), NEW_TOKENS)
    load = engine.load(time.monotonic())
    assert load.kv_blocks_used == 0 and load.kv_blocks_total == cfg.num_kv_blocks
