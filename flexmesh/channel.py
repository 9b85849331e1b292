"""The one way clients (CLI, load generator, benchmarks) open a channel to a gateway.

Two environment variables set it up for a gateway that is not the local default:
`FLEXMESH_TLS_CA` (a PEM file of the CA that signed the gateway's certificate: TLS) and
`FLEXMESH_ADMIN_TOKEN` (sent as `authorization: Bearer <token>` on every Admin call).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from flexmesh import env

ADMIN_PREFIX = "/flexmesh.v1.Admin/"


class _BearerToken(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds the Admin token to Admin calls (all of them unary)."""

    def __init__(self, token: str) -> None:
        self.header = ("authorization", f"Bearer {token}")

    async def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], details: Any, request: Any
    ) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        if method.startswith(ADMIN_PREFIX):
            metadata = grpc.aio.Metadata(*(details.metadata or ()), self.header)
            details = details._replace(metadata=metadata)
        return await continuation(details, request)


def open_channel(
    target: str,
    options: Sequence[tuple[str, Any]] = (),
    admin_token: str | None = None,
    tls_ca: str | None = None,
) -> grpc.aio.Channel:
    """A channel to `target`; token and CA default to the environment (see module docs)."""
    token = env.admin_token() if admin_token is None else admin_token
    ca = env.tls_ca() if tls_ca is None else tls_ca
    interceptors = [_BearerToken(token)] if token else None
    if ca:
        creds = grpc.ssl_channel_credentials(Path(ca).read_bytes())
        return grpc.aio.secure_channel(target, creds, options, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options, interceptors=interceptors)
