"""The `lm` probe backend: A-IO's zero-shot probe, one forward pass of the resident small LM.

The prompt is wrapped in a classification template ending in "Category:"; the intent is the
label whose first token has the highest next-token logit, and confidence is the softmax margin
(top minus runner-up probability over the labels). When two labels share a first token under
the tokenizer, each label's whole token sequence is scored instead (mean log-probability per
token, one extra forward pass per label token). The forward pass itself is a callable so the
probe actor can ask the small-model worker for it instead of holding a second copy of weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from flexmesh.meshcore.routing import INTENTS, ProbeResult

TEMPLATE = (
    "Classify the request into one category.\n"
    "code: programming, writing or fixing code\n"
    "math: a math problem or calculation\n"
    "knowledge: a factual question or a multiple-choice test question\n"
    "chinese: an exam question written in Chinese\n"
    "chat: conversation, writing, advice, opinions\n\n"
    "Request: {prompt}\n"
    "Category:"
)
"""Zero-shot template; `{prompt}` is replaced by the (truncated) request text."""
LABELS = {
    "code": " code",
    "math": " math",
    "knowledge_qa": " knowledge",
    "chinese_exam": " chinese",
    "chat": " chat",
}
"""Continuation text of each intent after "Category:" (leading space as a BPE word start)."""

NextTokenLogits = Callable[[list[int]], Sequence[float]]
"""Forward pass: token ids of a sequence -> logits over the vocabulary for the next token."""


class TokenizerLike(Protocol):
    """The part of a Hugging Face tokenizer the probe uses."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


class LMProbe:
    """`ProbeBackend` reading label-token logits of one forward pass of a causal LM."""

    name = "lm"

    def __init__(
        self,
        next_token_logits: NextTokenLogits,
        tokenizer: TokenizerLike,
        template: str = TEMPLATE,
        labels: Mapping[str, str] | None = None,
        max_prompt_tokens: int = 448,
        label_bias: Mapping[str, float] | None = None,
    ) -> None:
        labels = dict(labels or LABELS)
        unknown = set(labels) - set(INTENTS)
        if unknown or not labels:
            raise ValueError(f"labels must map intents {INTENTS}, got {sorted(labels)}")
        if "{prompt}" not in template:
            raise ValueError("template must contain {prompt}")
        if max_prompt_tokens < 16:
            raise ValueError(f"max_prompt_tokens must be >= 16, got {max_prompt_tokens}")
        self._logits = next_token_logits
        self._tokenizer = tokenizer
        self.intents = tuple(labels)
        head, tail = template.split("{prompt}", 1)
        self._head = tokenizer.encode(head, add_special_tokens=False)
        self._tail = tokenizer.encode(tail, add_special_tokens=False)
        self.label_ids = [
            tokenizer.encode(labels[i], add_special_tokens=False) for i in self.intents
        ]
        if any(not ids for ids in self.label_ids):
            raise ValueError("every label must encode to at least one token")
        first = [ids[0] for ids in self.label_ids]
        self.first_token_mode = len(set(first)) == len(first)
        self.max_prompt_tokens = max_prompt_tokens
        bias = label_bias or {}
        self._bias = np.array([bias.get(i, 0.0) for i in self.intents], dtype=np.float64)

    def input_ids(self, prompt: str) -> list[int]:
        """Template token ids around the prompt, cut to head + tail when it is too long."""
        ids = self._tokenizer.encode(prompt, add_special_tokens=False)
        if len(ids) > self.max_prompt_tokens:
            keep_tail = self.max_prompt_tokens // 4  # the question often sits at the end
            ids = ids[: self.max_prompt_tokens - keep_tail] + ids[-keep_tail:]
        return self._head + ids + self._tail

    def label_scores(self, prompt: str) -> np.ndarray:
        """One score per intent in `self.intents` (higher = more likely), bias included."""
        context = self.input_ids(prompt)
        logits = np.asarray(self._logits(context), dtype=np.float64)
        if self.first_token_mode:
            scores = np.array([logits[ids[0]] for ids in self.label_ids])
        else:
            first = _log_softmax(logits)
            scores = np.array(
                [self._sequence_logprob(context, ids, first) for ids in self.label_ids]
            )
        return scores + self._bias

    def _sequence_logprob(self, context: list[int], ids: list[int], first: np.ndarray) -> float:
        total = float(first[ids[0]])
        for k in range(1, len(ids)):
            total += float(_log_softmax(np.asarray(self._logits(context + ids[:k]), float))[ids[k]])
        return total / len(ids)

    def classify(self, prompt: str) -> ProbeResult:
        start = time.perf_counter()
        scores = self.label_scores(prompt)
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        order = np.argsort(-probs)
        margin = float(probs[order[0]] - (probs[order[1]] if len(order) > 1 else 0.0))
        all_scores = {intent: 0.0 for intent in INTENTS}
        all_scores.update({i: float(p) for i, p in zip(self.intents, probs, strict=True)})
        return ProbeResult(
            intent=self.intents[int(order[0])],
            confidence=margin,
            scores=all_scores,
            probe_ms=(time.perf_counter() - start) * 1000.0,
            backend=self.name,
        )


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max()
    out: np.ndarray = x - (m + np.log(np.exp(x - m).sum()))
    return out


def lm_probe_from_pretrained(path: str, **kwargs: Any) -> LMProbe:
    """An `LMProbe` over a local Hugging Face causal LM (CLI evaluation; the mesh serves the
    forward pass from the small-model worker instead)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, trust_remote_code=False, local_files_only=True
    ).eval()

    def next_token_logits(token_ids: list[int]) -> Sequence[float]:
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([token_ids], dtype=torch.long))
        logits: Sequence[float] = out.logits[0, -1].float().numpy()  # [vocab]
        return logits

    return LMProbe(next_token_logits, tokenizer, **kwargs)
