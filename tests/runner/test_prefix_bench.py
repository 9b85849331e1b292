"""`flexmesh bench prefix` without a mesh: its configurations, its workloads' options, and its
goal table worked out from hand-made round summaries."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from flexmesh.bench.prefix_bench import (
    CONFIGS,
    PAIR_KV_BLOCKS,
    add_prefix_bench_arguments,
    mooncake_max_input_tokens,
    prefix_rows,
    replay_argv,
    variant,
)
from flexmesh.bench.prefix_goals import GOALS, goal_report, print_prefix_report
from flexmesh.bench.rounds import rounds_report
from flexmesh.bench.serving import load_named_config
from flexmesh.loadgen.run import add_replay_arguments, prepare


def _summary(
    ttft: float,
    tok_s: float,
    goodput: float = 1.0,
    hit: float | None = None,
    computed: dict[str, int] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    server = {
        "hit_rate_of_prompt_tokens": hit,
        "prompt_tokens_computed": computed,
        "prompt_tokens_computed_total": sum((computed or {}).values()) or None,
    }
    return {"ttft_ms": {"p50": ttft}, "tpot_ms": {"p50": 50.0}, "output_tok_s": tok_s,
            "goodput_req_s": goodput, "prefix_server": server, **extra}  # fmt: skip


def _round(k: float, differ: bool = False) -> dict[str, Any]:
    """One round's results; `k` scales the cache-on figures so rounds differ."""
    moon_ref = {"ideal_hit_rate": 0.08, "lru_hit_rate": 0.07}
    digests = ["a", "b", None, "d"]
    return {
        "cache-off": {
            "shared_prefix": _summary(900.0, 40.0),
            "mooncake": _summary(3000.0, 30.0, prefix_reference=moon_ref,
                                 output_digests=["a", "x" if differ else "b", "c", None]),
            "no_reuse": _summary(4000.0, 100.0),
        },
        "cache-on": {
            "shared_prefix": _summary(900.0 / (2 * k), 40.0 * 1.5 * k, hit=0.6),
            "mooncake": _summary(2800.0, 31.0, hit=0.063 * k, prefix_reference=moon_ref,
                                 output_digests=digests),
            "no_reuse": _summary(4000.0, 100.0 * (0.9 + 0.1 * k)),
        },
        "pair-least-loaded": {
            "shared_prefix": _summary(500.0, 80.0, goodput=1.0, hit=0.4,
                                      computed={"w0": 4000, "w1": 4100})},
        "pair-cache-aware": {
            "shared_prefix": _summary(300.0, 90.0, goodput=1.2 + 0.2 * k, hit=0.57,
                                      computed={"w0": 2000, "w1": 2000 + int(1000 * k)})},
    }  # fmt: skip


