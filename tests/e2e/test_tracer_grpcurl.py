"""weft-tracer as an operator meets it: its `--help`, bad flags, and the real `grpcurl`
against it (reflection, health, and the README's GetTracerStatus)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.e2e.test_grpcurl import grpcurl
from tests.integration.tracer.support import TracerProcess

TRACER = str(Path(sys.executable).parent / "weft-tracer")


def test_weft_tracer_help_lists_its_flags_and_variables() -> None:
    result = subprocess.run([TRACER, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: weft-tracer")
    for flag in ("--listen", "--store", "--etcd-endpoints", "--retention", "--retention-bytes", "--forward"):
        assert flag in result.stdout
    assert "WEFT_TRACER_FORWARD" in result.stdout


def test_a_bad_flag_value_names_the_flag_and_the_fix() -> None:
    result = subprocess.run([TRACER, "--retention-bytes", "lots"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--retention-bytes" in result.stderr
    assert "512MiB" in result.stderr
    result = subprocess.run([TRACER, "--forward", "jaeger"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "HOST:PORT" in result.stderr


def test_grpcurl_lists_the_otlp_and_trace_services_and_reads_the_counters(tmp_path: Path) -> None:
    tracer = TracerProcess(tmp_path)
    tracer.start()
    try:
        services = set(grpcurl(tracer.address, "list").split())
        assert {
            "opentelemetry.proto.collector.trace.v1.TraceService",
            "weft.v1.TraceService",
            "grpc.health.v1.Health",
        } <= services
        description = grpcurl(tracer.address, "describe", "weft.v1.TraceService")
        assert "rpc ReplayRunEvents ( .weft.v1.ReplayRunEventsRequest ) returns ( stream .weft.v1.TimelineEvent )" in (
            description
        )
        health = json.loads(grpcurl(tracer.address, "grpc.health.v1.Health/Check"))
        assert health == {"status": "SERVING"}
        status = json.loads(grpcurl(tracer.address, "weft.v1.TraceService/GetTracerStatus"))
        assert "received" not in status or status["received"] == "0"  # proto-JSON omits zeros
    finally:
        tracer.stop()
