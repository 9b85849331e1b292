"""Typed errors raised by the core and mapped to gRPC status codes by `services/`."""

from __future__ import annotations


class FlexMeshError(Exception):
    """Base class of every error FlexMesh raises on purpose."""

    status = "INTERNAL"
    """Name of the gRPC status code the error maps to (`services/errors.py`, metrics)."""


class InvalidRequestError(FlexMeshError, ValueError):
    """A request field holds a value the mesh cannot serve."""

    status = "INVALID_ARGUMENT"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def __reduce__(self) -> tuple[type[InvalidRequestError], tuple[str, str]]:
        # Crosses Ray actor boundaries: rebuild from both arguments, not the formatted text.
        return (type(self), (self.field, self.message))


class UnknownModelError(FlexMeshError, LookupError):
    """The request names a model no worker serves."""

    status = "NOT_FOUND"


class PreconditionError(FlexMeshError):
    """The mesh is not in a state where the operation is allowed (e.g. the last decoder)."""

    status = "FAILED_PRECONDITION"


class QueueFullError(FlexMeshError):
    """The admission queue is at its bound."""

    status = "RESOURCE_EXHAUSTED"


class WorkerUnavailableError(FlexMeshError):
    """The worker serving a request died or cannot be reached."""

    status = "UNAVAILABLE"


class WorkerLostError(WorkerUnavailableError):
    """The worker's actor died or is restarting: it takes no request until it reports again."""


class EngineFailedError(WorkerUnavailableError):
    """A worker's engine step raised; every request it held was aborted and its KV freed."""


class KVTransferError(WorkerUnavailableError):
    """A request's KV did not reach its decode worker (timeout, transport error, dead peer)."""

    def __init__(self, message: str, outcome: str = "error") -> None:
        super().__init__(message)
        self.outcome = outcome
        """"timeout" or "error": the route's fallback names it ("recompute (timeout)")."""

    def __reduce__(self) -> tuple[type[KVTransferError], tuple[str, str]]:
        # Crosses Ray actor boundaries: keep the outcome.
        return (type(self), (str(self), self.outcome))


class DeadlineExceededError(FlexMeshError, TimeoutError):
    """The caller's deadline passed before the request finished."""

    status = "DEADLINE_EXCEEDED"


HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "UNAUTHENTICATED": 401,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
"""The HTTP status of each gRPC status the mesh raises (the OpenAI-compatible API's errors)."""


def status_name(exc: BaseException) -> str:
    """The gRPC status code name for any exception (`INTERNAL` for unexpected ones)."""
    return exc.status if isinstance(exc, FlexMeshError) else "INTERNAL"