def _goals(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {g["goal"]: g for g in goal_report(runs)}


def test_goal_figures_are_medians_of_per_round_ratios_with_their_spread() -> None:
    runs = [_round(1.0), _round(0.8), _round(1.2)]
    goals = _goals(runs)
    assert len(goals) == len(GOALS) and {g["section"] for g in goals.values()} == set("abcd")
    ttft = goals["shared prefix: TTFT p50, cache off / on"]
    assert ttft["rounds"] == pytest.approx([2.0, 1.6, 2.4])
    assert (ttft["median"], ttft["spread"], ttft["met"]) == (2.0, [1.6, 2.4], True)
    tok = goals["shared prefix: output tok/s, cache on / off"]
    assert (tok["median"], tok["met"]) == (1.5, True)
    lru = goals["Mooncake: server hit rate / LRU reference of its capacity"]
    assert (lru["median"], lru["spread"], lru["met"]) == (0.9, [0.72, 1.08], True)
    same = goals["Mooncake: requests whose greedy output differs, on vs off"]
    assert (same["judged"], same["met"]) == (0.0, True)  # compared where both completed
    pair_hit = goals["two workers: hit rate, cache-aware / one worker (a)"]
    assert (pair_hit["median"], pair_hit["met"]) == (0.95, True)
    imbalance = goals["two workers: prompt tokens computed, busier / other (cache-aware)"]
    assert (imbalance["median"], imbalance["spread"], imbalance["met"]) == (1.5, [1.4, 1.6], False)
    goodput = goals["two workers: goodput, cache-aware / least-loaded"]
    assert (goodput["median"], goodput["met"]) == (1.4, True)
    cost = goals["no reuse: output tok/s, cache on / off (a cost within 5%)"]
    assert (cost["median"], cost["spread"], cost["met"]) == (1.0, [0.98, 1.02], True)


def test_a_property_of_every_round_fails_on_one_bad_round_and_missing_configs_are_not_judged(
) -> None:  # fmt: skip
    goals = _goals([_round(1.0), _round(1.0, differ=True), _round(1.0)])
    same = goals["Mooncake: requests whose greedy output differs, on vs off"]
    assert same["rounds"] == [0.0, 1.0, 0.0] and same["median"] == 0.0
    assert (same["judged"], same["met"]) == (1.0, False)  # the worst round, not the median
    one_worker = [{k: v for k, v in _round(1.0).items() if k in CONFIGS[:2]}]
    goals = _goals(one_worker)
    assert goals["two workers: goodput, cache-aware / least-loaded"]["met"] is None
    assert goals["shared prefix: TTFT p50, cache off / on"]["met"] is True
    idle = _round(1.0)
    idle["pair-cache-aware"]["shared_prefix"]["prefix_server"]["prompt_tokens_computed"] = {
        "w0": 0, "w1": 900}  # fmt: skip
    (g,) = [g for g in goal_report([idle]) if g["goal"].startswith("two workers: prompt")]
    assert (g["median"], g["met"]) == (900.0, False)


def test_the_report_prints_goals_and_figures(capsys: pytest.CaptureFixture[str]) -> None:
    runs = [_round(1.0), _round(1.1), _round(0.9)]
    report = rounds_report(runs, prefix_rows, ratio_figures=())
    report["goals"] = goal_report(runs)
    rows = report["extra_rows"]
    assert rows["mooncake: lru hit rate (reference)"]["cache-on"] == 0.07
    assert "mooncake: server hit rate" in rows and "no_reuse: output tok/s" in rows
    imbalance = rows["shared_prefix: prompt tokens computed, busier / other worker"]
    assert imbalance == {"pair-least-loaded": 1.025, "pair-cache-aware": 1.5}
    print_prefix_report(report)
    out = capsys.readouterr().out
    assert "NOT MET" in out and "met" in out and "2.00 (1.80–2.20)" in out


def test_configs_are_variants_of_pd_colocated() -> None:
    base = load_named_config("pd-colocated")
    got = {name: variant(name, base) for name in CONFIGS}
    for name, cfg in got.items():
        (model,) = cfg.models
        workers = 1 if name in ("cache-off", "cache-on") else 2
        assert (model.name, model.num_workers, model.num_cpus) == ("demo-large", workers, 1)
        assert model.roles == ("mixed",) * workers
        assert cfg.engine.prefix_cache == (name != "cache-off")
        assert cfg.engine.max_batched_tokens == base.engine.max_batched_tokens
        kv = PAIR_KV_BLOCKS if workers == 2 else base.engine.num_kv_blocks
        assert cfg.engine.num_kv_blocks == kv
    assert got["pair-least-loaded"].pd.placement == "least_loaded"
    assert got["pair-cache-aware"].pd.placement == "cache_aware"
    with pytest.raises(ValueError, match="configs"):
        variant("cache-maybe", base)


def test_workloads_match_the_issue_and_mooncake_blocks_align_with_the_engine(
    shared_data: Path,
) -> None:
    p = argparse.ArgumentParser()
    add_prefix_bench_arguments(p)
    args = p.parse_args(["--data", str(shared_data)])
    trace = shared_data / "traces" / "mooncake_fast25_conversation_trace.jsonl"
    longest = mooncake_max_input_tokens(trace, 2020, 10, 16)
    got = {}
    for workload, pair in (("shared_prefix", False), ("shared_prefix", True),
                           ("mooncake", False), ("no_reuse", False)):  # fmt: skip
        argv = [*replay_argv(args, workload, longest, 16, pair), "--out", "unused"]
        got[workload, pair] = prepare(
            add_replay_arguments(argparse.ArgumentParser()).parse_args(argv), text=False
        )
    (wl, reqs, meta) = got["shared_prefix", False]
    assert len(reqs) == 32 and {r.prompt_tokens for r in reqs} == {448}
    assert meta["prefix_reference"]["ideal_hit_rate"] > 0.6
    pair = got["shared_prefix", True][0].requests
    assert pair[-1].arrival_s < wl.requests[-1].arrival_s  # twice the rate
    moon, _, meta = got["mooncake", False]
    assert moon.block_tokens == 16 and max(r.input_tokens for r in moon.requests) == longest
    assert meta["prefix_reference"]["ideal_hit_rate"] > 0
    _, _, meta = got["no_reuse", False]
    assert meta["prefix_reference"]["ideal_hit_rate"] == 0.0


def test_each_config_replays_its_workloads_with_their_own_seeds(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bench's wiring, meshes and replays stood in for: every configuration replays its
    workloads, each with its options, and the Mooncake run's completions become digests."""
    import json

    from flexmesh.bench import prefix_bench

    replays: list[tuple[str, Any]] = []

    async def fake_replay(rargs: argparse.Namespace) -> dict[str, Any]:
        out = Path(rargs.out)
        out.mkdir(parents=True)
        rows = [{"index": 1, "status": "OK", "token_ids": [5, 6]},
                {"index": 0, "status": "CANCELLED", "token_ids": []}]  # fmt: skip
        (out / "requests.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        replays.append((out.parent.parent.name + "/" + out.name, rargs))
        return _summary(100.0, 10.0, completed=2, requests_sent=2)

    def fake_rounds(configs: str, models_dir: Any, rounds: int, out: Path, run_one: Any,
                    load: Any) -> list[dict[str, Any]]:  # fmt: skip
        mesh = argparse.Namespace(address="127.0.0.1:1")
        paths = {"demo-large": "/models/demo-large"}
        return [
            {
                n: run_one(n, load(n), paths, mesh, out / n / f"round-{r}")
                for n in configs.split(",")
            }
            for r in range(1, rounds + 1)
        ]

    monkeypatch.setattr(prefix_bench, "run_replay", fake_replay)
    monkeypatch.setattr(prefix_bench, "run_rounds", fake_rounds)
    monkeypatch.setattr(prefix_bench, "kv_capacity_tokens", lambda address, block: 10912)
    p = argparse.ArgumentParser()
    add_prefix_bench_arguments(p)
    args = p.parse_args(["--data", str(shared_data), "--rounds", "1", "--out", str(tmp_path)])
    report = prefix_bench.run_prefix_bench(args)
    assert [name for name, _ in replays] == [
        "cache-off/shared_prefix", "cache-off/mooncake", "cache-off/no_reuse",
        "cache-on/shared_prefix", "cache-on/mooncake", "cache-on/no_reuse",
        "pair-least-loaded/shared_prefix", "pair-cache-aware/shared_prefix",
    ]  # fmt: skip
    by = dict(replays)
    assert [by[f"cache-on/{w}"].seed for w in ("shared_prefix", "mooncake", "no_reuse")] == [
        0,
        1,
        2,
    ]
    assert by["cache-on/mooncake"].keep_token_ids and by["cache-on/mooncake"].format == "mooncake"
    assert (
        by["cache-on/shared_prefix"].rate_rps * 2 == by["pair-cache-aware/shared_prefix"].rate_rps
    )
    assert all(r.kv_capacity_tokens == 10912 and r.model == "demo-large" for r in by.values())
    digests = report["samples"]["cache-on"][0]["mooncake"]["output_digests"]
    assert digests[0] is None and len(digests[1]) == 12
    assert (tmp_path / "bench.json").exists() and len(report["goals"]) == len(GOALS)
