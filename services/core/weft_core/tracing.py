"""weft's own spans: an OpenTelemetry API tracer that records cheaply and hands every
finished span to the SDK's batch processor.

    tracer = WeftTracer(provider.resource, provider.sampler, processor)
    with tracer.start_as_current_span("weft.attempt", attributes={...}) as span:
        span.set_attribute("process.pid", pid)

Why not the SDK's tracer: a `true` step makes six spans, and the SDK spends ~25 µs of
Python on each (a lock and a bounded, validated attribute map per span, the sampler, two
generator context managers, a copy at `end`), on the executor's one event loop. These
spans are `opentelemetry.trace.Span`s of the API, so everything that reads the current
span (log correlation, the SDK's own spans made under one, `traceparent_of`) is unchanged;
at `end` each becomes the SDK's `ReadableSpan` and goes to the same BatchSpanProcessor and
OTLP exporter as the SDK's spans, so the resource, batching, export settings and
shutdown are the SDK's.

What it keeps of the SDK's semantics: a span that starts a trace, or continues one from
another process (a run's stored traceparent), asks the provider's sampler; a child of a
local weft span follows its parent (the default ParentBased rule), and a child of a
non-recording span records nothing. Attribute values of the four plain types are kept as
given; others are validated as the SDK does (`BoundedAttributes`), invalid ones dropped
with the SDK's warning. Exceptions escaping a `with` are recorded and set the status to
ERROR, as `use_span` does. Span limits are not applied: weft's spans carry a handful of
attributes, and a user's own spans (made by the SDK) keep the SDK's limits.

This module never exports anything itself and never touches the global provider.
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.semconv.attributes.exception_attributes import (
    EXCEPTION_ESCAPED,
    EXCEPTION_MESSAGE,
    EXCEPTION_STACKTRACE,
    EXCEPTION_TYPE,
)
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util import types

_PLAIN = (str, int, bool, float)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_UNSET = Status(StatusCode.UNSET)


def _random_id(bits: int) -> int:
    # The SDK's RandomIdGenerator: never the invalid id 0.
    while True:
        value = random.getrandbits(bits)
        if value:
            return value


def _cleaned(attributes: Mapping[str, Any]) -> dict[str, Any]:
    if all(type(value) in _PLAIN for value in attributes.values()):
        return dict(attributes)
    return dict(BoundedAttributes(None, attributes, immutable=False))


class WeftSpan(trace.Span):
    """A recording span of `WeftTracer` (see the module docstring)."""

    __slots__ = (
        "_attributes",
        "_context",
        "_end_time",
        "_events",
        "_kind",
        "_links",
        "_name",
        "_parent",
        "_record_exception",
        "_set_status_on_exception",
        "_start_time",
        "_status",
        "_tracer",
    )

    def __init__(
        self,
        tracer: WeftTracer,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, Any],
        links: Sequence[Link],
        start_time: int | None,
        record_exception: bool,
        set_status_on_exception: bool,
    ) -> None:
        self._tracer = tracer
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._attributes = attributes
        self._links = tuple(links)
        self._events: list[Event] = []
        self._status = _UNSET
        self._start_time = start_time if start_time is not None else time.time_ns()
        self._end_time: int | None = None
        self._record_exception = record_exception
        self._set_status_on_exception = set_status_on_exception

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        if self._end_time is not None:
            return
        if type(value) in _PLAIN:
            self._attributes[key] = value
        else:
            self._attributes.update(_cleaned({key: value}))

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        if self._end_time is None:
            self._attributes.update(_cleaned(attributes))

    def add_event(self, name: str, attributes: types.Attributes = None, timestamp: int | None = None) -> None:
        if self._end_time is None:
            self._events.append(
                Event(name, _cleaned(attributes or {}), timestamp if timestamp is not None else time.time_ns())
            )

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if self._end_time is None and context.is_valid:
            self._links = (*self._links, Link(context, attributes))

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # The SDK's rules: OK is final, and UNSET never overwrites.
        if self._end_time is not None or self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, StatusCode):
            status = Status(status, description)
        if status.status_code is not StatusCode.UNSET:
            self._status = status

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        kind = type(exception)
        module, qualname = kind.__module__, kind.__qualname__
        recorded: dict[str, Any] = {
            EXCEPTION_TYPE: f"{module}.{qualname}" if module and module != "builtins" else qualname,
            EXCEPTION_MESSAGE: str(exception),
            EXCEPTION_STACKTRACE: "".join(traceback.format_exception(exception)),
            EXCEPTION_ESCAPED: str(escaped),
        }
        recorded.update(attributes or {})
        self.add_event("exception", recorded, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            return
        self._end_time = end_time if end_time is not None else time.time_ns()
        tracer = self._tracer
        tracer.processor.on_end(
            ReadableSpan(
                name=self._name,
                context=self._context,
                parent=self._parent,
                resource=tracer.resource,
                attributes=self._attributes,
                events=self._events,
                links=self._links,
                kind=self._kind,
                status=self._status,
                start_time=self._start_time,
                end_time=self._end_time,
                instrumentation_scope=tracer.scope,
            )
        )

    def __exit__(
        self, exc_type: type[BaseException] | None, exc_val: BaseException | None, exc_tb: TracebackType | None
    ) -> None:
        # `with tracer.start_span(...) as span:` records what escapes it, as the SDK's does.
        if exc_val is not None:
            _record_escape(self, exc_val, self._record_exception, self._set_status_on_exception, escaped=True)
        self.end()

    def __repr__(self) -> str:
        return f'WeftSpan(name="{self._name}", context={self._context})'


def _record_escape(span: trace.Span, error: BaseException, record: bool, set_status: bool, *, escaped: bool) -> None:
    """What an exception leaving a span's `with` does to a recording span (the SDK's rules)."""
    if not span.is_recording():
        return
    if record:
        span.record_exception(error, escaped=escaped)
    if set_status:
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


class _CurrentSpan:
    """`start_as_current_span`'s context manager: `use_span`'s behaviour, as a class
    (a generator-based context manager costs several µs per span)."""

    __slots__ = ("_end_on_exit", "_record_exception", "_set_status_on_exception", "_span", "_token")

    def __init__(self, span: trace.Span, end_on_exit: bool, record_exception: bool, set_status: bool) -> None:
        self._span = span
        self._end_on_exit = end_on_exit
        self._record_exception = record_exception
        self._set_status_on_exception = set_status
        self._token: object = None

    def __enter__(self) -> trace.Span:
        self._token = context_api.attach(trace.set_span_in_context(self._span))
        return self._span

    def __exit__(
        self, exc_type: type[BaseException] | None, exc_val: BaseException | None, exc_tb: TracebackType | None
    ) -> None:
        span = self._span
        try:
            context_api.detach(self._token)  # type: ignore[arg-type]
            # Only Exception: BaseExceptions such as GeneratorExit are not errors (use_span).
            if isinstance(exc_val, Exception):
                _record_escape(span, exc_val, self._record_exception, self._set_status_on_exception, escaped=False)
        finally:
            if self._end_on_exit:
                span.end()


class WeftTracer(trace.Tracer):
    """Makes `WeftSpan`s and gives them, ended, to `processor` (see the module docstring).

    Args:
        resource: The process's resource (the provider's), stamped on every span.
        sampler: The provider's sampler, asked for each span that starts or continues a
            trace in this process.
        processor: Where ended spans go: the BatchSpanProcessor `setup_tracing` made.
        scope_name: The instrumentation scope's name.
    """

    def __init__(self, resource: Resource, sampler: Sampler, processor: SpanProcessor, scope_name: str = "weft"):
        self.resource = resource
        self.sampler = sampler
        self.processor = processor
        self.scope = InstrumentationScope(scope_name)

    def start_span(
        self,
        name: str,
        context: context_api.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        parent_span = trace.get_current_span(context)
        parent = parent_span.get_span_context()
        span_id = _random_id(64)
        links = links or ()
        if isinstance(parent_span, WeftSpan):
            # A local child follows its parent (ParentBased), and a WeftSpan exists only
            # when sampled: recorded, even if the parent has ended since (as the SDK does).
            span_context = SpanContext(parent.trace_id, span_id, False, _SAMPLED, parent.trace_state)
            values = _cleaned(attributes) if attributes else {}
        else:
            valid = parent.is_valid
            trace_id = parent.trace_id if valid else _random_id(128)
            result = self.sampler.should_sample(context, trace_id, name, kind, attributes, links)
            flags = _SAMPLED if result.decision.is_sampled() else _NOT_SAMPLED  # type: ignore[no-untyped-call]
            span_context = SpanContext(trace_id, span_id, False, flags, result.trace_state)
            if not result.decision.is_recording():  # type: ignore[no-untyped-call]
                return trace.NonRecordingSpan(span_context)
            values = _cleaned(result.attributes) if result.attributes else {}
        return WeftSpan(
            self,
            name,
            span_context,
            parent if parent.is_valid else None,
            kind,
            values,
            links,
            start_time,
            record_exception,
            set_status_on_exception,
        )

    def start_as_current_span(  # type: ignore[override]
        self,
        name: str,
        context: context_api.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        span = self.start_span(
            name, context, kind, attributes, links, start_time, record_exception, set_status_on_exception
        )
        return _CurrentSpan(span, end_on_exit, record_exception, set_status_on_exception)  # type: ignore[return-value]
