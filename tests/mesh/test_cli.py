"""`flexmesh serve` and `flexmesh generate` as separate processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flexmesh.cli.mesh_commands import parse_balance
from tests.mesh.conftest import free_port

pytestmark = pytest.mark.slow


def _flexmesh(*args: str) -> list[str]:
    return [sys.executable, "-m", "flexmesh.cli.main", *args]


def test_serve_then_generate_and_status(models_dir: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    serve = subprocess.Popen(
        _flexmesh("serve", "--port", str(port), "--models-dir", str(models_dir)),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert serve.stdout is not None
        deadline = time.monotonic() + 180
        line = ""
        while time.monotonic() < deadline and "serving gRPC" not in line:
            line = serve.stdout.readline()
            assert line or serve.poll() is None, "serve exited early"
        assert f"127.0.0.1:{port}" in line
        target = f"127.0.0.1:{port}"
        gen = subprocess.run(
            _flexmesh(
                "generate",
                "hello",
                "--target",
                target,
                "--max-tokens",
                "5",
                "--model",
                "demo-small",
                "--json",
            ),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert gen.returncode == 0, gen.stderr
        meta = json.loads(gen.stdout)
        assert meta["usage"]["completion_tokens"] == 5 and meta["route"]["model"] == "demo-small"
        bad = subprocess.run(
            _flexmesh("generate", "hello", "--target", target, "--max-tokens", "0"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr
        status = subprocess.run(
            _flexmesh("status", "--target", target, "--json"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        names = {w["name"] for w in json.loads(status.stdout)["workers"]}
        assert names == {"worker-demo-large-0", "worker-demo-small-0"}
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            assert serve.wait(timeout=60) == 0
        finally:
            serve.kill()


def test_policy_set_balance_takes_model_and_ratio() -> None:
    assert parse_balance("Qwen2.5-7B-Instruct=1.5") == ("Qwen2.5-7B-Instruct", 1.5)
    with pytest.raises(ValueError, match="MODEL=RATIO"):
        parse_balance("demo-large=lots")
