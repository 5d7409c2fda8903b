"""Turning OTLP spans into store rows, and store rows into `weft.v1.Span` messages.

The hot path (`rows_of_request`) touches each span once: its ids, times, name and the
three weft attributes that index it (`weft.run`, `weft.step`, `weft.attempt`); the span
itself is kept as its serialized OTLP bytes, so nothing an exporter sent is lost and
nothing is decoded twice. Everything else (attributes as text, events, the tree) is
built only when a span is read. This module never touches the database or the network.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2 as otlp

from weft.v1 import trace_pb2
from weft_core.telemetry import ATTR_ATTEMPT, ATTR_RUN, ATTR_STEP

_SERVICE_NAME = "service.name"


class SpanRow(NamedTuple):
    """One span as the store keeps it: index columns plus the OTLP bytes. A tuple, in the
    store's column order, so batches go to SQLite without another copy."""

    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes
    name: str
    service: str
    start_ns: int
    end_ns: int
    run: str
    step: str
    attempt: int
    body: bytes


def count_spans(resource_spans: Iterable[Any]) -> int:
    """How many spans an ExportTraceServiceRequest's `resource_spans` carry."""
    return sum(len(scope.spans) for rs in resource_spans for scope in rs.scope_spans)


def _service_of(resource: Any) -> str:
    for item in resource.attributes:
        if item.key == _SERVICE_NAME:
            return str(item.value.string_value)
    return ""


def rows_of_request(resource_spans: Iterable[Any]) -> list[SpanRow]:
    """Store rows of every span in an export request's `resource_spans`."""
    rows: list[SpanRow] = []
    for rs in resource_spans:
        service = _service_of(rs.resource)
        for scope in rs.scope_spans:
            for span in scope.spans:
                run = step = ""
                attempt = 0
                for item in span.attributes:
                    key = item.key
                    if key == ATTR_RUN:
                        run = item.value.string_value
                    elif key == ATTR_STEP:
                        step = item.value.string_value
                    elif key == ATTR_ATTEMPT:
                        attempt = int(item.value.int_value)
                # The scope is not kept per span: it says which library made it, which no
                # reader of a run's trace needs; the resource's service.name is kept.
                rows.append(
                    SpanRow(
                        span.trace_id,
                        span.span_id,
                        span.parent_span_id,
                        span.name,
                        service,
                        span.start_time_unix_nano,
                        span.end_time_unix_nano,
                        run,
                        step,
                        attempt,
                        span.SerializeToString(),
                    )
                )
    return rows


def value_text(value: common_pb2.AnyValue) -> str:
    """An OTLP attribute value as text (see `weft.v1.Span.attributes`)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return ""
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "int_value":
        return str(value.int_value)
    if kind == "double_value":
        return repr(value.double_value)
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return json.dumps(_plain(value), separators=(",", ":"))


def _plain(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_plain(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _plain(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind) if kind else None


def timestamp_at(nanos: int) -> Timestamp:
    """Nanoseconds since the epoch as a protobuf Timestamp."""
    stamp = Timestamp()
    stamp.FromNanoseconds(nanos)
    return stamp


def span_message(body: bytes, service: str) -> trace_pb2.Span:
    """The `weft.v1.Span` of a stored span (its depth is set by `order_tree`)."""
    span = otlp.Span()
    span.ParseFromString(body)
    message = trace_pb2.Span(
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex(),
        name=span.name,
        service=service,
        # OTLP's SpanKind numbers are those of weft.v1.Span.Kind.
        kind=span.kind,  # type: ignore[arg-type]
        start_time=timestamp_at(span.start_time_unix_nano),
        end_time=timestamp_at(span.end_time_unix_nano),
        attributes={item.key: value_text(item.value) for item in span.attributes},
        status_code=span.status.code,  # type: ignore[arg-type]
        status_message=span.status.message,
    )
    for event in span.events:
        message.events.add(
            name=event.name,
            time=timestamp_at(event.time_unix_nano),
            attributes={item.key: value_text(item.value) for item in event.attributes},
        )
    return message


def order_tree(spans: Sequence[trace_pb2.Span]) -> tuple[list[trace_pb2.Span], list[str]]:
    """Spans depth first (parents before children, siblings by start time), with depths set.

    Returns:
        The ordered spans and the ids of the roots (spans whose parent is not among them).
    """
    by_id = {s.span_id: s for s in spans}
    children: dict[str, list[trace_pb2.Span]] = {}
    roots: list[trace_pb2.Span] = []
    for span in spans:
        if span.parent_span_id and span.parent_span_id in by_id and span.parent_span_id != span.span_id:
            children.setdefault(span.parent_span_id, []).append(span)
        else:
            roots.append(span)

    def start(span: trace_pb2.Span) -> tuple[int, str]:
        return span.start_time.ToNanoseconds(), span.span_id

    # True roots (no parent at all) first, then spans whose parent was never stored.
    roots.sort(key=lambda s: (bool(s.parent_span_id), *start(s)))
    ordered: list[trace_pb2.Span] = []
    seen: set[str] = set()
    stack = [(root, 0) for root in reversed(roots)]
    while stack:
        span, depth = stack.pop()
        if span.span_id in seen:  # a cycle in bad input must not loop forever
            continue
        seen.add(span.span_id)
        span.depth = depth
        ordered.append(span)
        for child in sorted(children.get(span.span_id, ()), key=start, reverse=True):
            stack.append((child, depth + 1))
    # Spans on a parent cycle (bad input) have no root above them: list them as roots.
    for span in spans:
        if span.span_id not in seen:
            seen.add(span.span_id)
            span.depth = 0
            ordered.append(span)
            roots.append(span)
    return ordered, [r.span_id for r in roots]
