"""The controller actor: a reconcile loop around the pure policies of `meshcore/controller.py`.

Every `controller.interval_ms` it takes one snapshot from the gateway (each worker's report
bounded by `controller.status_timeout_ms`, the operator's pins), asks the policy for actions and
applies them through the gateway, the single place that dispatches by role. Each decision is a
`controller.decision` log event with its inputs and reason, a metric, and an entry in
`Admin/GetStatus`. The loop survives every exception. The controller keeps nothing that
matters: restarted by Ray, it reads the roles back from the gateway and goes on; while it is
down, serving goes on with the roles as they are.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import ray
import structlog
from ray.util import metrics

from flexmesh.logs import configure_logging
from flexmesh.meshcore.config import MeshConfig
from flexmesh.meshcore.controller import PDState, Snapshot, decide

log = structlog.get_logger(__name__)


class Controller:
    """Thin shell: the loop thread, the gateway handle, the policy's state."""

    def __init__(self, config: MeshConfig) -> None:
        configure_logging()
        self.config = config
        self.cfg = config.controller
        self.gateway = ray.get_actor("gateway", namespace=config.namespace)
        self.state = PDState()
        self.rounds = 0
        self.decisions = metrics.Counter(
            "flexmesh_controller_decisions", "Role changes decided", tag_keys=("kind",)
        )
        self.failures = metrics.Counter(
            "flexmesh_controller_round_failures", "Reconcile rounds that raised"
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

    def reconcile(self) -> list[Any]:
        """One round: snapshot, decide, apply. Returns the actions applied."""
        timeout_s = self.cfg.status_timeout_ms / 1000.0
        workers, pins = ray.get(self.gateway.snapshot.remote(timeout_s), timeout=timeout_s + 5)
        snap = Snapshot(time.monotonic(), tuple(workers))
        actions, self.state = decide(snap, self.state, frozenset(pins), self.cfg)
        for a in actions:
            log.info(
                "controller.decision",
                worker=a.worker,
                model=a.model,
                old=a.old,
                new=a.new,
                reason=a.reason,
                inputs={k: round(v, 2) for k, v in a.inputs.items()},
            )
            ref = self.gateway.apply_role.remote(a.worker, a.new, a.reason, dict(a.inputs))
            ray.get(ref, timeout=30)
            self.decisions.inc(1.0, {"kind": a.reason})
        return actions


ControllerActor: Any = ray.remote(num_cpus=0, max_restarts=-1)(Controller)
