"""The engine with `engine.prefix_cache`: greedy output equals Hugging Face `generate` when a
request starts after a cached prefix, and every block ends free or cached with no owner."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from flexmesh.actors.runner.engine import Engine
from flexmesh.meshcore.config import EngineConfig
from flexmesh.meshcore.sampling import SamplingParams
from tests.runner.conftest import hf_greedy

NEW_TOKENS = 12
BLOCK = 8
CONFIG = EngineConfig(block_size_tokens=BLOCK, num_kv_blocks=64, prefix_cache=True)
SYSTEM = (
    "You are a careful assistant. Answer in one short paragraph and cite the rule you used. "
    "Rules: be exact, be brief, and say so when you do not know."
)


def _run(engine: Engine, prompts: list[list[int]], together: bool, **sp: object) -> list[list[int]]:
    """Each prompt's tokens; one after another (`together=False`) or all at once."""
    params = SamplingParams(max_tokens=NEW_TOKENS, **sp)  # type: ignore[arg-type]
    outputs: dict[str, list[int]] = {}
    rids: list[str] = []
    for ids in prompts:
        rids.append(engine.add_request(prompt_token_ids=ids, sampling=params))
        while engine.has_unfinished() and not together:
            for out in engine.step():
                outputs.setdefault(out.request_id, []).extend(out.token_ids)
    while engine.has_unfinished():
        for out in engine.step():
            outputs.setdefault(out.request_id, []).extend(out.token_ids)
    return [outputs[r] for r in rids]


def _assert_blocks_settled(engine: Engine) -> None:
    cache, pool = engine.scheduler.cache, engine.scheduler.pool
    assert cache is not None and not engine.request_ids()
    for block in range(pool.num_blocks):
        assert pool.ref_count(block) == (1 if cache.is_cached(block) else 0)
    load = engine.load(time.monotonic())  # what the worker's status reports
    assert load.kv_blocks_used == 0 and load.kv_blocks_cached == cache.stats().cached_blocks
    assert load.prefix_cache["cached_blocks"] == load.kv_blocks_cached
    cache.clear()
    assert pool.num_free == pool.num_blocks


