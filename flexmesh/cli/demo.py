"""`flexmesh demo`: start the embedded mesh (`deploy/configs/demo-full.yaml`: the probe, both
demo models, the large model's prefill/decode pool and the controller), replay about a minute
of a real trace with a mixed intent mix through gRPC, print the summary and where the reports
and plots are (`controller.png`: roles, prefill budgets and routing thresholds over time).

Without `../shared/data` it replays Poisson arrivals over a few built-in prompts instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from flexmesh.cli.loadgen import print_summary
from flexmesh.loadgen.run import add_replay_arguments, run_replay
from flexmesh.meshcore.config import ControllerConfig

DEMO_INTENT_MIX = "code=0.25,math=0.15,knowledge_qa=0.15,chinese_exam=0.1,chat=0.35"
DEMO_TRACE = "traces/azure_llm_2023_conv.csv"

BUILTIN_PROMPTS = (
    ("code", 'def quicksort(items):\n    """Sort a list with quicksort."""\n'),
    ("code", "Write a Python function that returns the n-th prime number."),
    ("math", "A train travels 120 km in 1.5 hours. What is its average speed in km/h?"),
    ("knowledge_qa", "Which planet has the most moons?\nA. Earth\nB. Mars\nC. Saturn\nD. Venus"),
    ("chinese_exam", "下列哪一项是中国的首都？\nA. 上海\nB. 北京\nC. 广州\nD. 深圳"),
    ("chat", "Write a short, friendly note inviting my neighbours to a garden party."),
)


def default_shared_data() -> Path:
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="shared data folder (default: ../shared/data)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of trace to replay")
    p.add_argument("--rate-scale", type=float, default=0.25, help="thin the trace's arrivals")
    p.add_argument("--out", default="flexmesh-demo", help="folder for reports and plots")


def replay_args(
    args: argparse.Namespace,
    target: str,
    tokenizer_dir: str,
    scratch: Path,
    slo: ControllerConfig | None = None,
) -> argparse.Namespace:
    """The `loadgen replay` options of the demo; goodput is read against the mesh's SLOs."""
    data = Path(args.data) if args.data else default_shared_data()
    slo = slo or ControllerConfig()
    common = [
        "--target", target, "--out", args.out, "--tokenizer", tokenizer_dir,
        "--ttft-slo-ms", str(slo.ttft_slo_ms), "--tpot-slo-ms", str(slo.tpot_slo_ms),
        "--max-input-tokens", "512", "--max-output-tokens", "64", "--length-mode", "clip",
        "--status-interval-s", "1", "--max-in-flight", "64", "--deadline-s", "120",
    ]  # fmt: skip
    if (data / DEMO_TRACE).exists() and (data / "prompts").is_dir():
        source = [
            "--trace", str(data / DEMO_TRACE), "--format", "azure",
            "--duration", str(args.duration), "--rate-scale", str(args.rate_scale),
            "--intent-mix", DEMO_INTENT_MIX, "--prompts-dir", str(data / "prompts"),
        ]  # fmt: skip
    else:
        prompts = scratch / "prompts.jsonl"
        prompts.write_text(
            "".join(json.dumps({"task": t, "prompt": p}) + "\n" for t, p in BUILTIN_PROMPTS)
        )
        mix = ",".join(f"{t}=1" for t in sorted({t for t, _ in BUILTIN_PROMPTS}))
        source = [
            "--format", "poisson", "--rate-rps", "2", "--duration", str(args.duration),
            "--input-tokens", "128", "--output-tokens", "48",
            "--intent-mix", mix, "--prompts-dir", str(scratch),
        ]  # fmt: skip
    return add_replay_arguments(argparse.ArgumentParser()).parse_args(common + source)


def run_demo(
    args: argparse.Namespace, target: str, tokenizer_dir: str, slo: ControllerConfig
) -> int:
    with tempfile.TemporaryDirectory() as scratch:
        rargs = replay_args(args, target, tokenizer_dir, Path(scratch), slo)
        print(f"replaying {rargs.trace or 'Poisson arrivals'} against {target} ...", flush=True)
        summary = asyncio.run(run_replay(rargs))
    print_summary(summary)
    print(f"reports and plots: {Path(args.out).resolve()}")
    return 0 if summary["requests_sent"] == summary["completed"] + summary["failed"] else 1
