"""Rebuild the classifier probe's shipped artefact and measure it honestly.

    python scripts/build_probe.py                 # build + random held-out slice
    python scripts/build_probe.py --loso          # also leave-one-source-out (slower)

Inputs: shared/data/prompts (development sources only; never shared/data/holdout) and the
hand-written exemplars in flexmesh/actors/probe/exemplars/. Deterministic: same inputs, same
arrays. Accuracy goes into the artefact's JSON metadata; latency is printed (machine-dependent).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flexmesh.actors.probe.classifier import ClassifierProbe  # noqa: E402
from flexmesh.actors.probe.data import HELDOUT_PERCENT  # noqa: E402
from flexmesh.actors.probe.evaluate import evaluate  # noqa: E402
from flexmesh.actors.probe.features import FeatureSpec  # noqa: E402
from flexmesh.actors.probe.train import Sample, TrainSpec, dev_samples, exemplars, fit  # noqa: E402

LOSO_SOURCES = ("humaneval", "gsm8k_test", "mmlu_test", "ceval_val", "alpaca_eval", "mt_bench")
LOSO_TEST_CAP = 1500


def rows(samples: list[Sample]) -> list[dict[str, Any]]:
    return [{"task": s.intent, "prompt": s.text, "source": s.source} for s in samples]


def brief(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "n": report["n"],
        "macro_accuracy": round(report["macro_accuracy"], 4),
        "recall": {
            k: round(v["recall"], 4) for k, v in report["per_intent"].items() if v["support"]
        },
        "confusion": report["confusion"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "prompts"))
    parser.add_argument("--out", default=str(ROOT / "flexmesh" / "actors" / "probe" / "model"))
    parser.add_argument("--loso", action="store_true", help="leave-one-source-out evaluation")
    args = parser.parse_args()
    data = Path(args.data)
    if "holdout" in data.parts:
        raise SystemExit("refusing to build from shared/data/holdout (evaluation only)")
    spec, features = TrainSpec(), FeatureSpec()
    train = dev_samples(data, spec, heldout=False) + exemplars()
    artefact = fit(train, spec, features)
    probe = ClassifierProbe(artefact)
    test = dev_samples(data, spec, heldout=True)
    held = evaluate(probe, rows(test))
    by_source = {
        src: brief(evaluate(probe, [r for r in rows(test) if r["source"] == src]))
        for src in sorted({s.source for s in test})
    }
    artefact.meta["heldout_slice"] = {
        "rule": f"sha1(prompt) % 100 < {HELDOUT_PERCENT}, per development source, capped",
        "overall": brief(held),
        "by_source": by_source,
    }
    print(
        f"held-out slice: macro {held['macro_accuracy']:.4f}  "
        f"p50 {held['latency_ms']['p50']:.2f} ms  p99 {held['latency_ms']['p99']:.2f} ms"
    )
    print(json.dumps(brief(held)["recall"]))
    if args.loso:
        loso = {}
        for src in LOSO_SOURCES:
            fold = fit(dev_samples(data, spec, exclude=[src]) + exemplars(), spec, features)
            only = [s for s in dev_samples(data, spec, heldout=None) if s.source == src]
            report = brief(evaluate(ClassifierProbe(fold), rows(only[:LOSO_TEST_CAP])))
            loso[src] = report
            print(f"leave out {src}: macro {report['macro_accuracy']:.4f} {report['recall']}")
        artefact.meta["leave_one_source_out"] = loso
    npz, meta = artefact.save(args.out)
    print(f"wrote {npz} ({npz.stat().st_size} bytes) and {meta}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