@pytest.mark.parametrize("together", [False, True])
def test_prefix_hits_match_hf(model_path: str, together: bool) -> None:
    engine = Engine(model_path, CONFIG)
    system = engine.tokenizer.encode(SYSTEM, add_special_tokens=False)
    on_boundary = system[: len(system) // BLOCK * BLOCK]
    questions = [" What is 2 + 2?", " Name a colour.", " Why is the sky blue?"]
    prompts = [
        on_boundary + engine.tokenizer.encode(q, add_special_tokens=False) for q in questions
    ]
    prompts.append(system[: len(on_boundary) + 3])  # a prefix that ends mid-block
    got = _run(engine, prompts, together)
    for ids, out in zip(prompts, got, strict=True):
        assert out == hf_greedy(model_path, tuple(ids), NEW_TOKENS)
    stats = engine.scheduler.cache.stats()  # type: ignore[union-attr]
    if not together:  # admitted in one step, concurrent prompts all compute their prefix
        assert stats.hit_tokens >= 2 * len(on_boundary), stats
    _assert_blocks_settled(engine)


def test_a_hit_after_the_first_request_ended_and_pld_on_a_cached_prefix(small_path: str) -> None:
    engine = Engine(small_path, replace(CONFIG, block_size_tokens=4))
    ids = engine.tokenizer.encode(
        "def add(a, b):\n    return a + b\n\n" * 4, add_special_tokens=False
    )
    first = _run(engine, [ids], together=False)
    hits = engine.scheduler.cache.stats().hit_tokens  # type: ignore[union-attr]
    again = _run(engine, [ids], together=False, strategy="pld")
    assert engine.scheduler.cache.stats().hit_tokens > hits  # type: ignore[union-attr]
    assert first == again == [hf_greedy(small_path, tuple(ids), NEW_TOKENS)]
    _assert_blocks_settled(engine)


def test_eviction_under_pressure_and_preemption_keep_tokens(small_path: str) -> None:
    # 12 blocks of 8: a finished request leaves its prompt cached; then three prompts sharing
    # another prefix and growing by 12 tokens do not all fit, so the cache gives blocks back
    # (least recently used first) and the newest running request is preempted.
    engine = Engine(small_path, replace(CONFIG, num_kv_blocks=12, max_batched_tokens=64))
    tok = engine.tokenizer
    old = tok.encode("The quick brown fox jumps over the lazy dog. " * 5, add_special_tokens=False)
    base = tok.encode(SYSTEM, add_special_tokens=False)[:24]
    prompts = [base + tok.encode(f" Item {i}.", add_special_tokens=False) for i in range(3)]
    assert _run(engine, [old[:40]], together=False) == [hf_greedy(small_path, tuple(old[:40]), 12)]
    params = SamplingParams(max_tokens=NEW_TOKENS)
    rids = [engine.add_request(prompt_token_ids=p, sampling=params) for p in prompts]
    outputs: dict[str, list[int]] = {r: [] for r in rids}
    preempted = 0
    while engine.has_unfinished():
        preempted += sum(r.num_preemptions for r in engine.scheduler.running)  # white-box
        for out in engine.step():
            outputs[out.request_id] += out.token_ids
    assert preempted > 0 and engine.scheduler.cache.stats().evictions > 0  # type: ignore[union-attr]
    for ids, rid in zip(prompts, rids, strict=True):
        assert outputs[rid] == hf_greedy(small_path, tuple(ids), NEW_TOKENS)
    _assert_blocks_settled(engine)


def test_disaggregated_with_a_prefix_cache_matches_hf(model_path: str) -> None:
    """The prefill worker starts after its cached prefix, hands the KV over (less what the
    decode side caches already), and the decode side continues: the same tokens as Hugging
    Face."""
    from tests.runner.test_handoff import CFG, Pair

    pair = Pair(model_path, replace(CFG, prefix_cache=True))
    system = pair.p.tokenizer.encode(SYSTEM, add_special_tokens=False)
    prompts = [system[:32], system[:40], system[:35], system[:32] + system[:9]]
    sp = SamplingParams(max_tokens=NEW_TOKENS)
    got = pair.run(prompts, [sp] * len(prompts))
    for ids, out in zip(prompts, got, strict=True):
        assert out == hf_greedy(model_path, tuple(ids), NEW_TOKENS)
    assert pair.p.scheduler.cache.stats().hit_tokens > 0  # type: ignore[union-attr]
    _assert_blocks_settled(pair.p)
    _assert_blocks_settled(pair.d)


def test_the_decode_side_imports_only_the_blocks_it_does_not_hold(model_path: str) -> None:
    """A second request sharing two blocks of prompt with the first: the decode worker cached
    them when the first one's KV arrived, so only the rest travels, and the tokens are still
    Hugging Face's."""
    from tests.runner.test_handoff import CFG, Pair

    pair = Pair(model_path, replace(CFG, prefix_cache=True))
    block = CFG.block_size_tokens
    system = pair.p.tokenizer.encode(SYSTEM, add_special_tokens=False)
    question = pair.p.tokenizer.encode(" Name a colour.", add_special_tokens=False)
    first, second = system[: 2 * block + 5], system[: 2 * block + 1] + question
    sp = SamplingParams(max_tokens=NEW_TOKENS)
    got = pair.run([first], [sp]) + pair.run([second], [sp])
    for ids, out in zip([first, second], got, strict=True):
        assert out == hf_greedy(model_path, tuple(ids), NEW_TOKENS)
    whole = sum(-(-len(ids) // block) for ids in (first, second))
    assert pair.moved_blocks == whole - 2, (pair.moved_blocks, whole)
    stats = pair.d.scheduler.cache.stats()  # type: ignore[union-attr]
    assert stats.hit_blocks == 2 and stats.cached_blocks >= 2, stats
    _assert_blocks_settled(pair.p)
    _assert_blocks_settled(pair.d)
