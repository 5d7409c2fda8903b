"""weft_core.telemetry without an exporter: traceparents are still made and continued."""

from __future__ import annotations

from opentelemetry import trace

from weft_core.telemetry import (
    child_traceparent,
    context_from_traceparent,
    format_traceparent,
    otlp_endpoint,
    parse_traceparent,
    run_root_span,
    setup_tracing,
    step_telemetry_env,
)


def test_export_is_off_without_an_endpoint() -> None:
    assert otlp_endpoint({}) == ""
    assert setup_tracing("weft-test", {}) is False
    assert otlp_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317"}) == "http://x:4317"


def test_a_run_gets_a_valid_distinct_traceparent_even_when_export_is_off() -> None:
    with run_root_span("weft.CreateRun", "namespaces/n/runs/a") as (_, first):
        pass
    with run_root_span("weft.CreateRun", "namespaces/n/runs/b") as (_, second):
        pass
    assert parse_traceparent(first) is not None
    assert parse_traceparent(second) is not None
    assert first.split("-")[1] != second.split("-")[1]  # one trace per run


def test_a_stored_traceparent_is_continued_by_its_trace_id() -> None:
    parent = format_traceparent(0x1234, 0x99)
    span_context = trace.get_current_span(context_from_traceparent(parent)).get_span_context()
    assert span_context.trace_id == 0x1234
    assert span_context.span_id == 0x99
    child = child_traceparent(parent)
    assert child.split("-")[1] == f"{0x1234:032x}"
    assert child.split("-")[2] != f"{0x99:016x}"


def test_malformed_traceparents_start_a_new_trace_instead_of_failing() -> None:
    for bad in ("", "garbage", "00-" + "0" * 32 + "-" + "1" * 16 + "-01"):
        assert parse_traceparent(bad) is None
        assert not trace.get_current_span(context_from_traceparent(bad)).get_span_context().is_valid


def test_a_step_gets_the_exporter_variables_but_never_the_headers() -> None:
    executor = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://tracer:4317",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer secret",
        "OTEL_SERVICE_NAME": "weft-executor",
        "PATH": "/bin",
    }
    assert step_telemetry_env(executor) == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://tracer:4317",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",  # what weft's endpoint speaks
    }
    named = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    assert step_telemetry_env(named) == named
    assert step_telemetry_env({"PATH": "/bin"}) == {}
