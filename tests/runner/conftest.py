from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import torch

from flexmesh.meshcore.scheduler import Scheduler

PROMPTS = (
    "def add(a, b):\n    return",
    "The quick brown fox jumps over the lazy dog. " * 6,
    "import os",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n",
    "Q: What is 12 * 7?\nA:",
)


@pytest.fixture(scope="session", params=["demo-small", "demo-large"])
def model_path(request: pytest.FixtureRequest, models_dir: Path) -> str:
    return str(models_dir / request.param)


@pytest.fixture(scope="session")
def small_path(models_dir: Path) -> str:
    return str(models_dir / "demo-small")


@cache
def _hf(model_path: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()


@cache
def hf_greedy(model_path: str, prompt_ids: tuple[int, ...], new_tokens: int) -> list[int]:
    """Hugging Face `generate`, greedy, the reference every engine test compares against."""
    out = _hf(model_path).generate(
        torch.tensor([prompt_ids]), max_new_tokens=new_tokens, do_sample=False, use_cache=True
    )
    return out[0, len(prompt_ids) :].tolist()


def holds_nothing(scheduler: Scheduler) -> bool:
    """No request holds a block: every block is free or cached with no owner, and emptying
    the prefix cache (when there is one) leaves the whole pool free."""
    if scheduler.cache is not None:
        scheduler.cache.clear()
    return scheduler.pool.num_free == scheduler.pool.num_blocks
