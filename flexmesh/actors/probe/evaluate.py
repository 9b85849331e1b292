"""Probe evaluation: per-intent precision/recall, macro accuracy, confusion matrix, latency.

`flexmesh probe eval [--data FILE.jsonl ...] [--adversarial] [--sample N --seed S]
[--backend classifier|lm] [--config mesh.yaml] [--json] [--limit N]` reads the shared prompt
format (`task`, `prompt`; .jsonl or .jsonl.gz). Macro accuracy is the mean per-intent recall
over the intents present in the gold labels, so a 14k-row source cannot hide a failing 160-row
one. Every report also says where the router sends the readings (`quality.py`): per intent,
and for the adversarial set per family of disguise.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from flexmesh.actors.probe.data import ADVERSARIAL_SET, read_prompts
from flexmesh.actors.probe.front import ProbeBackend, ProbeFront
from flexmesh.actors.probe.quality import route_quality, routed_kind
from flexmesh.meshcore.routing import INTENTS, RoutingConfig


def evaluate(
    backend: ProbeBackend,
    rows: Iterable[Mapping[str, Any]],
    policy: RoutingConfig | None = None,
) -> dict[str, Any]:
    """Classify every row (`task`, `prompt`) and summarise accuracy and probe latency; with a
    `policy`, also where the router sends each reading (`quality.route_quality`)."""
    rows = list(rows)
    results = [backend.classify(row["prompt"]) for row in rows]
    gold = [row["task"] for row in rows]
    report = summarise(gold, [r.intent for r in results], [r.probe_ms for r in results])
    if policy is not None:
        kinds = [routed_kind(r, policy) for r in results]
        report["routing"] = route_quality(rows, kinds, policy)
    return report


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
        default=[],
        metavar="FILE",
        help="prompt file (.jsonl or .jsonl.gz with task and prompt); repeatable",
    )
    parser.add_argument(
        "--adversarial",
        action="store_true",
        help="also the shipped adversarial set (scripts/build_adversarial.py), per family",
    )
    parser.add_argument(
        "--sample", type=int, default=0, help="N seeded random rows of each --data file (0 = all)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample")
    parser.add_argument(
        "--config", default="", help="mesh config whose routing table decides (default: built-in)"
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


def run_eval(args: argparse.Namespace, policy: RoutingConfig | None = None) -> int:
    """Run the evaluation the parsed `args` describe and print the report (routed by `policy`,
    `--config`'s routing table, else the built-in one); returns the exit code."""
    if not args.data and not args.adversarial:
        raise SystemExit("flexmesh probe eval: give --data FILE (repeatable) and/or --adversarial")
    policy = policy or RoutingConfig()
    front = ProbeFront(make_backend(args), long_context_tokens=args.long_context_tokens)
    reports: dict[str, Any] = {}
    if args.data:
        rows = [r for path in args.data for r in _rows(path, args)]
        reports["sources"] = evaluate(front, rows, policy)
    if args.adversarial:
        reports["adversarial"] = evaluate(front, read_prompts(ADVERSARIAL_SET), policy)
    for report in reports.values():
        report["backend"] = args.backend
    if args.json:
        print(json.dumps(reports, indent=2))
    else:
        for name, report in reports.items():
            print_report(report, name)
    return 0


def _rows(path: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = read_prompts(path, args.limit)
    if args.sample and len(rows) > args.sample:
        rows = random.Random(args.seed).sample(rows, args.sample)
    return rows


def print_report(report: Mapping[str, Any], name: str = "") -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    per = Table(title=f"{name} — probe ({report.get('backend', '')}): {report['n']} prompts")
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
    if "routing" in report:
        print_routing(console, report["routing"])


def print_routing(console: Any, routing: Mapping[str, Any]) -> None:
    """Where the router sends each intent's (and each disguise family's) prompts."""
    from rich.table import Table

    for key in ("per_family", "per_intent"):
        if not routing[key]:
            continue
        table = Table(title=f"routing {key.replace('_', ' ')} (idle mesh)")
        for col in (key[4:], "prompts", "as expected", "demanding sent small"):
            table.add_column(col, justify="left" if col == key[4:] else "right")
        for k, m in routing[key].items():
            small = m.get("demanding_sent_small")
            shown = "-" if small is None else f"{small:.3f}"
            table.add_row(k, str(m["n"]), f"{m['as_expected']:.3f}", shown)
        console.print(table)
    big, kept = routing["demanding_to_large"], routing["others_kept_small"]
    console.print(
        "demanding prompts to the large model "
        + ("-" if big is None else f"{big:.3f}")
        + "   others kept small "
        + ("-" if kept is None else f"{kept:.3f}")
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m flexmesh.actors.probe.evaluate ...`, the same as `flexmesh probe eval ...`."""
    parser = argparse.ArgumentParser(prog="flexmesh probe eval", description=__doc__)
    add_eval_arguments(parser)
    return run_eval(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
