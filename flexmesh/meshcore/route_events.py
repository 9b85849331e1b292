"""The vocabulary of the route machine (`meshcore/route.py`): the events a request's route
hears from its workers and the actions it asks of the gateway's loop. Plain frozen data."""

from __future__ import annotations

from dataclasses import dataclass

from flexmesh.meshcore.messages import RequestOutput, RequestState

# -- events: what happened ---------------------------------------------------------------------


@dataclass(frozen=True)
class Placed:
    """The pool chose the request's workers; `prefill` is "" when its decode worker does all."""

    decode: str
    prefill: str = ""
    prefill_rank: int = -1


@dataclass(frozen=True)
class Output:
    """A chunk of the request's stream from `worker` (first token, hand-off, tokens, final)."""

    worker: str
    output: RequestOutput


@dataclass(frozen=True)
class StreamEnded:
    """`worker`'s stream ended (after a final or hand-off chunk, that is the normal end)."""

    worker: str


@dataclass(frozen=True)
class StreamFailed:
    """`worker`'s stream raised: `lost` when its actor died or is restarting."""

    worker: str
    error: str
    lost: bool = False


@dataclass(frozen=True)
class TransferFailed:
    """The decode worker `worker` did not get the KV (`outcome`: "error" or "timeout")."""

    worker: str
    outcome: str
    error: str


@dataclass(frozen=True)
class Refused:
    """`worker` refused the request with a typed error (bad input): no other worker will
    serve it either."""

    worker: str
    status: str
    error: str


@dataclass(frozen=True)
class WorkersLost:
    """The model's workers known dead now (a call failed on one, or a poll found it)."""

    dead: frozenset[str]


@dataclass(frozen=True)
class Replacement:
    """The live worker a broken request moves to."""

    worker: str


@dataclass(frozen=True)
class NoWorker:
    """No live worker is left to move to."""

    error: str


@dataclass(frozen=True)
class Deadline:
    """The caller's deadline passed."""

    error: str


@dataclass(frozen=True)
class Cancel:
    """The client left."""


RouteEvent = (
    Placed
    | Output
    | StreamEnded
    | StreamFailed
    | TransferFailed
    | Refused
    | WorkersLost
    | Replacement
    | NoWorker
    | Deadline
    | Cancel
)


# -- actions: what the loop does ---------------------------------------------------------------


@dataclass(frozen=True)
class Prefill:
    """Compute the prompt on `worker` and hand the request off after its first token."""

    worker: str


@dataclass(frozen=True)
class Run:
    """Serve the request on `worker` alone, from its prompt."""

    worker: str


@dataclass(frozen=True)
class Resume:
    """Continue `state` on `worker`: its KV from `src` (rank `src_rank` in the model's group)
    after a hand-off, or recomputed from its tokens when `src` is ""."""

    worker: str
    state: RequestState
    src: str = ""
    src_rank: int = -1


@dataclass(frozen=True)
class Forward:
    """Send `output` to the client."""

    output: RequestOutput


@dataclass(frozen=True)
class Abort:
    """Stop the request on `worker` and free its blocks there."""

    worker: str


@dataclass(frozen=True)
class FindWorker:
    """Ask the pool for the live worker to move to, never one of `exclude`."""

    exclude: frozenset[str]


@dataclass(frozen=True)
class MarkLost:
    """`worker`'s actor is gone: it takes nothing new until it reports again."""

    worker: str


@dataclass(frozen=True)
class Moved:
    """Count and log a move: `kind` is "prefill_fallback" or "migration"."""

    broken: str
    to: str
    kind: str
    tokens_sent: int
    error: str


@dataclass(frozen=True)
class Fail:
    """End the request with status `status` (a gRPC code name)."""

    status: str
    error: str


RouteAction = Prefill | Run | Resume | Forward | Abort | FindWorker | MarkLost | Moved | Fail
