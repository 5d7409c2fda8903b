"""weft's OTLP span exporter: the SDK's OTLP/gRPC exporter with a faster span encoder.

    provider.add_span_processor(BatchSpanProcessor(SpanExporter()))

A `true` step makes six spans, and the SDK's encoder (`encode_spans`) spends ~30 µs of
Python per span building them: a keyword-argument constructor per message, an
`isinstance` ladder per attribute value, a hash of the resource per span. On an
executor's single event loop that CPU is the step's, so the exporter encodes with
`encode_request` instead: the same ExportTraceServiceRequest, field for field (a unit
test compares the two on spans of every shape), written in place into the protobuf
messages with the common cases first. Transport, retries, headers, TLS and the
`OTEL_EXPORTER_OTLP_*` settings stay the SDK's: only `_translate_data` is replaced.

This module must never drop or alter what a span says: a value the fast path does not
know is encoded by the SDK's own `_encode_value`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common._internal import _encode_value
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.trace import ReadableSpan

log = logging.getLogger(__name__)

# OTLP's SpanFlags: the parent's is-remote bit is known (always, for SDK spans), and set.
_HAS_IS_REMOTE = trace_pb2.SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_IS_REMOTE = trace_pb2.SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK


def _put_attributes(target: Any, attributes: Mapping[str, Any] | None) -> None:
    """Appends `attributes` to a repeated KeyValue field, as the SDK's encoder would."""
    if not attributes:
        return
    for key, value in attributes.items():
        item = target.add()
        item.key = key
        # The SDK's order of checks matters only where types overlap: bool before int.
        kind = type(value)
        if kind is str:
            item.value.string_value = value
        elif kind is int:
            item.value.int_value = value
        elif kind is bool:
            item.value.bool_value = value
        elif kind is float:
            item.value.double_value = value
        else:
            try:
                item.value.CopyFrom(_encode_value(value))
            except Exception:
                # As the SDK's encoder: a value it cannot encode is left out, not the batch.
                log.exception("span attribute %s has a value OTLP cannot carry; it is left out", key)
                del target[-1]


def _flags(parent: Any) -> int:
    if parent is not None and parent.is_remote:
        return _HAS_IS_REMOTE | _IS_REMOTE
    return _HAS_IS_REMOTE


def _put_span(target: trace_pb2.Span, span: ReadableSpan) -> None:
    context = span.get_span_context()
    assert context is not None  # an SDK span always has one
    target.trace_id = context.trace_id.to_bytes(16, "big")
    target.span_id = context.span_id.to_bytes(8, "big")
    if context.trace_state:
        target.trace_state = ",".join(f"{key}={value}" for key, value in context.trace_state.items())
    parent = span.parent
    if parent is not None:
        target.parent_span_id = parent.span_id.to_bytes(8, "big")
    target.flags = _flags(parent)
    target.name = span.name
    # OTLP numbers SpanKind from 1 (0 is UNSPECIFIED); the API's enum from 0, in order.
    target.kind = span.kind.value + 1  # type: ignore[assignment]
    if span.start_time is not None:
        target.start_time_unix_nano = span.start_time
    if span.end_time is not None:
        target.end_time_unix_nano = span.end_time
    _put_attributes(target.attributes, span.attributes)
    for event in span.events:
        pb_event = target.events.add()
        pb_event.name = event.name
        pb_event.time_unix_nano = event.timestamp
        _put_attributes(pb_event.attributes, event.attributes)
        if event.dropped_attributes:
            pb_event.dropped_attributes_count = event.dropped_attributes
    for link in span.links:
        pb_link = target.links.add()
        pb_link.trace_id = link.context.trace_id.to_bytes(16, "big")
        pb_link.span_id = link.context.span_id.to_bytes(8, "big")
        _put_attributes(pb_link.attributes, link.attributes)
        if link.dropped_attributes:
            pb_link.dropped_attributes_count = link.dropped_attributes
        pb_link.flags = _flags(link.context)
    status = span.status
    if status is not None:
        target.status.code = status.status_code.value  # type: ignore[assignment]
        if status.description:
            target.status.message = status.description
    if span.dropped_attributes:
        target.dropped_attributes_count = span.dropped_attributes
    if span.dropped_events:
        target.dropped_events_count = span.dropped_events
    if span.dropped_links:
        target.dropped_links_count = span.dropped_links


def encode_request(spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
    """The ExportTraceServiceRequest of `spans`: one ResourceSpans per resource and one
    ScopeSpans per instrumentation scope within it, in first-seen order (the SDK's)."""
    request = ExportTraceServiceRequest()
    # A process has one Resource object and a few scopes: look them up by identity first,
    # since hashing a Resource (its attributes as JSON) costs more than encoding a span.
    by_identity: dict[tuple[int, int], Any] = {}
    resources: dict[Any, tuple[Any, dict[Any, Any]]] = {}
    for span in spans:
        resource, scope = span.resource, span.instrumentation_scope
        key = (id(resource), id(scope))
        scope_spans = by_identity.get(key)
        if scope_spans is None:
            found = resources.get(resource)
            if found is None:
                resource_spans = request.resource_spans.add()
                _put_attributes(resource_spans.resource.attributes, resource.attributes)
                if resource.schema_url:
                    resource_spans.schema_url = resource.schema_url
                found = resources[resource] = (resource_spans, {})
            resource_spans, scopes = found
            scope_spans = scopes.get(scope)
            if scope_spans is None:
                scope_spans = scopes[scope] = resource_spans.scope_spans.add()
                scope_spans.scope.SetInParent()  # present even when empty, as the SDK's
                if scope is not None:
                    scope_spans.scope.name = scope.name
                    if scope.version:
                        scope_spans.scope.version = scope.version
                    _put_attributes(scope_spans.scope.attributes, scope.attributes)
                    if scope.schema_url:
                        scope_spans.schema_url = scope.schema_url
            by_identity[key] = scope_spans
        _put_span(scope_spans.spans.add(), span)
    return request


class SpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/gRPC span exporter, encoding with `encode_request`."""

    def _translate_data(self, data: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
        return encode_request(data)
