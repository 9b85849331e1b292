"""The controller actor: a reconcile loop around the pure policies of
`meshcore/controller_policy.py`.

Every `controller.interval_ms` it takes one snapshot from the gateway (the workers' latest
reports from the gateway's bounded poll, pins, the live and configured routing policy, the
traffic window), asks the policies for actions and sends them to the gateway, the single place
that applies them. Each decision is a `decision` log event with its inputs and reason, a
counter by kind and rule, and an entry in `Admin/GetStatus`; the routing thresholds are gauges.
The loop survives every exception. The controller keeps nothing that matters: restarted by Ray,
it reads roles, budgets and the policy back from the gateway and goes on; while it is down,
serving goes on with everything as it is.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

import ray
import structlog
from ray.util import metrics

from flexmesh.logs import configure_logging
from flexmesh.meshcore.config import MeshConfig
from flexmesh.meshcore.controller_policy import Action, ControllerState, decide
from flexmesh.meshcore.routing import THRESHOLDS

log = structlog.get_logger(__name__)

APPLY_TIMEOUT_S = 30.0
"""Longest wait for the gateway to apply one round's actions."""


class Controller:
    """Thin shell: the loop thread, the gateway handle, the policies' state."""

    def __init__(self, config: MeshConfig) -> None:
        configure_logging()
        self.config = config
        self.cfg = config.controller
        self.gateway = ray.get_actor("gateway", namespace=config.namespace)
        self.state = ControllerState()
        self.rounds = 0
        self.decisions = metrics.Counter(
            "flexmesh_controller_decisions",
            "Changes decided by the controller",
            tag_keys=("kind", "reason"),
        )
        self.failures = metrics.Counter(
            "flexmesh_controller_round_failures", "Reconcile rounds that raised"
        )
        self.thresholds = metrics.Gauge(
            "flexmesh_routing_threshold", "Live routing thresholds", tag_keys=("field",)
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="controller-loop", daemon=True)
        self._thread.start()
        log.info("controller.started", interval_ms=self.cfg.interval_ms)

    def ready(self) -> int:
        return self.rounds

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        interval_s = self.cfg.interval_ms / 1000.0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.reconcile()
            except Exception:
                self.failures.inc()
                log.exception("controller.round_failed")
            self.rounds += 1
            self._stop.wait(max(0.0, interval_s - (time.monotonic() - started)))

    def reconcile(self) -> list[Action]:
        """One round: snapshot, decide, apply. Returns the actions sent."""
        snap = ray.get(self.gateway.snapshot.remote(), timeout=APPLY_TIMEOUT_S)
        snap = replace(snap, t_s=time.monotonic())  # the policies' dwell runs on our clock
        if snap.policy is not None:
            for name in THRESHOLDS:
                self.thresholds.set(getattr(snap.policy, name), {"field": name})
        actions, self.state = decide(snap, self.state, self.cfg)
        if not actions:
            return actions
        version = snap.policy.version if snap.policy is not None else 0
        ref = self.gateway.apply.remote(actions, version)
        for error in ray.get(ref, timeout=APPLY_TIMEOUT_S):
            log.warning("controller.refused", error=error)
        for a in actions:
            self.decisions.inc(1.0, {"kind": a.kind, "reason": a.reason})
        return actions


ControllerActor: Any = ray.remote(num_cpus=0)(Controller)
