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
    for key in ("read_roofline_b1_tok_s", "gemv_chain_tok_s", "hf_b1_tok_s", "engine_b1_tok_s",
                "engine_c3_tok_s"):  # fmt: skip
        assert len(report["samples"][key]) == 3
        assert report[key] > 0
    assert report["ratio_b1"] == pytest.approx(
        report["engine_b1_tok_s"] / report["hf_b1_tok_s"], abs=0.01
    )
    roofline = report["read_roofline_b1_tok_s"]
    assert report["engine_b1_of_roofline"] == pytest.approx(
        report["engine_b1_tok_s"] / roofline, abs=0.001
    )
    # The roofline is the step's weight bytes at the measured read speed.
    assert roofline * report["step_read_bytes"] / 1e9 == pytest.approx(report["read_gb_s"], 0.01)


def test_a_step_streams_every_weight_but_the_embedding_table(small_path: str) -> None:
    from flexmesh.actors.runner.engine import Engine
    from flexmesh.meshcore.config import EngineConfig

    model = Engine(small_path, EngineConfig(num_kv_blocks=4)).runner.model
    embed = model.embed.numel() * model.embed.element_size()
    assert model.step_read_bytes == model.weight_bytes - embed  # demo weights are untied
    mats = model.decode_matrices()
    assert len(mats) == 4 * model.num_layers + 1 and mats[-1] is model.lm_head


def test_packed_projections_run_at_few_row_counts_and_pad_little() -> None:
    from flexmesh.actors.runner.model import EXACT_ROWS, padded_rows

    sizes = {padded_rows(r) for r in range(1, 513)}
    assert len(sizes) == EXACT_ROWS + 20  # 4 per octave from 17 to 512
    for rows in range(1, 2049):
        padded = padded_rows(rows)
        assert rows <= padded <= max(rows, rows * 1.25)
        assert padded == rows or rows > EXACT_ROWS


def test_the_decode_profile_splits_a_step_into_its_parts(small_path: str) -> None:
    from flexmesh.bench.engine_bench import profile_decode_step

    r = profile_decode_step(small_path, steps=5, context_tokens=8)
    assert 0 < r["other_ops_ms"] < r["forward_ms"] <= r["step_ms"]
    assert r["projections_ms"] == pytest.approx(r["forward_ms"] - r["other_ops_ms"], abs=0.01)
    assert r["outside_forward_ms"] > 0 and r["gemv_chain_ms"] > 0 and r["roofline_ms"] > 0
    table = r["ops"].splitlines()  # the per-op table: its top rows by self CPU time
    assert "Self CPU" in table[1] and sum("aten::" in row or "mkldnn::" in row for row in table) > 5
