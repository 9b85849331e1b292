"""`flexmesh bench strategies`: batch-1 tokens/s of plain decoding, prompt lookup (PLD) and
draft-model speculation on prompts that repeat themselves, and whether all three emit the same
tokens (greedy).
"""

from __future__ import annotations

import time
from typing import Any

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


def run_strategies_bench(models_dir: str | None, new_tokens: int) -> dict[str, Any]:
    """Batch-1 tokens/s of plain decoding, PLD and draft speculation on repetitive prompts."""
    from flexmesh.actors.runner.engine import Engine
    from flexmesh.launch.mesh import resolve_model_paths
    from flexmesh.meshcore.config import EngineConfig, MeshConfig
    from flexmesh.meshcore.sampling import SamplingParams

    cfg = MeshConfig.from_dict(
        {
            "models": [{"name": "demo-large"}, {"name": "demo-small"}],
            "models_dir": models_dir or "",
        }
    )
    paths = resolve_model_paths(cfg)
    engine = Engine(paths["demo-large"], EngineConfig(), draft_model_path=paths["demo-small"])
    prompts = [engine.tokenizer.encode(p, add_special_tokens=False) for p in REPETITIVE_PROMPTS]
    report: dict[str, Any] = {
        "model": "demo-large",
        "draft": "demo-small",
        "new_tokens": new_tokens,
    }
    outputs: dict[str, list[list[int]]] = {}
    for strategy in ("none", "pld", "spec"):
        sp = SamplingParams(max_tokens=new_tokens, ignore_eos=True, strategy=strategy)
        engine.generate(
            [prompts[0][:8]], SamplingParams(max_tokens=4, strategy=strategy)
        )  # warm-up
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
        outputs[strategy] = outs
        report[f"{strategy}_tok_s"] = round(tokens / elapsed, 2)
        report[f"{strategy}_acceptance"] = round(accepted / proposed, 3) if proposed else None
        report[f"{strategy}_identical_to_none"] = outs == outputs["none"]
    for s in ("pld", "spec"):
        report[f"ratio_{s}"] = round(report[f"{s}_tok_s"] / report["none_tok_s"], 2)
    return report
