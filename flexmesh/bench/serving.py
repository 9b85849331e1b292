"""`flexmesh bench routing|serve`: the same replayed workload against mesh configurations in
turn, one side-by-side table with ratios to the first column, and a Hugging Face reference row.

Every configuration gets the same CPUs: the static meshes give their one worker both cores,
the adaptive mesh gives each of its two workers one. The configurations run interleaved for
`--rounds` rounds (`run_rounds`: round r starts a fresh mesh of each configuration in order and
replays into `--out/<config>/round-<r>/`); the table gives each figure's median over the rounds
with its spread (min–max), ratios worked out within each round (`flexmesh.bench.rounds`). The
Hugging Face reference row is measured once, after the rounds, on the same requests (every one
of the workload unless `--hf-requests` says fewer). A figure that is missing (no request
completed, say) prints as `-`, never as 0, and stays null in the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from flexmesh.bench.rounds import cell, pick, rounds_report
from flexmesh.launch.config_file import load_mesh_config
from flexmesh.loadgen.run import add_replay_arguments, prepare, run_replay

CONFIGS = Path(__file__).resolve().parents[2] / "deploy" / "configs"
ROUTING_PRESET = ("static-large", "static-small", "demo")
DEFAULT_MIX = "code=0.2,math=0.15,knowledge_qa=0.15,chinese_exam=0.15,chat=0.3,long_context=0.05"


def add_serving_bench_arguments(p: argparse.ArgumentParser, preset: tuple[str, ...]) -> None:
    p.add_argument(
        "--configs",
        default=",".join(preset),
        help="comma-separated configs (deploy/configs names or YAML paths); first = baseline",
    )
    p.add_argument("--models-dir", default=None)
    p.add_argument("--data", default=None, help="shared data folder (default: ../shared/data)")
    p.add_argument("--requests", type=int, default=96, help="requests in the workload")
    p.add_argument("--rate-rps", type=float, default=0.0, help="0 = one burst; else Poisson rate")
    p.add_argument("--intent-mix", default=DEFAULT_MIX)
    p.add_argument("--max-output-tokens", type=int, default=48)
    p.add_argument(
        "--hf-requests",
        type=int,
        default=None,
        help="requests for the HF reference row (default: every request of the workload, the "
        "mesh rows' prompts; 0: no reference row)",
    )
    add_rounds_argument(p)
    p.add_argument("--out", default="bench-out", help="folder for JSON and plots")
    p.add_argument("--json", action="store_true")


def add_rounds_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="interleaved rounds over all configs; medians and spread",
    )


def _config_path(name: str) -> Path:
    path = Path(name)
    return path if path.suffix in (".yaml", ".yml") else CONFIGS / f"{name}.yaml"


SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
"""The project's shared data (traces, prompts) beside the checkout, as CI places it."""


def data_dir(args: argparse.Namespace) -> Path:
    """`--data`, else `SHARED_DATA`."""
    return Path(args.data) if args.data else SHARED_DATA


def _replay_args(
    args: argparse.Namespace, target: str, tokenizer: str, out: Path
) -> argparse.Namespace:
    data = data_dir(args)
    argv = [
        "--format", "poisson", "--rate-rps", str(args.rate_rps or 1000.0),
        "--max-requests", str(args.requests), "--duration", "100000",
        "--input-tokens", "256", "--output-tokens", str(args.max_output_tokens),
        "--intent-mix", args.intent_mix, "--prompts-dir", str(data / "prompts"),
        "--tokenizer", tokenizer, "--target", target, "--out", str(out),
        "--max-in-flight", "256", "--deadline-s", "600", "--seed", "0", "--no-progress",
        "--status-interval-s", "1",
    ]  # fmt: skip
    return add_replay_arguments(argparse.ArgumentParser()).parse_args(argv)


def _hf_reference(args: argparse.Namespace, model_path: str, tokenizer: str) -> tuple[float, int]:
    """Sequential batch-1 HF generate over the workload's requests, the same prompts and
    output lengths the meshes were sent (the first `--hf-requests` when given): (tok/s,
    requests)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rargs = _replay_args(args, "", tokenizer, Path(args.out) / "hf")
    _, requests, _ = prepare(rargs, None)
    tok = AutoTokenizer.from_pretrained(tokenizer)
    hf = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    chosen = requests if args.hf_requests is None else requests[: args.hf_requests]
    tokens, t0 = 0, time.perf_counter()
    with torch.inference_mode():
        for r in chosen:
            ids = torch.tensor([tok.encode(r.prompt, add_special_tokens=False)])
            n = r.max_tokens
            out = hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
            tokens += out.shape[1] - ids.shape[1]
    return tokens / (time.perf_counter() - t0), len(chosen)


LoadConfig = Callable[[str], Any]
"""A configuration's `MeshConfig` from its name in `--configs` (default: the deploy/configs
file of that name, or a YAML path); a benchmark of in-code variants passes its own."""


def load_named_config(name: str) -> Any:
    return load_mesh_config(_config_path(name))


def each_mesh(
    configs: str, models_dir: str | None, http: bool = False, load: LoadConfig = load_named_config
) -> Iterator[tuple[str, Any, dict[str, str], Any]]:
    """Start each named mesh config in turn (gRPC, and HTTP with `http`, on free ports); yield
    (name, config, model paths, mesh) and shut the mesh down when the caller moves on."""
    from dataclasses import replace

    from flexmesh.launch.mesh import resolve_model_paths, start_mesh

    for config in configs.split(","):
        name = Path(config).stem
        cfg = load(config)
        http_port = 0 if http else cfg.gateway.http_port
        gateway = replace(cfg.gateway, port=0, http_port=http_port)
        cfg = replace(cfg, models_dir=models_dir or cfg.models_dir, gateway=gateway)
        paths = resolve_model_paths(cfg)
        progress(f"[{name}] starting mesh: {', '.join(m.name for m in cfg.models)}")
        mesh = start_mesh(cfg, log_to_driver=False)
        try:
            yield name, cfg, paths, mesh
        finally:
            mesh.shutdown()


def progress(message: str) -> None:
    """Benchmark progress goes to stderr, so `--json` output stays parseable (through tqdm, so
    a progress bar on stderr stays intact)."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)
    sys.stderr.flush()


