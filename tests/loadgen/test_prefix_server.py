"""The server's prefix-cache figures over a replay: the growth of its workers' counters between
the first and last status sample, read from a gateway's `Admin/GetStatus`, in the summary and
its reports."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc

from flexmesh.loadgen.prefix import references_line, server_prefix_figures
from flexmesh.loadgen.records import RequestRecord
from flexmesh.loadgen.replay import ReplayResult
from flexmesh.loadgen.report import summary_markdown
from flexmesh.loadgen.run import add_replay_arguments, summarize_replay, with_bookends
from flexmesh.loadgen.status import fresh_status_sample, status_sample
from flexmesh.v1 import flexmesh_pb2, flexmesh_pb2_grpc


def _worker(name: str, hit: float, queried: float, computed: int, evictions: float = 0.0) -> dict:
    cache = {"hit_tokens": hit, "queried_tokens": queried, "evictions": evictions}
    return {"name": name, "prefix_cache": cache, "prompt_tokens_computed": computed}


def _sample(*workers: dict[str, Any]) -> dict[str, Any]:
    return {"t_s": 0.0, "workers": list(workers)}


def test_hit_rate_is_the_growth_over_the_replay_summed_over_workers() -> None:
    first = _sample(_worker("w0", 100, 400, 1000), _worker("w1", 0, 0, 50))
    middle = _sample(_worker("w0", 150, 500, 1100))  # only the bookends count
    last = _sample(
        _worker("w0", 420, 1040, 1600, evictions=3), _worker("w1", 120, 360, 450, evictions=1)
    )
    got = server_prefix_figures([first, middle, last], prompt_tokens=1600)
    assert got == {
        "workers": 2,
        "hit_tokens": 320 + 120,
        "queried_tokens": 640 + 360,
        "hit_rate": round(440 / 1000, 4),
        "prompt_tokens": 1600,
        "hit_rate_of_prompt_tokens": round(440 / 1600, 4),
        "evictions": 4,
        "prompt_tokens_computed": {"w0": 600, "w1": 400},
        "prompt_tokens_computed_total": 1000,
    }
    line = references_line(
        {"ideal_hit_rate": 0.5, "lru_hit_rate": 0.3, "lru_capacity_tokens": 64}, got
    )
    assert line == (
        "prefix hit rate references: ideal 0.500, LRU of 64 KV tokens 0.300; server 0.275 of "
        "prompt tokens (0.440 of queried), prompt tokens computed w0 600, w1 400"
    )


def test_a_restarted_worker_a_worker_that_joined_and_a_cache_that_is_off() -> None:
    first = _sample(_worker("w0", 500, 900, 5000), _worker("gone", 10, 10, 10))
    last = _sample(_worker("w0", 40, 80, 300), _worker("new", 99, 99, 99))
    got = server_prefix_figures([first, last], prompt_tokens=400)
    assert got is not None and got["workers"] == 1  # only workers in both samples count
    # w0 restarted (its counters fell): what it counted since is the growth.
    assert (got["hit_tokens"], got["queried_tokens"]) == (40, 80)
    assert got["prompt_tokens_computed"] == {"w0": 300}
    off = {"name": "w0", "prefix_cache": {}}  # cache off; a server without the computed field
    got = server_prefix_figures([_sample(off), _sample(off)], prompt_tokens=400)
    assert got is not None and got["hit_rate"] is None and got["hit_rate_of_prompt_tokens"] is None
    assert got["prompt_tokens_computed"] is None and got["prompt_tokens_computed_total"] is None
    assert server_prefix_figures([_sample(off)], prompt_tokens=400) is None
    assert references_line(None, got).endswith("; server - of prompt tokens (- of queried)")


class _Admin(flexmesh_pb2_grpc.AdminServicer):
    """Counters that grow with every call; remembers whether calls asked for cached reports."""

    def __init__(self) -> None:
        self.cached: list[bool] = []

    async def GetStatus(self, request: Any, context: Any) -> flexmesh_pb2.GetStatusResponse:
        self.cached.append(request.cached)
        n = len(self.cached)
        worker = flexmesh_pb2.WorkerStatus(
            name="worker-demo-large-0",
            model="demo-large",
            prefix_cache={"hit_tokens": 32.0 * n, "queried_tokens": 64.0 * n, "hit_rate": 0.5},
            prompt_tokens_computed=100 * n,
        )
        return flexmesh_pb2.GetStatusResponse(workers=[worker])


async def test_fresh_samples_read_every_worker_now_and_carry_the_counters() -> None:
    server = grpc.aio.server()
    admin = _Admin()
    flexmesh_pb2_grpc.add_AdminServicer_to_server(admin, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        first = await fresh_status_sample(f"127.0.0.1:{port}")
        last = await fresh_status_sample(f"127.0.0.1:{port}")
    finally:
        await server.stop(grace=None)
    assert admin.cached == [False, False]
    assert first is not None and last is not None
    w = first["workers"][0]
    assert w["prefix_cache"] == {"hit_tokens": 32.0, "queried_tokens": 64.0, "hit_rate": 0.5}
    assert w["prompt_tokens_computed"] == 100
    got = server_prefix_figures([first, last], prompt_tokens=64)
    assert got is not None and (got["hit_rate"], got["hit_rate_of_prompt_tokens"]) == (0.5, 0.5)
    assert await fresh_status_sample("127.0.0.1:1", timeout_s=0.5) is None  # unreachable


def test_status_sample_of_a_worker_without_the_computed_field() -> None:
    # A server older than `prompt_tokens_computed` (or the simulator's status).
    old = SimpleNamespace(
        name="w", model="m", role="mixed", alive=True, queue_length=0, running_requests=0,
        kv_blocks_used=0, kv_blocks_total=0, tokens_generated=0, prefill_budget_tokens=0,
        max_batched_tokens=0, queue_delay_ms=0.0, tpot_ms=0.0, decode_step_ms=0.0,
        prefill_ms_per_token=0.0, percentiles={}, prefix_cache={"hit_tokens": 16.0},
    )  # fmt: skip
    (w,) = status_sample(0, 0, 0, [old])["workers"]
    assert w["prefix_cache"] == {"hit_tokens": 16.0} and w["prompt_tokens_computed"] == 0


def test_the_summary_and_its_report_carry_the_server_figures(tmp_path: Path) -> None:
    records = tuple(
        RequestRecord(i, f"r{i}", "chat", 0.0, "OK", send_s=0.0, end_s=1.0, ttft_s=0.1,
                      e2e_s=1.0, prompt_tokens=200, completion_tokens=4)
        for i in range(2)
    )  # fmt: skip
    during = _sample(_worker("w0", 16, 32, 10))
    result = ReplayResult(records, 1.0, 0.0, "t", 4, (during,))
    result = with_bookends(
        result, _sample(_worker("w0", 0, 0, 0)), _sample(_worker("w0", 160, 320, 240))
    )
    assert [s["t_s"] for s in result.status_samples] == [0.0, 0.0, 1.0]
    args = add_replay_arguments(argparse.ArgumentParser()).parse_args(
        ["--format", "poisson", "--out", str(tmp_path)]
    )
    summary = summarize_replay(args, result, {"prefix_reference": None})
    server = summary["prefix_server"]
    assert server["hit_rate_of_prompt_tokens"] == 0.4 and server["prompt_tokens"] == 400
    assert server["prompt_tokens_computed"] == {"w0": 240}
    text = summary_markdown(summary)
    assert "Prefix hit rate references: ideal -, LRU of - KV tokens -; server 0.400" in text
    assert "computed w0 240" in text
    assert with_bookends(result, None, None).status_samples == result.status_samples
