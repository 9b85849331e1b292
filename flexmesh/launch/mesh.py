"""Start a mesh: Ray (embedded or an existing cluster), named workers, then the gateway."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import ray
import structlog
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

from flexmesh import env
from flexmesh.actors.controller import ControllerActor
from flexmesh.actors.probe.actor import ProbeActor
from flexmesh.actors.runner.demo_models import DEMO_MODELS, build_demo_models, is_built
from flexmesh.actors.worker import WorkerActor
from flexmesh.launch.config_file import DEFAULT_MODELS_DIR, model_folders
from flexmesh.launch.resources import (
    DEVICE_RESOURCE,
    DevicesMissingError,
    required_resources,
    wait_for_resources,
)
from flexmesh.meshcore.config import MeshConfig, ModelSpec
from flexmesh.services.gateway import GatewayActor

log = structlog.get_logger(__name__)

DEMO_NAMES = {s.name for s in DEMO_MODELS}


@dataclass
class Mesh:
    """Handles of a running mesh, for the CLI, benchmarks and tests."""

    config: MeshConfig
    address: str
    gateway: Any
    actors: dict[str, Any]
    """Named actors besides the gateway: workers, the probe, the controller."""
    owns_ray: bool
    http_address: str | None = None
    """HOST:PORT of the OpenAI-compatible HTTP API (None when it is off)."""
    placement_groups: list[PlacementGroup] = field(default_factory=list)
    """One a packed model (`place_workers`)."""

    def shutdown(self) -> None:
        try:
            ray.get(self.gateway.stop.remote(), timeout=10)
        except Exception:
            pass
        for handle in [self.gateway, *self.actors.values()]:
            ray.kill(handle)
        for pg in self.placement_groups:
            remove_placement_group(pg)
        if self.owns_ray:
            ray.shutdown()


def resolve_model_paths(config: MeshConfig) -> dict[str, str]:
    """Local folder of every model; demo models are built on first use, and again when the
    demo recipe changed since they were built."""
    root = Path(config.models_dir or DEFAULT_MODELS_DIR).expanduser()
    paths = model_folders(config)
    stale_demo = [n for n, p in paths.items() if p.name in DEMO_NAMES and p.parent == root
                  and not is_built(p)]  # fmt: skip
    if stale_demo:
        log.info("models.build_demo", into=str(root), models=stale_demo)
        build_demo_models(root)
    for name, path in paths.items():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"model {name}: no Hugging Face folder at {path}")
    return {n: str(p) for n, p in paths.items()}


def init_ray(
    address: str | None, dashboard: bool, namespace: str, log_to_driver: bool = True
) -> bool:
    """Join `address` or start an embedded instance; True when this process owns Ray."""
    if ray.is_initialized():
        return False
    if address:
        ray.init(
            address=address,
            namespace=namespace,
            logging_level="WARNING",
            log_to_driver=log_to_driver,
        )
        return False
    # No auth: local embedded use only. Ray starts workers at nice 15; a model worker then
    # loses its cores to every other process and its OpenMP barriers stall (the README's
    # gRPC benchmark).
    env.set_defaults({"RAY_AUTH_MODE": "disabled", "RAY_worker_niceness": "0"})
    ray.init(
        address="local",  # a new instance even when `ray start` runs one on this machine
        namespace=namespace,
        include_dashboard=dashboard,
        logging_level="WARNING",
        object_store_memory=512 * 1024 * 1024,
        log_to_driver=log_to_driver,
    )
    return True


KERNEL_CACHE_ENV = {"LRU_CACHE_CAPACITY": "16", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "256"}
"""Bounds of the CPU kernel caches in a worker's process (an environment variable of the same
name set for `flexmesh serve` wins). PyTorch's oneDNN path (`engine.cpu_packed_weights`) builds
a kernel per input shape: with the default 1024 entries of both caches and a step's shape
changing with every batch, a worker's memory grew for as long as new shapes came (demo-small:
+0.5 MB per request, 0.68 -> 1.46 GB in two minutes of a soak-like mix). Row counts are
bucketed (`model.padded_rows`: 36 sizes up to 512 tokens, 5 projection shapes a model), so 256
oneDNN kernels hold every shape of a model and its draft; ideep's own cache needs no more than
16. Fewer oneDNN entries rebuild kernels all the time (~0.5 ms per projection; docs/engine.md)."""


PLACEMENT_TIMEOUT_S = 60.0
"""Longest wait for a model's placement group before `start_mesh` fails naming the model."""


