"""`flexmesh bench strategies`: batch-1 tokens/s of plain decoding, prompt lookup (PLD) and
draft-model speculation on prompts that repeat themselves, and whether all three emit the same
tokens (greedy).

The strategies run interleaved for `rounds` rounds (none, PLD, spec, none, PLD, spec, ...) on
one engine, each warmed up once first; tokens/s and acceptance are medians over the rounds with
their spread (min–max), the ratios to plain decoding worked out within each round first
(`flexmesh.bench.rounds`), and the output must match plain decoding's in every round.
"""

from __future__ import annotations

import time
from typing import Any

from flexmesh.bench.rounds import pick, rounds_report

REPETITIVE_PROMPTS = (
    # code completion over code that repeats its own identifiers
    "class Vector:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n"
    "    def add(self, other):\n        return Vector(self.x + other.x, self.y + other.y)\n\n"
    "    def sub(self, other):\n        return Vector(self.x - other.x, self.y - other.y)\n\n"
    "    def mul(self, other):\n",
    # extraction: copy fields out of a record
    "Record: name=Ada Lovelace; born=1815; field=mathematics; known_for=analytical engine notes.\n"
    "Record: name=Alan Turing; born=1912; field=computer science; known_for=Turing machine.\n"
    "Extract every name and field from the records above as JSON lines:\n",
    # editing: rewrite a passage with a small change
    "Rewrite the following text, replacing 'blue' with 'green' and keeping everything else:\n"
    "The blue house stands by the blue lake. Every morning the blue boat leaves the blue pier "
    "and returns when the sky over the blue hills turns dark.\n",
)


STRATEGIES = ("none", "pld", "spec")
"""Plain decoding first: the others' output is compared with its output of the same round."""


def run_strategies_bench(
    models_dir: str | None, new_tokens: int, rounds: int = 3
) -> dict[str, Any]:
    """Batch-1 tokens/s of plain decoding, PLD and draft speculation on repetitive prompts."""
    from tqdm import tqdm

    from flexmesh.actors.runner.engine import Engine
    from flexmesh.launch.mesh import resolve_model_paths
    from flexmesh.meshcore.config import EngineConfig, MeshConfig
    from flexmesh.meshcore.sampling import SamplingParams

    if rounds < 1:
        raise ValueError(f"rounds: must be >= 1, got {rounds}")
    cfg = MeshConfig.from_dict(
        {
            "models": [{"name": "demo-large"}, {"name": "demo-small"}],
            "models_dir": models_dir or "",
        }
    )
    paths = resolve_model_paths(cfg)
    engine = Engine(paths["demo-large"], EngineConfig(), draft_model_path=paths["demo-small"])
    prompts = [engine.tokenizer.encode(p, add_special_tokens=False) for p in REPETITIVE_PROMPTS]
    for strategy in STRATEGIES:  # warm-up
        engine.generate([prompts[0][:8]], SamplingParams(max_tokens=4, strategy=strategy))
    runs: list[dict[str, Any]] = []
    with tqdm(total=rounds * len(STRATEGIES), desc="rounds × strategies", unit="run") as bar:
        for r in range(1, rounds + 1):
            bar.set_description(f"round {r}/{rounds}")
            run: dict[str, Any] = {}
            outputs: dict[str, list[list[int]]] = {}
            for strategy in STRATEGIES:
                sp = SamplingParams(max_tokens=new_tokens, ignore_eos=True, strategy=strategy)
                outputs[strategy], run[strategy] = _measure(engine, prompts, sp)
                run[strategy]["identical_to_none"] = outputs[strategy] == outputs["none"]
                bar.update()
            runs.append(run)
    return strategies_report(runs, new_tokens)


def _measure(
    engine: Any, prompts: list[list[int]], sp: Any
) -> tuple[list[list[int]], dict[str, Any]]:
    """Each prompt's output tokens, and tokens/s and draft acceptance over all of them."""
    proposed = accepted = tokens = 0
    outs = []
    t0 = time.perf_counter()
    for ids in prompts:
        rid = engine.add_request(prompt_token_ids=ids, sampling=sp)
        out: list[int] = []
        while engine.has_unfinished():
            for o in engine.step():
                if o.request_id == rid:
                    out += o.token_ids
                    proposed += o.draft_tokens_proposed
                    accepted += o.draft_tokens_accepted
        outs.append(out)
        tokens += len(out)
    elapsed = time.perf_counter() - t0
    acceptance = round(accepted / proposed, 3) if proposed else None
    return outs, {"tok_s": round(tokens / elapsed, 2), "acceptance": acceptance}


def strategies_report(runs: list[dict[str, Any]], new_tokens: int) -> dict[str, Any]:
    """The flat report (`{s}_tok_s`, `{s}_acceptance`, `ratio_{s}`: medians over the rounds;
    `{s}_identical_to_none`: in every round) from each round's `{strategy: figures}`, with
    `spread` ([min, max] of each of those figures) and the raw rounds under `samples`."""
    r = rounds_report(runs, ratio_figures=("tok_s",))
    report: dict[str, Any] = {
        "model": "demo-large",
        "draft": "demo-small",
        "new_tokens": new_tokens,
        "rounds": r["rounds"],
    }
    spread: dict[str, Any] = {}
    for s, figures in r["configs"].items():
        for key in ("tok_s", "acceptance"):
            report[f"{s}_{key}"] = figures[key]
            spread[f"{s}_{key}"] = pick(r["spread"], "configs", s, key)
        report[f"{s}_identical_to_none"] = all(x["identical_to_none"] for x in r["samples"][s])
    for s in STRATEGIES[1:]:
        report[f"ratio_{s}"] = pick(r, "ratios", "tok_s", s)
        spread[f"ratio_{s}"] = pick(r["spread"], "ratios", "tok_s", s)
    return {**report, "spread": spread, "samples": r["samples"]}
