"""`loadgen replay` options end to end: trace file -> prompts -> fake gateway -> reports."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from flexmesh.cli.loadgen import print_summary
from flexmesh.loadgen.run import add_replay_arguments, prepare, run_replay
from tests.loadgen.fake_server import fake_server, outcome, route_flags
from tests.loadgen.figures import check_replay_plots, drawn, read_records, read_samples


def _parse(argv: list[str]) -> argparse.Namespace:
    return add_replay_arguments(argparse.ArgumentParser()).parse_args(argv)


def _azure(tmp_path: Path, n: int = 24) -> Path:
    path = tmp_path / "mini_azure.csv"
    rows = [
        f"2023-11-16 18:17:{i // 10:02d}.{i % 10}000000,{50 + 37 * i},{4 + i % 9}" for i in range(n)
    ]
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(rows))
    return path


async def test_run_replay_writes_everything(
    tmp_path: Path,
    tokenizer_dir: Path,
    prompts_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    figures = drawn(monkeypatch)
    async with fake_server() as target:
        args = _parse(
            [
                "--trace", str(_azure(tmp_path)), "--target", target, "--out", str(out),
                "--speedup", "10", "--max-input-tokens", "300", "--max-output-tokens", "12",
                "--intent-mix", "code=0.5,chat=0.5", "--prompts-dir", str(prompts_dir),
                "--tokenizer", str(tokenizer_dir), "--max-in-flight", "4", "--seed", "3",
                "--deadline-s", "0.5", "--status-interval-s", "0.05", "--no-progress",
            ]
        )  # fmt: skip
        summary = await run_replay(args)
    assert summary["format"] == "azure" and summary["requests_total"] == 24
    n_ok = sum(outcome(i) == "OK" for i in range(24))
    assert summary["completed"] == n_ok
    assert summary["completed"] + sum(summary["failed_by_status"].values()) == 24
    assert summary["shaping"]["input_scale"] < 1.0
    for name in ("summary.json", "summary.md", "requests.jsonl", "status.jsonl"):
        assert (out / name).stat().st_size > 0
    records, samples = read_records(out / "requests.jsonl"), read_samples(out / "status.jsonl")
    assert samples and len(records) == 24
    # The plots show what the reports hold (the default SLOs: 2000 and 200 ms).
    check_replay_plots(figures, records, samples, 2000.0, 200.0, max_in_flight=4)
    assert all((out / name).is_file() for name in figures)
    rows = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert max(r["target_prompt_tokens"] for r in rows) == 300
    # Failed requests keep the client's token count (the fake server reports words when OK).
    failed = [r for r in rows if r["status"] != "OK"]
    assert all(abs(r["prompt_tokens"] - r["target_prompt_tokens"]) <= 2 for r in failed)
    assert {r["intent"] for r in rows} == {"code", "chat"}
    flags = [route_flags(i) for i in range(24) if outcome(i) == "OK" and route_flags(i)[0]]
    n_down = sum(g for _, g in flags)
    # requests.jsonl keeps each route's flags; a failed request has none.
    assert [r["demanding"] for r in rows] == [
        r["status"] == "OK" and route_flags(r["index"])[0] for r in rows
    ]
    assert summary["downgrade_fraction"] == round(n_down / len(flags), 4)
    print_summary(summary)
    said = capsys.readouterr().out
    assert f"downgrades {n_down}/{len(flags)} demanding requests" in said
    assert f"SLO attainment {summary['slo_attainment']}" in said


def test_prepare_synthetic_and_errors(tokenizer: object, prompts_dir: Path) -> None:
    args = _parse(
        ["--format", "gamma", "--rate-rps", "50", "--cv", "3", "--duration", "2",
         "--input-tokens", "40", "--output-tokens", "5", "--prompts-dir", str(prompts_dir),
         "--out", "unused", "--intent-mix", "math=1"]
    )  # fmt: skip
    _, requests, meta = prepare(args, tokenizer)  # type: ignore[arg-type]
    assert 40 < len(requests) < 200 and meta["format"] == "gamma"
    assert all(r.intent == "math" and abs(r.prompt_tokens - 40) <= 2 for r in requests)
    assert all(r.arrival_s < 2.0 for r in requests)
    with pytest.raises(ValueError, match="tokenizer"):
        prepare(args)
    with pytest.raises(ValueError, match="intent_mix"):
        prepare(_parse([*_argv_min(prompts_dir), "--intent-mix", "poetry=1"]), tokenizer)  # type: ignore[arg-type]


def _argv_min(prompts_dir: Path) -> list[str]:
    return ["--format", "poisson", "--out", "x", "--prompts-dir", str(prompts_dir)]
