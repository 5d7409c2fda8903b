"""The gRPC server every weft service runs: binding, health, reflection, interceptors, stop.

    server, port = create_server("127.0.0.1:0", [
        ServiceBinding("weft.v1.RunService", RunServicer(...), add_RunServiceServicer_to_server),
    ])
    server.on_stop(store.close)
    await server.start()
    await serve_until_signal(server)      # SIGTERM/SIGINT → graceful stop

Every server gets the standard health service (`grpc.health.v1.Health`, SERVING for ""
and for each service name) and server reflection listing every service, so grpcurl and
Kubernetes probes work against any weft service. Interceptors run in one fixed order:
metrics, then logging/tracing (outermost: they see the final status), then errors, then
auth. Readiness (each service's health status) can follow a probe of the service's
dependency (`follow_readiness`); the server-wide status "" is liveness and stays SERVING.

With an `Auth` (weft_core.auth) every call except health and reflection must carry a
valid bearer token (UNAUTHENTICATED otherwise) and the role its method's `Rule` names
(PERMISSION_DENIED otherwise); a served method without a rule stops `create_server`, so
no RPC added later is left open. With a `ServerTls` the port speaks only TLS.

The error interceptor is the only place where exceptions become gRPC statuses:
`weft_core.errors.ServiceError` keeps its code and message unchanged; anything else is
logged with its traceback and answered INTERNAL, and the server keeps serving. Service
code must therefore never call `context.abort` for domain errors, and this module must
never swallow `asyncio.CancelledError` (a client that goes away cancels its handler).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc

# The asyncio health servicer; public as grpc_health.v1.health.aio, which the type stubs lack.
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from weft_core import metrics
from weft_core.auth import Auth, enter_principal
from weft_core.errors import InvalidArgument, ServiceError
from weft_core.store import Compacted
from weft_core.telemetry import tracer
from weft_core.tls import ServerTls

log = logging.getLogger(__name__)

#: Largest request and response message (a 10,000-step pipeline spec is a few MiB).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Seconds in-flight calls get to finish on SIGTERM before they are cancelled.
DEFAULT_GRACE = 10.0
#: Seconds a client connection lives before the server asks it to reconnect (GOAWAY; gRPC
#: adds ±10% jitter). Behind a Kubernetes Service a connection sticks to one pod: this is
#: what spreads clients over new replicas. Streams in flight are not cut.
DEFAULT_MAX_CONNECTION_AGE = 300.0
#: Seconds between readiness probes (see `WeftServer.follow_readiness`).
READINESS_INTERVAL = 1.0
#: Most request bytes, and seconds, a refused call's request stream is read and dropped for
#: before its status is sent (see `_drain`): a wrong token on a small upload must read as
#: UNAUTHENTICATED, and an unauthenticated caller must not make the server read gigabytes.
DRAIN_BYTES = 8 * 1024 * 1024
DRAIN_SECONDS = 1.0

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
_propagator = TraceContextTextMapPropagator()


@dataclass(frozen=True)
class ServiceBinding:
    """One gRPC service to serve.

    Attributes:
        name: Full service name, e.g. "weft.v1.RunService" (health and reflection use it).
        servicer: The implementation.
        add_to_server: The generated `add_<Service>Servicer_to_server` function.
    """

    name: str
    servicer: Any
    add_to_server: Callable[[Any, grpc.aio.Server], None]


class WeftServer:
    """A grpc.aio server with weft's health, reflection, interceptors and clean-up hooks.

    Built by `create_server`; call `start()`, then `stop()` or `serve_until_signal()`.
    """

    def __init__(self, server: grpc.aio.Server, port: int, health: HealthServicer, services: Sequence[str]) -> None:
        self.grpc_server = server
        self.port = port
        self.health = health
        self.services = list(services)
        self._cleanups: list[Callable[[], Awaitable[None]]] = []
        self._stopped = False
        self._ready: Callable[[], Awaitable[bool]] | None = None
        self._readiness_interval = READINESS_INTERVAL
        self._readiness: asyncio.Task[None] | None = None

    def on_stop(self, cleanup: Callable[[], Awaitable[None]]) -> None:
        """Runs `cleanup` (e.g. closing the etcd store) after the server stopped serving."""
        self._cleanups.append(cleanup)

    async def start(self) -> None:
        """Starts serving and marks every service SERVING."""
        await self.grpc_server.start()
        for name in ["", *self.services]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self._ready is not None and self._readiness is None:
            self._readiness = asyncio.create_task(self._follow(self._ready), name="readiness probe")

    async def stop(self, grace: float | None = DEFAULT_GRACE) -> None:
        """Marks every service NOT_SERVING, lets in-flight calls finish for up to `grace`
        seconds, cancels the rest, then runs the `on_stop` clean-ups. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._readiness is not None:
            self._readiness.cancel()
        await self.health.enter_graceful_shutdown()
        await self.grpc_server.stop(grace)
        for cleanup in reversed(self._cleanups):
            try:
                await cleanup()
            except Exception:
                log.exception("clean-up %r failed while stopping", cleanup)

    async def wait_for_termination(self) -> None:
        await self.grpc_server.wait_for_termination()

    def follow_readiness(self, ready: Callable[[], Awaitable[bool]], interval: float = READINESS_INTERVAL) -> None:
        """Once started, probes `ready()` every `interval` seconds and reports each service
        (readiness) SERVING or NOT_SERVING by its answer; an exception counts as not ready.

        The server-wide status "" stays SERVING while the process serves: it is liveness,
        and restarting a service because etcd is away does not bring etcd back.
        """
        self._ready, self._readiness_interval = ready, interval

    async def _follow(self, ready: Callable[[], Awaitable[bool]]) -> None:
        serving = True  # start() marked every service SERVING
        while True:
            await asyncio.sleep(self._readiness_interval)
            try:
                now = await ready()
            except Exception as error:  # the probe must outlive any failure it reports
                log.debug("readiness probe failed: %s", error)
                now = False
            if now == serving or self._stopped:
                continue
            log.warning("readiness: %s", "SERVING again" if now else "NOT_SERVING (a dependency is unreachable)")
            status = health_pb2.HealthCheckResponse.SERVING if now else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in self.services:
                await self.health.set(name, status)
            serving = now


