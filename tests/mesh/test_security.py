"""Security defaults through real gRPC over fake workers: the Admin token, TLS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flexmesh.channel import open_channel
from flexmesh.meshcore.config import GatewayConfig, MeshConfig, ModelSpec
from flexmesh.services.core.frontend import Frontend
from flexmesh.services.gateway import serve_frontend
from flexmesh.services.grpc_client import stream_generate
from flexmesh.v1 import flexmesh_pb2 as pb
from flexmesh.v1 import flexmesh_pb2_grpc as pb_grpc
from tests.mesh.fake_worker import FakeWorker

TOKEN = "s3cret-token"


async def _serve(gw: GatewayConfig) -> AsyncIterator[int]:
    worker = FakeWorker("w", "m", tokens=2)
    frontend = Frontend(MeshConfig(models=(ModelSpec(name="m"),), gateway=gw), {"m": [worker]})
    server, port = await serve_frontend(frontend, "127.0.0.1", 0)
    yield port
    await server.stop(None)


@pytest.fixture
async def locked() -> AsyncIterator[int]:
    async for port in _serve(GatewayConfig(port=0, admin_token=TOKEN)):
        yield port


@pytest.mark.parametrize("token", ["", "wrong", TOKEN])
async def test_admin_needs_the_bearer_token(locked: int, token: str) -> None:
    async with open_channel(f"127.0.0.1:{locked}", admin_token=token, tls_ca="") as ch:
        admin = pb_grpc.AdminStub(ch)
        calls = [
            admin.GetStatus(pb.GetStatusRequest(), timeout=5),
            admin.SetPolicy(pb.SetPolicyRequest(spill_queue_ms=900.0), timeout=5),
            admin.UnpinWorker(pb.UnpinWorkerRequest(worker="w"), timeout=5),
        ]
        for call in calls:
            if token == TOKEN:
                assert await call  # answered
                continue
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert ("required" if not token else "wrong") in err.value.details()
        policy = await admin.GetPolicy(pb.GetPolicyRequest(), timeout=5) if token == TOKEN else None
        assert policy is None or policy.spill_queue_ms == 900.0
        # Generation and health stay open.
        res = await stream_generate(pb_grpc.GenerationStub(ch), pb.GenerateRequest(prompt="p"), 5)
        assert res.final is not None
        check = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        assert check.status == health_pb2.HealthCheckResponse.SERVING


async def test_tls_from_a_cert_and_key_in_config(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    files = {name: tmp_path / name for name in ("ca.pem", "cert.pem", "key.pem")}
    ca.cert_pem.write_to_path(str(files["ca.pem"]))
    cert.private_key_pem.write_to_path(str(files["key.pem"]))
    cert.cert_chain_pems[0].write_to_path(str(files["cert.pem"]))
    gw = GatewayConfig(
        port=0, tls_cert_file=str(files["cert.pem"]), tls_key_file=str(files["key.pem"])
    )
    async for port in _serve(gw):
        async with open_channel(f"localhost:{port}", tls_ca=str(files["ca.pem"])) as ch:
            res = await stream_generate(
                pb_grpc.GenerationStub(ch), pb.GenerateRequest(prompt="p"), 5
            )
            assert res.final is not None and res.token_ids == [0, 1]
        async with open_channel(f"localhost:{port}", tls_ca="") as plain:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stream_generate(
                    pb_grpc.GenerationStub(plain), pb.GenerateRequest(prompt="p"), 5
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
