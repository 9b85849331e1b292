"""Workload shaping: window, rate scaling, speedup, request bound, length fitting."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from flexmesh.loadgen.shaping import ShapeConfig, fit_lengths, shape
from flexmesh.loadgen.traces import TraceRequest
from flexmesh.loadgen.workload import Phase, load_phases, load_workload, phase_bounds


def _trace(n: int = 1000, gap: float = 1.0) -> list[TraceRequest]:
    return [TraceRequest(i * gap, 100 + i, 10 + i % 50, (0, i)) for i in range(n)]


def test_window_rebases_and_speedup_compresses() -> None:
    wl = shape(_trace(), ShapeConfig(start_s=100.5, duration_s=50.0, speedup=2.0))
    arrivals = [r.arrival_s for r in wl.requests]
    assert len(arrivals) == 50
    assert arrivals[0] == pytest.approx(0.25)  # (101 - 100.5) / 2
    assert arrivals[-1] == pytest.approx((150 - 100.5) / 2)
    assert wl.requests[0].input_tokens == 201 and wl.requests[0].hash_ids == (0, 101)


def test_rate_scale_thins_and_replicates() -> None:
    thin = shape(_trace(4000), ShapeConfig(rate_scale=0.25, seed=1)).requests
    assert abs(len(thin) - 1000) < 120  # binomial sd ~27
    many = shape(_trace(1000), ShapeConfig(rate_scale=2.5, seed=1)).requests
    assert abs(len(many) - 2500) < 120  # 2 copies each plus Bernoulli(0.5) for a third
    arrivals = [r.arrival_s for r in many]
    assert arrivals == sorted(arrivals) and arrivals[-1] <= 999.0
    assert shape(_trace(10), ShapeConfig(rate_scale=3.0)).requests.__len__() == 30


def test_max_requests_after_rate_scale() -> None:
    wl = shape(_trace(), ShapeConfig(rate_scale=2.0, max_requests=7))
    assert len(wl.requests) == 7
    assert [r.arrival_s for r in wl.requests] == sorted(r.arrival_s for r in wl.requests)


def test_scale_mode_keeps_ratios() -> None:
    reqs = [TraceRequest(0, 1000, 400), TraceRequest(1, 4000, 100), TraceRequest(2, 3, 1)]
    wl = fit_lengths(reqs, max_input_tokens=1000, max_output_tokens=200, mode="scale")
    assert [r.input_tokens for r in wl.requests] == [250, 1000, 1]
    assert [r.output_tokens for r in wl.requests] == [200, 50, 1]
    assert wl.input_scale == 0.25 and wl.output_scale == 0.5
    assert wl.block_tokens == 128  # Mooncake's 512-token blocks shrink with the prompts


def test_clip_mode_and_untouched() -> None:
    reqs = [TraceRequest(0, 1000, 400), TraceRequest(1, 4000, 100)]
    wl = fit_lengths(reqs, max_input_tokens=2000, max_output_tokens=None, mode="clip")
    assert [(r.input_tokens, r.output_tokens) for r in wl.requests] == [(1000, 400), (2000, 100)]
    assert wl.input_scale == 1.0 and wl.block_tokens == 512
    same = fit_lengths(reqs, None, None)
    assert same.requests == tuple(reqs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"speedup": 0}, "speedup"),
        ({"rate_scale": -1}, "rate_scale"),
        ({"max_requests": 0}, "max_requests"),
        ({"duration_s": 0}, "duration_s"),
        ({"max_input_tokens": 0}, "max_input_tokens"),
        ({"length_mode": "squash"}, "length_mode"),
    ],
)
def test_config_validation_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ShapeConfig(**kwargs)  # type: ignore[arg-type]


def test_phases_follow_one_another_with_their_own_windows_and_rates(data_dir: Path) -> None:
    conv = str(data_dir / "traces" / "azure_llm_2023_conv.csv")
    code = str(data_dir / "traces" / "azure_llm_2023_code.csv")
    phases = [Phase.parse(f"{conv}:0:20:0.5"), Phase.parse(f"{code}:0:10"), Phase(conv, 20, 20)]
    assert phases[1].rate_scale == 1.0 and phases[2].start_s == 20
    config = ShapeConfig(max_input_tokens=512, length_mode="clip")
    w = load_phases(phases, config)
    arrivals = [r.arrival_s for r in w.requests]
    assert arrivals == sorted(arrivals)
    alone = [
        load_workload("azure", p.trace, replace(config, start_s=p.start_s,
                      duration_s=p.duration_s, rate_scale=p.rate_scale)).requests
        for p in phases
    ]  # fmt: skip
    bounds = phase_bounds(phases)
    assert [(lo, hi) for _, lo, hi in bounds] == [(0, 20), (20, 30), (30, 50)]
    assert bounds[1][0] == "azure_llm_2023_code@0s x1"
    assert [len(a) for a in alone] == [
        sum(1 for t in arrivals if lo <= t < hi) for _, lo, hi in bounds
    ]
    assert all(a for a in alone) and max(r.input_tokens for r in w.requests) <= 512
    code_part = w.requests[len(alone[0]) : len(alone[0]) + len(alone[1])]
    assert [r.input_tokens for r in code_part] == [r.input_tokens for r in alone[1]]
    with pytest.raises(ValueError, match="TRACE:START:DURATION"):
        Phase.parse("conv.csv:zero:20")


def test_phases_of_a_scaled_hash_trace_keep_its_block_size(data_dir: Path) -> None:
    mooncake = str(data_dir / "traces" / "mooncake_fast25_conversation_trace.jsonl")
    config = ShapeConfig(max_input_tokens=512, length_mode="scale")
    alone = load_workload("mooncake", mooncake, replace(config, duration_s=30))
    w = load_phases([Phase(mooncake, 0, 30), Phase(mooncake, 30, 30)], config)
    assert alone.input_scale < 1 and alone.block_tokens < 512
    assert w.block_tokens == alone.block_tokens and w.input_scale == alone.input_scale
