"""Text features of the classifier probe: hashed word and character n-grams with TF-IDF.

Hashing keeps the shipped artefact free of a vocabulary (the build stores only the idf and
weights of hash slots seen in training) and makes the runtime featuriser stateless. Words
catch vocabulary ("function", "probability"), case-preserving character n-grams catch surface
cues that generalise across sources (LaTeX `$\\frac`, option letters, CJK, code punctuation,
lower-case factoid questions). Digits fold to 0 so numbers do not split the evidence. Word
input is wrapped in `xxbos`/`xxeos` so bigrams see how a prompt starts and ends ("xxbos who",
"? xxeos"). A few dense style features (CJK share, A-D options, LaTeX, digits, code punctuation)
carry cues no single n-gram does and that hold across sources.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.preprocessing import normalize

_DIGITS = str.maketrans("123456789", "000000000")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_OPTION = re.compile(r"(?:^|[\s(（])([A-D])[.)、．:：]|(?:^|[\s(])([a-d])[.)]\s")
_LATEX = re.compile(r"\$|\\[a-zA-Z]+|\^\{|_\{")
_MATH_OPS = re.compile(r"[-+*/=^<>]")
_CODE = re.compile(r"[(){}\[\];_=#:<>\"'`]")
_INDENT = re.compile(r"\n(?:    |\t)\S")
STYLE_FEATURES = (
    "cjk_share",
    "cjk_present",
    "options_abcd",
    "options_without_cjk",
    "latex",
    "digit_share",
    "math_op_share",
    "code_punct_share",
    "lines",
    "indented_lines",
    "starts_lower",
    "ends_question",
    "ends_alnum",
    "short",
    "log_length",
)
"""Dense style features, in column order (see `Featurizer.style`)."""


@dataclass(frozen=True)
class FeatureSpec:
    """How text becomes a feature vector; stored in the artefact so build and runtime agree."""

    n_features_log2: int = 18
    """Hash slots per block (word block, then character block) as a power of two."""
    word_ngram_max: int = 2
    """Longest word n-gram (words are lower-cased, punctuation marks are tokens)."""
    char_ngram_min: int = 2
    """Shortest character n-gram (within word boundaries, case kept)."""
    char_ngram_max: int = 4
    """Longest character n-gram."""
    head_chars: int = 1500
    """Characters kept from the start of a prompt (longer prompts are cut for latency)."""
    tail_chars: int = 500
    """Characters kept from the end (multiple-choice options and the question live there)."""
    style_scale: float = 1.0
    """Multiplier of the dense style features (0 switches them off)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def n_features(self) -> int:
        return 2 * (1 << self.n_features_log2)


class Featurizer:
    """Turns prompts into L2-normalised TF-IDF rows of width `spec.n_features`."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        n = 1 << spec.n_features_log2
        common: dict[str, Any] = {"n_features": n, "alternate_sign": False, "norm": None}
        self._word = HashingVectorizer(
            analyzer="word",
            ngram_range=(1, spec.word_ngram_max),
            token_pattern=r"(?u)\b\w+\b|[^\w\s]",
            lowercase=True,
            **common,
        )
        self._char = HashingVectorizer(
            analyzer="char_wb",
            ngram_range=(spec.char_ngram_min, spec.char_ngram_max),
            lowercase=False,
            **common,
        )

    def prepare(self, text: str) -> str:
        head, tail = self.spec.head_chars, self.spec.tail_chars
        if len(text) > head + tail:
            text = text[:head] + "\n" + text[-tail:]
        return text.translate(_DIGITS)

    def counts(self, texts: Sequence[str]) -> sp.csr_matrix:
        """Raw n-gram counts, word block then character block."""
        prepared = [self.prepare(t) for t in texts]
        words = self._word.transform([f"xxbos {t} xxeos" for t in prepared])
        return sp.hstack([words, self._char.transform(prepared)]).tocsr()

    def style(self, text: str) -> np.ndarray:
        """[len(STYLE_FEATURES)] float32 in [0, 1], times `spec.style_scale`."""
        text = self.prepare(text).strip()
        n = max(len(text), 1)
        letters = {m.group(1) or m.group(2) for m in _OPTION.finditer(text)}
        alpha = next((c for c in text if c.isalpha()), "")
        cjk = len(_CJK.findall(text)) / n
        options = float(len(letters & set("ABCD")) >= 3 or len(letters & set("abcd")) >= 3)
        # Interactions a linear model cannot form itself: options in English vs in Chinese.
        values = (
            cjk,
            float(cjk > 0.05),
            options,
            options * float(cjk <= 0.05),
            min(len(_LATEX.findall(text)) / 4.0, 1.0),
            min(text.count("0") / n * 5.0, 1.0),
            min(len(_MATH_OPS.findall(text)) / n * 10.0, 1.0),
            min(len(_CODE.findall(text)) / n * 5.0, 1.0),
            min(text.count("\n") / 10.0, 1.0),
            min(len(_INDENT.findall(text)) / 3.0, 1.0),
            float(alpha.islower()),
            float(text.endswith(("?", "？"))),
            float(text[-1:].isalnum()),
            float(len(text.split()) <= 12 and len(text) <= 120),
            min(np.log1p(len(text)) / np.log(4000.0), 1.0),
        )
        return np.asarray(values, dtype=np.float32) * np.float32(self.spec.style_scale)

    def tfidf(self, counts: sp.csr_matrix, idf: np.ndarray) -> sp.csr_matrix:
        """Sublinear tf times idf, each block L2-normalised so neither dominates."""
        x = counts.astype(np.float32)
        x.data = 1.0 + np.log(x.data)
        x = x.multiply(idf[np.newaxis, :]).tocsr()
        n = 1 << self.spec.n_features_log2
        blocks = [normalize(x[:, :n]), normalize(x[:, n:])]
        return (sp.hstack(blocks).tocsr() * np.float32(np.sqrt(0.5))).astype(np.float32)
