"""Prompt material: intent mixes, the labelled prompt pool, and fitting text to a token count.

Token counts always come from the target model's tokenizer (a Hugging Face tokenizer used only
through `encode(text, add_special_tokens=False)` and `decode(ids)`). Text is cut at character
positions, never by decoding a slice of ids, so a cut prompt is an exact string prefix of its
source; that is what lets requests that share Mooncake prefix blocks share their text prefix.
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from flexmesh.meshcore.routing import INTENTS

DEFAULT_INTENT_MIX = "code=0.2,math=0.2,knowledge_qa=0.2,chinese_exam=0.1,chat=0.3"
"""Mix used when none is given: every short-prompt intent, chat the most common."""
SEPARATOR = "\n\n"
"""Joins prompts when one is too short for the requested length."""
CHARS_PER_TOKEN_GUESS = 4
"""Characters per token assumed before encoding (English BPE; CJK text has fewer)."""
PROBE_CHARS_PER_TOKEN = 8
"""First probe of `fit_text`: generous, so one or two encodes of a prefix usually bracket it."""


class Tokenizer(Protocol):
    """The slice of a Hugging Face tokenizer that loadgen uses."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def __len__(self) -> int: ...


def tokenizer_dir(candidates: Iterable[object]) -> str | None:
    """The first candidate that is a local Hugging Face tokenizer folder, if any."""
    return next(
        (c for c in candidates if isinstance(c, str) and Path(c, "tokenizer_config.json").exists()),
        None,
    )


def parse_intent_mix(spec: str | Mapping[str, float]) -> dict[str, float]:
    """`"code=0.3,math=0.2,chat=0.5"` (or a mapping) to weights normalised to sum 1."""
    if isinstance(spec, str):
        pairs: list[tuple[str, str]] = []
        for part in spec.split(","):
            if not part.strip():
                continue
            name, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"intent_mix: expected name=weight, got {part.strip()!r}")
            pairs.append((name.strip(), value.strip()))
    else:
        pairs = [(k, str(v)) for k, v in spec.items()]
    weights: dict[str, float] = {}
    for name, value in pairs:
        if name not in INTENTS:
            raise ValueError(f"intent_mix: unknown intent {name!r}; known: {', '.join(INTENTS)}")
        if name in weights:
            raise ValueError(f"intent_mix: intent {name!r} given twice")
        try:
            w = float(value)
        except ValueError:
            raise ValueError(f"intent_mix: weight of {name!r} is not a number: {value!r}") from None
        if not np.isfinite(w) or w < 0:
            raise ValueError(f"intent_mix: weight of {name!r} must be >= 0, got {value!r}")
        weights[name] = w
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f"intent_mix: weights must sum to > 0, got {spec!r}")
    return {k: v / total for k, v in weights.items() if v > 0}


