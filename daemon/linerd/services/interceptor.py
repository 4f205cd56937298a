"""The one interceptor every call passes: request context in, errors out, one log line.

Every call pays for what runs here (Version, which does nothing else, cost ~0.1 ms more of
the daemon's CPU with it than without; docs/PERFORMANCE.md), so the per-call path is kept
short: each method's wrapper is built once, the handlers are wrapped where they are
registered (`serving`) rather than through grpc's interceptor chain (a coroutine chain per
call), the log context's variables are set directly, and the debug line is neither built
nor bound while the level filters it out.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
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


def _log_vars() -> tuple[contextvars.ContextVar[Any], ...]:
    """structlog's context variables of the three keys every call binds (merged into every
    log line by `merge_contextvars`), asked once of structlog itself."""
    tokens = structlog.contextvars.bind_contextvars(method=None, namespace=None, request_id=None)
    structlog.contextvars.reset_contextvars(**tokens)
    return tokens["method"].var, tokens["namespace"].var, tokens["request_id"].var


_METHOD, _NAMESPACE, _REQUEST_ID = _log_vars()
_DEBUG = logging.DEBUG
# The configured logger class -> whether it logs debug (the level can change on SIGHUP).
_debug_by_class: dict[type, bool] = {}


def _debug_enabled() -> bool:
    cls = structlog.get_config()["wrapper_class"]
    enabled = _debug_by_class.get(cls)
    if enabled is None:
        check = getattr(cls, "is_enabled_for", None)
        enabled = check is None or bool(check(None, _DEBUG))
        _debug_by_class[cls] = enabled
    return enabled


class RequestInterceptor:
    def __init__(self, observers: list[CallObserver] | None = None) -> None:
        self.observers = observers if observers is not None else []
        # method -> (the service's handler, our wrapper of it). Wrapping once per method
        # instead of once per call saves building a handler for every request; the call's
        # metadata is read from its context instead.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def wrapped(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """`handler` of `method` (/service/Method) wrapped, once."""
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def serving(self, server: grpc.aio.Server) -> grpc.aio.Server:
        """`server` for registering services whose handlers go through this interceptor
        (a server built with this interceptor in its chain would pass them twice)."""
        return _Registering(server, self)  # type: ignore[return-value]

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


class _Wrapping(grpc.GenericRpcHandler):
    """A service's generic handler, answering our wrapper of each of its method handlers."""

    def __init__(self, inner: grpc.GenericRpcHandler, owner: RequestInterceptor) -> None:
        self._inner = inner
        self._owner = owner

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(details)
        if handler is None:
            return None
        return self._owner.wrapped(details.method, handler)


class _Dispatch(grpc.GenericRpcHandler):
    """The server's one generic handler: every registered method's wrapped handler by its
    full name (one dict lookup per call), then the services that registered only generic
    handlers, in order."""

    def __init__(self) -> None:
        self.methods: dict[str, grpc.RpcMethodHandler] = {}
        self.generic: list[grpc.GenericRpcHandler] = []

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self.methods.get(details.method)
        if handler is not None:
            return handler
        for generic in self.generic:
            handler = generic.service(details)
            if handler is not None:
                return handler
        return None


class _Registering:
    """A grpc.aio.Server as the generated `add_*_to_server` functions see it: the handlers
    they register are wrapped by the interceptor and served through one generic handler
    (`_Dispatch`); anything else goes to the server.

    No method is registered with the server itself (`add_registered_method_handlers`):
    grpc.aio's server keeps one pending request task per registered method and, on every
    call, waits on all of them (`asyncio.wait` over ~120 tasks with the daemon's services:
    a set built, each task type-checked, a done callback added to and removed from each;
    ~10 % of the event loop's samples for a status call, docs/PERFORMANCE.md). With generic
    handlers only it keeps one."""

    def __init__(self, server: grpc.aio.Server, owner: RequestInterceptor) -> None:
        self._server = server
        self._owner = owner
        self._dispatch: _Dispatch | None = None

    def _dispatcher(self) -> _Dispatch:
        if self._dispatch is None:
            self._dispatch = _Dispatch()
            self._server.add_generic_rpc_handlers((self._dispatch,))
        return self._dispatch

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._dispatcher().generic.extend(_Wrapping(h, self._owner) for h in handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        methods = self._dispatcher().methods
        for name, handler in handlers.items():
            method = f"/{service}/{name}"
            methods[method] = self._owner.wrapped(method, handler)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


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
        # What `structlog.contextvars.bind_contextvars` does, without its per-key lookups. Every
        # call runs in its own task, whose context is a copy of the server's (where no log
        # context is bound), so nothing of another call's is left to clear.
        _METHOD.set(self.method)
        _NAMESPACE.set(namespace)
        _REQUEST_ID.set(next(_request_ids))
        return time.monotonic()

    def _done(self, started: float, code: grpc.StatusCode) -> None:
        seconds = time.monotonic() - started
        if _debug_enabled():
            log.debug("rpc", code=code.name, seconds=round(seconds, 6))
        name = code.name
        for observe in self.owner.observers:
            observe(self.method, name, seconds)

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
