"""`flexmesh bench soak` in miniature on the demo mesh: its report's invariants hold."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from flexmesh.bench.soak_bench import add_soak_arguments, soak
from flexmesh.launch.mesh import Mesh

pytestmark = pytest.mark.slow


async def test_a_short_soak_reports_every_request_and_frees_every_block(
    mesh: Mesh, shared_data: Path, models_dir: Path, tmp_path: Path
) -> None:
    argv = [
        "--trace", str(shared_data / "traces" / "azure_llm_2023_conv.csv"),
        "--prompts-dir", str(shared_data / "prompts"), "--out", str(tmp_path),
        "--capacity-s", "6", "--capacity-streams", "8", "--minutes", "0.15",
        "--max-input-tokens", "128", "--max-output-tokens", "16",
    ]  # fmt: skip
    parser = argparse.ArgumentParser()
    add_soak_arguments(parser)
    args = parser.parse_args(argv)
    actors = {**mesh.actors, "gateway": mesh.gateway}
    r = await soak(args, mesh.address, actors, str(models_dir / "demo-large"), 256)
    assert r["capacity_req_s"] > 0 and r["requests"] > 0
    assert r["requests"] == r["ok"] + r["resource_exhausted"] + sum(r["other"].values())
    assert r["hung_streams"] == 0 and r["crashes"] == 0 and r["kv_all_free"]
    assert set(r["rss_mb_end"]) == set(actors) and all(r["rss_mb_end"].values())
