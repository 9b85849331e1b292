"""Trace readers on the real shared traces and on small hand-made files."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from flexmesh.loadgen.traces import read_azure, read_mooncake, synthetic_trace


def _non_decreasing(xs: list[float]) -> bool:
    return all(a <= b for a, b in itertools.pairwise(xs))


@pytest.mark.parametrize(
    ("name", "rows"), [("azure_llm_2023_code.csv", 8819), ("azure_llm_2023_conv.csv", 19366)]
)
def test_azure_real_traces(data_dir: Path, name: str, rows: int) -> None:
    path = data_dir / "traces" / name
    reqs = read_azure(path)
    assert len(reqs) == rows
    arrivals = [r.arrival_s for r in reqs]
    assert arrivals[0] == 0.0
    assert _non_decreasing(arrivals)
    assert 3400 < arrivals[-1] < 3600  # about an hour, per the data README
    with open(path, newline="") as f:
        raw = list(csv.reader(f))[1:6]
    for req, (_, n_in, n_out) in zip(reqs, raw, strict=False):
        assert (req.input_tokens, req.output_tokens) == (int(n_in), int(n_out))


def test_azure_first_gap_matches_timestamps(data_dir: Path) -> None:
    reqs = read_azure(data_dir / "traces" / "azure_llm_2023_code.csv")
    # 18:17:03.9799600 -> 18:17:04.0319600
    assert reqs[1].arrival_s == pytest.approx(0.052, abs=1e-6)


def test_azure_parses_seven_digits_and_midnight(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 23:59:59.9000001,10,2\n"
        "2023-11-17 00:00:00.1000001,20,3\n"
        "2023-11-17 00:00:01,30,4"
    )
    reqs = read_azure(path)
    assert [r.arrival_s for r in reqs] == pytest.approx([0.0, 0.2, 1.1], abs=1e-6)
    assert [r.input_tokens for r in reqs] == [10, 20, 30]
    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,1\n")
    with pytest.raises(ValueError, match="TIMESTAMP"):
        read_azure(bad)


def test_mooncake_real_trace(data_dir: Path) -> None:
    path = data_dir / "traces" / "mooncake_fast25_conversation_trace.jsonl"
    reqs = read_mooncake(path)
    assert len(reqs) == 12031
    assert _non_decreasing([r.arrival_s for r in reqs])
    with open(path) as f:
        raw = [json.loads(next(f)) for _ in range(5)]
    for req, row in zip(reqs[:5], raw, strict=True):
        assert req.arrival_s == row["timestamp"] / 1000.0
        assert (req.input_tokens, req.output_tokens) == (row["input_length"], row["output_length"])
        assert req.hash_ids == tuple(row["hash_ids"])
    # One 512-token block per started 512 tokens of prompt.
    assert all(len(r.hash_ids) == -(-r.input_tokens // 512) for r in reqs[:500])


def test_poisson_rate_and_bounds() -> None:
    reqs = synthetic_trace(rate_rps=20.0, duration_s=500.0, seed=1)
    n = len(reqs)
    # Poisson count: mean 10,000, sd 100; 6 sd cannot flake with a fixed seed anyway.
    assert abs(n - 10_000) < 600
    arrivals = np.array([r.arrival_s for r in reqs])
    assert np.all(np.diff(arrivals) >= 0) and arrivals[-1] < 500.0
    gaps = np.diff(arrivals)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)
    assert len(synthetic_trace(rate_rps=5.0, duration_s=None, max_requests=77)) == 77
    with pytest.raises(ValueError, match="bound"):
        synthetic_trace(rate_rps=5.0, duration_s=None, max_requests=None)


def test_gamma_burstiness() -> None:
    reqs = synthetic_trace(rate_rps=10.0, cv=3.0, duration_s=None, max_requests=20_000, seed=2)
    gaps = np.diff([r.arrival_s for r in reqs])
    assert 1.0 / gaps.mean() == pytest.approx(10.0, rel=0.1)
    assert gaps.std() / gaps.mean() == pytest.approx(3.0, rel=0.15)
