"""`flexmesh bench engine` runs end to end and reports every column it promises."""

from __future__ import annotations

import pytest

from flexmesh.bench.engine_bench import BenchSettings, run_engine_bench


def test_engine_bench_reports_medians_of_interleaved_rounds(small_path: str) -> None:
    calls: list[int] = []

    def extra() -> float:
        calls.append(1)
        return float(len(calls))

    s = BenchSettings(small_path, new_tokens=4, concurrency=3, rounds=3)
    report = run_engine_bench(s, extra_columns={"extra_tok_s": extra})
    assert report["samples"]["extra_tok_s"] == [1.0, 2.0, 3.0]
    assert report["extra_tok_s"] == 2.0  # the median round
    for key in ("hf_b1_tok_s", "engine_b1_tok_s", "engine_c3_tok_s"):
        assert len(report["samples"][key]) == 3
        assert report[key] > 0
    assert report["ratio_b1"] == pytest.approx(
        report["engine_b1_tok_s"] / report["hf_b1_tok_s"], abs=0.01
    )
    assert report["roofline_b1_tok_s"] > 0
