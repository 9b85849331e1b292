"""Intent probe: senses a prompt's intent for the router (`flexmesh.meshcore.routing`).

- `front.ProbeFront(backend, long_context_tokens)`: the length rule, routing talk cut and the
  prompt's parts (`parts`), then the backend.
- `classifier.ClassifierProbe()`: hashed n-gram TF-IDF + logistic regression from the shipped
  artefact in `model/` (rebuilt by `scripts/build_probe.py`); ~1.5 ms p50 a prompt on a CPU,
  parts included (docs/routing.md).
- `adversarial`, `quality`: the adversarial set's disguises and what routing costs in quality.
- `lm.LMProbe(next_token_logits, tokenizer)`: A-IO's zero-shot probe over the small LM.
- `evaluate`: metrics and the `flexmesh probe eval` command.

Backends are imported from their modules so using one does not import the other's libraries.
"""

from __future__ import annotations

from flexmesh.actors.probe.front import ProbeBackend, ProbeFront, estimate_tokens

__all__ = ["ProbeBackend", "ProbeFront", "estimate_tokens"]
