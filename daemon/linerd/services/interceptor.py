"""The one interceptor every call passes: request context in, errors out, one log line."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog

from linerd import context
from linerd.core.filters import FilterSyntaxError
from linerd.errdefs import LinerError
from linerd.services.errors import status_code

log = structlog.get_logger("linerd.grpc")

# (method, code name, seconds) for every finished call; metrics subscribe here.
CallObserver = Callable[[str, str, float], None]

_request_ids = itertools.count(1)


class RequestInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, observers: list[CallObserver] | None = None) -> None:
        self.observers = observers if observers is not None else []
        # method -> (the service's handler, our wrapper of it). Wrapping once per method
        # instead of once per call saves building a handler for every request; the call's
        # metadata is read from its context instead.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        cached = self._wrapped.get(details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(details.method, handler)
        self._wrapped[details.method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        call = _Call(self, method)
        if handler.response_streaming:
            behavior = handler.unary_stream or handler.stream_stream
            wrapped = call.wrap_stream(behavior)
            factory = (
                grpc.unary_stream_rpc_method_handler
                if handler.unary_stream
                else grpc.stream_stream_rpc_method_handler
            )
        else:
            behavior = handler.unary_unary or handler.stream_unary
            wrapped = call.wrap_unary(behavior)
            factory = (
                grpc.unary_unary_rpc_method_handler
                if handler.unary_unary
                else grpc.stream_unary_rpc_method_handler
            )
        return factory(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class _Call:
    """One method's wrapper: what every call of it does before and after the service."""

    def __init__(self, owner: RequestInterceptor, method: str) -> None:
        self.owner = owner
        self.method = method

    def _enter(self, ctx: grpc.aio.ServicerContext) -> float:
        namespace = lease = None
        for key, value in ctx.invocation_metadata() or ():
            if key == context.NAMESPACE_HEADER:
                namespace = value
            elif key == context.LEASE_HEADER:
                lease = value
        context.bind(namespace, lease)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            method=self.method, namespace=namespace, request_id=next(_request_ids)
        )
        return time.monotonic()

    def _done(self, started: float, code: grpc.StatusCode) -> None:
        seconds = time.monotonic() - started
        log.debug("rpc", code=code.name, seconds=round(seconds, 6))
        for observe in self.owner.observers:
            observe(self.method, code.name, seconds)

    async def _fail(
        self, started: float, error: BaseException, ctx: grpc.aio.ServicerContext
    ) -> None:
        if isinstance(error, LinerError | FilterSyntaxError):
            code = status_code(error)
            message = str(error)
        else:
            code = grpc.StatusCode.UNKNOWN
            message = f"internal error: {type(error).__name__}: {error}"
            log.exception("unexpected error")
        self._done(started, code)
        await ctx.abort(code, message)

    def wrap_unary(self, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def unary(request: Any, ctx: grpc.aio.ServicerContext) -> Any:
            started = self._enter(ctx)
            try:
                response = await behavior(request, ctx)
            except asyncio.CancelledError:
                self._done(started, grpc.StatusCode.CANCELLED)
                raise
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                await self._fail(started, error, ctx)
            self._done(started, grpc.StatusCode.OK)
            return response

        return unary

    def wrap_stream(
        self, behavior: Callable[..., AsyncIterator[Any]]
    ) -> Callable[..., AsyncIterator[Any]]:
        async def stream(request: Any, ctx: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = self._enter(ctx)
            try:
                async for response in behavior(request, ctx):
                    yield response
            except asyncio.CancelledError:
                self._done(started, grpc.StatusCode.CANCELLED)
                raise
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                await self._fail(started, error, ctx)
            self._done(started, grpc.StatusCode.OK)

        return stream
