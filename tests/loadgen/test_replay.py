"""Open-loop replay against an in-process fake gateway: records, summary, reports, plots."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest
from matplotlib.colors import to_hex

from flexmesh.loadgen.plots import ROLE_COLORS, plot_controller, plot_status, write_plots
from flexmesh.loadgen.records import NOT_SENT, ReplayRequest, RequestRecord
from flexmesh.loadgen.replay import replay
from flexmesh.loadgen.report import phase_summaries, summarize, summary_markdown, write_reports
from tests.loadgen.fake_server import CHUNK, fake_server, outcome, route_flags
from tests.loadgen.figures import check_replay_plots, drawn, steps, texts


def _requests(n: int, gap_s: float = 0.004) -> list[ReplayRequest]:
    intents = ("chat", "code", "math")
    return [
        ReplayRequest(i, i * gap_s, f"prompt number {i}", 3, 6 + i % 7, intents[i % 3], 3)
        for i in range(n)
    ]


async def test_replay_records_every_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reqs = _requests(40)
    async with fake_server() as target:
        result = await replay(
            reqs, target, max_in_flight=4, deadline_s=0.4, progress=False, status_interval_s=0.05
        )
    records = result.records
    assert [r.index for r in records] == list(range(40))
    for rec, req in zip(records, reqs, strict=True):
        assert rec.status == outcome(req.index), rec
        assert rec.send_s is not None and rec.end_s is not None and rec.end_s >= rec.send_s
        assert rec.intent == req.intent and rec.arrival_s == req.arrival_s
        if rec.ok:
            assert rec.completion_tokens == req.max_tokens == sum(rec.chunk_tokens)
            assert len(rec.chunk_tokens) == -(-req.max_tokens // CHUNK)
            assert rec.ttft_s == rec.chunk_times_s[0] and rec.ttft_s > 0
            assert list(rec.chunk_times_s) == sorted(rec.chunk_times_s)
            assert rec.route_model in ("demo-small", "demo-large") and rec.finish_reason
            assert rec.tpot_s is not None and rec.tpot_s > 0
            assert (rec.demanding, rec.downgraded) == route_flags(rec.index)
        else:
            assert rec.error and not rec.chunk_tokens
            assert not rec.demanding and not rec.downgraded  # no route info: not demanding
    # Four slots for requests that each take > 10 ms, arriving every 4 ms: sends wait.
    assert max(r.send_delay_s for r in records) > 0.01
    assert result.status_samples and "workers" in result.status_samples[0]
    small = result.status_samples[0]["workers"][0]
    assert small["percentiles"] == {"queue_ms_p99": 3.0, "tpot_ms_p99": 12.5}
    assert (small["decode_step_ms"], small["prefill_ms_per_token"]) == (4.0, 0.25)

    summary = summarize(records, result.wall_s, ttft_slo_ms=100, tpot_slo_ms=50)
    expected = Counter(outcome(i) for i in range(40))
    assert summary["requests_sent"] == 40 and summary["completed"] == expected["OK"]
    assert summary["failed_by_status"] == {k: v for k, v in expected.items() if k != "OK"}
    assert summary["completed"] + sum(summary["failed_by_status"].values()) == 40
    assert summary["output_tokens"] == sum(r.max_tokens for r in reqs if outcome(r.index) == "OK")
    assert summary["ttft_ms"]["p50"] <= summary["ttft_ms"]["p99"] <= summary["e2e_ms"]["max"]
    assert summary["req_s"] > 0 and summary["output_tok_s"] > summary["req_s"]
    assert 0 < summary["goodput_req_s"] <= summary["req_s"]
    mix = summary["route_mix"]
    assert sum(mix["by_model"].values()) == expected["OK"]
    assert set(mix["by_intent"]) == {"chat", "code", "math"}
    # Demanding and downgraded: only finished requests carry a route.
    flags = {i: route_flags(i) for i in range(40) if outcome(i) == "OK" and route_flags(i)[0]}
    n_down = sum(g for _, g in flags.values())
    assert summary["demanding_requests"] == len(flags) and summary["downgraded_requests"] == n_down
    assert 0 < summary["downgrade_fraction"] == round(n_down / len(flags), 4) < 1
    by_intent: dict[str, list[bool]] = {}
    for i, (_, g) in flags.items():
        by_intent.setdefault(reqs[i].intent, []).append(g)
    assert summary["downgrade_fraction_by_intent"] == {
        k: round(sum(v) / len(v), 4) for k, v in sorted(by_intent.items())
    }

    paths = write_reports(tmp_path, records, summary)
    assert json.loads(paths["summary_json"].read_text())["completed"] == expected["OK"]
    assert len(paths["requests"].read_text().splitlines()) == 40
    md = paths["summary_md"].read_text()
    assert "| ttft_ms |" in md and "RESOURCE_EXHAUSTED" in md
    assert f"| downgrade_fraction | {summary['downgrade_fraction']:.3g} |" in md
    assert "| probe said | downgrade fraction |" in md
    figures = drawn(monkeypatch)
    pngs = write_plots(tmp_path, records, result.status_samples, 100, 50)
    assert [p.name for p in pngs] == list(figures) and all(p.is_file() for p in pngs)
    check_replay_plots(figures, records, result.status_samples, 100, 50, max_in_flight=4)


async def test_time_limit_and_unreachable_target() -> None:
    reqs = _requests(10, gap_s=0.2)
    async with fake_server(admin=False) as target:
        # Sends at 0, 0.2, 0.4 and 0.6 s fit in 0.7 s; the other six arrive too late.
        result = await replay(
            reqs, target, 8, max_duration_s=0.7, progress=False, status_interval_s=0.05
        )
    statuses = [r.status for r in result.records]
    assert statuses[:4] == ["OK", "OK", "OK", "RESOURCE_EXHAUSTED"]
    assert statuses[4:] == [NOT_SENT] * 6
    assert result.wall_s < 3.0
    summary = summarize(result.records, result.wall_s)
    assert summary["requests_sent"] == 4 and summary["not_sent"] == 6
    # Nothing listens on port 1: every request fails fast, each with its status.
    down = await replay(_requests(5), "127.0.0.1:1", 2, deadline_s=2.0, progress=False)
    assert [r.status for r in down.records] == ["UNAVAILABLE"] * 5


async def test_nothing_is_sent_once_stopped() -> None:
    reqs = _requests(5, gap_s=2.0)
    stop = asyncio.Event()
    async with fake_server(admin=False) as target:
        asyncio.get_running_loop().call_later(0.5, stop.set)
        result = await replay(reqs, target, 8, progress=False, stop=stop)
    assert [r.status for r in result.records] == ["OK"] + [NOT_SENT] * 4
    assert result.wall_s < 2.0, "the wait for the next arrival (at 2 s) ends with the stop"


def test_plots_without_data_draw_nothing_but_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    figures = drawn(monkeypatch)
    assert [p.name for p in write_plots(tmp_path, [])] == ["latency_cdf.png", "throughput.png"]
    plot_status([], tmp_path / "s.png")
    plot_controller([], [], tmp_path / "c.png")
    said = {
        "latency_cdf.png": ["no TTFT samples", "no TPOT samples", "no E2E latency samples"],
        "throughput.png": ["no requests sent"] * 2,
        "s.png": ["no status samples"] * 2,
        "c.png": ["no TTFT values", "no TPOT values", "", "no prefill budgets",
                  "no routing policy (the mesh does not route)"],
    }  # fmt: skip
    assert {name: ["".join(texts(ax)) for ax in fig.axes] for name, fig in figures.items()} == said
    for fig in figures.values():
        assert not any(ax.get_lines() or ax.collections for ax in fig.axes)


def test_controller_plot_draws_roles_budgets_and_thresholds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def sample(t: float, role: str, budget: int, spill: float, code: str) -> dict[str, object]:
        worker = {"name": "w1", "role": role, "prefill_budget_tokens": budget,
                  "max_batched_tokens": 512}  # fmt: skip
        policy = {"confidence_threshold": 0.3, "spill_queue_ms": spill,
                  "return_queue_ms": spill / 5, "strategies": {"code": code}}  # fmt: skip
        return {"t_s": t, "workers": [worker], "policy": policy}

    figures = drawn(monkeypatch)
    samples = [sample(0, "decode", 512, 500, "pld"), sample(1, "mixed", 256, 250, "none")]
    plot_controller([], samples, tmp_path / "c.png", 3000, 150)
    _, _, roles, budget, thresholds, ms = figures["c.png"].axes
    bars = [to_hex(c.get_facecolor()[0]) for c in roles.collections]
    assert bars == [to_hex(ROLE_COLORS["decode"]), to_hex(ROLE_COLORS["mixed"])]
    assert steps(budget) == {"w1": [512, 256]}
    assert steps(thresholds) == {"confidence threshold": [0.3, 0.3]}
    assert steps(ms) == {"spill_queue_ms": [500, 250], "return_queue_ms": [100, 50]}
    assert [a.get_text() for a in thresholds.texts] == ["code: none"]  # the strategy change


def test_status_plot_draws_each_workers_queue_and_running_requests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    figures = drawn(monkeypatch)
    samples = [
        {
            "t_s": t,
            "in_flight": q + r,
            "workers": [{"name": "w0", "queue_length": q, "running_requests": r}],
        }
        for t, q, r in ((0.0, 0, 1), (0.5, 3, 2), (1.0, 1, 4))
    ]
    plot_status(samples, tmp_path / "s.png")
    queue, running = figures["s.png"].axes
    assert steps(queue) == {"w0": [0, 3, 1], "gateway in flight": [1, 5, 5]}
    assert steps(running) == {"w0": [1, 2, 4]}


def test_phase_summaries_split_requests_by_arrival_and_count_slo_hits() -> None:
    def rec(
        i: int, arrival: float, ttft_s: float, status: str = "OK", flags: str = ""
    ) -> RequestRecord:
        return RequestRecord(
            i, str(i), "code" if i % 2 else "chat", arrival, status, send_s=arrival,
            end_s=arrival + 1, ttft_s=ttft_s, e2e_s=ttft_s + 0.9, completion_tokens=10,
            demanding="D" in flags, downgraded="d" in flags,
        )  # fmt: skip

    records = [
        rec(0, 1, 0.1, flags="D"), rec(1, 5, 3.0, flags="Dd"), rec(2, 12, 0.2),
        rec(3, 15, 0.1, "UNAVAILABLE"), rec(4, 16, 0.1, flags="D"),
    ]  # fmt: skip
    a, b = phase_summaries(records, [("a", 0, 10), ("b", 10, 20)], 1000, 200)
    assert (a["requests"], a["ok"], a["met_slo"]) == (2, 2, 1)
    assert (b["requests"], b["ok"], b["met_slo"]) == (3, 2, 2)
    assert a["goodput_req_s"] == 0.1 and a["ttft_ms"]["max"] == 3000
    assert [a[k] for k in ("demanding_requests", "downgraded_requests")] == [2, 1]
    assert a["downgrade_fraction"] == 0.5
    assert a["downgrade_fraction_by_intent"] == {"chat": 0.0, "code": 1.0}
    assert (b["demanding_requests"], b["downgrade_fraction"]) == (1, 0.0)
    summary = summarize(records, 20.0, 1000, 200)
    assert (summary["demanding_requests"], summary["downgrade_fraction"]) == (3, 0.3333)
    md = summary_markdown({**summary, "by_phase": [a, b]})
    assert "| goodput req/s | TTFT p99 | TPOT p99 | demanding | downgrade fraction |" in md
    a_row, b_row = [line for line in md.splitlines() if line.startswith(("| a |", "| b |"))]
    assert a_row.endswith("| 2 | 0.5 |") and b_row.endswith("| 1 | 0 |")  # demanding, fraction
