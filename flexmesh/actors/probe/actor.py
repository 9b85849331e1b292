"""The named `probe` actor: the configured backend behind the long-context rule.

It is a threaded (not async) actor: the `lm` backend asks the resident small-model worker for
its forward pass with a blocking, time-bounded `ray.get`, which must not run on an event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ray

from flexmesh.actors.probe.front import ProbeBackend, ProbeFront
from flexmesh.logs import configure_logging
from flexmesh.meshcore.config import ProbeConfig
from flexmesh.meshcore.routing import ProbeResult

PROBE_BACKENDS = ("classifier", "lm")


def make_backend(
    backend: str,
    small_worker: str = "",
    namespace: str = "",
    small_model_path: str = "",
    timeout_s: float = 30.0,
) -> ProbeBackend:
    """`classifier` loads the shipped artefact; `lm` asks worker `small_worker` for logits."""
    if backend == "classifier":
        from flexmesh.actors.probe.classifier import ClassifierProbe

        return ClassifierProbe()
    if backend == "lm":
        from transformers import AutoTokenizer

        from flexmesh.actors.probe.lm import LMProbe

        handle = ray.get_actor(small_worker, namespace=namespace)

        def next_token_logits(token_ids: list[int]) -> Sequence[float]:
            return ray.get(handle.next_token_logits.remote(token_ids), timeout=timeout_s)  # type: ignore[no-any-return]

        return LMProbe(
            next_token_logits,
            AutoTokenizer.from_pretrained(
                small_model_path, trust_remote_code=False, local_files_only=True
            ),
        )
    raise ValueError(f"probe.backend must be one of {PROBE_BACKENDS}, got {backend!r}")


class Probe:
    """Actor shell around a `ProbeFront`."""

    def __init__(
        self,
        backend: str,
        long_context_tokens: int,
        part_confidence: float = ProbeConfig.part_confidence,
        **backend_args: Any,
    ) -> None:
        configure_logging()
        self.front = ProbeFront(
            make_backend(backend, **backend_args),
            long_context_tokens,
            part_confidence=part_confidence,
        )

    def ready(self) -> str:
        return self.front.name

    def classify(self, prompt: str, long_context_tokens: int | None = None) -> ProbeResult:
        if long_context_tokens:
            self.front.long_context_tokens = long_context_tokens  # follows live policy changes
        return self.front.classify(prompt)


ProbeActor: Any = ray.remote(num_cpus=0, max_concurrency=4)(Probe)
