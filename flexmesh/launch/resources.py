"""What the mesh's workers need of the Ray cluster, and waiting until it is there.

Worker pods of a KubeRay cluster or hosts of a cluster launcher join after the head; a worker
placed before its NPUs joined would land on a node without them. `flexmesh serve
--wait-for-devices-s` waits here, before any worker is placed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ray
import structlog

from flexmesh.meshcore.config import MeshConfig

log = structlog.get_logger(__name__)

DEVICE_RESOURCE = {"npu": "NPU", "cuda": "GPU"}
"""The Ray resource each worker of an explicitly configured `engine.device` needs (Ray detects
Ascend NPUs as `NPU`, CUDA GPUs as `GPU`). `auto` takes what the cluster has, `cpu` CPUs."""

WAIT_POLL_S = 2.0
"""How often `wait_for_resources` reads the cluster's resources."""

WAIT_LOG_EVERY_S = 30.0
"""A progress line at least this often while waiting (and whenever what is missing changes)."""


class DevicesMissingError(RuntimeError):
    """The Ray cluster lacks the devices or custom resources the config's workers need."""


def required_resources(config: MeshConfig) -> dict[str, float]:
    """Ray resources all of the config's workers need together: one NPU or GPU a worker when
    `engine.device` names one, plus each model's custom `resources`."""
    device = DEVICE_RESOURCE.get(config.engine.device)
    need: dict[str, float] = {}
    for spec in config.models:
        per_worker = {**({device: 1.0} if device else {}), **spec.resources}
        for key, amount in per_worker.items():
            need[key] = need.get(key, 0.0) + float(amount) * spec.num_workers
    return need


def _short(need: dict[str, float], cluster: dict[str, float]) -> dict[str, str]:
    """What the cluster lacks, as `have/need` a resource."""
    return {k: f"{cluster.get(k, 0.0):g}/{v:g}" for k, v in need.items() if cluster.get(k, 0.0) < v}


def _describe_nodes(nodes: list[dict[str, Any]], keys: list[str]) -> str:
    alive = [n for n in nodes if n.get("Alive")]
    per_node = [
        f"{n.get('NodeManagerAddress', '?')} "
        + " ".join(f"{k}={n.get('Resources', {}).get(k, 0):g}" for k in keys)
        for n in alive
    ]
    return f"{len(alive)} alive node(s): " + ("; ".join(per_node) or "none")


def wait_for_resources(
    need: dict[str, float],
    timeout_s: float,
    *,
    cluster_resources: Callable[[], dict[str, float]] | None = None,
    nodes: Callable[[], list[dict[str, Any]]] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    poll_s: float = WAIT_POLL_S,
) -> dict[str, float]:
    """Poll the Ray cluster until its resources cover `need`; return them.

    Worker pods of a KubeRay cluster or hosts of a cluster launcher join after the head, and a
    worker placed before its NPUs joined would land on a node without them. Raises
    `DevicesMissingError` naming what is missing after `timeout_s` (0: check once). The clock,
    sleep and both readers are arguments so tests run without Ray and without waiting.
    """
    read = cluster_resources or ray.cluster_resources
    deadline = clock() + timeout_s
    logged: tuple[dict[str, str], float] | None = None
    while True:
        cluster = read()
        short = _short(need, cluster)
        if not short:
            if logged is not None:
                log.info("mesh.resources_joined", resources={k: cluster[k] for k in need})
            return cluster
        now = clock()
        if now >= deadline:
            raise DevicesMissingError(
                f"the Ray cluster has {', '.join(f'{k} {v}' for k, v in short.items())} of what "
                f"the config's workers need (have/need) after waiting {timeout_s:g} s; "
                f"{_describe_nodes((nodes or ray.nodes)(), sorted(need))}. Start Ray on the "
                "device hosts with their resources (e.g. --resources='{\"NPU\": 8}'; KubeRay: "
                "the worker group's pods) or wait longer (flexmesh serve --wait-for-devices-s)"
            )
        if logged is None or logged[0] != short or now - logged[1] >= WAIT_LOG_EVERY_S:
            log.info("mesh.waiting_for_resources", missing=short, left_s=round(deadline - now))
            logged = (short, now)
        sleep(min(poll_s, deadline - now))
