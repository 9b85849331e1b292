"""Building the classifier probe's artefact from development prompts plus written exemplars.

Only `scripts/build_probe.py` and the evaluation tooling call this (scikit-learn fits here;
the runtime only hashes and multiplies). The recipe aims at *unseen* sources of each intent, so
dev sources are capped (MMLU alone would drown the rest), classes are weighted equally, and
hand-written exemplars in varied phrasings carry extra weight. Two derived sets remove surface
shortcuts: MMLU/C-Eval questions without their options (knowledge is not "has A-D options")
and HumanEval docstrings restated as natural-language requests (code is not "starts with def").
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression

from flexmesh.actors.probe.classifier import CLASSES, Artefact
from flexmesh.actors.probe.data import DEV_SOURCES, read_prompts, source_of, split_of
from flexmesh.actors.probe.features import FeatureSpec, Featurizer

# AlpacaEval's `vicuna` subset *is* the Vicuna benchmark, a held-out evaluation source (and it
# labels Vicuna's coding and maths prompts `chat`): building on it would leak the evaluation.
_EXCLUDED_CATEGORIES = {"alpaca_eval": "vicuna"}
_MMLU_NUMERIC = re.compile(
    r"mathematics|algebra|statistics|physics|chemistry|computer|machine_le"
    r"|econometrics|formal_logic|accounting"
)


@dataclass(frozen=True)
class Sample:
    """One training or test prompt."""

    text: str
    intent: str
    source: str
    weight: float = 1.0


@dataclass(frozen=True)
class TrainSpec:
    """Recipe knobs; stored in the artefact's metadata."""

    per_source_cap: int = 1200
    """Most rows taken from one development source (seeded sample)."""
    derived_cap: int = 100
    """Most option-less / restated rows derived from one source."""
    exemplar_weight: float = 4.0
    """Weight of a hand-written exemplar relative to a development row."""
    c: float = 1.0
    """Inverse L2 strength of the logistic regression."""
    chat_bias: float = 0.25
    """Added to the chat logit after fitting: dev sources give chat few, noisy rows, so new chat
    sources lean to knowledge_qa/math; 0.25 maximised mean leave-one-source-out accuracy (and,
    with c=1, beat c=3 or a bias of 0.5 there; docs/routing.md)."""
    min_df: int = 2
    """Hash slots seen in fewer training prompts are dropped from the artefact."""
    seed: int = 0
    """Seed of every sample and shuffle."""


def exemplars() -> list[Sample]:
    """The hand-written exemplars shipped in `exemplars/<intent>.json`."""
    out = []
    folder = resources.files("flexmesh.actors.probe") / "exemplars"
    for intent in CLASSES:
        texts = json.loads((folder / f"{intent}.json").read_text(encoding="utf-8"))
        out += [Sample(t, intent, "exemplars", 1.0) for t in texts]
    return out


def dev_samples(
    data_dir: Path, spec: TrainSpec, exclude: Iterable[str] = (), heldout: bool | None = False
) -> list[Sample]:
    """Capped dev rows plus derived rows; `heldout` False/True/None = train slice/test slice/all
    (the adversarial slice is in none of them: only `scripts/build_adversarial.py` reads it)."""
    rng = random.Random(spec.seed)
    out: list[Sample] = []
    for name in DEV_SOURCES:
        src = source_of(name)
        if src in set(exclude) or not (data_dir / name).exists():
            continue
        rows = [r for r in read_prompts(data_dir / name) if r["task"] in CLASSES]
        rows = [r for r in rows if r.get("category") != _EXCLUDED_CATEGORIES.get(src, "")]
        rows = [r for r in rows if split_of(r) != "adversarial"]
        rows = [r for r in rows if heldout is None or (split_of(r) == "heldout") == heldout]
        rng.shuffle(rows)
        out += [Sample(r["prompt"], r["task"], src) for r in rows[: spec.per_source_cap]]
        if heldout is not True:
            out += _derived(rows, src, rng)[: spec.derived_cap]
    return out


def _derived(rows: list[dict[str, Any]], src: str, rng: random.Random) -> list[Sample]:
    out = []
    for r in rows:
        if src == "mmlu_test" and not _MMLU_NUMERIC.search(r.get("subject", "")):
            out.append(Sample(r["question"], r["task"], src + "+q"))
        elif src == "ceval_val":
            out.append(Sample(r["question"], r["task"], src + "+q"))
        elif src == "humaneval" and (request := _restate(r["prompt"], rng)):
            out.append(Sample(request, "code", src + "+nl"))
    return out


def _restate(code: str, rng: random.Random) -> str:
    """`def f(...): \"\"\"Return the ...` -> `Write a python function to return the ...`."""
    m = re.search(r'"""(.*?)(>>>|Example|For example|"""|$)', code, re.S)
    text = " ".join(m.group(1).split()) if m else ""
    if not text:
        return ""
    text = text[0].lower() + text[1:]
    lead = rng.choice(
        ["Write a python function to", "Write a function to", "Implement a function that will"]
    )
    return f"{lead} {text}" if not text.startswith(("given", "you ")) else f"{text} Write code."


def fit(train: Sequence[Sample], spec: TrainSpec, features: FeatureSpec) -> Artefact:
    """Fit TF-IDF + multinomial logistic regression; classes weigh equally in total."""
    feat = Featurizer(features)
    counts = feat.counts([s.text for s in train])
    df = np.bincount(counts.indices, minlength=features.n_features)
    n = counts.shape[0]
    idf = (np.log((1 + n) / (1 + df)) + 1).astype(np.float32)
    idf[df < spec.min_df] = 0.0
    slots = np.flatnonzero(idf).astype(np.int32)
    style = np.stack([feat.style(s.text) for s in train])
    x = sp.hstack([feat.tfidf(counts, idf)[:, slots], style]).tocsr()
    y = np.array([CLASSES.index(s.intent) for s in train])
    w = np.array(
        [s.weight * (spec.exemplar_weight if s.source == "exemplars" else 1) for s in train]
    )
    for k in range(len(CLASSES)):
        w[y == k] *= len(w) / (len(CLASSES) * w[y == k].sum())
    model = LogisticRegression(C=spec.c, max_iter=3000)
    model.fit(x, y, sample_weight=w)
    intercept = model.intercept_.astype(np.float32)
    intercept[CLASSES.index("chat")] += np.float32(spec.chat_bias)
    meta = {
        "train_spec": spec.__dict__,
        "train_counts": dict(Counter(f"{s.source}:{s.intent}" for s in train)),
    }
    return Artefact(
        features=features,
        slots=slots,
        idf=idf[slots],
        coef=model.coef_[:, : len(slots)].astype(np.float32),
        style_coef=model.coef_[:, len(slots) :].astype(np.float32),
        intercept=intercept,
        meta=meta,
    )
