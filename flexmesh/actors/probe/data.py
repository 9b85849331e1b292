"""Reading the shared prompt format and the seeded held-out slice the probe is never built on.

Prompt files are JSON Lines (optionally gzip'd) with at least `task` and `prompt`. The held-out
slice is chosen by a hash of each row's `id` (or its prompt), so the build script and the tests
agree on it without storing ids and it does not move when rows are added.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEV_SOURCES = (
    "humaneval.jsonl",
    "gsm8k_test.jsonl",
    "mmlu_test.jsonl.gz",
    "ceval_val.jsonl",
    "alpaca_eval.jsonl",
    "mt_bench.jsonl",
    "leval_long_context.jsonl.gz",
)
"""Development prompt files (shared/data/prompts) the classifier may be built from."""
HELDOUT_PERCENT = 20
"""Share of every development source kept out of the shipped artefact, for its tests."""


def iter_prompts(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield the rows of one .jsonl or .jsonl.gz prompt file."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def read_prompts(path: str | Path, limit: int = 0) -> list[dict[str, Any]]:
    """Rows with `task` and `prompt` from one file (the first `limit` when > 0)."""
    rows = []
    for row in iter_prompts(path):
        if "task" in row and "prompt" in row:
            rows.append(row)
            if limit and len(rows) >= limit:
                break
    return rows


def source_of(path: str | Path) -> str:
    """Source name of a prompt file: `mmlu_test.jsonl.gz` -> `mmlu_test`."""
    return Path(path).name.split(".")[0]


def is_heldout(row: dict[str, Any]) -> bool:
    """True for the seeded ~20% slice of development rows excluded from the shipped artefact."""
    key = str(row.get("id") or row["prompt"]).encode("utf-8")
    return int(hashlib.sha1(key).hexdigest()[:8], 16) % 100 < HELDOUT_PERCENT
