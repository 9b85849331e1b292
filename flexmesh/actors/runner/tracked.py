"""What an engine remembers of a request beside the scheduler: its detokeniser, what was
streamed, and the timings measured where it was prefilled."""

from __future__ import annotations

from dataclasses import dataclass

from flexmesh.actors.runner.detok import IncrementalDetokenizer
from flexmesh.meshcore.request import Request


@dataclass
class Tracked:
    request: Request
    detok: IncrementalDetokenizer
    sent_tokens: int = 0
    timings_ms: tuple[float, float] | None = None
    """(queue, prefill) measured on the worker that prefilled a handed-over request."""


def timings(tracked: Tracked) -> tuple[float, float]:
    """(queue, prefill) ms: measured here, or where a handed-over request was prefilled."""
    return tracked.timings_ms or tracked.request.timings_ms
