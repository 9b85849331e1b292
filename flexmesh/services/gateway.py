"""The gateway: a `grpc.aio` server inside a named Ray actor, with health and reflection.

Ray restarts the gateway when it dies (`actor_max_restarts`). The restarted actor serves again
on the same port with the policy, pins, roles and drains it had (`actors/state.py`); the
streams it was carrying are lost (UNAVAILABLE to their clients), the workers free their KV.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import ray
import uvicorn
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from flexmesh.actors.client import ProbeClient, WorkerClient, WorkerClientProtocol
from flexmesh.actors.state import GatewayStateStore, restarted
from flexmesh.actors.telemetry import GatewayMetrics
from flexmesh.logs import configure_logging
from flexmesh.meshcore.config import MeshConfig
from flexmesh.meshcore.controller_policy import Action, Snapshot
from flexmesh.services.auth import AdminTokenInterceptor
from flexmesh.services.core.frontend import Frontend, estimate_tokens
from flexmesh.services.errors import ErrorInterceptor
from flexmesh.services.http import ChatTemplates, OpenAIServer, serve_http
from flexmesh.services.servicers import AdminServicer, GenerationServicer
from flexmesh.v1 import flexmesh_pb2 as pb
from flexmesh.v1 import flexmesh_pb2_grpc as pb_grpc

SERVICE_NAMES = (
    pb.DESCRIPTOR.services_by_name["Generation"].full_name,
    pb.DESCRIPTOR.services_by_name["Admin"].full_name,
)


async def serve_frontend(frontend: Frontend, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """Start a gRPC server over `frontend`; return it and the bound port. Message sizes, the
    Admin token and TLS come from `frontend.config.gateway`."""
    gw = frontend.config.gateway
    interceptors: list[grpc.aio.ServerInterceptor] = [ErrorInterceptor()]
    if gw.admin_token:
        interceptors.insert(0, AdminTokenInterceptor(gw.admin_token))
    sizes = [
        ("grpc.max_receive_message_length", gw.max_message_bytes),
        ("grpc.max_send_message_length", gw.max_message_bytes),
    ]
    server = grpc.aio.server(interceptors=interceptors, options=sizes)
    pb_grpc.add_GenerationServicer_to_server(GenerationServicer(frontend), server)
    pb_grpc.add_AdminServicer_to_server(AdminServicer(frontend), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    address = f"{host}:{port}"
    if gw.tls_cert_file:
        key, cert = Path(gw.tls_key_file).read_bytes(), Path(gw.tls_cert_file).read_bytes()
        bound = server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise RuntimeError(f"cannot bind gRPC server to {address}")
    await server.start()
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, bound


class Gateway:
    """Actor shell: builds worker clients from actor names and serves gRPC on its event loop."""

    def __init__(
        self,
        config: MeshConfig,
        worker_names: dict[str, list[str]],
        model_paths: dict[str, str] | None = None,
    ) -> None:
        configure_logging()
        self.config = config
        timeout = config.gateway.worker_timeout_s
        clients: dict[str, list[WorkerClientProtocol]] = {
            model: [
                WorkerClient(ray.get_actor(n, namespace=config.namespace), n, model, timeout)
                for n in names
            ]
            for model, names in worker_names.items()
        }
        probe = None
        if config.adaptive:
            probe = ProbeClient(
                ray.get_actor("probe", namespace=config.namespace), config.probe.timeout_s
            )
        self.model_paths = dict(model_paths or {})
        # Tokenizers count the prompts of models that hand off; the HTTP API's chat templates
        # need every model's. Loaded only where needed: a gateway restart waits for them.
        needed = {
            m: p
            for m, p in self.model_paths.items()
            if config.gateway.http_port is not None or len(worker_names.get(m, ())) > 1
        }
        self.tokenizers = _load_tokenizers(needed)
        self.frontend = Frontend(
            config, clients, probe, GatewayMetrics(), _token_counter(worker_names, self.tokenizers)
        )
        self.server: grpc.aio.Server | None = None
        self.http: uvicorn.Server | None = None
        self.http_bound: int | None = None
        """The HTTP API's port (None while it is off)."""
        self.store = GatewayStateStore(config.namespace)
        self._restart: asyncio.Task[int] | None = None
        if restarted():
            saved = self.store.load()
            if "ops" in saved:
                self.frontend.ops.restore(saved["ops"])
            # Ray runs an async actor's constructor on its event loop: serve again from here.
            self._restart = asyncio.get_running_loop().create_task(
                self.start(saved.get("port"), saved.get("http_port"))
            )
        else:
            self.store.clear()  # a previous mesh of this namespace left it
        self.frontend.ops.on_change = lambda state: self.store.save(ops=state)

    async def start(self, port: int | None = None, http_port: int | None = None) -> int:
        """Serve gRPC on `gateway.port`, and HTTP on `gateway.http_port` when set (or on the
        ports a restarted gateway had)."""
        gw = self.config.gateway
        self.server, bound = await serve_frontend(self.frontend, gw.host, port or gw.port)
        self.store.save(port=bound)
        if gw.http_port is not None:
            render = ChatTemplates(self.tokenizers).render
            self.http, self.http_bound = await serve_http(
                OpenAIServer(self.frontend, render, gw.api_key, self.model_paths),
                gw,
                http_port or gw.http_port,
            )
            self.store.save(http_port=self.http_bound)
        self.frontend.start()
        return bound

    def http_port(self) -> int | None:
        """The HTTP API's bound port (None when it is off)."""
        return self.http_bound

    async def stop(self) -> None:
        self.frontend.stop()
        if self.http is not None:
            self.http.should_exit = True
        if self.server is not None:
            await self.server.stop(grace=2.0)

    def ping(self) -> int:
        return self.frontend.in_flight

    # -- the controller's side of the gateway ----------------------------------------------

    def snapshot(self) -> Snapshot:
        """The latest worker reports, the live and configured policy, pins and traffic."""
        return self.frontend.snapshot()

    async def apply(self, actions: list[Action], policy_version: int) -> list[str]:
        """Carry out the controller's actions (`Operations.apply`); one error line each refused."""
        return await self.frontend.ops.apply(actions, policy_version)


def _load_tokenizers(model_paths: dict[str, str]) -> dict[str, Any]:
    """Each model's tokenizer, from its local folder (no download, no remote code)."""
    from transformers import AutoTokenizer

    return {
        model: AutoTokenizer.from_pretrained(path, trust_remote_code=False, local_files_only=True)
        for model, path in model_paths.items()
    }


def _token_counter(
    worker_names: dict[str, list[str]], tokenizers: dict[str, Any]
) -> Callable[[str, str], int]:
    """Exact prompt lengths (for conditional disaggregation) from the tokenizers of the models
    that have more than one worker; an estimate for the others, which never hand off."""
    exact = {
        m: tokenizers[m] for m, names in worker_names.items() if len(names) > 1 and m in tokenizers
    }

    def count(model: str, prompt: str) -> int:
        tok = exact.get(model)
        return (
            len(tok.encode(prompt, add_special_tokens=False))
            if tok
            else estimate_tokens(model, prompt)
        )

    return count


GatewayActor: Any = ray.remote(num_cpus=0, max_concurrency=1000)(Gateway)
