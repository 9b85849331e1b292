"""`flexmesh bench soak` in miniature on the demo mesh: its report's invariants hold."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import pytest

from flexmesh.bench.soak_bench import add_soak_arguments, soak
from flexmesh.launch.mesh import Mesh
from flexmesh.loadgen.records import NOT_SENT
from tests.loadgen.figures import read_records

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
    # The report counts the soak window's own requests, as its replay recorded them one by one
    # (not the capacity run's, which wrote to a folder of its own).
    records = read_records(tmp_path / "soak" / "requests.jsonl")
    statuses = Counter(rec.status for rec in records if rec.status != NOT_SENT)
    ok, refused = statuses.pop("OK", 0), statuses.pop("RESOURCE_EXHAUSTED", 0)
    assert ok > 0 and (r["ok"], r["resource_exhausted"], r["other"]) == (ok, refused, statuses)
    assert r["requests"] == ok + refused + sum(statuses.values())
    assert r["hung_streams"] == 0
    capacity = json.loads((tmp_path / "capacity" / "summary.json").read_text())
    assert r["capacity_req_s"] == pytest.approx(capacity["req_s"], abs=1e-3) and capacity["req_s"]
    assert r["crashes"] == 0 and r["kv_all_free"]
    workers = {name for name in mesh.actors if name.startswith("worker-")}
    assert r["kv_blocks_used_after_drain"] == dict.fromkeys(workers, 0)
    assert set(r["rss_mb_end"]) == set(actors) and all(r["rss_mb_end"].values())
