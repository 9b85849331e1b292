"""Probe front (long-context rule) and evaluation metrics on hand-made examples."""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import pytest

from flexmesh.actors.probe.adversarial import FAMILIES
from flexmesh.actors.probe.evaluate import add_eval_arguments, evaluate, run_eval, summarise
from flexmesh.actors.probe.front import ProbeFront, estimate_tokens
from flexmesh.meshcore.routing import ProbeResult


class FakeBackend:
    """Calls itself 'fake'; names an intent by keyword and remembers what it saw."""

    name = "fake"

    def __init__(self) -> None:
        self.seen: list[str] = []

    def classify(self, prompt: str) -> ProbeResult:
        self.seen.append(prompt)
        intent = "code" if "def" in prompt else "math" if "$" in prompt else "chat"
        return ProbeResult(intent=intent, confidence=0.8, probe_ms=123.0, backend=self.name)


def test_estimate_tokens_counts_ascii_and_cjk_differently() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("a" * 400) == 100
    assert estimate_tokens("中" * 300) == 200
    assert estimate_tokens("ab中") == 1


def test_long_prompts_are_long_context_without_a_forward_pass() -> None:
    backend = FakeBackend()
    front = ProbeFront(backend, long_context_tokens=100)
    long_result = front.classify("def f(): pass\n" + "word " * 500)
    assert (long_result.intent, long_result.confidence, long_result.backend) == (
        "long_context",
        1.0,
        "rule",
    )
    assert long_result.scores["long_context"] == 1.0 and backend.seen == []
    short = front.classify("def f(): pass")
    assert short.intent == "code" and backend.seen == ["def f(): pass"]
    assert short.probe_ms < 123.0  # the front times the whole call itself
    # 150 CJK characters are ~100 tokens: not long; 400 ASCII characters are ~100: not long
    assert front.classify("中" * 150).intent == "chat"
    assert front.classify("x" * 400).intent == "chat"
    with pytest.raises(ValueError, match="long_context_tokens"):
        ProbeFront(backend, long_context_tokens=0)


def test_summarise_hand_made_example() -> None:
    gold = ["code", "code", "code", "math", "math", "chat"]
    pred = ["code", "code", "math", "math", "chat", "chat"]
    report = summarise(gold, pred, [1.0, 2.0, 3.0, 4.0, 5.0, 100.0])
    per = report["per_intent"]
    assert per["code"] == {"precision": 1.0, "recall": pytest.approx(2 / 3), "support": 3}
    assert per["math"] == {"precision": 0.5, "recall": 0.5, "support": 2}
    assert per["chat"] == {"precision": 0.5, "recall": 1.0, "support": 1}
    assert report["macro_accuracy"] == pytest.approx((2 / 3 + 0.5 + 1.0) / 3)
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["confusion"]["code"] == {"code": 2, "math": 1, "chat": 0}
    assert list(report["confusion"]) == ["code", "math", "chat"]  # INTENTS order
    assert report["latency_ms"]["p50"] == pytest.approx(3.5)
    assert report["latency_ms"]["p99"] == pytest.approx(95.25)


def test_evaluate_runs_a_backend_over_rows() -> None:
    rows = [
        {"task": "code", "prompt": "def g(): ..."},
        {"task": "math", "prompt": "$x$"},
        {"task": "knowledge_qa", "prompt": "who wrote it"},
    ]
    report = evaluate(FakeBackend(), rows)
    assert report["n"] == 3 and report["per_intent"]["knowledge_qa"]["recall"] == 0.0
    assert report["macro_accuracy"] == pytest.approx(2 / 3)
    assert report["latency_ms"]["p50"] == 123.0


def test_cli_reads_jsonl_gz_and_prints_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for task, prompt in [
            ("code", "Write a python function to add two numbers."),
            ("chinese_exam", "下列哪一项正确？\nA. 甲\nB. 乙\nC. 丙\nD. 丁"),
            ("long_context", "a long document. " * 2000),
        ]:
            f.write(json.dumps({"task": task, "prompt": prompt}) + "\n")
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    assert run_eval(parser.parse_args(["--data", str(path), "--json"])) == 0
    report = json.loads(capsys.readouterr().out)["sources"]
    assert report["n"] == 3 and report["backend"] == "classifier"
    assert report["per_intent"]["long_context"]["recall"] == 1.0
    # Where the router sends them: the Chinese exam item is demanding, the other two are not.
    routing = report["routing"]["per_intent"]
    assert routing["chinese_exam"]["demanding_sent_small"] == 0.0
    assert "demanding_sent_small" not in routing["code"]
    assert run_eval(parser.parse_args(["--data", str(path), "--limit", "1"])) == 0
    assert "macro accuracy" in capsys.readouterr().out


def test_cli_reports_the_adversarial_set_per_family(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    assert run_eval(parser.parse_args(["--adversarial", "--json"])) == 0
    report = json.loads(capsys.readouterr().out)["adversarial"]
    families = report["routing"]["per_family"]
    assert set(families) == set(FAMILIES)
    assert all(f["n"] >= 10 for f in families.values())
    with pytest.raises(SystemExit):
        run_eval(parser.parse_args([]))  # nothing to evaluate: a clear error, not an empty report
