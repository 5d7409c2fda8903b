"""OpenTelemetry for weft's services: one trace per run, exported over OTLP when configured.

`setup_tracing` installs an SDK TracerProvider with a batching OTLP/gRPC exporter only
when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set; otherwise the
OpenTelemetry API stays a no-op and this module costs nothing per call. The exporter is
imported lazily because its import alone takes ~200 ms. weft's own spans are made by
`weft_core.tracing.WeftTracer` and encoded by `weft_core.otlp` (both for the executor's
hot path: together a quarter of the SDK's cost per span); libraries and user code in the
process get the SDK's provider, and both end in the same batch processor and exporter.

`CreateRun` starts each run's root span with `run_root_span` and stores its W3C
traceparent with the run; executors continue that trace with `span_in_run_trace`, so a
run's spans form one trace whether or not the api itself exported anything.

Attribute values must never hold a secret (invariant 8): only names, digests and ids.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import Link, Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

#: Attribute names weft adds to its spans (besides OpenTelemetry's semantic conventions).
ATTR_RUN = "weft.run"
ATTR_STEP = "weft.step"
ATTR_ATTEMPT = "weft.attempt"
ATTR_DNA = "weft.dna"
ATTR_EXECUTOR = "weft.executor"  # the executor id working on a step or attempt
ATTR_CACHE = "weft.cache"  # the cache decision: hit, miss or resumed
#: OpenTelemetry semantic-convention attribute names weft sets on its spans.
ATTR_HOST_NAME = "host.name"
ATTR_K8S_NODE_NAME = "k8s.node.name"
ATTR_K8S_POD_NAME = "k8s.pod.name"
ATTR_K8S_NAMESPACE_NAME = "k8s.namespace.name"
ATTR_CONTAINER_IMAGE_NAME = "container.image.name"

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_ids = RandomIdGenerator()
_propagator = TraceContextTextMapPropagator()
_provider: Any = None
_tracer: trace.Tracer = trace.get_tracer("weft")


@functools.cache
def host_name() -> str:
    """This machine's name, as `host.name` on spans (looked up once: it does not change)."""
    return socket.gethostname()


def otlp_endpoint(environ: Mapping[str, str] | None = None) -> str:
    """The OTLP endpoint traces go to, or "" when export is off."""
    environ = os.environ if environ is None else environ
    return environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or ""


#: The OpenTelemetry exporter variables a step inherits from its executor, so its own code
#: (any OpenTelemetry SDK, configured by the environment) exports to where weft's spans go
#: and its spans join the run's trace through TRACEPARENT. Never the headers: they may
#: carry a credential, which a step must not see.
STEP_TELEMETRY_ENV = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_INSECURE",
    "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
)


