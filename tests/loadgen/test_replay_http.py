"""`loadgen replay` against an OpenAI-compatible HTTP server (FlexMesh's own API over fake
workers): records, FlexMesh's route, HTTP errors as status names; a trace alone is enough (the
prompts come from the tokenizer's vocabulary, the tokenizer from the server's `/v1/models`)."""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from flexmesh.loadgen.records import ReplayRequest
from flexmesh.loadgen.replay import replay
from flexmesh.loadgen.run import add_replay_arguments, run_replay
from flexmesh.meshcore.config import GatewayConfig, MeshConfig, ModelSpec
from flexmesh.services.core.frontend import Frontend
from flexmesh.services.http import OpenAIServer, serve_http
from tests.loadgen.test_cli import _azure
from tests.mesh.fake_worker import FakeWorker


@pytest.fixture
async def target(tokenizer_dir: Path) -> AsyncIterator[str]:
    """http://HOST:PORT of a FlexMesh HTTP API over one fake worker of model "ok"."""
    gw = GatewayConfig(port=0)
    worker = FakeWorker("w-ok", "ok", tokens=2, gate="last")
    worker.go.set()
    frontend = Frontend(MeshConfig(models=(ModelSpec(name="ok"),), gateway=gw), {"ok": [worker]})
    api = OpenAIServer(frontend, lambda m, msgs: "", model_paths={"ok": str(tokenizer_dir)})
    server, port = await serve_http(api, gw, 0)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True


def _requests(n: int) -> list[ReplayRequest]:
    return [ReplayRequest(i, 0.01 * i, f"prompt {i}", 2, 2, "chat") for i in range(n)]


async def test_a_replay_over_http_records_tokens_route_and_usage(target: str) -> None:
    result = await replay(_requests(6), target, 3, model="ok", progress=False, keep_token_ids=True)
    assert [r.status for r in result.records] == ["OK"] * 6
    for r in result.records:
        assert r.token_ids == (0, 1) and r.completion_tokens == 2 and r.chunk_tokens == (1, 1)
        assert r.route_model == "ok" and r.route_worker == "w-ok" and r.finish_reason == "length"
        assert r.ttft_s is not None and r.server_total_ms is not None


async def test_http_errors_become_status_names(target: str) -> None:
    result = await replay(_requests(2), target, 2, model="gpt-4", progress=False)
    assert {r.status for r in result.records} == {"NOT_FOUND"}
    assert "gpt-4" in result.records[0].error
    result = await replay(_requests(1), "http://127.0.0.1:9", 1, progress=False)  # nothing there
    assert result.records[0].status == "UNAVAILABLE"


async def test_a_trace_alone_replays(target: str, tmp_path: Path, tokenizer_dir: Path) -> None:
    out = tmp_path / "out"
    argv = [
        "--trace", str(_azure(tmp_path, 8)), "--target", target, "--out", str(out),
        "--model", "ok", "--speedup", "20", "--max-input-tokens", "64",
        "--max-output-tokens", "2", "--no-progress",
    ]  # fmt: skip
    args = add_replay_arguments(argparse.ArgumentParser()).parse_args(argv)
    summary = await run_replay(args)  # no --prompts-dir, no --tokenizer
    assert args.tokenizer == str(tokenizer_dir)  # read from the server's /v1/models
    assert summary["completed"] == 8 and summary["target"] == target
    rows = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(r["status"] == "OK" for r in rows)


def test_vocabulary_prompts_hit_their_lengths(tokenizer: Any) -> None:
    from flexmesh.loadgen.prompts import VocabularyPool
    from flexmesh.loadgen.shaping import Workload
    from flexmesh.loadgen.synth import synthesize
    from flexmesh.loadgen.traces import TraceRequest

    reqs = tuple(TraceRequest(i * 0.1, n, 3) for i, n in enumerate([1, 2, 5, 40, 300, 900]))
    out = synthesize(Workload(reqs), {"chat": 1.0}, VocabularyPool(tokenizer), seed=1)
    for r, src in zip(out, reqs, strict=True):
        n = len(tokenizer.encode(r.prompt, add_special_tokens=False))
        assert n == r.prompt_tokens and n >= 1 and abs(n - src.input_tokens) <= 2
