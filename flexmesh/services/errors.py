"""The one interceptor that maps FlexMesh's typed errors to gRPC status codes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import structlog

from flexmesh.meshcore.errors import status_name

log = structlog.get_logger(__name__)


def status_for(exc: BaseException) -> grpc.StatusCode:
    """Each typed error names its code (`FlexMeshError.status`); anything else is INTERNAL."""
    return grpc.StatusCode[status_name(exc)]


async def _abort(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> None:
    code = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("rpc.failed", method=method)
    else:
        log.info("rpc.rejected", method=method, code=code.name, reason=str(exc))
    await context.abort(code, str(exc) or type(exc).__name__)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Wraps unary and server-streaming handlers; typed errors become status codes.

    Streaming handlers write their messages with `context.write` (grpc.aio's writer API, as
    grpc_health's Watch does), so the wrapper is a coroutine, not one more generator layer
    every streamed chunk passes through.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        for kind, wrap in (
            ("unary_stream", grpc.unary_stream_rpc_method_handler),
            ("unary_unary", grpc.unary_unary_rpc_method_handler),
        ):
            inner = getattr(handler, kind)
            if inner is not None:
                return wrap(
                    _guard(inner, method), handler.request_deserializer, handler.response_serializer
                )
        return handler


def _guard(
    inner: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]], method: str
) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await inner(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, method)

    return guarded