def step_telemetry_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The exporter variables of `environ` (an executor's) for a step's environment.

    With an endpoint set and no protocol named, the protocol is named: weft's services
    export OTLP/gRPC (`setup_tracing`), so the endpoint speaks gRPC, while an SDK left to
    its own default might speak http/protobuf to it.
    """
    env = {name: environ[name] for name in STEP_TELEMETRY_ENV if environ.get(name)}
    if otlp_endpoint(env) and "OTEL_EXPORTER_OTLP_PROTOCOL" not in env:
        env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "grpc"
    return env


def setup_tracing(service_name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Exports this process's spans over OTLP/gRPC when an endpoint is configured.

    Call once at service start. The exporter reads the standard OTEL_EXPORTER_OTLP_*
    variables (endpoint, headers, insecure, timeout) itself.

    Args:
        service_name: The `service.name` resource attribute, e.g. "weft-api".
        environ: Environment to read (default: os.environ).

    Returns:
        True if spans are now exported, False if export is off (no endpoint set).
    """
    global _provider
    if not otlp_endpoint(environ):
        return False
    if _provider is not None:
        return True
    # Imported here: the SDK's exporter pulls in ~200 ms of imports a CLI must not pay.
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from weft_core.otlp import SpanExporter
    from weft_core.tracing import WeftTracer

    global _tracer
    provider = TracerProvider(resource=Resource.create({"service.name": service_name, ATTR_HOST_NAME: host_name()}))
    processor = BatchSpanProcessor(SpanExporter())
    provider.add_span_processor(processor)
    # The provider serves libraries and a user's own spans; weft's go through WeftTracer
    # (a fraction of the SDK's cost per span) to the same processor and exporter.
    trace.set_tracer_provider(provider)
    _provider = provider
    _tracer = WeftTracer(provider.resource, provider.sampler, processor)
    return True


def shutdown_tracing() -> None:
    """Flushes and stops the exporter installed by `setup_tracing` (no-op otherwise)."""
    global _provider, _tracer
    if _provider is not None:
        _provider.shutdown()
        _provider = None
        _tracer = trace.get_tracer("weft")


def tracer() -> trace.Tracer:
    """weft's tracer: a `weft_core.tracing.WeftTracer` once `setup_tracing` enabled export,
    else the API's (a no-op until a provider is set, whoever sets it).

    One for the process: `get_tracer` builds a new Tracer (its instrumentation scope, a
    deprecation filter) on every call, which cost a quarter of what a span does.
    """
    return _tracer


def format_traceparent(trace_id: int, span_id: int, sampled: bool = True) -> str:
    """A W3C traceparent header value (version 00)."""
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


def parse_traceparent(value: str) -> tuple[int, int, bool] | None:
    """(trace id, span id, sampled) of a W3C traceparent, or None if it is malformed."""
    match = _TRACEPARENT.match(value.strip().lower())
    if not match:
        return None
    trace_id, span_id = int(match.group(1), 16), int(match.group(2), 16)
    if trace_id == 0 or span_id == 0:
        return None
    return trace_id, span_id, bool(int(match.group(3), 16) & 1)


def traceparent_of(span: Span) -> str:
    """The traceparent naming `span` as parent, or "" if the span is not valid."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return ""
    return format_traceparent(ctx.trace_id, ctx.span_id, ctx.trace_flags.sampled)


@contextlib.contextmanager
def run_root_span(name: str, run: str, attributes: Mapping[str, Any] | None = None) -> Iterator[tuple[Span, str]]:
    """Starts the root span of a run's trace and yields it with its traceparent.

    The span starts a new trace (one trace per run) linked to the span current at the
    call (the RPC's). When export is off the span is a no-op, and a fresh random
    traceparent is yielded anyway, so executors still share one trace id per run.

    Args:
        name: Span name, e.g. "weft.CreateRun".
        run: The run's resource name (attribute `weft.run`).
        attributes: More attributes.
    """
    current = trace.get_current_span().get_span_context()
    links = [Link(current)] if current.is_valid else []
    with tracer().start_as_current_span(
        name,
        context=otel_context.Context(),  # an empty context: this span is a trace root
        kind=SpanKind.INTERNAL,
        attributes={ATTR_RUN: run, **(attributes or {})},
        links=links,
    ) as span:
        traceparent = traceparent_of(span) or format_traceparent(_ids.generate_trace_id(), _ids.generate_span_id())
        yield span, traceparent


def context_from_traceparent(traceparent: str) -> otel_context.Context:
    """An OpenTelemetry context whose parent is the span named by `traceparent`.

    A malformed or empty traceparent gives an empty context (the next span starts a new
    trace) rather than an error: telemetry must never fail a run.
    """
    if not parse_traceparent(traceparent):
        return otel_context.Context()
    return _propagator.extract({"traceparent": traceparent.strip().lower()})


@contextlib.contextmanager
def span_in_run_trace(
    name: str, traceparent: str, attributes: Mapping[str, Any] | None = None, kind: SpanKind = SpanKind.INTERNAL
) -> Iterator[Span]:
    """Starts a span that continues a run's trace from its stored traceparent.

    Used by executors for step attempts: `with span_in_run_trace("weft.attempt",
    run.traceparent, {ATTR_RUN: ..., ATTR_STEP: ..., ATTR_ATTEMPT: 1}) as span:`; pass
    `traceparent_of(span)` to the pod or process as `TRACEPARENT`.
    """
    with tracer().start_as_current_span(
        name, context=context_from_traceparent(traceparent), kind=kind, attributes=dict(attributes or {})
    ) as span:
        yield span


def child_traceparent(traceparent: str) -> str:
    """A traceparent for a child of `traceparent` with a fresh span id, for when no span is
    recorded (export off) but the callee should still join the run's trace."""
    parsed = parse_traceparent(traceparent)
    if not parsed:
        return format_traceparent(_ids.generate_trace_id(), _ids.generate_span_id())
    return format_traceparent(parsed[0], _ids.generate_span_id(), parsed[2])
