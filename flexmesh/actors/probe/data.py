"""Reading the shared prompt format and the seeded slices the probe is never built on.

Prompt files are JSON Lines (optionally gzip'd) with at least `task` and `prompt`. Two slices
of every development source stay out of the build, chosen by a hash of each row's prompt, so
the build script, the adversarial set and the tests agree on them without storing ids, and they
do not move when rows are added: the held-out slice (the build's own accuracy check) and the
adversarial slice (the only rows `scripts/build_adversarial.py` disguises, so the adversarial
set never scores the probe on items it was built or checked on).
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
ADVERSARIAL_PERCENT = 10
"""Share of every development source reserved for the adversarial set (never built on)."""


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


def _bucket(row: dict[str, Any]) -> int:
    # By the text, not the id: a source that repeats a question under two ids (MMLU does)
    # must not put one copy in the build and the other in a slice kept from it.
    key = str(row["prompt"]).encode("utf-8")
    return int(hashlib.sha1(key).hexdigest()[:8], 16) % 100


def split_of(row: dict[str, Any]) -> str:
    """`heldout` (sha1(prompt) % 100 < 20), `adversarial` (the next 10) or `train`."""
    bucket = _bucket(row)
    if bucket < HELDOUT_PERCENT:
        return "heldout"
    return "adversarial" if bucket < HELDOUT_PERCENT + ADVERSARIAL_PERCENT else "train"


def is_heldout(row: dict[str, Any]) -> bool:
    """True for the seeded ~20% slice of development rows excluded from the shipped artefact."""
    return split_of(row) == "heldout"


ADVERSARIAL_SET = Path(__file__).resolve().parent / "eval" / "adversarial.jsonl.gz"
"""The adversarial evaluation set `scripts/build_adversarial.py` writes (shipped)."""
