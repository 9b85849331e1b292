"""`flexmesh bench engine`: every column it promises, run end to end, and its medians and ratios
worked out from hand-made measurements."""

from __future__ import annotations

import types
from typing import Any

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
                "hf_c3_tok_s", "engine_c3_tok_s"):  # fmt: skip
        assert len(report["samples"][key]) == 3
        assert report[key] > 0
        assert report["spread"][key] == [min(report["samples"][key]), max(report["samples"][key])]


def test_hf_batched_reference_generates_every_token_of_the_engine_batch(small_path: str) -> None:
    """HF's batched column runs the engine's batch (the same prompts, cycled, left-padded) and
    counts every new token of every row; its greedy rows equal HF's unpadded batch-1 output."""
    import torch
    from transformers import AutoModelForCausalLM

    from flexmesh.bench import engine_bench

    hf = AutoModelForCausalLM.from_pretrained(small_path, dtype=torch.float32).eval()
    prompts = [[5, 6, 7, 8, 9], [11, 12], [13, 14, 15]]
    assert engine_bench.concurrent_prompts(prompts, 4) == [*prompts, prompts[0]]
    calls: list[Any] = []
    generate = hf.generate

    def spy(ids: Any, **kw: Any) -> Any:
        out = generate(ids, **kw)
        calls.append((ids, kw["attention_mask"], out))
        return out

    hf.generate = spy
    s = BenchSettings(small_path, new_tokens=4)
    assert engine_bench.hf_batched_tok_s(hf, prompts, s, 4) > 0
    ((ids, mask, out),) = calls
    assert ids.shape == (4, 5) and mask[1].tolist() == [0, 0, 0, 1, 1]
    assert out[:, 5:].shape == (4, 4)
    with torch.inference_mode():
        alone = generate(torch.tensor([prompts[1]]), max_new_tokens=4, do_sample=False)
    assert out[1, 5:].tolist() == alone[0, 2:].tolist()


STEP_BYTES = 40_000_000
ROUNDS = {
    "read_gb_s": [2.0, 1.0, 4.0],  # a roofline of 50, 25 and 100 tok/s for 40 MB a step
    "gemv_chain_tok_s": [30.0, 10.0, 20.0],
    "hf_b1_tok_s": [80.0, 100.0, 50.0],
    "engine_b1_tok_s": [200.0, 150.0, 240.0],
    "hf_c3_tok_s": [300.0, 320.0, 160.0],
    "engine_c3_tok_s": [640.0, 600.0, 700.0],
}
"""Hand-made measurements, one per round; each column's median differs from its mean."""


def test_engine_bench_ratios_come_from_the_median_of_each_column(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every measurement stood in for by the numbers above: the report's medians and ratios are
    the ones worked out by hand, and the columns are measured round by round, interleaved."""
    from flexmesh.bench import engine_bench

    order: list[str] = []
    rounds = {k: iter(v) for k, v in ROUNDS.items()}

    def measured(column: str) -> float:
        order.append(column)
        return next(rounds[column])

    def engine_tok_s(engine: object, prompts: object, s: object, concurrency: int) -> float:
        return measured(f"engine_{'b1' if concurrency == 1 else f'c{concurrency}'}_tok_s")

    tokenizer = types.SimpleNamespace(encode=lambda text, add_special_tokens: [len(text)])
    model = types.SimpleNamespace(step_read_bytes=STEP_BYTES)
    engine = types.SimpleNamespace(tokenizer=tokenizer, warm_up=lambda: None, model=model)
    hf = types.SimpleNamespace(generate=lambda *a, **k: None)
    hf.eval = lambda: hf
    loader = types.SimpleNamespace(from_pretrained=lambda path, dtype: hf)
    monkeypatch.setattr("flexmesh.actors.runner.engine.Engine", lambda path, cfg: engine)
    monkeypatch.setattr("transformers.AutoModelForCausalLM", loader)
    monkeypatch.setattr(engine_bench, "READ_BYTES", 1024)  # no 1 GiB buffer for a stand-in
    monkeypatch.setattr(engine_bench, "read_bandwidth_gbs", lambda buf: measured("read_gb_s"))
    monkeypatch.setattr(engine_bench, "gemv_chain_tok_s", lambda m: measured("gemv_chain_tok_s"))
    monkeypatch.setattr(engine_bench, "hf_batch1_tok_s", lambda *a: measured("hf_b1_tok_s"))
    monkeypatch.setattr(engine_bench, "hf_batched_tok_s", lambda *a: measured("hf_c3_tok_s"))
    monkeypatch.setattr(engine_bench, "engine_tok_s", engine_tok_s)

    report = run_engine_bench(BenchSettings("/models/fake", concurrency=3, rounds=3))
    assert order == list(ROUNDS) * 3
    assert report["samples"]["read_roofline_b1_tok_s"] == [50.0, 25.0, 100.0]
    assert report["samples"]["hf_b1_tok_s"] == ROUNDS["hf_b1_tok_s"]
    assert {k: report[k] for k in ("read_roofline_b1_tok_s", "gemv_chain_tok_s", "hf_b1_tok_s",
                                   "engine_b1_tok_s", "engine_c3_tok_s")} == {
        "read_roofline_b1_tok_s": 50.0, "gemv_chain_tok_s": 20.0, "hf_b1_tok_s": 80.0,
        "engine_b1_tok_s": 200.0, "engine_c3_tok_s": 640.0,
    }  # fmt: skip
    assert (report["ratio_b1"], report["ratio_c3"]) == (2.5, 8.0)  # 200 / 80 and 640 / 80
    assert report["hf_c3_tok_s"] == 300.0 and report["ratio_c3_vs_hf_c3"] == 2.13  # 640 / 300
    assert report["spread"]["hf_c3_tok_s"] == [160.0, 320.0]
    assert report["engine_b1_of_roofline"] == 4.0  # 200 / 50
    assert report["gemv_chain_of_roofline"] == 0.4  # 20 / 50
    assert (report["step_read_bytes"], report["read_gb_s"]) == (STEP_BYTES, 2.0)
    assert (report["model"], report["concurrency"], report["rounds"]) == ("fake", 3, 3)


def test_a_step_streams_every_weight_but_the_embedding_table(small_path: str) -> None:
    from flexmesh.actors.runner.engine import Engine
    from flexmesh.meshcore.config import EngineConfig

    model = Engine(small_path, EngineConfig(num_kv_blocks=4)).model
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