def create_server(
    listen: str,
    services: Sequence[ServiceBinding],
    *,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    auth: Auth | None = None,
    tls: ServerTls | None = None,
    max_connection_age: float = DEFAULT_MAX_CONNECTION_AGE,
) -> tuple[WeftServer, int]:
    """Builds a server bound to `listen` with health, reflection and weft's interceptors.

    Call it from a running event loop; the server is bound but not started.

    Args:
        listen: `HOST:PORT`; port 0 binds a free port.
        services: The services to serve.
        max_message_bytes: Largest message received or sent.
        auth: Authenticate and authorise every call but health and reflection; None
            serves everyone (weft up on loopback, tests).
        tls: Serve TLS (optionally requiring client certificates); None is plaintext.
        max_connection_age: Seconds before a client connection is asked to reconnect.

    Returns:
        The server and the port it is bound to.

    Raises:
        RuntimeError: If the address cannot be bound (in use, bad host).
        ValueError: `auth` has no rule for a served method, or a TLS file is unreadable.
    """
    interceptors: list[_ServerInterceptor] = [
        MetricsInterceptor(),
        LoggingTracingInterceptor(),
        ErrorInterceptor(),
    ]
    if auth is not None:
        auth.check_covers(served_methods([b.name for b in services]))
        interceptors.append(AuthInterceptor(auth))
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # Two processes must never share a port silently (a restarted api would
            # split traffic with a zombie); binding a used port must fail.
            ("grpc.so_reuseport", 0),
            ("grpc.max_connection_age_ms", int(max_connection_age * 1000)),
        ],
    )
    for binding in services:
        binding.add_to_server(binding.servicer, server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    names = [b.name for b in services]
    reflection.enable_server_reflection([*names, HEALTH_SERVICE, reflection.SERVICE_NAME], server)
    try:
        port = server.add_secure_port(listen, tls.server_credentials()) if tls else server.add_insecure_port(listen)
    except RuntimeError as error:
        raise RuntimeError(f"cannot listen on {listen}: {error}; pick a free port or use port 0") from error
    if port == 0:
        raise RuntimeError(f"cannot listen on {listen}: the address is in use or invalid; use port 0 for a free one")
    return WeftServer(server, port, health, names), port


async def serve_until_signal(server: WeftServer, grace: float = DEFAULT_GRACE) -> None:
    """Serves until SIGTERM or SIGINT, then stops gracefully (see `WeftServer.stop`)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        waiter = asyncio.create_task(server.wait_for_termination())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        log.info("stopping (grace %.0fs)", grace)
        await server.stop(grace)
        for task in (waiter, stopper):
            task.cancel()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


# Interceptors. grpc.aio hands an interceptor the method handler; each wraps the handler's
# behaviour (unary or streaming) in a function of the same shape.

Behaviour = Callable[..., Any]

if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # not subscriptable at run time
    _ServerInterceptor = grpc.aio.ServerInterceptor


def _wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any],
    wrap_unary: Callable[[Behaviour], Behaviour],
    wrap_stream: Callable[[Behaviour], Behaviour],
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler[Any, Any]:
    serde = {
        "request_deserializer": request_deserializer or handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap_unary(handler.unary_unary), **serde)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap_unary(handler.stream_unary), **serde)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap_stream(handler.unary_stream), **serde)
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(wrap_stream(handler.stream_stream), **serde)
    return handler


async def _iterate(
    behaviour: Behaviour, request: Any, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncGenerator[Any, None]:
    """Responses of a streaming behaviour, whether an async generator or a coroutine.

    Closing this generator closes the behaviour's at once (its `finally` blocks run now, in
    this task), rather than whenever the garbage collector finds it.
    """
    result = behaviour(request, context)
    if hasattr(result, "aclose"):
        async with contextlib.aclosing(result):
            async for response in result:
                yield response
    elif hasattr(result, "__aiter__"):
        async for response in result:
            yield response
    else:
        await result


@dataclass(frozen=True)
class _Undecodable:
    """A request message whose bytes did not parse (kept to be refused as INVALID_ARGUMENT:
    gRPC itself would answer INTERNAL before any interceptor saw the call)."""

    problem: str


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as error:
            return _Undecodable(str(error))

    return parse


def _decoded(request: Any) -> Any:
    if isinstance(request, _Undecodable):
        raise InvalidArgument(
            f"request: the bytes are not a valid message of this method ({request.problem}); "
            "send the request type the method's descriptor names (grpcurl describe shows it)",
            field="request",
        )
    return request


async def _decoded_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _decoded(request)


class ErrorInterceptor(_ServerInterceptor):
    """Turns exceptions into gRPC statuses in one place (see the module docstring), and
    request bytes that do not parse into INVALID_ARGUMENT."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        streaming_request = bool(handler.request_streaming)

        def decoded(request: Any) -> Any:
            return _decoded_stream(request) if streaming_request else _decoded(request)

        def wrap_unary(behaviour: Behaviour) -> Behaviour:
            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                try:
                    return await behaviour(decoded(request), context)
                except Exception as error:
                    await _abort(context, method, error, drain=streaming_request)

            return unary

        def wrap_stream(behaviour: Behaviour) -> Behaviour:
            async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                try:
                    async with contextlib.aclosing(_iterate(behaviour, decoded(request), context)) as responses:
                        async for response in responses:
                            yield response
                except Exception as error:
                    await _abort(context, method, error, drain=streaming_request)

            return stream

        return _wrap_handler(handler, wrap_unary, wrap_stream, _tolerant(handler.request_deserializer))


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The gRPC status a domain exception maps to, or None for an unexpected exception."""
    if isinstance(error, ServiceError):
        return error.code, error.message
    if isinstance(error, Compacted):
        return (
            grpc.StatusCode.OUT_OF_RANGE,
            f"the requested revision was compacted (oldest kept: {error.compact_revision}); restart from revision 0",
        )
    return None


async def _drain(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """Reads and drops what is left of a refused call's request stream, up to `DRAIN_BYTES`
    or `DRAIN_SECONDS`, so its status goes out after the client half-closed.

    Why: a server that ends a client-streaming call early sends its trailers and then
    RST_STREAM, and a grpc.aio client whose write was in flight then reports
    INTERNAL "Internal error from Core" in place of the status it received (the failed
    write overwrites it: grpc/grpc#36066, ~5% of refused 3 MiB uploads). A client that
    has finished writing has no write in flight, so it reads the real status. Past the
    budget the status is sent anyway: the limit of this fix is an upload larger than
    `DRAIN_BYTES` refused mid-way, which a grpc.aio client may still see as INTERNAL
    (the SDK asks StatBlob, a unary call, before uploading anything that large).
    """
    received = 0
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            while received <= DRAIN_BYTES:
                message = await context.read()
                if message is grpc.aio.EOF:  # type: ignore[attr-defined]  # public, but not in the stubs
                    return
                received += message.ByteSize() if hasattr(message, "ByteSize") else 1
    except TimeoutError:
        return
    except Exception as error:  # the call already ended (client gone): the abort below says so
        log.debug("draining a refused request stream stopped: %s", error)


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any], method: str, error: Exception, *, drain: bool = False
) -> None:
    # An abort raised deeper (a servicer that called context.abort) carries its status: pass it on.
    if isinstance(error, grpc.aio.AbortError):
        raise error
    if drain:
        await _drain(context)
    status = status_of(error)
    if status is None:
        log.error("%s failed unexpectedly", method, exc_info=error)
        status = (
            grpc.StatusCode.INTERNAL,
            f"internal error in {method}: {type(error).__name__}: {error}; "
            "this is a weft bug, the service log has the traceback",
        )
    await context.abort(status[0], status[1])


class LoggingTracingInterceptor(_ServerInterceptor):
    """One server span and one log line per call, with the final status code.

    The span continues a W3C `traceparent` sent in the call's metadata. Successful calls
    log at DEBUG (a busy api serves thousands per second); failures at INFO (the caller's
    fault) or WARNING (ours or a dependency's).
    """

    _SERVER_FAULTS = frozenset(
        {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
    )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        metadata = {k: v for k, v in (handler_call_details.invocation_metadata or ()) if isinstance(v, str)}

        def wrap_unary(behaviour: Behaviour) -> Behaviour:
            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                with self._span(method, metadata) as span:
                    started = time.monotonic()
                    try:
                        return await behaviour(request, context)
                    finally:
                        self._finish(span, method, context, started)

            return unary

        def wrap_stream(behaviour: Behaviour) -> Behaviour:
            async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                # The span is made current only while the handler runs, one step at a time,
                # never across a `yield`: a stream torn down by its client is closed from
                # another task (or by the garbage collector), where detaching a context
                # attached here fails ("Failed to detach context").
                span = self._start_span(method, metadata)
                started = time.monotonic()
                responses = _iterate(behaviour, request, context)
                try:
                    while True:
                        token = otel_context.attach(trace.set_span_in_context(span))
                        try:
                            response = await anext(responses)
                        except StopAsyncIteration:
                            break
                        finally:
                            otel_context.detach(token)
                        yield response
                finally:
                    await responses.aclose()
                    self._finish(span, method, context, started)
                    span.end()

            return stream

        return _wrap_handler(handler, wrap_unary, wrap_stream)

    def _span(self, method: str, metadata: dict[str, str]) -> Any:
        service, _, name = method.lstrip("/").partition("/")
        return tracer().start_as_current_span(
            method.lstrip("/"),
            context=_propagator.extract(metadata) if "traceparent" in metadata else None,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
            record_exception=False,
            set_status_on_exception=False,
        )

    def _start_span(self, method: str, metadata: dict[str, str]) -> trace.Span:
        """The call's span, started but not made current (streams attach it step by step)."""
        service, _, name = method.lstrip("/").partition("/")
        return tracer().start_span(
            method.lstrip("/"),
            context=_propagator.extract(metadata) if "traceparent" in metadata else None,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
            record_exception=False,
            set_status_on_exception=False,
        )

    def _finish(
        self, span: trace.Span, method: str, context: grpc.aio.ServicerContext[Any, Any], started: float
    ) -> None:
        code = context.code()
        # grpc.aio reports the code set by abort() as a StatusCode or as its int value.
        if isinstance(code, int):
            code = next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
        code = code or grpc.StatusCode.OK
        details = context.details() or ""
        elapsed_ms = (time.monotonic() - started) * 1000
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code in self._SERVER_FAULTS:
            span.set_status(Status(StatusCode.ERROR, details))
        if code == grpc.StatusCode.OK:
            log.debug("%s OK %.1fms", method, elapsed_ms)
        else:
            level = logging.WARNING if code in self._SERVER_FAULTS else logging.INFO
            log.log(level, "%s %s %.1fms: %s", method, code.name, elapsed_ms, details)


# Authentication and authorisation (innermost: the error interceptor turns its refusals
# into UNAUTHENTICATED / PERMISSION_DENIED, and the logging interceptor logs them).

#: Services anyone may call: probes and grpcurl's discovery must work without a token.
OPEN_SERVICES = frozenset({HEALTH_SERVICE, reflection.SERVICE_NAME, "grpc.reflection.v1.ServerReflection"})


def served_methods(service_names: Sequence[str]) -> list[str]:
    """Full method names (`/weft.v1.RunService/GetRun`) of services, from their descriptors."""
    pool = descriptor_pool.Default()
    return [f"/{name}/{method.name}" for name in service_names for method in pool.FindServiceByName(name).methods]


class AuthInterceptor(_ServerInterceptor):
    """Authenticates each call, checks its method's rule, and makes the caller current.

    The caller is found from the metadata before any request is read; the rule is checked
    against the request (for a request stream, against its first message) before the
    service sees it. The principal is set in the call's own task (grpc.aio runs each call
    in one), so `weft_core.auth.current_principal()` answers for this call only.
    """

    def __init__(self, auth: Auth) -> None:
        self.auth = auth

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.lstrip("/").partition("/")[0] in OPEN_SERVICES:
            return handler
        metadata = handler_call_details.invocation_metadata
        auth = self.auth
        streaming_request = bool(handler.request_streaming)

        async def admitted(request: Any) -> Any:
            principal = await auth.authenticator.authenticate(metadata)
            enter_principal(principal)
            if not streaming_request:
                auth.authorize(principal, method, request)
                return request

            async def checked() -> AsyncIterator[Any]:
                first = True
                async for message in request:
                    if first:
                        auth.authorize(principal, method, message)
                        first = False
                    yield message

            return checked()

        def wrap_unary(behaviour: Behaviour) -> Behaviour:
            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                return await behaviour(await admitted(request), context)

            return unary

        def wrap_stream(behaviour: Behaviour) -> Behaviour:
            async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                admitted_request = await admitted(request)
                async with contextlib.aclosing(_iterate(behaviour, admitted_request, context)) as responses:
                    async for response in responses:
                        yield response

            return stream

        return _wrap_handler(handler, wrap_unary, wrap_stream)


def _final_code(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    code = context.code()
    # grpc.aio reports the code set by abort() as a StatusCode or as its int value.
    if isinstance(code, int):
        code = next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    return code or grpc.StatusCode.OK


class MetricsInterceptor(_ServerInterceptor):
    """Counts every call by method and final status code, and times it (weft_core.metrics).

    Outermost, so it sees the status the error interceptor chose. A client that goes away
    mid-call is counted as CANCELLED.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        kind = (
            ("bidi_stream" if handler.request_streaming else "server_stream")
            if handler.response_streaming
            else ("client_stream" if handler.request_streaming else "unary")
        )

        def record(context: grpc.aio.ServicerContext[Any, Any], started: float, cancelled: bool) -> None:
            code = grpc.StatusCode.CANCELLED if cancelled else _final_code(context)
            metrics.grpc_handled(method, kind, code.name, time.monotonic() - started)

        def wrap_unary(behaviour: Behaviour) -> Behaviour:
            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                started, cancelled = time.monotonic(), False
                try:
                    return await behaviour(request, context)
                except asyncio.CancelledError:
                    cancelled = True
                    raise
                finally:
                    record(context, started, cancelled)

            return unary

        def wrap_stream(behaviour: Behaviour) -> Behaviour:
            async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                started, cancelled = time.monotonic(), False
                try:
                    async for response in _iterate(behaviour, request, context):
                        yield response
                except asyncio.CancelledError:
                    cancelled = True
                    raise
                finally:
                    record(context, started, cancelled)

            return stream

        return _wrap_handler(handler, wrap_unary, wrap_stream)
