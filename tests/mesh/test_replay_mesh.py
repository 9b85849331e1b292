"""A short trace replay against the running demo mesh: every request served in full, and plots
of what was served."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from flexmesh.launch.mesh import Mesh
from flexmesh.loadgen.run import add_replay_arguments, run_replay
from tests.loadgen.figures import check_replay_plots, drawn, read_records, read_samples

pytestmark = pytest.mark.slow


async def test_replay_against_demo_mesh(
    mesh: Mesh, shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "replay"
    figures = drawn(monkeypatch)
    argv = [
        "--trace", str(shared_data / "traces" / "azure_llm_2023_code.csv"), "--format", "azure",
        "--duration", "20", "--rate-scale", "0.3", "--max-requests", "12",
        "--max-input-tokens", "256", "--max-output-tokens", "16", "--length-mode", "clip",
        "--intent-mix", "code=0.4,math=0.2,knowledge_qa=0.2,chat=0.2",
        "--prompts-dir", str(shared_data / "prompts"),
        "--tokenizer", f"{mesh.config.models_dir}/demo-large",
        "--target", mesh.address, "--out", str(out), "--status-interval-s", "0.5", "--no-progress",
    ]  # fmt: skip
    summary = await run_replay(add_replay_arguments(argparse.ArgumentParser()).parse_args(argv))
    records = read_records(out / "requests.jsonl")
    assert 0 < summary["requests_sent"] == len(records) <= 12
    assert summary["completed"] == summary["requests_sent"], summary["failed_by_status"]
    # Past end-of-sequence (the replay's ignore_eos): each request streams the trace's output
    # length, clipped to 16, every token of it.
    for rec in records:
        assert rec.ok and 0 < rec.completion_tokens == rec.max_tokens <= 16, rec
        assert sum(rec.chunk_tokens) == rec.completion_tokens and rec.finish_reason == "length"
        assert rec.route_model in ("demo-small", "demo-large") and rec.route_intent
    assert summary["output_tokens"] == sum(rec.max_tokens for rec in records)
    samples = read_samples(out / "status.jsonl")
    assert samples and all(s["workers"] for s in samples)
    check_replay_plots(figures, records, samples, 2000.0, 200.0, max_in_flight=64)
    assert json.loads((out / "summary.json").read_text())["completed"] == summary["completed"]


@pytest.mark.parametrize("api", ["grpc", "http"])
async def test_a_mooncake_window_alone_replays_valid_requests(
    mesh: Mesh, shared_data: Path, tmp_path: Path, api: str
) -> None:
    """A Mooncake window scaled to 512 prompt tokens, with no prompts and no tokenizer given
    (random vocabulary prompts; the tokenizer read from the target): nothing refused."""
    target = mesh.address if api == "grpc" else f"http://{mesh.http_address}"
    argv = [
        "--trace", str(shared_data / "traces" / "mooncake_fast25_conversation_trace.jsonl"),
        "--duration", "30", "--max-requests", "16", "--speedup", "4",
        "--max-input-tokens", "512", "--max-output-tokens", "8", "--model", "demo-small",
        "--target", target, "--out", str(tmp_path / api), "--no-progress",
    ]  # fmt: skip
    args = add_replay_arguments(argparse.ArgumentParser()).parse_args(argv)
    summary = await run_replay(args)
    assert args.tokenizer == f"{mesh.config.models_dir}/demo-small"
    assert summary["requests_sent"] == 16
    assert summary["completed"] == 16, summary["failed_by_status"]
