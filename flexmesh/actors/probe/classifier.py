"""The `classifier` probe backend: hashed n-gram TF-IDF + logistic regression, ~1 ms on a CPU.

The artefact is two files in `model/`: `probe_classifier.npz` (hash slots kept at build time,
their idf, the weights per class) and `probe_classifier.json` (classes, feature spec, build
metadata and measured accuracy). No pickle: loading runs no code from the artefact.
`scripts/build_probe.py` rebuilds both deterministically.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from flexmesh.actors.probe.features import FeatureSpec, Featurizer
from flexmesh.meshcore.routing import INTENTS, ProbeResult

CLASSES = ("code", "math", "knowledge_qa", "chinese_exam", "chat")
"""Intents the classifier decides between (long_context is the probe front's length rule)."""
ARTEFACT_NAME = "probe_classifier"
"""Base name of the shipped artefact files in `flexmesh/actors/probe/model/`."""


@dataclass(frozen=True, eq=False)
class Artefact:
    """Everything the runtime needs: feature spec, kept hash slots, idf and class weights."""

    features: FeatureSpec
    slots: np.ndarray  # [kept] int32 hash slot ids, ascending
    idf: np.ndarray  # [kept] float32
    coef: np.ndarray  # [classes, kept] float32
    intercept: np.ndarray  # [classes] float32
    style_coef: np.ndarray  # [classes, len(STYLE_FEATURES)] float32
    classes: tuple[str, ...] = CLASSES
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, folder: str | Path, name: str = ARTEFACT_NAME) -> tuple[Path, Path]:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        npz, meta = folder / f"{name}.npz", folder / f"{name}.json"
        # float16 weights halve the file; the argmax and probabilities barely move.
        np.savez_compressed(
            npz,
            slots=self.slots.astype(np.int32),
            idf=self.idf.astype(np.float16),
            coef=self.coef.astype(np.float16),
            intercept=self.intercept.astype(np.float32),
            style_coef=self.style_coef.astype(np.float32),
        )
        info = {"classes": list(self.classes), "features": self.features.to_dict(), **self.meta}
        meta.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return npz, meta

    @classmethod
    def load(cls, folder: str | Path | None = None, name: str = ARTEFACT_NAME) -> Artefact:
        """Load from `folder`, by default the artefact shipped inside the package."""
        base = Path(folder) if folder else Path(str(resources.files(__package__) / "model"))
        info = json.loads((base / f"{name}.json").read_text(encoding="utf-8"))
        with np.load(base / f"{name}.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("slots", "idf", "coef", "intercept", "style_coef")}
        classes = tuple(info.pop("classes"))
        features = FeatureSpec.from_dict(info.pop("features"))
        return cls(
            features=features,
            slots=arrays["slots"].astype(np.int32),
            idf=arrays["idf"].astype(np.float32),
            coef=arrays["coef"].astype(np.float32),
            intercept=arrays["intercept"].astype(np.float32),
            style_coef=arrays["style_coef"].astype(np.float32),
            classes=classes,
            meta=info,
        )


class ClassifierProbe:
    """`ProbeBackend` over an `Artefact`: one hashing pass and a sparse dot product."""

    name = "classifier"

    def __init__(self, artefact: Artefact | None = None) -> None:
        self.artefact = artefact or Artefact.load()
        spec = self.artefact.features
        self._featurizer = Featurizer(spec)
        self._half = 1 << spec.n_features_log2
        # Dense slot -> column map: a lookup per n-gram instead of a search at request time.
        self._column = np.full(spec.n_features, -1, dtype=np.int32)
        self._column[self.artefact.slots] = np.arange(len(self.artefact.slots), dtype=np.int32)
        self._coef_t = np.ascontiguousarray(self.artefact.coef.T)  # [kept, classes]

    def probabilities(self, prompt: str) -> np.ndarray:
        """Class probabilities, in `artefact.classes` order."""
        return self.probabilities_many([prompt])[0]

    def probabilities_many(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), classes] probabilities: one hashing pass and one sparse product for
        all, so a prompt's parts cost little more than the prompt."""
        style = np.stack([self._featurizer.style(t) for t in texts])
        return self._probabilities(self._featurizer.counts(texts), style)

    def _probabilities(self, counts: sp.csr_matrix, style: np.ndarray) -> np.ndarray:
        n = counts.shape[0]
        row = np.repeat(np.arange(n), np.diff(counts.indptr))
        cols = self._column[counts.indices]
        keep = cols >= 0
        row, cols, slots = row[keep], cols[keep], counts.indices[keep]
        val = (1.0 + np.log(counts.data[keep].astype(np.float32))) * self.artefact.idf[cols]
        # Each block (words, characters) of each row L2-normalised, as at build time.
        group = 2 * row + (slots >= self._half)
        norm = np.sqrt(np.bincount(group, weights=val * val, minlength=2 * n))
        norm[norm == 0] = 1.0
        val = (val / norm[group] * np.sqrt(0.5)).astype(np.float32)
        x = sp.csr_matrix((val, (row, cols)), shape=(n, len(self.artefact.slots)))
        logits = np.asarray(x @ self._coef_t) + self.artefact.intercept
        logits += style @ self.artefact.style_coef.T
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs: np.ndarray = e / e.sum(axis=1, keepdims=True)
        return probs

    def classify(self, prompt: str) -> ProbeResult:
        return self.classify_many([prompt])[0]

    def classify_many(self, prompts: Sequence[str]) -> list[ProbeResult]:
        """One result per prompt, from one batched pass; `probe_ms` is the batch's time."""
        start = time.perf_counter()
        probs = self.probabilities_many(prompts)
        ms = (time.perf_counter() - start) * 1000.0
        return [self._result(p, ms) for p in probs]

    def classify_parts(self, text: str, segments: Sequence[str]) -> list[ProbeResult]:
        """`text` then each of its views (`parts.views`), from per-segment counts."""
        if len(segments) < 2:
            return self.classify_many([text])
        start = time.perf_counter()
        counts = self._featurizer.view_counts(text, segments)
        probs = self._probabilities(counts, self._featurizer.view_styles(text, segments))
        ms = (time.perf_counter() - start) * 1000.0
        return [self._result(p, ms) for p in probs]

    def _result(self, probs: np.ndarray, probe_ms: float) -> ProbeResult:
        order = np.argsort(-probs)
        best = int(order[0])
        scores = {intent: 0.0 for intent in INTENTS}
        scores.update({c: float(p) for c, p in zip(self.artefact.classes, probs, strict=True)})
        return ProbeResult(
            intent=self.artefact.classes[best],
            confidence=float(probs[best] - probs[order[1]]),  # softmax margin, as the lm probe
            scores=scores,
            probe_ms=probe_ms,
            backend=self.name,
        )