def worker_bundle(spec: ModelSpec, device: str, cluster: dict[str, float]) -> dict[str, float]:
    """Ray resources of one worker: an NPU, a GPU, or CPUs, plus the model's own resources.

    An explicit `npu` or `cuda` device always asks for its resource, so Ray itself can place
    the worker only on a node that has one; a cluster with none at all is refused here, before
    any worker loads a model (the engine would fail on that node anyway).
    """
    need = DEVICE_RESOURCE.get(device)
    if need is not None and cluster.get(need, 0) < 1:
        raise DevicesMissingError(
            f"model {spec.name}: engine.device is {device!r} but the Ray cluster has no "
            f"{need} resource (resources: {cluster})"
        )
    if device in ("auto", "npu") and cluster.get("NPU", 0) >= 1:
        bundle = {"NPU": 1.0, "CPU": 1.0}
    elif device in ("auto", "cuda") and cluster.get("GPU", 0) >= 1:
        bundle = {"GPU": 1.0, "CPU": 1.0}
    else:
        bundle = {"CPU": float(spec.num_cpus)}
    return {**bundle, **{k: float(v) for k, v in spec.resources.items()}}


def place_workers(
    spec: ModelSpec, bundle: dict[str, float]
) -> tuple[PlacementGroup | None, list[Any]]:
    """Where a model's workers go: its placement group (None for `spread`) and each worker's
    scheduling strategy.

    `pack`: one STRICT_PACK placement group, a bundle a worker, all on one node (fails naming
    the model if no node fits them). `spread`: Ray's SPREAD strategy per worker, no group.
    NOTE: in Ray 2.60 a placement group that lost a node and cannot be placed again keeps the
    GCS busy-spinning (ray-project/ray#65007: a core of the head node and its dashboard agent's,
    measured here, until capacity comes back); spread workers whose node is lost just wait as
    pending actors, so spreading, whose point is surviving a node, takes no group.
    """
    if spec.placement == "spread":
        return None, ["SPREAD"] * spec.num_workers
    pg = placement_group([bundle] * spec.num_workers, strategy="STRICT_PACK")
    try:
        ray.get(pg.ready(), timeout=PLACEMENT_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise RuntimeError(
            f"model {spec.name}: {spec.num_workers} workers of {bundle} do not fit one node "
            f"(placement: pack; Ray resources: {ray.cluster_resources()})"
        ) from None
    strategies = [
        PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)
        for i in range(spec.num_workers)
    ]
    return pg, strategies


def worker_options(bundle: dict[str, float], strategy: Any) -> dict[str, Any]:
    """Actor options of a worker: its resources, where it goes, its process environment."""
    custom = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU")}
    return {
        "runtime_env": {"env_vars": env.overridden(KERNEL_CACHE_ENV)},
        "num_cpus": bundle.get("CPU", 0.0),
        "num_gpus": bundle.get("GPU", 0.0),
        "resources": custom,
        "scheduling_strategy": strategy,
    }


def join_kv_group(config: MeshConfig, model: str, workers: list[Any]) -> None:
    """Put a model's workers in one collective group for KV hand-offs (rank = worker index).

    Without it (a join that fails, e.g. no backend for the device) hand-offs go through the
    object store: slower, never wrong.
    """
    group = f"{config.namespace}-kv-{model}"
    try:
        refs = [w.join_kv_group.remote(group, len(workers), i) for i, w in enumerate(workers)]
        backends = ray.get(refs, timeout=60)
        log.info("kv.group_joined", group=group, backend=backends[0], size=len(workers))
    except Exception as exc:
        log.warning("kv.group_failed", group=group, error=f"{type(exc).__name__}: {exc}")


