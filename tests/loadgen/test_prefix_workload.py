"""The shared-prefix workload (shape, determinism, shared text) and the replay report's prefix
hit-rate references (infinite cache, LRU of a given capacity) on hand-made streams."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from flexmesh.loadgen.prefix import (
    SharedPrefixConfig,
    prefix_references,
    references_line,
    shared_prefix_trace,
)
from flexmesh.loadgen.prompts import PromptPool
from flexmesh.loadgen.run import add_replay_arguments, prepare
from flexmesh.loadgen.shaping import ShapeConfig
from flexmesh.loadgen.synth import synthesize
from flexmesh.loadgen.traces import TraceRequest
from flexmesh.loadgen.workload import load_workload


def test_shared_prefix_trace_shape_and_determinism() -> None:
    cfg = SharedPrefixConfig(
        groups=3, requests_per_group=4, prefix_tokens=40, suffix_tokens=10, block_tokens=16
    )
    reqs = shared_prefix_trace(cfg, seed=1)
    assert len(reqs) == 12 and reqs == shared_prefix_trace(cfg, seed=1)
    assert reqs != shared_prefix_trace(cfg, seed=2)
    assert all(r.input_tokens == 50 and r.output_tokens == 64 for r in reqs)
    assert [r.arrival_s for r in reqs] == sorted(r.arrival_s for r in reqs)
    # 40 prefix tokens = 2 whole shared blocks; 50 tokens = 4 blocks, so 2 of the request's own.
    assert all(len(r.hash_ids) == 4 for r in reqs)
    groups = {r.hash_ids[:2] for r in reqs}
    assert len(groups) == 3
    assert sum(r.hash_ids[:2] == g for r in reqs for g in groups) == 12
    assert all(sum(r.hash_ids[:2] == g for r in reqs) == 4 for g in groups)
    own = [h for r in reqs for h in r.hash_ids[2:]]
    assert len(set(own)) == len(own) and not set(own) & {h for g in groups for h in g}
    burst = shared_prefix_trace(SharedPrefixConfig(arrival="burst", groups=2), seed=0)
    assert {r.arrival_s for r in burst} == {0.0}


def test_shared_prefix_poisson_rate_and_errors() -> None:
    reqs = shared_prefix_trace(SharedPrefixConfig(groups=50, requests_per_group=40, rate_rps=20))
    assert 80 < reqs[-1].arrival_s < 120  # 2000 requests at 20 req/s
    with pytest.raises(ValueError, match="groups"):
        SharedPrefixConfig(groups=0)
    with pytest.raises(ValueError, match="arrival"):
        SharedPrefixConfig(arrival="steady")  # type: ignore[arg-type]


def test_load_workload_keeps_block_size_through_scaling() -> None:
    cfg = SharedPrefixConfig(groups=2, requests_per_group=3, prefix_tokens=64, suffix_tokens=64)
    w = load_workload("shared-prefix", None, ShapeConfig(max_requests=4), shared_prefix=cfg)
    assert len(w.requests) == 4 and w.block_tokens == 16
    half = load_workload("shared-prefix", None, ShapeConfig(max_input_tokens=64), shared_prefix=cfg)
    assert half.block_tokens == 8 and all(r.input_tokens == 64 for r in half.requests)


def test_group_members_share_their_prefix_text(tokenizer: Any, prompts_dir: Path) -> None:
    cfg = SharedPrefixConfig(groups=2, requests_per_group=2, prefix_tokens=48, suffix_tokens=16)
    w = load_workload("shared-prefix", None, ShapeConfig(), shared_prefix=cfg)
    out = synthesize(w, {"chat": 1.0}, PromptPool.from_dir(prompts_dir, tokenizer), seed=3)
    by_group: dict[tuple[int, ...], list[str]] = {}
    for r, src in zip(out, w.requests, strict=True):
        by_group.setdefault(src.hash_ids[:3], []).append(r.prompt)
    (a, b), (c, _) = by_group.values()
    n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), len(a))
    assert len(tokenizer(a[:n])["input_ids"]) >= 48 - 2  # the system prompt is shared
    assert a[:20] != c[:20]  # other groups have other system prompts


def _req(prefix: tuple[int, ...], own: int) -> TraceRequest:
    # 4-token blocks: a 2-block group prefix and one block of the request's own: 12 tokens.
    return TraceRequest(0.0, 12, 1, (*prefix, own))


A, B = (1, 2), (3, 4)


def test_references_on_two_groups_interleaved() -> None:
    stream = [_req(A, 10), _req(B, 11), _req(A, 12), _req(B, 13)]
    ref = prefix_references(stream, 4, capacity_tokens=12)  # room for one request's 3 blocks
    assert ref["ideal_hit_rate"] == round(16 / 48, 4)  # the second A and B hit 2 blocks each
    assert ref["lru_capacity_blocks"] == 3 and ref["lru_hit_rate"] == 0.0  # B evicts A, ...
    # Room for both groups: as good as infinite (a request's own block is evicted first).
    assert prefix_references(stream, 4, capacity_tokens=24)["lru_hit_rate"] == ref["ideal_hit_rate"]
    # The same requests grouped in time: one group's worth of cache is enough.
    grouped = [stream[0], stream[2], stream[1], stream[3]]
    assert prefix_references(grouped, 4, capacity_tokens=12)["lru_hit_rate"] == round(16 / 48, 4)


def test_references_without_hashes_or_capacity() -> None:
    none = prefix_references([TraceRequest(0.0, 12, 1)], 4, capacity_tokens=100)
    assert none["ideal_hit_rate"] is None and none["lru_hit_rate"] is None
    assert references_line(none).endswith("ideal -, LRU of 100 KV tokens -")
    no_cap = prefix_references([_req(A, 10), _req(A, 11)], 4, capacity_tokens=None)
    assert no_cap["ideal_hit_rate"] == round(8 / 24, 4) and no_cap["lru_hit_rate"] is None
    assert references_line(None) == "prefix hit rate references: ideal -, LRU of - KV tokens -"
    # A partial last block never hits: 10 tokens are 2 full blocks of 4.
    partial = [TraceRequest(0.0, 10, 1, (1, 2, 3)), TraceRequest(0.0, 10, 1, (1, 2, 3))]
    assert prefix_references(partial, 4, None)["ideal_hit_rate"] == round(8 / 20, 4)


def test_prepare_reports_references(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--format", "shared-prefix", "--groups", "2", "--requests-per-group", "5",
            "--prefix-tokens", "64", "--suffix-tokens", "16", "--arrival", "burst",
            "--kv-capacity-tokens", "4096", "--out", "unused"]  # fmt: skip
    args = add_replay_arguments(argparse.ArgumentParser()).parse_args(argv)
    _, requests, meta = prepare(args, None, text=False)
    assert len(requests) == 10 and meta["format"] == "shared-prefix"
    ref = meta["prefix_reference"]
    # 8 of 10 requests reuse their group's 64 prefix tokens out of 80.
    assert ref["ideal_hit_rate"] == ref["lru_hit_rate"] == round(8 * 64 / 800, 4)
    print(references_line(ref))
    assert "ideal 0.640, LRU of 4096 KV tokens 0.640" in capsys.readouterr().out