def _read_jsonl(path: Path) -> Iterator[dict[str, object]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


class PromptPool:
    """Prompts by intent, from `*.jsonl` / `*.jsonl.gz` files with `task` and `prompt` fields.

    Files are read in name order and prompts kept in file order, so a seed picks the same
    prompts on every machine.
    """

    def __init__(self, by_intent: Mapping[str, list[str]], tokenizer: Tokenizer) -> None:
        self.by_intent = {k: list(v) for k, v in by_intent.items() if v}
        self.tokenizer = tokenizer

    @classmethod
    def from_dir(
        cls, prompts_dir: str | Path, tokenizer: Tokenizer, intents: set[str] | None = None
    ) -> PromptPool:
        """Load the prompts of `intents` (all when None) from a folder (not recursive)."""
        root = Path(prompts_dir)
        files = sorted([*root.glob("*.jsonl"), *root.glob("*.jsonl.gz")])
        if not files:
            raise ValueError(f"prompts_dir: no *.jsonl or *.jsonl.gz files in {root}")
        by_intent: dict[str, list[str]] = defaultdict(list)
        for path in files:
            for row in _read_jsonl(path):
                task, prompt = row.get("task"), row.get("prompt")
                if not isinstance(task, str) or not isinstance(prompt, str) or not prompt.strip():
                    continue
                if intents is None or task in intents:
                    by_intent[task].append(prompt)
        return cls(by_intent, tokenizer)

    def check_covers(self, intents: set[str]) -> None:
        """Raise if an intent of the mix has no prompts here."""
        missing = sorted(i for i in intents if i not in self.by_intent)
        if missing:
            raise ValueError(f"intent_mix: no prompts for {missing} in the prompt pool")

    def count(self, text: str) -> int:
        """Tokens of `text` under the target tokenizer (no special tokens)."""
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def stream(self, intent: str, rng: np.random.Generator, min_tokens: int) -> str:
        """Random prompts of `intent` joined until they likely hold `min_tokens` tokens.

        Sizes are guessed at 4 characters per token rather than encoded (some prompts are
        250k-character documents); `fit_text` finds the exact cut and callers add more text
        when a guess fell short.
        """
        prompts = self.by_intent[intent]
        parts: list[str] = []
        chars = 0
        while chars < CHARS_PER_TOKEN_GUESS * min_tokens or not parts:
            p = prompts[int(rng.integers(len(prompts)))]
            parts.append(p)
            chars += len(p) + len(SEPARATOR)
        return SEPARATOR.join(parts)

    def fit(self, text: str, n_tokens: int, tolerance: int = 1) -> tuple[str, int]:
        """Longest-fitting prefix of `text` with ~`n_tokens` tokens, and its token count."""
        return fit_text(self.tokenizer, text, n_tokens, tolerance)


class VocabularyPool(PromptPool):
    """Prompts of random ordinary tokens of the tokenizer's own vocabulary, for a replay given
    no labelled prompts (a trace alone). Their text carries no intent: the mix only labels the
    requests, and an intent router sees noise."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        super().__init__({}, tokenizer)
        special = set(getattr(tokenizer, "all_special_ids", ()))
        self.ids = np.array([i for i in range(len(tokenizer)) if i not in special])

    def check_covers(self, intents: set[str]) -> None:
        pass  # every intent draws from the one vocabulary

    def stream(self, intent: str, rng: np.random.Generator, min_tokens: int) -> str:
        """Random tokens decoded to text; re-encoded they may merge into fewer, so callers cut
        and top up as for labelled prompts."""
        ids = rng.choice(self.ids, size=max(1, min_tokens) + 8)
        return self.tokenizer.decode([int(i) for i in ids])


def fit_text(
    tokenizer: Tokenizer, text: str, n_tokens: int, tolerance: int = 1, max_steps: int = 24
) -> tuple[str, int]:
    """Cut `text` at a character position so it encodes to `n_tokens` (within `tolerance`).

    Only prefixes are encoded: a probe window grows from a generous guess until it holds more
    than `n_tokens` (or is all of `text`, which is then returned whole), so cutting a few
    dozen tokens from a long document stays cheap. Token count grows almost monotonically with
    the cut position, so an interpolation search between a too-short and a too-long cut
    converges in a few encodes. A prompt asked for one token or more never comes back empty
    (the tolerance never reaches down to zero tokens).
    """
    tolerance = min(tolerance, max(0, n_tokens - 1))

    def count(s: str) -> int:
        return len(tokenizer.encode(s, add_special_tokens=False))

    hi = min(len(text), max(16, PROBE_CHARS_PER_TOKEN * n_tokens))
    hi_n = count(text[:hi])
    while hi_n <= n_tokens + tolerance and hi < len(text):
        hi = min(len(text), 2 * hi)
        hi_n = count(text[:hi])
    if hi_n <= n_tokens + tolerance:
        return text, hi_n
    lo, lo_n = 0, 0
    best = (0, 0)
    for _ in range(max_steps):
        if hi - lo <= 1:
            break
        cut = lo + round((n_tokens - lo_n) * (hi - lo) / max(hi_n - lo_n, 1))
        cut = min(max(cut, lo + 1), hi - 1)
        n = count(text[:cut])
        if abs(n - n_tokens) < abs(best[1] - n_tokens):
            best = (cut, n)
        if abs(n - n_tokens) <= tolerance:
            break
        if n < n_tokens:
            lo, lo_n = cut, n
        else:
            hi, hi_n = cut, n
    return text[: best[0]], best[1]