def report_line(name: str, summary: dict[str, Any]) -> None:
    if "completed" not in summary:  # a run of several workloads: their own lines said it
        progress(f"[{name}] done")
        return
    ok = f"{summary['completed']}/{summary['requests_sent']}"
    progress(f"[{name}] {ok} ok, {summary['output_tok_s']} tok/s")


RunOne = Callable[[str, Any, dict[str, str], Any, Path], dict[str, Any]]
"""One configuration's run in one round: (name, config, model paths, mesh, output folder) ->
its summary."""


def run_rounds(
    configs: str,
    models_dir: str | None,
    rounds: int,
    out: Path,
    run_one: RunOne,
    load: LoadConfig = load_named_config,
) -> list[dict[str, Any]]:
    """Run every configuration once per round, rounds interleaved (A, B, C, A, B, C, ...), each
    on a fresh mesh (`load` turns a name into its config), into
    `out/<config>/round-<r>/`; returns each round's `{config: summary}`."""
    from tqdm import tqdm

    if rounds < 1:
        raise ValueError(f"rounds: must be >= 1, got {rounds}")
    names = configs.split(",")
    runs: list[dict[str, Any]] = []
    with tqdm(total=rounds * len(names), desc="rounds × configs", unit="run") as bar:
        for r in range(1, rounds + 1):
            bar.set_description(f"round {r}/{rounds}")
            run: dict[str, Any] = {}
            for name, cfg, paths, mesh in each_mesh(configs, models_dir, load=load):
                run[name] = summary = run_one(name, cfg, paths, mesh, out / name / f"round-{r}")
                report_line(f"{name} round {r}/{rounds}", summary)
                bar.update()
            runs.append(run)
    return runs


def write_report(out: Path, report: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2))


def run_serving_bench(args: argparse.Namespace) -> dict[str, Any]:
    large_paths: list[str] = []

    def run_one(name: str, cfg: Any, paths: dict[str, str], mesh: Any, out: Path) -> Any:
        large_paths.append(paths.get(cfg.routing.large_model, ""))
        replay_args = _replay_args(args, mesh.address, next(iter(paths.values())), out)
        return asyncio.run(run_replay(replay_args))

    report = rounds_report(
        run_rounds(args.configs, args.models_dir, args.rounds, Path(args.out), run_one)
    )
    large_path = next((p for p in reversed(large_paths) if p), "")
    if args.hf_requests != 0 and large_path:
        progress("Hugging Face reference: batch 1, sequential, the same requests ...")
        tok_s, report["hf_requests"] = _hf_reference(args, large_path, large_path)
        report["hf_b1_tok_s"] = round(tok_s, 2)
    report["ratio_tok_s"] = {k: round(v, 2) for k, v in report["ratios"]["output_tok_s"].items()}
    write_report(Path(args.out), report)
    return report


def print_serving_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    configs, spread = report["configs"], report["spread"]
    n = report["rounds"]
    table = Table(
        title=f"same workload, mesh configurations side by side: median (min–max) of {n} "
        f"interleaved round{'s' * (n != 1)}; × = ratio to the first config, per round"
    )
    table.add_column("metric")
    for name in configs:
        table.add_column(name, justify="right")

    def row(label: str, *path: str) -> None:
        cells = []
        for name in configs:
            value = pick(configs, name, *path)
            text = cell(value, pick(spread, "configs", name, *path))
            ratio = pick(report, "ratios", path[0], name)
            if value is not None and ratio is not None:  # no ratio of a missing figure
                text += f", {cell(ratio, pick(spread, 'ratios', path[0], name))}×"
            cells.append(text)
        table.add_row(label, *cells)

    row("completed", "completed")
    row("failed", "failed")
    row("output tok/s", "output_tok_s")
    row("req/s", "req_s")
    row("goodput req/s (both SLOs)", "goodput_req_s")
    for m in ("ttft_ms", "tpot_ms", "e2e_ms"):
        row(f"{m} p50", m, "p50")
        row(f"{m} p99", m, "p99")
    row("TPOT mean ms", "tpot_ms", "mean")
    for label, values in report.get("extra_rows", {}).items():
        spreads = pick(spread, "extra_rows", label)
        table.add_row(label, *(cell(values.get(k), pick(spreads, k)) for k in configs))
    Console().print(table)
    if "hf_b1_tok_s" in report:
        print(
            "reference: Hugging Face generate, batch 1, sequential, the same "
            f"{report.get('hf_requests', '-')} requests: {cell(report['hf_b1_tok_s'])} tok/s"
        )
    for name, s in configs.items():
        mix = s.get("route_mix") or {}
        print(
            f"{name} (medians): failed {s.get('failed_by_status') or 'none'}; models "
            f"{mix.get('by_model') or '-'}; strategies {mix.get('by_strategy') or '-'}; probe "
            f"agrees with the label {cell(mix.get('probe_agreement'))}"
        )
