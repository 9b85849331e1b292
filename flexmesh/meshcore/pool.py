"""The gateway's pool of workers per model: roles, draining, and which worker takes what.

A request needs a prefill-capable worker (role `prefill` or `mixed`, least prefill backlog) and
a decode-capable one (`decode` or `mixed`, fewest decoding requests). When they are the same
worker, or the prompt's uncached part is shorter than `pd.min_prompt_tokens`, the request runs
on one worker alone (conditional disaggregation); otherwise its KV moves from one to the other.

With cache-aware placement (`pd.placement`, an `affinity.PrefixIndex` given) the worker that
computes the prompt is the one that probably holds its longest prefix, within the model's
`balance` bound on load (`affinity.pick`); a prompt's uncached part is what that worker is
expected to miss. Without it, hits count as nothing and load alone decides, as before.

A worker whose actor died or is restarting is not `alive`: it takes nothing new until it
reports again. While a model has no live worker of one kind, its live workers of the other
kind do both (a degraded pool serves rather than refuses). `rescue` picks the worker a broken
request migrates to.

Roles and draining change at run time. A change never touches work already placed: a worker
that becomes `decode` finishes the prefills it holds, a drained worker finishes everything it
holds and takes nothing new. Every change keeps at least one prefill-capable and one
decode-capable worker taking new requests per model, else it is refused.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from flexmesh.meshcore.affinity import PrefixIndex, pick
from flexmesh.meshcore.config import WORKER_ROLES
from flexmesh.meshcore.errors import (
    InvalidRequestError,
    PreconditionError,
    UnknownModelError,
    WorkerUnavailableError,
)

PREFILL_ROLES = ("prefill", "mixed")
DECODE_ROLES = ("decode", "mixed")


@dataclass
class PoolEntry:
    """One worker as the gateway dispatches to it."""

    name: str
    model: str
    rank: int
    """Index among the model's workers: its rank in the model's KV collective group."""
    role: str = "mixed"
    draining: bool = False
    prefilling: int = 0
    """Requests this gateway sent here that have no first token yet."""
    decoding: int = 0
    """Requests this gateway sent here that are past their first token."""
    alive: bool = True
    """False from a failed call or report until the worker reports again."""

    @property
    def open(self) -> bool:
        """Takes new requests: alive and not draining."""
        return self.alive and not self.draining

    @property
    def takes_prefill(self) -> bool:
        return self.role in PREFILL_ROLES and self.open

    @property
    def takes_decode(self) -> bool:
        return self.role in DECODE_ROLES and self.open

    @property
    def load(self) -> int:
        """Requests this gateway sent here that are not over."""
        return self.prefilling + self.decoding


@dataclass(frozen=True)
class Placement:
    """Where one request runs: `prefill` is None when its decode worker prefills it too."""

    decode: PoolEntry
    prefill: PoolEntry | None = None
    hit_blocks: int = 0
    """Leading prompt blocks the worker computing the prompt probably holds already."""


class WorkerPool:
    """Workers by model, with roles and loads (see module docstring)."""

    def __init__(
        self,
        workers: Iterable[tuple[str, str, str]],
        index: PrefixIndex | None = None,
        balance: float = 2.0,
    ) -> None:
        """`workers`: (name, model, role) in rank order per model; `index` for cache-aware
        placement, whose load bound starts at `balance` for every model."""
        self.entries: dict[str, PoolEntry] = {}
        ranks: dict[str, itertools.count[int]] = {}
        for name, model, role in workers:
            rank = next(ranks.setdefault(model, itertools.count()))
            self.entries[name] = PoolEntry(name, model, rank, role)
        self._rr = itertools.count()
        self.index = index
        self.balance = {m: balance for m in self.models} if index is not None else {}
        """Per model, `affinity.pick`'s load bound (the controller's balance lever); empty
        without cache-aware placement."""

    @property
    def models(self) -> list[str]:
        return sorted({e.model for e in self.entries.values()})

    def of_model(self, model: str) -> list[PoolEntry]:
        return [e for e in self.entries.values() if e.model == model]

    def get(self, name: str) -> PoolEntry:
        if name not in self.entries:
            raise UnknownModelError(f"no worker {name!r}; workers: {', '.join(self.entries)}")
        return self.entries[name]

    # -- placement -------------------------------------------------------------------------

    def place(
        self,
        model: str,
        prompt_tokens: int,
        min_prompt_tokens: int,
        keys: Sequence[object] = (),
        block_tokens: int = 1,
    ) -> Placement:
        """Choose the workers of one request (ties go round-robin). `keys`: the prompt's
        `affinity.prompt_keys`, runs of `block_tokens`; the index learns where they went."""
        entries = self.of_model(model)
        if not entries:
            raise UnknownModelError(f"model {model!r} is not served")
        start = next(self._rr)
        order = [entries[(start + i) % len(entries)] for i in range(len(entries))]
        live = [e for e in order if e.open]
        if not live:
            raise WorkerUnavailableError(f"model {model!r} has no live worker taking requests")
        decoders = [e for e in live if e.takes_decode] or live
        prefillers = [e for e in live if e.takes_prefill] or live
        decode = min(decoders, key=lambda e: (e.decoding, e.prefilling))
        index, balance = self.index, self.balance.get(model, 0.0)
        hits = {e.name: index.match(e.name, keys) for e in live} if index and keys else {}
        hits = hits if any(hits.values()) else {}  # nobody holds it: load alone decides

        def uncached(e: PoolEntry) -> int:
            return prompt_tokens - hits.get(e.name, 0) * block_tokens

        if hits:
            prefill = pick(prefillers, lambda e: e.prefilling, lambda e: hits[e.name], balance)
            if uncached(prefill) < min_prompt_tokens:
                # Little is left to compute: one worker does it, the one holding most of it
                # (its load counts its decodes too: it will decode this one as well).
                decode = pick(decoders, lambda e: e.load, lambda e: hits[e.name], balance)
        else:
            prefill = min(prefillers, key=lambda e: (e.prefilling, e.decoding))
        if prefill is decode or uncached(decode) < min_prompt_tokens:
            placement = Placement(decode, hit_blocks=hits.get(decode.name, 0))
        else:
            placement = Placement(decode, prefill, hits.get(prefill.name, 0))
        if index is not None:  # after a hand-off the decode worker caches the imported blocks too
            for name in {placement.decode.name, (placement.prefill or placement.decode).name}:
                index.add(name, keys)
        return placement

    def rescue(self, model: str, exclude: Iterable[str]) -> PoolEntry:
        """The live worker a request that broke on `exclude` resumes on: decode-capable and
        least busy first; any role will do, draining only when nothing else is left."""
        failed = set(exclude)
        live = [e for e in self.of_model(model) if e.alive and e.name not in failed]
        if not live:
            raise WorkerUnavailableError(f"model {model!r} has no live worker left to resume on")
        return min(live, key=lambda e: (e.draining, not e.takes_decode, e.decoding, e.prefilling))

    def count(self, before: Mapping[str, str], after: Mapping[str, str]) -> None:
        """Move one request's load from `before` to `after` (its route's `load` on either side
        of a step: worker -> "prefilling" or "decoding")."""
        for loads, sign in ((before, -1), (after, 1)):
            for name, kind in loads.items():
                entry = self.entries.get(name)
                if entry is None:
                    continue
                if kind == "prefilling":
                    entry.prefilling += sign
                else:
                    entry.decoding += sign

    # -- run-time changes ------------------------------------------------------------------

    def set_alive(self, name: str, alive: bool) -> bool:
        """Record a worker's health; True when it changed. A worker found dead comes back with
        an empty cache: the index forgets it."""
        entry = self.entries.get(name)
        if entry is None or entry.alive == alive:
            return False
        entry.alive = alive
        if not alive and self.index is not None:
            self.index.forget(name)
        return True

    def set_balance(self, model: str, balance: float) -> float:
        """Change a model's placement load bound (cache-aware placement only)."""
        if model not in self.balance:
            raise PreconditionError(f"model {model!r} has no cache-aware placement")
        if balance < 1.0:
            raise InvalidRequestError("balance", f"must be >= 1, got {balance}")
        self.balance[model] = balance
        return balance

    def set_role(self, name: str, role: str) -> PoolEntry:
        """Change a worker's role (refused if it would leave its model without a prefill- or
        decode-capable worker); returns the entry."""
        if role not in WORKER_ROLES:
            raise InvalidRequestError("role", f"must be one of {WORKER_ROLES}, got {role!r}")
        entry = self.get(name)
        self._check_after(entry, role, entry.draining)
        entry.role = role
        return entry

    def set_draining(self, name: str, draining: bool) -> PoolEntry:
        """Stop (or resume) sending new requests to a worker; its held work goes on."""
        entry = self.get(name)
        self._check_after(entry, entry.role, draining)
        entry.draining = draining
        return entry

    def _check_after(self, entry: PoolEntry, role: str, draining: bool) -> None:
        others = [e for e in self.of_model(entry.model) if e is not entry]
        changed = PoolEntry(entry.name, entry.model, entry.rank, role, draining, alive=entry.alive)
        after = [*others, changed]
        for kind, ok in (("prefill", "takes_prefill"), ("decode", "takes_decode")):
            if not any(getattr(e, ok) for e in after):
                raise PreconditionError(
                    f"{entry.name}: model {entry.model} would have no {kind}-capable worker "
                    "taking new requests"
                )
