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
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.preprocessing import normalize

_DIGITS = str.maketrans("123456789", "000000000")
_TOKEN = re.compile(r"(?u)\b\w+\b|[^\w\s]")  # the word vectoriser's token pattern
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


class _StyleCounts(NamedTuple):
    """What the style features are computed from; a view's are its segments' combined."""

    chars: int
    cjk: int
    letters: frozenset[str]
    latex: int
    zeros: int
    math_ops: int
    code: int
    lines: int
    indents: int
    first_alpha: str
    last: str
    words: int


def _style_counts(text: str) -> _StyleCounts:
    """Counts of a prepared, stripped text."""
    return _StyleCounts(
        chars=len(text),
        cjk=len(_CJK.findall(text)),
        letters=frozenset(m.group(1) or m.group(2) for m in _OPTION.finditer(text)),
        latex=len(_LATEX.findall(text)),
        zeros=text.count("0"),
        math_ops=len(_MATH_OPS.findall(text)),
        code=len(_CODE.findall(text)),
        lines=text.count("\n"),
        indents=len(_INDENT.findall(text)),
        first_alpha=next((c for c in text if c.isalpha()), ""),
        last=text[-1:],
        words=len(text.split()),
    )


def _joined(parts: Sequence[_StyleCounts]) -> _StyleCounts:
    """The counts of these texts joined by single spaces."""
    return _StyleCounts(
        chars=sum(p.chars for p in parts) + len(parts) - 1,
        cjk=sum(p.cjk for p in parts),
        letters=frozenset().union(*(p.letters for p in parts)),
        latex=sum(p.latex for p in parts),
        zeros=sum(p.zeros for p in parts),
        math_ops=sum(p.math_ops for p in parts),
        code=sum(p.code for p in parts),
        lines=sum(p.lines for p in parts),
        indents=sum(p.indents for p in parts),
        first_alpha=next((p.first_alpha for p in parts if p.first_alpha), ""),
        last=parts[-1].last,
        words=sum(p.words for p in parts),
    )


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
            token_pattern=_TOKEN.pattern,
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

    def view_counts(self, text: str, segments: Sequence[str]) -> sp.csr_matrix:
        """Counts of `text` (as `counts`) then of its views (`parts.views` order: the segments
        before each cut, then those after it), summed from per-segment counts so the character
        n-grams, the costly block, are hashed once per prompt, not once per view. A view lacks
        only the word bigrams that span its inner cuts."""
        k = len(segments)
        segs = [self.prepare(t) for t in segments]
        ends = [_TOKEN.findall(t.lower()) or [""] for t in segs]
        firsts, lasts = [e[0] for e in ends], [e[-1] for e in ends]
        words = self._word.transform(
            [f"xxbos {self.prepare(text)} xxeos", *segs]
            + [f"xxbos {f}" for f in firsts]
            + firsts
            + [f"{last} xxeos" for last in lasts]
            + lasts
        ).tocsr()
        # Character n-grams stay inside words, so the whole prompt's are its segments' summed
        # (exact but for n-grams across a cut inside an unspaced CJK run).
        chars = self._char.transform(segs).tocsr()
        # Rows of `words` (sign +1 or -1) each view adds up: its segments, then its edges
        # ("xxbos first" minus "first", "last xxeos" minus "last").
        word_rows: list[list[tuple[int, int]]] = []
        char_rows: list[list[tuple[int, int]]] = []
        for a, b in [(0, c) for c in range(1, k)] + [(c, k) for c in range(1, k)]:
            inner = [(1 + i, 1) for i in range(a, b)]
            edges = [(1 + k + a, 1), (1 + 2 * k + a, -1), (1 + 3 * k + b - 1, 1)]
            word_rows.append(inner + edges + [(1 + 4 * k + b - 1, -1)])
            char_rows.append([(i, 1) for i in range(a, b)])
        word_rows.insert(0, [(0, 1)])
        char_rows.insert(0, [(i, 1) for i in range(k)])
        return sp.hstack([_sum_rows(words, word_rows), _sum_rows(chars, char_rows)]).tocsr()

    def style(self, text: str) -> np.ndarray:
        """[len(STYLE_FEATURES)] float32 in [0, 1], times `spec.style_scale`."""
        return self._style(_style_counts(self.prepare(text).strip()))

    def view_styles(self, text: str, segments: Sequence[str]) -> np.ndarray:
        """[1 + views, len(STYLE_FEATURES)]: `text`'s style, then its views' (`view_counts`
        order), each view's from its segments' counts (its text is never scanned again)."""
        segs = [_style_counts(self.prepare(t).strip()) for t in segments]
        k = len(segs)
        ranges = [(0, c) for c in range(1, k)] + [(c, k) for c in range(1, k)]
        rows = [self.style(text)] + [self._style(_joined(segs[a:b])) for a, b in ranges]
        return np.stack(rows)

    def _style(self, c: _StyleCounts) -> np.ndarray:
        n = max(c.chars, 1)
        cjk = c.cjk / n
        options = float(len(c.letters & set("ABCD")) >= 3 or len(c.letters & set("abcd")) >= 3)
        # Interactions a linear model cannot form itself: options in English vs in Chinese.
        values = (
            cjk,
            float(cjk > 0.05),
            options,
            options * float(cjk <= 0.05),
            min(c.latex / 4.0, 1.0),
            min(c.zeros / n * 5.0, 1.0),
            min(c.math_ops / n * 10.0, 1.0),
            min(c.code / n * 5.0, 1.0),
            min(c.lines / 10.0, 1.0),
            min(c.indents / 3.0, 1.0),
            float(c.first_alpha.islower()),
            float(c.last in ("?", "？")),
            float(c.last.isalnum()),
            float(c.words <= 12 and c.chars <= 120),
            min(np.log1p(c.chars) / np.log(4000.0), 1.0),
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


def _sum_rows(m: sp.csr_matrix, groups: Sequence[Sequence[tuple[int, int]]]) -> sp.csr_matrix:
    """Row g of the result = sum of sign * m[row] over `groups[g]`. Gathered from the entries
    in one pass (scipy's sparse + and @ keep a dense workspace as wide as the hash slots)."""
    members = [(g, r, sign) for g, group in enumerate(groups) for r, sign in group]
    group, row, sign = (np.array(x) for x in zip(*members, strict=True))
    lo = m.indptr[row]
    lens = m.indptr[row + 1] - lo
    # Positions of every member row's entries in m.indices / m.data, concatenated.
    at = np.repeat(lo - np.cumsum(lens) + lens, lens) + np.arange(lens.sum())
    out = sp.coo_matrix(
        (m.data[at] * np.repeat(sign, lens), (np.repeat(group, lens), m.indices[at])),
        shape=(len(groups), m.shape[1]),
    ).tocsr()  # duplicates summed
    out.eliminate_zeros()
    return out
