"""Issue 26's must-hold replay test at the engine: a Mooncake window, its prompts synthesised by
the load generator from the trace's prefix hashes (lengths scaled so that one hash marks one
engine block), run through an in-process engine with the prefix cache on and off, gives the
same greedy tokens for every request, and the cache hits."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from flexmesh.actors.runner.engine import Engine
from flexmesh.loadgen.prefix import prefix_references
from flexmesh.loadgen.shaping import ShapeConfig, shape
from flexmesh.loadgen.traces import MOONCAKE_BLOCK_TOKENS, read_mooncake
from flexmesh.loadgen.workload import build_requests
from flexmesh.meshcore.config import EngineConfig
from flexmesh.meshcore.sampling import SamplingParams

WINDOW = ShapeConfig(start_s=1500.0, duration_s=10.0, max_requests=12)
"""12 requests (~2.2k prompt tokens once scaled), a system-prompt block shared by all and a
conversation that continues."""
NEW_TOKENS = 8
STEPS_BETWEEN_ARRIVALS = 2
"""Requests arrive while earlier ones still run: hits come from running and finished ones."""


def _replay(engine: Engine, prompts: list[list[int]]) -> list[list[int]]:
    sp = SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True)
    outputs: dict[str, list[int]] = {}
    rids = []
    for ids in prompts:
        rids.append(engine.add_request(prompt_token_ids=ids, sampling=sp))
        for _ in range(STEPS_BETWEEN_ARRIVALS):
            for out in engine.step() if engine.has_unfinished() else ():
                outputs.setdefault(out.request_id, []).extend(out.token_ids)
    while engine.has_unfinished():
        for out in engine.step():
            outputs.setdefault(out.request_id, []).extend(out.token_ids)
    return [outputs[r] for r in rids]


def test_a_mooncake_window_gives_the_same_tokens_with_and_without_the_cache(
    small_path: str, shared_data: Path
) -> None:
    config = EngineConfig(block_size_tokens=16, num_kv_blocks=512, prefix_cache=True)
    raw = read_mooncake(shared_data / "traces" / "mooncake_fast25_conversation_trace.jsonl")
    longest = max(r.input_tokens for r in shape(raw, WINDOW).requests)
    scale_to = round(longest * config.block_size_tokens / MOONCAKE_BLOCK_TOKENS)
    workload = shape(raw, replace(WINDOW, max_input_tokens=scale_to))
    assert workload.block_tokens == config.block_size_tokens
    on = Engine(small_path, config)
    tok = on.tokenizer
    requests = build_requests(workload, {"chat": 1.0}, None, tok, seed=0)
    prompts = [tok.encode(r.prompt, add_special_tokens=False) for r in requests]
    with_cache = _replay(on, prompts)
    stats = on.scheduler.cache.stats()  # type: ignore[union-attr]
    ideal = prefix_references(workload.requests, workload.block_tokens, None)["ideal_hit_rate"]
    assert ideal > 0 and stats.hit_tokens > 0
    assert stats.hit_tokens <= ideal * sum(map(len, prompts)) + config.block_size_tokens
    off = Engine(
        small_path, EngineConfig(block_size_tokens=16, num_kv_blocks=512, prefix_cache=False)
    )
    assert with_cache == _replay(off, prompts)
    assert all(len(out) == NEW_TOKENS for out in with_cache)
