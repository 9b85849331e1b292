"""Interleaved benchmark rounds (`flexmesh.bench.rounds`, `serving.run_rounds`): the order the
configurations run in, each figure's median and spread, and ratios worked out per round, from
hand-made summaries (no mesh is started)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from flexmesh.bench.rounds import cell, fold, median, rounds_report, span


def summary(tok_s: float, ttft_p99: float, goodput: float, phases: tuple[float, ...] = ()) -> Any:
    """The parts of a replay summary the side-by-side tables read."""
    lat = {"p50": ttft_p99 / 2, "p99": ttft_p99, "mean": ttft_p99 / 3}
    return {
        "completed": 10, "failed": 0, "requests_sent": 10, "failed_by_status": {},
        "output_tok_s": tok_s, "req_s": tok_s / 10, "goodput_req_s": goodput,
        "ttft_ms": lat, "tpot_ms": dict(lat), "e2e_ms": dict(lat),
        "route_mix": {"by_model": {"demo-large": 10}, "probe_agreement": None},
        "by_phase": [{"phase": f"p{i}", "goodput_req_s": g} for i, g in enumerate(phases)],
        "files": [f"out/{tok_s}/summary.json"],
    }  # fmt: skip


ROUNDS = [
    {"a": summary(100.0, 900.0, 1.0, (0.5, 2.0)), "b": summary(200.0, 450.0, 1.5, (1.0, 2.0))},
    {"a": summary(50.0, 1200.0, 0.5, (0.2, 1.0)), "b": summary(150.0, 600.0, 1.0, (0.6, 1.0))},
    {"a": summary(80.0, 600.0, 0.0, (0.4, 1.5)), "b": summary(120.0, 500.0, 0.5, (0.8, 3.0))},
]
"""Three rounds of two configurations: b's tokens/s is 2, 3 and 1.5 x a's, so the median of the
per-round ratios (2.0) differs from the ratio of the medians (150 / 80); a's goodput is zero in
the last round (no ratio there)."""


def test_each_figure_is_its_median_over_the_rounds_with_min_and_max() -> None:
    r = rounds_report(ROUNDS)
    assert r["rounds"] == 3 and list(r["configs"]) == ["a", "b"]
    a, b = r["configs"]["a"], r["configs"]["b"]
    assert (a["output_tok_s"], b["output_tok_s"]) == (80.0, 150.0)
    assert a["ttft_ms"] == {"p50": 450.0, "p99": 900.0, "mean": 300.0}
    assert [p["goodput_req_s"] for p in b["by_phase"]] == [0.8, 2.0]
    assert b["by_phase"][1]["phase"] == "p1"  # labels the rounds agree on stay
    assert a["route_mix"]["by_model"] == {"demo-large": 10}
    assert a["files"][0] == [f"out/{x}/summary.json" for x in (100.0, 50.0, 80.0)]
    spread = r["spread"]["configs"]
    assert spread["a"]["output_tok_s"] == [50.0, 100.0]
    assert spread["b"]["ttft_ms"]["p99"] == [450.0, 600.0]
    assert "files" not in spread["a"] and "phase" not in spread["a"]["by_phase"][0]
    assert r["samples"]["a"] == [run["a"] for run in ROUNDS]  # the raw rounds stay


def test_ratios_are_taken_within_each_round_then_reduced() -> None:
    r = rounds_report(ROUNDS)
    assert r["ratios"]["output_tok_s"] == {"a": 1.0, "b": 2.0}  # not 150 / 80
    assert r["spread"]["ratios"]["output_tok_s"]["b"] == [1.5, 3.0]
    # goodput: b / a is 1.5 and 2.0; the round where a's is zero has no ratio
    assert r["ratios"]["goodput_req_s"]["b"] == 1.75
    assert r["spread"]["ratios"]["goodput_req_s"]["b"] == [1.5, 2.0]


def test_extra_rows_are_worked_out_per_round() -> None:
    from flexmesh.bench.pd_bench import pd_rows
    from flexmesh.bench.policy_bench import policy_rows

    runs = [
        {k: {**s, "idle": {"ttft_ms": idle, "kv_transport": "shm"}} for (k, s), idle in
         zip(run.items(), pair, strict=True)}
        for run, pair in zip(ROUNDS, ((100.0, 150.0), (200.0, 200.0), (100.0, 130.0)), strict=True)
    ]  # fmt: skip
    r = rounds_report(runs, pd_rows)
    rows, spread = r["extra_rows"], r["spread"]["extra_rows"]
    assert rows["idle 512-token TTFT ms"] == {"a": 100.0, "b": 150.0}
    assert rows["idle TTFT x first config"]["b"] == 1.3  # 1.5, 1.0, 1.3
    assert rows["TTFT p99 x a"]["b"] == 0.5  # 0.5, 0.5, 0.8333
    assert spread["TTFT p99 x a"]["b"] == [0.5, 0.8333]
    assert rows["output tok/s x b"]["a"] == 0.5  # 0.5, 0.3333, 0.6667
    assert rows["goodput req/s, p1"] == {"a": 1.5, "b": 2.0}
    assert r["configs"]["a"]["idle"] == {"ttft_ms": 100.0, "kv_transport": "shm"}
    policy = rounds_report(ROUNDS, policy_rows)["extra_rows"]
    assert policy["goodput x first config"] == {"a": 1.0, "b": 1.75}


def test_fold_leaves_out_missing_and_nan_figures() -> None:
    rounds = [{"x": 1.0, "y": math.nan}, {"x": None, "y": math.nan}, {"x": 3.0}]
    assert fold(rounds, median, keep_other=True) == {"x": 2.0, "y": None}
    assert fold(rounds, span, keep_other=False) == {"x": [1.0, 3.0]}
    assert fold([[1, 2], [3]], median, keep_other=True) == [[1, 2], [3]]  # unequal lists
    assert fold([True, True], median, keep_other=True) is True
    assert fold([True, False], median, keep_other=False) is None


def test_a_cell_shows_the_median_and_the_spread() -> None:
    assert cell(2.0, [1.5, 3.0]) == "2.00 (1.50–3.00)"
    assert cell(2.0, [2.0, 2.0]) == "2.00"  # the rounds agree (or there was one)
    assert cell(None, None) == "-"


def test_rounds_run_interleaved_on_fresh_meshes_into_their_own_folders(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from flexmesh.bench import serving

    started: list[str] = []

    def each_mesh(configs: str, models_dir: str | None, load: Any = None) -> Any:
        for name in configs.split(","):
            started.append(name)
            yield name, None, {}, f"mesh {len(started)}"

    monkeypatch.setattr(serving, "each_mesh", each_mesh)
    calls: list[tuple[str, str, Path]] = []

    def run_one(name: str, cfg: Any, paths: Any, mesh: str, out: Path) -> dict[str, Any]:
        calls.append((name, mesh, out))
        return {**summary(10.0 * len(calls), 100.0, 1.0), "mesh": mesh}

    runs = serving.run_rounds("a,b,c", None, 2, tmp_path, run_one)
    assert [c[0] for c in calls] == ["a", "b", "c", "a", "b", "c"]
    assert len({c[1] for c in calls}) == 6  # a fresh mesh every time
    assert [c[2] for c in calls[:4]] == [
        tmp_path / "a" / "round-1", tmp_path / "b" / "round-1", tmp_path / "c" / "round-1",
        tmp_path / "a" / "round-2",
    ]  # fmt: skip
    assert [list(run) for run in runs] == [["a", "b", "c"]] * 2
    assert runs[1]["b"]["output_tok_s"] == 50.0
    with pytest.raises(ValueError, match="rounds"):
        serving.run_rounds("a", None, 0, tmp_path, run_one)


def test_the_tables_say_median_spread_and_rounds(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from flexmesh.bench.serving import print_serving_table
    from flexmesh.bench.strategies_bench import strategies_report
    from flexmesh.cli.bench import print_strategies_table

    monkeypatch.setenv("COLUMNS", "300")
    print_serving_table(rounds_report(ROUNDS))
    out = capsys.readouterr().out
    assert "median (min–max) of 3 interleaved rounds" in out
    assert "150.00 (120.00–200.00), 2.00 (1.50–3.00)×" in out

    def st(tok_s: float, acc: float | None, same: bool = True) -> dict[str, Any]:
        return {"tok_s": tok_s, "acceptance": acc, "identical_to_none": same}

    runs = [
        {"none": st(10.0, None), "pld": st(20.0, 0.5), "spec": st(15.0, 0.4)},
        {"none": st(5.0, None), "pld": st(15.0, 0.7), "spec": st(6.0, 0.6)},
        {"none": st(8.0, None), "pld": st(12.0, 0.6), "spec": st(8.0, 0.5, False)},
    ]  # fmt: skip
    report = strategies_report(runs, 16)
    assert (report["none_tok_s"], report["pld_tok_s"], report["pld_acceptance"]) == (8.0, 15.0, 0.6)
    assert report["ratio_pld"] == 2.0 and report["spread"]["ratio_pld"] == [1.5, 3.0]
    assert report["none_acceptance"] is None
    assert report["pld_identical_to_none"] and not report["spec_identical_to_none"]
    print_strategies_table(report, 16)
    out = " ".join(capsys.readouterr().out.split())  # the title wraps at the table's width
    assert "of 3 interleaved rounds" in out and "2.00 (1.50–3.00)" in out


def test_a_missing_figure_prints_as_a_dash_and_stays_null_in_the_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A configuration where nothing completed has no percentiles and no tokens/s: its cells
    and their ratios print as `-`, never as 0.00, and the report keeps them as null."""
    import json

    from flexmesh.bench.serving import print_serving_table

    def empty() -> Any:
        s = summary(0.0, 0.0, 0.0)
        for m in ("ttft_ms", "tpot_ms", "e2e_ms"):
            s[m] = dict.fromkeys(s[m])
        s.update(completed=0, output_tok_s=None, req_s=None, goodput_req_s=None)
        s["route_mix"] = {"by_model": {}, "probe_agreement": None}
        return s

    report = rounds_report([{"a": summary(100.0, 900.0, 1.0), "b": empty()} for _ in range(2)])
    assert report["configs"]["b"]["ttft_ms"]["p99"] is None
    assert json.loads(json.dumps(report))["configs"]["b"]["output_tok_s"] is None
    monkeypatch.setenv("COLUMNS", "300")
    print_serving_table(report)
    out = capsys.readouterr().out
    rows = {line.split("│")[1].strip(): line.split("│")[3].strip() for line in out.splitlines()
            if line.count("│") == 4}  # fmt: skip
    for label in ("output tok/s", "req/s", "ttft_ms p50", "ttft_ms p99", "TPOT mean ms"):
        assert rows[label] == "-", (label, rows[label])
    assert "probe agrees with the label -" in out and "None" not in out
