"""Run-time changes to the worker pool and the operator's view of it.

Two writers change roles and the routing policy: the operator (Admin `SetWorkerRole`,
`SetPolicy`; `flexmesh workers role`, `flexmesh policy set`) and the controller actor, which
also sets mixed workers' prefill budgets and, with cache-aware placement, each model's placement
balance (the operator through `SetPolicy`'s `placement_balance`). An operator's change **pins**
the worker or the policy fields it set: the controller never changes them until the operator
unpins them. Every change is a log event and a `Decision` kept for `Admin/GetStatus`. Status
reads are bounded per worker, so one slow or dead worker cannot stall a snapshot.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import structlog

from flexmesh.actors.client import WorkerClientProtocol
from flexmesh.meshcore.controller_policy import BALANCE_PIN, Action, policy_changes
from flexmesh.meshcore.errors import FlexMeshError, PreconditionError, WorkerUnavailableError
from flexmesh.meshcore.messages import Decision, WorkerStatus
from flexmesh.meshcore.pool import WorkerPool
from flexmesh.meshcore.routing import Router, RoutingConfig, is_pinned, leaves

log = structlog.get_logger(__name__)


class Operations:
    """Roles, budgets, draining, pins and status of the workers behind one gateway, and every
    write to its routing policy."""

    def __init__(
        self,
        pool: WorkerPool,
        clients: Mapping[str, WorkerClientProtocol],
        router: Router,
        history: int,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.pool, self.clients, self.router = pool, dict(clients), router
        self.wall_clock = wall_clock
        self.pins: set[str] = set()
        """Workers whose role the operator set: the controller leaves them alone."""
        self.policy_pins: set[str] = set()
        """Policy fields the operator set (dotted paths): the controller leaves them alone."""
        self.decisions: deque[Decision] = deque(maxlen=history)
        """The latest changes (roles, budgets, policy), operator's and controller's."""
        self._last: dict[str, WorkerStatus] = {}
        """Each worker's latest report (stands in while a busy worker answers late)."""
        self.on_change: Callable[[dict[str, Any]], None] | None = None
        """Called with `state()` after every change (the gateway keeps it beyond a restart)."""

    def state(self) -> dict[str, Any]:
        """What a restarted gateway needs back (plain data): the live policy, the pins, the
        roles and drains (prefill budgets live in the workers)."""
        entries = self.pool.entries
        return {
            "policy": self.router.policy.to_dict(),
            "balance": dict(self.pool.balance),
            "policy_pins": sorted(self.policy_pins),
            "pins": sorted(self.pins),
            "roles": {name: e.role for name, e in entries.items()},
            "draining": sorted(name for name, e in entries.items() if e.draining),
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take back a `state()` (workers this gateway does not know are ignored)."""
        self.router.policy = RoutingConfig.from_dict(state["policy"])
        self.policy_pins, self.pins = set(state["policy_pins"]), set(state["pins"])
        for model, ratio in state.get("balance", {}).items():
            if model in self.pool.balance:
                self.pool.balance[model] = ratio
        for name, entry in self.pool.entries.items():
            entry.role = state["roles"].get(name, entry.role)
            entry.draining = name in state["draining"]
        log.info("gateway.restored", policy_version=self.router.policy.version, pins=state["pins"])

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self.state())

    async def set_role(
        self,
        worker: str,
        role: str,
        by: str = "operator",
        reason: str = "",
        inputs: Mapping[str, float] | None = None,
    ) -> WorkerStatus:
        """Change a worker's role for new requests (the work it holds goes on).

        `by="operator"` pins the worker; `by="controller"` is refused on a pinned worker.
        """
        entry = self.pool.get(worker)
        if by != "operator":
            self._check_unpinned(worker)
        old = entry.role
        self.pool.set_role(worker, role)
        try:
            await self.clients[worker].set_role(role)
        except WorkerUnavailableError:
            self.pool.set_role(worker, old)
            raise
        if by == "operator":
            self.pins.add(worker)
        self.record("role", worker, old, role, by, reason, inputs)
        self._changed()
        return await self.status_of(self.clients[worker])

    async def set_prefill_budget(
        self, worker: str, old: int, tokens: int, reason: str, inputs: Mapping[str, float]
    ) -> None:
        """The controller's change of a mixed worker's prefill share (refused when pinned)."""
        self.pool.get(worker)
        self._check_unpinned(worker)
        await self.clients[worker].set_prefill_budget(tokens)
        self.record("prefill_budget", worker, old, tokens, "controller", reason, inputs)

    def set_balance(
        self,
        model: str,
        ratio: float,
        by: str = "operator",
        reason: str = "",
        inputs: Mapping[str, float] | None = None,
    ) -> float:
        """Change a model's cache-aware placement bound (`affinity.pick`). The operator's change
        pins `placement_balance.<model>` (a policy pin: `unpin_policy` hands it back); the
        controller's is refused while it is pinned."""
        key = f"{BALANCE_PIN}.{model}"
        if by != "operator" and is_pinned(key, self.policy_pins):
            raise PreconditionError(f"{key} is pinned by the operator (flexmesh policy unpin)")
        old = self.pool.balance.get(model)
        self.pool.set_balance(model, ratio)
        if by == "operator":
            self.policy_pins.add(key)
        self.record("balance", model, old, ratio, by, reason, inputs)
        self._changed()
        return ratio

    def _check_unpinned(self, worker: str) -> None:
        if worker in self.pins:
            raise PreconditionError(f"{worker} is pinned by the operator (flexmesh workers unpin)")

    def set_policy(
        self,
        changes: Mapping[str, object],
        expected_version: int,
        by: str = "operator",
        reasons: Mapping[str, str] | None = None,
    ) -> RoutingConfig:
        """Apply a live policy change (version-checked); each changed field is a `Decision`.

        The operator's change pins the fields it sets; the controller's (`reasons` by field) is
        refused when it touches a pinned field.
        """
        paths = leaves(changes)
        if by != "operator":
            pinned = sorted(p for p in paths if is_pinned(p, self.policy_pins))
            if pinned:
                raise PreconditionError(f"policy fields pinned by the operator: {pinned}")
        old = leaves(self.router.policy.to_dict())
        policy = self.router.update(changes, expected_version or self.router.policy.version)
        new = leaves(policy.to_dict())
        if by == "operator":
            self.policy_pins.update(paths)
        for path in paths:
            if old.get(path) != new.get(path):
                reason = (reasons or {}).get(path, "")
                self.record("policy", path, old.get(path), new.get(path), by, reason)
        log.info("policy.changed", version=policy.version, by=by, changes=dict(changes))
        self._changed()
        return policy

    def unpin_policy(self, fields: list[str]) -> list[str]:
        """Hand policy fields (and those under them; all when `fields` is empty) back to the
        controller; returns the fields still pinned."""
        gone = {p for p in self.policy_pins if not fields or is_pinned(p, fields)}
        self.policy_pins -= gone
        log.info("policy.unpinned", fields=sorted(gone))
        self._changed()
        return sorted(self.policy_pins)

    def record(
        self,
        kind: str,
        target: str,
        old: object,
        new: object,
        by: str,
        reason: str = "",
        inputs: Mapping[str, float] | None = None,
    ) -> Decision:
        """Keep a change for `Admin/GetStatus` and log it with its inputs."""
        values = {k: round(float(v), 3) for k, v in (inputs or {}).items()}
        d = Decision(self.wall_clock(), kind, target, str(old), str(new), by, reason, values)
        self.decisions.append(d)
        log.info("decision", kind=kind, target=target, old=d.old, new=d.new, by=by,
                 reason=reason, inputs=values)  # fmt: skip
        return d

    async def apply(self, actions: list[Action], policy_version: int) -> list[str]:
        """Carry out the controller's actions; returns one error line per action refused.

        Policy changes apply together, only if the policy is still at `policy_version` (an
        operator's change in between wins; the controller decides again next round).
        """
        errors: list[str] = []
        for a in actions:
            try:
                if a.kind == "role":
                    await self.set_role(a.target, str(a.new), "controller", a.reason, a.inputs)
                elif a.kind == "prefill_budget":
                    await self.set_prefill_budget(
                        a.target, int(a.old), int(a.new), a.reason, a.inputs
                    )
                elif a.kind == "balance":
                    self.set_balance(a.target, float(a.new), "controller", a.reason, a.inputs)
            except FlexMeshError as exc:
                errors.append(f"{a.kind} {a.target}: {exc}")
        policy = [a for a in actions if a.kind == "policy"]
        if policy:
            try:
                reasons = {a.target: a.reason for a in policy}
                self.set_policy(policy_changes(policy), policy_version, "controller", reasons)
            except FlexMeshError as exc:
                errors.append(f"policy: {exc}")
        return errors

    async def unpin(self, worker: str) -> WorkerStatus:
        """Hand a worker's role back to the controller."""
        self.pool.get(worker)
        self.pins.discard(worker)
        log.info("worker.unpinned", worker=worker)
        self._changed()
        return await self.status_of(self.clients[worker])

    async def drain(self, worker: str, draining: bool = True) -> WorkerStatus:
        """Send a worker no new requests (or again); what it holds finishes. A log event."""
        self.pool.set_draining(worker, draining)
        log.info("worker.drain", worker=worker, draining=draining)
        self._changed()
        return await self.status_of(self.clients[worker])

    async def status(self, timeout_s: float | None = None) -> list[WorkerStatus]:
        """Every worker's report, each bounded by `timeout_s` (then it reads as not alive)."""
        clients = list(self.clients.values())
        return list(await asyncio.gather(*(self.status_of(w, timeout_s) for w in clients)))

    async def status_of(
        self, w: WorkerClientProtocol, timeout_s: float | None = None
    ) -> WorkerStatus:
        """A worker's report, with the role, draining flag and pin the gateway holds.

        A report waits for the worker's current engine step; a ping does not (and a worker too
        starved of CPU to answer it is still alive while Ray holds its actor alive). So a worker
        that passes the ping but does not report in time is busy, not dead: its last report
        stands with `alive` kept true. Only a worker that fails both reads as not alive, at
        once when the ping finds its actor restarting or dead (no report will come). A worker
        out of the pool (a call to it failed) comes back only by reporting: Ray's GCS may
        still hold a killed actor ALIVE for a moment.
        """
        ping = asyncio.ensure_future(w.ping(timeout_s))
        asked = asyncio.ensure_future(asyncio.wait_for(w.status(), timeout_s))
        await asyncio.wait((ping, asked), return_when=asyncio.FIRST_EXCEPTION)
        if asked.done() and asked.exception() is None:
            ping.cancel()
            s = asked.result()
        else:  # no report in time, or the ping found it lost first (then none will come)
            asked.cancel()
            (pinged,) = await asyncio.gather(ping, return_exceptions=True)  # bounded too
            answered = pinged is None
            if not answered:
                log.debug("worker.ping_failed", worker=w.name, error=repr(pinged)[:300])
            dead = WorkerStatus(w.name, w.model, "", "", "", 0, 0, 0, 0, 0.0, 0, alive=False)
            busy = answered and self.pool.get(w.name).alive  # a lost one must report to return
            s = replace(self._last.get(w.name, dead), alive=True) if busy else dead
        self._last[w.name] = s
        return self.overlay(s)

    def overlay(self, s: WorkerStatus) -> WorkerStatus:
        """A report with the role, draining flag and pin the gateway holds for its worker."""
        entry = self.pool.get(s.name)
        return replace(s, role=entry.role, draining=entry.draining, pinned=s.name in self.pins)
