"""Probe evaluation: per-intent precision/recall, macro accuracy, confusion matrix, latency.

`flexmesh probe eval --data FILE.jsonl [--data ...] [--backend classifier|lm] [--json]
[--limit N]` reads the shared prompt format (`task`, `prompt`; .jsonl or .jsonl.gz). Macro
accuracy is the mean per-intent recall over the intents present in the gold labels, so a
14k-row source cannot hide a failing 160-row one.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from flexmesh.actors.probe.data import read_prompts
from flexmesh.actors.probe.front import ProbeBackend, ProbeFront
from flexmesh.meshcore.routing import INTENTS


def evaluate(backend: ProbeBackend, rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Classify every row (`task`, `prompt`) and summarise accuracy and probe latency."""
    gold: list[str] = []
    pred: list[str] = []
    ms: list[float] = []
    for row in rows:
        result = backend.classify(row["prompt"])
        gold.append(row["task"])
        pred.append(result.intent)
        ms.append(result.probe_ms)
    return summarise(gold, pred, ms)


def summarise(gold: list[str], pred: list[str], probe_ms: list[float]) -> dict[str, Any]:
    """Metrics of predictions `pred` against `gold` labels (pure, for tests and reports)."""
    labels = [i for i in INTENTS if i in gold or i in pred]
    labels += sorted((set(gold) | set(pred)) - set(labels))
    confusion = {g: {p: 0 for p in labels} for g in labels}
    for g, p in zip(gold, pred, strict=True):
        confusion[g][p] += 1
    per_intent: dict[str, dict[str, float]] = {}
    for lab in labels:
        tp = confusion[lab][lab]
        support = sum(confusion[lab].values())
        predicted = sum(confusion[g][lab] for g in labels)
        per_intent[lab] = {
            "precision": tp / predicted if predicted else 0.0,
            "recall": tp / support if support else 0.0,
            "support": support,
        }
    recalls = [per_intent[lab]["recall"] for lab in labels if per_intent[lab]["support"]]
    lat = np.asarray(probe_ms, dtype=np.float64)
    return {
        "n": len(gold),
        "macro_accuracy": float(np.mean(recalls)) if recalls else 0.0,
        "accuracy": sum(g == p for g, p in zip(gold, pred, strict=True)) / len(gold)
        if gold
        else 0.0,
        "per_intent": per_intent,
        "confusion": confusion,
        "latency_ms": {
            "p50": float(np.percentile(lat, 50)) if len(lat) else 0.0,
            "p99": float(np.percentile(lat, 99)) if len(lat) else 0.0,
            "mean": float(lat.mean()) if len(lat) else 0.0,
        },
    }


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `flexmesh probe eval`."""
    parser.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="FILE",
        help="prompt file (.jsonl or .jsonl.gz with task and prompt); repeatable",
    )
    parser.add_argument("--backend", choices=("classifier", "lm"), default="classifier")
    parser.add_argument(
        "--artefact", default="", help="classifier artefact folder (default: shipped)"
    )
    parser.add_argument("--model-path", default="", help="small model folder for --backend lm")
    parser.add_argument("--long-context-tokens", type=int, default=2048)
    parser.add_argument("--limit", type=int, default=0, help="first N rows of each file (0 = all)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def make_backend(args: argparse.Namespace) -> ProbeBackend:
    if args.backend == "lm":
        from flexmesh.actors.probe.lm import lm_probe_from_pretrained

        if not args.model_path:
            raise SystemExit("--backend lm needs --model-path (a Hugging Face model folder)")
        return lm_probe_from_pretrained(args.model_path)
    from flexmesh.actors.probe.classifier import Artefact, ClassifierProbe

    return ClassifierProbe(Artefact.load(args.artefact or None))


def run_eval(args: argparse.Namespace) -> int:
    """Run the evaluation the parsed `args` describe and print the report; returns exit code."""
    front = ProbeFront(make_backend(args), long_context_tokens=args.long_context_tokens)
    rows = [r for path in args.data for r in read_prompts(path, args.limit)]
    report = evaluate(front, rows)
    report["backend"] = args.backend
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


def print_report(report: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    per = Table(title=f"probe ({report.get('backend', '')}): {report['n']} prompts")
    for col in ("intent", "precision", "recall", "support"):
        per.add_column(col, justify="left" if col == "intent" else "right")
    for lab, m in report["per_intent"].items():
        per.add_row(lab, f"{m['precision']:.3f}", f"{m['recall']:.3f}", str(m["support"]))
    console.print(per)
    conf = Table(title="confusion (rows = gold, columns = predicted)")
    labels = list(report["confusion"])
    conf.add_column("gold")
    for lab in labels:
        conf.add_column(lab, justify="right")
    for g in labels:
        conf.add_row(g, *(str(report["confusion"][g][p]) for p in labels))
    console.print(conf)
    lat = report["latency_ms"]
    console.print(
        f"macro accuracy {report['macro_accuracy']:.4f}   accuracy {report['accuracy']:.4f}   "
        f"probe_ms p50 {lat['p50']:.2f}  p99 {lat['p99']:.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m flexmesh.actors.probe.evaluate ...`, the same as `flexmesh probe eval ...`."""
    parser = argparse.ArgumentParser(prog="flexmesh probe eval", description=__doc__)
    add_eval_arguments(parser)
    return run_eval(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
