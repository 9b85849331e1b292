"""The Admin service's bearer token: every Admin call must carry
`authorization: Bearer <gateway.admin_token>` metadata, else UNAUTHENTICATED.

Generation, health and reflection stay open (the gateway binds loopback by default; put TLS in
front, `gateway.tls_cert_file`, before exposing it). The token is compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from flexmesh.channel import ADMIN_PREFIX


class AdminTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses Admin calls without the token with UNAUTHENTICATED, before any handler runs."""

    def __init__(self, token: str) -> None:
        self.expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(ADMIN_PREFIX):
            return handler
        sent = dict(details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(str(sent).encode(), self.expected):
            return handler

        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
            why = "a bearer token is required" if not sent else "the bearer token is wrong"
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"Admin: {why} (authorization: Bearer <token>; FLEXMESH_ADMIN_TOKEN)",
            )

        return grpc.unary_unary_rpc_method_handler(
            refuse, handler.request_deserializer, handler.response_serializer
        )
