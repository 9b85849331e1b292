"""ServeGen synthesis: window rates reproduced, spans and bounds honoured, PMFs parsed safely."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import numpy as np
import pytest

from flexmesh.loadgen.servegen import (
    WINDOW_S,
    ClientWindow,
    LengthDists,
    client_window_arrivals,
    read_client_windows,
    synthesize_servegen,
)

R1 = "servegen_reason_deepseek-r1_client_windows.csv.gz"
R1_LENGTHS = "servegen_reason_deepseek-r1_client_length_dists.jsonl.gz"


def test_each_window_holds_its_rate(data_dir: Path) -> None:
    windows = read_client_windows(data_dir / "traces" / R1, 0, 4 * 3600)
    assert len(windows) > 100
    for w in windows:
        t = client_window_arrivals(w, 1.0, seed=0)
        # Stochastic rounding of rate x 600: the count is within one of its expectation.
        assert abs(len(t) - w.rate_rps * WINDOW_S) < 1.0 + 1e-9
        assert np.all(np.diff(t) >= 0)
        assert np.all((t >= w.window_start_s) & (t < w.window_start_s + WINDOW_S))


def test_burstiness_follows_fitted_distribution(data_dir: Path) -> None:
    windows = read_client_windows(
        data_dir / "traces" / "servegen_language_m-small_client_windows.csv.gz", 0, 86400
    )
    busy = [w for w in windows if w.rate_rps * WINDOW_S > 3000 and 0.5 < w.cv < 2.0][:20]
    assert busy
    for w in busy:
        gaps = np.diff(client_window_arrivals(w, 1.0, seed=0))
        assert gaps.std() / gaps.mean() == pytest.approx(w.cv, rel=0.3), w


def test_span_rate_scale_and_max_requests(data_dir: Path) -> None:
    path = data_dir / "traces" / R1
    start, dur = 3600.0, 1800.0
    reqs = synthesize_servegen(path, start_s=start, duration_s=dur, seed=3)
    windows = read_client_windows(path, start, start + dur)
    expected = sum(w.rate_rps * WINDOW_S for w in windows)
    # Each (client, window) count is within one of rate x 600, and the span is whole windows.
    assert abs(len(reqs) - expected) <= len(windows)
    arrivals = [r.arrival_s for r in reqs]
    assert arrivals == sorted(arrivals) and start <= arrivals[0] and arrivals[-1] < start + dur
    half = synthesize_servegen(path, start_s=start, duration_s=dur, rate_scale=0.5, seed=3)
    assert abs(len(half) - expected / 2) <= len(windows)
    first = synthesize_servegen(path, start_s=start, duration_s=dur, max_requests=100, seed=3)
    assert [r.arrival_s for r in first] == arrivals[:100]


def test_huge_pool_stays_fast(data_dir: Path) -> None:
    began = time.monotonic()
    reqs = synthesize_servegen(
        data_dir / "traces" / "servegen_language_m-mid_client_windows.csv.gz",
        start_s=12 * 3600,
        max_requests=5000,
    )
    assert len(reqs) == 5000
    assert time.monotonic() - began < 20.0
    assert all(r.input_tokens == 256 and r.output_tokens == 64 for r in reqs)  # no PMF file


def test_lengths_come_from_client_pmfs(data_dir: Path) -> None:
    traces = data_dir / "traces"
    reqs = synthesize_servegen(traces / R1, traces / R1_LENGTHS, duration_s=3600, seed=0)
    ins = np.array([r.input_tokens for r in reqs])
    outs = np.array([r.output_tokens for r in reqs])
    assert ins.min() >= 1 and outs.min() >= 1
    # The data README gives the pool's rate-weighted medians: input 208, output 792 (1 day).
    assert 50 < np.median(ins) < 1000 and 200 < np.median(outs) < 3000
    pmf = LengthDists(traces / R1_LENGTHS).for_client(0, 0.0)
    assert pmf is not None
    n_in, _ = pmf.sample(np.random.default_rng(0), 500)
    assert set(n_in.tolist()) <= set(pmf.inputs[0].astype(int).tolist())


def _lengths_file(path: Path, windows: dict[str, dict[str, str]], client: int = 0) -> Path:
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"client_id": client, "windows": windows}) + "\n")
    return path


def test_length_windows_pairing_and_empty_skipped(tmp_path: Path) -> None:
    path = _lengths_file(
        tmp_path / "l.jsonl.gz",
        {
            "0": {"input_tokens": "{10: 1.0}", "output_tokens": "{5: 1.0}"},
            "21600": {"input_tokens": "{}", "output_tokens": "{7: 1.0}"},
            "43200": {"input_tokens": "{30: 0.5, 40: 0.5}", "output_tokens": "{9: 1.0}"},
        },
    )
    dists = LengthDists(path)
    rng = np.random.default_rng(0)
    assert dists.for_client(0, 30000.0).sample(rng, 3)[0].tolist() == [10, 10, 10]
    assert set(dists.for_client(0, 50000.0).sample(rng, 50)[0].tolist()) == {30, 40}
    # A client without PMFs borrows the pool mixture.
    assert dists.for_client(99, 0.0).sample(rng, 2)[1].tolist() == [5, 5]


def test_pmf_strings_are_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = _lengths_file(
        tmp_path / "evil.jsonl.gz",
        {"0": {"input_tokens": f"{{__import__('os').system('touch {marker}'): 1.0}}",
               "output_tokens": "{1: 1.0}"}},
    )  # fmt: skip
    with pytest.raises(ValueError):
        LengthDists(path).for_client(0, 0.0)
    assert not marker.exists()


def test_unknown_family_falls_back_to_cv() -> None:
    w = ClientWindow(1, 0.0, 5.0, 1.0, "Lognormal", 0.0, 0.0)
    assert len(client_window_arrivals(w, 1.0, seed=1)) == 3000
