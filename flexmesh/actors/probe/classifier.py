"""The `classifier` probe backend: hashed n-gram TF-IDF + logistic regression, ~1 ms on a CPU.

The artefact is two files in `model/`: `probe_classifier.npz` (hash slots kept at build time,
their idf, the weights per class) and `probe_classifier.json` (classes, feature spec, build
metadata and measured accuracy). No pickle: loading runs no code from the artefact.
`scripts/build_probe.py` rebuilds both deterministically.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

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

    def probabilities(self, prompt: str) -> np.ndarray:
        """Class probabilities, in `artefact.classes` order."""
        counts = self._featurizer.counts([prompt])
        cols = self._column[counts.indices]
        keep = cols >= 0
        cols, slots = cols[keep], counts.indices[keep]
        val = (1.0 + np.log(counts.data[keep].astype(np.float32))) * self.artefact.idf[cols]
        for block in (slots < self._half, slots >= self._half):
            norm = float(np.sqrt(np.dot(val[block], val[block])))
            if norm > 0:
                val[block] /= norm
        logits = self.artefact.coef[:, cols] @ (val * np.float32(np.sqrt(0.5)))
        logits += self.artefact.intercept + self.artefact.style_coef @ self._featurizer.style(
            prompt
        )
        e = np.exp(logits - logits.max())
        probs: np.ndarray = e / e.sum()
        return probs

    def classify(self, prompt: str) -> ProbeResult:
        start = time.perf_counter()
        probs = self.probabilities(prompt)
        order = np.argsort(-probs)
        best = int(order[0])
        scores = {intent: 0.0 for intent in INTENTS}
        scores.update({c: float(p) for c, p in zip(self.artefact.classes, probs, strict=True)})
        return ProbeResult(
            intent=self.artefact.classes[best],
            confidence=float(probs[best] - probs[order[1]]),  # softmax margin, as the lm probe
            scores=scores,
            probe_ms=(time.perf_counter() - start) * 1000.0,
            backend=self.name,
        )
