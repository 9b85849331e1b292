"""The zero-shot `lm` backend with a fake forward pass and a real (tiny, trained here) tokenizer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from flexmesh.actors.probe.lm import LABELS, TEMPLATE, LMProbe

CORPUS = [
    TEMPLATE,
    "def add(a, b):\n    return a + b",
    "Compute $x^2 + 1$ when $x = 3$.",
    "Tell me a story about a lighthouse keeper.",
] + [f"Category:{label}" for label in LABELS.values()] * 50


def tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def intent_for(request: str) -> str:
    return "code" if "def " in request else "math" if "$" in request else "chat"


def fake_lm(tok: PreTrainedTokenizerFast, strength: float = 6.0):  # type: ignore[no-untyped-def]
    """Logits that spell out the right label after "Category:", one token at a time."""

    def next_token_logits(ids: list[int]) -> Sequence[float]:
        text = tok.decode(ids)
        request, after = text.split("Request:", 1)[1].rsplit("Category:", 1)
        want = tok.encode(LABELS[intent_for(request)], add_special_tokens=False)
        done = tok.encode(after, add_special_tokens=False) if after else []
        logits = np.zeros(len(tok), dtype=np.float32)
        if done == want[: len(done)] and len(done) < len(want):
            logits[want[len(done)]] = strength
        return logits

    return next_token_logits


PROMPTS = {
    "def square(x):\n    return x * x": "code",
    "Find $y$ if $2y = 10$.": "math",
    "Any tips for a relaxing weekend?": "chat",
}


def test_first_token_mode_reads_label_logits() -> None:
    tok = tokenizer(600)
    probe = LMProbe(fake_lm(tok), tok)
    assert probe.first_token_mode  # labels were frequent enough to be single tokens
    for prompt, intent in PROMPTS.items():
        result = probe.classify(prompt)
        assert result.intent == intent and result.backend == "lm"
        probs = [result.scores[i] for i in LABELS]
        assert sum(probs) == pytest.approx(1.0)
        top, second = sorted(probs, reverse=True)[:2]
        assert result.confidence == pytest.approx(top - second)  # softmax margin
        assert result.scores["long_context"] == 0.0


def test_sequence_mode_when_first_tokens_collide() -> None:
    tok = tokenizer(260)  # bytes only: every label starts with the same space token
    probe = LMProbe(fake_lm(tok), tok)
    assert not probe.first_token_mode
    for prompt, intent in PROMPTS.items():
        assert probe.classify(prompt).intent == intent


def test_template_wraps_prompt_and_truncation_keeps_head_and_tail() -> None:
    tok = tokenizer(600)
    probe = LMProbe(fake_lm(tok), tok, max_prompt_tokens=64)
    ids = probe.input_ids("Hello")
    assert tok.decode(ids).startswith("Classify the request")
    assert tok.decode(ids).endswith("Request: Hello\nCategory:")
    long_prompt = "start " + "filler words " * 200 + "def tail_end(x):"
    ids = probe.input_ids(long_prompt)
    assert len(ids) <= len(probe.input_ids("")) + 64
    assert "start" in tok.decode(ids) and "tail_end" in tok.decode(ids)
    assert probe.classify(long_prompt).intent == "code"  # the tail survived the cut


def test_label_bias_calibrates() -> None:
    tok = tokenizer(600)
    probe = LMProbe(fake_lm(tok, strength=1.0), tok, label_bias={"knowledge_qa": 5.0})
    assert probe.classify("Any tips for a relaxing weekend?").intent == "knowledge_qa"


def test_bad_configuration_is_rejected() -> None:
    tok = tokenizer(600)
    with pytest.raises(ValueError, match="labels"):
        LMProbe(fake_lm(tok), tok, labels={"poetry": " poem"})
    with pytest.raises(ValueError, match="template"):
        LMProbe(fake_lm(tok), tok, template="no slot")
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        LMProbe(fake_lm(tok), tok, max_prompt_tokens=4)
