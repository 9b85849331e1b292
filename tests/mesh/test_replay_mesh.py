"""A short trace replay against the running demo mesh: every request counted, plots written."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from flexmesh.launch.mesh import Mesh
from flexmesh.loadgen.run import add_replay_arguments, run_replay

pytestmark = pytest.mark.slow


async def test_replay_against_demo_mesh(mesh: Mesh, shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "replay"
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
    assert summary["requests_sent"] > 0
    assert (
        summary["completed"] + sum(summary["failed_by_status"].values()) == summary["requests_sent"]
    )
    assert summary["completed"] == summary["requests_sent"], summary["failed_by_status"]
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert len(records) == summary["requests_sent"]
    assert all(
        r["route_model"] in ("demo-small", "demo-large") and r["route_intent"] for r in records
    )
    for name in ("latency_cdf.png", "throughput.png", "status.png", "controller.png"):
        assert (out / name).stat().st_size > 5000, name
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