def start_mesh(
    config: MeshConfig,
    address: str | None = None,
    dashboard: bool = False,
    log_to_driver: bool = True,
    wait_for_devices_s: float = 0.0,
) -> Mesh:
    """Start workers and the gateway; returns once gRPC (and HTTP, when on) is serving. The
    FLEXMESH_ADMIN_TOKEN and FLEXMESH_API_KEY environment variables set the Admin token and
    the HTTP API key when the config holds none. Before any worker starts, waits up to
    `wait_for_devices_s` for the devices and custom resources the workers need to join the
    cluster, then raises `DevicesMissingError` (0: check once)."""
    gw = config.gateway
    config = replace(
        config,
        gateway=replace(
            gw,
            admin_token=gw.admin_token or env.admin_token(),
            api_key=gw.api_key or env.api_key(),
        ),
    )
    paths = resolve_model_paths(config)
    owns_ray = init_ray(address, dashboard, config.namespace, log_to_driver)
    try:
        cluster = wait_for_resources(required_resources(config), wait_for_devices_s)
    except DevicesMissingError:
        if owns_ray:
            ray.shutdown()
        raise
    actors: dict[str, Any] = {}
    names: dict[str, list[str]] = {}
    groups: list[PlacementGroup] = []
    for spec in config.models:
        engine_cfg = config.engine
        if engine_cfg.num_threads == 0:
            engine_cfg = replace(engine_cfg, num_threads=max(1, int(spec.num_cpus)))
        bundle = worker_bundle(spec, config.engine.device, cluster)
        pg, strategies = place_workers(spec, bundle)
        groups += [pg] if pg is not None else []
        for i in range(spec.num_workers):
            name = f"worker-{spec.name}-{i}"
            actors[name] = WorkerActor.options(
                name=name,
                namespace=config.namespace,
                max_restarts=config.actor_max_restarts,
                **worker_options(bundle, strategies[i]),
            ).remote(
                name,
                spec.name,
                paths[spec.name],
                engine_cfg,
                spec.role_of(i),
                config.gateway,
                paths[spec.draft_model] if spec.draft_model else None,
                config.pd,
                config.namespace,
                spec.quantization,
            )
            names.setdefault(spec.name, []).append(name)
    ray.get([w.ready.remote() for w in actors.values()])
    for model, members in names.items():
        if len(members) > 1 and config.pd.transport != "object_store":
            join_kv_group(config, model, [actors[n] for n in members])
    if config.adaptive:
        small = config.routing.small_model
        actors["probe"] = ProbeActor.options(
            name="probe", namespace=config.namespace, max_restarts=config.actor_max_restarts
        ).remote(
            config.probe.backend,
            config.routing.long_context_tokens,
            config.probe.part_confidence,
            **(
                {
                    "small_worker": names[small][0],
                    "namespace": config.namespace,
                    "small_model_path": paths[small],
                }
                if config.probe.backend == "lm"
                else {}
            ),
        )
    if "probe" in actors:
        ray.get(actors["probe"].ready.remote())  # fail here, not on the first request
    # The gateway serves on this node (the one that started the mesh), so the address printed
    # here, a Kubernetes head Service or a load balancer in front of it reach it.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    gateway = GatewayActor.options(
        name="gateway",
        namespace=config.namespace,
        max_restarts=config.actor_max_restarts,
        scheduling_strategy=here,
    ).remote(config, names, paths)
    port = ray.get(gateway.start.remote())
    if config.controller.enabled:
        actors["controller"] = ControllerActor.options(
            name="controller", namespace=config.namespace, max_restarts=config.actor_max_restarts
        ).remote(config)
        ray.get(actors["controller"].ready.remote())
    address = f"{config.gateway.host}:{port}"
    http_port = ray.get(gateway.http_port.remote())
    http = f"{config.gateway.host}:{http_port}" if http_port is not None else None
    log.info("mesh.serving", address=address, http=http, actors=sorted(actors))
    return Mesh(config, address, gateway, actors, owns_ray, http, groups)
