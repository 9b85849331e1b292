"""Several Ray nodes on this machine (`ray.cluster_utils.Cluster`): demo-large's prefill and
decode workers spread over two nodes hand KV over across them with HF's greedy tokens, and when
the decode worker's node is lost mid-stream the mesh keeps serving on the rest and says so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.mesh.multinode_scenario import MODEL
from tests.runner.conftest import hf_greedy

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def seen(models_dir: Path) -> dict[str, Any]:
    run = subprocess.run(
        [sys.executable, "-m", "tests.mesh.multinode_scenario", str(models_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _greedy_as_hf(models_dir: Path, result: dict[str, Any]) -> bool:
    expected = hf_greedy(str(models_dir / MODEL), tuple(result["prompt"]), len(result["tokens"]))
    return result["gaps"] == 0 and result["tokens"] == expected


def test_spread_workers_sit_on_different_nodes(seen: dict[str, Any]) -> None:
    prefill, decode = (seen["placement"][f"worker-{MODEL}-{i}"] for i in (0, 1))
    assert prefill != decode
    assert {prefill, decode} == set(seen["nodes"]["workers"])  # the nodes with the `pool`
    assert seen["placement"]["gateway"] == seen["nodes"]["head"]  # beside the driver


def test_a_cross_node_hand_off_gives_hf_greedy_tokens(
    seen: dict[str, Any], models_dir: Path
) -> None:
    for result in seen["before"]:
        route = result["route"]
        assert route["prefill_worker"] == f"worker-{MODEL}-0"
        assert route["worker"] == f"worker-{MODEL}-1"
        assert route["kv_transport"] == "gloo cross-node"  # CPU: gloo over TCP across nodes
        assert _greedy_as_hf(models_dir, result)


def test_losing_a_node_mid_stream_keeps_serving_and_shows_the_loss(
    seen: dict[str, Any], models_dir: Path
) -> None:
    during = seen["during"]
    assert during["route"]["migrations"] == 1  # resumed on the node left
    assert during["route"]["worker"] == f"worker-{MODEL}-0"
    assert _greedy_as_hf(models_dir, during)
    assert _greedy_as_hf(models_dir, seen["after"])  # and new requests are served
    alive = {w["name"]: w["alive"] for w in seen["status"]}
    assert alive == {f"worker-{MODEL}-0": True, f"worker-{MODEL}-1": False}
