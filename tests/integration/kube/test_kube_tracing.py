"""A step pod's helper containers join the run's trace: the input fetch and the output
upload are spans under the attempt's span, and the attempt's span says where it ran.

Real throughout: a kube-apiserver, the simulated kubelet running the pod's containers as
processes (the helpers are `python -m weft_executor.podio`), a `weft-executor` process
with the kubernetes runtime exporting OTLP to an in-process weft-tracer, which the
helpers reach through the TRACEPARENT and exporter variables the pod gives them.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from tests.integration.executor.support import Harness
from tests.integration.kube.conftest import start_kube_executor_process
from tests.integration.tracer.support import USER_STEP, TraceClient, ancestry, by_name, running_tracer, tracer_config
from tests.kube.cluster import KubeCluster
from tests.kube.kubelet import SimulatedKubelet
from tests.support import assert_eventually_async
from weft.localstack import otlp_env
from weft.v1 import run_pb2, trace_pb2
from weft_core.auth import render_token_file
from weft_core.telemetry import format_traceparent
from weft_executor import podio

Run = run_pb2.Run


@pytest.mark.kube
async def test_the_helpers_spans_hang_under_the_attempt_with_the_pod_and_its_node(
    harness: Harness, cluster: KubeCluster, kubelet: SimulatedKubelet, namespace: str
) -> None:
    h = harness
    config = tracer_config(h.tmp / "spans.db", h.etcd_endpoint, h.keyspace.root)
    async with running_tracer(config) as tracer:
        address = f"127.0.0.1:{tracer.port}"
        env = {**otlp_env(address), "OTEL_BSP_SCHEDULE_DELAY": "50"}
        executor = start_kube_executor_process(h, cluster, namespace, env=env)
        steps = [
            h.step("make"),
            h.step("use", 'cat "$WEFT_INPUTS/in" > "$WEFT_OUTPUTS/out"', reads={"in": ("make", "out")}),
        ]
        pipeline = await h.apply("traced-pods", steps)
        run = await h.wait((await h.run(pipeline.name)).name, timeout=60)
        assert run.state == Run.STATE_SUCCEEDED, run.message
        await asyncio.to_thread(executor.stop)  # flushes the executor's spans

        async with grpc.aio.insecure_channel(address) as channel:
            client = TraceClient(channel)

            async def complete() -> trace_pb2.RunTrace:
                trace = await client.trace(run.name)
                names = by_name(trace)
                assert len(names.get("weft.attempt", [])) == 2, sorted(names)
                helpers = [s for s in trace.spans if s.service == "weft-podio"]
                assert len(helpers) == 4, [(s.name, s.service) for s in trace.spans]
                return trace

            trace = await assert_eventually_async(complete, timeout=20, what="the helpers' spans are stored")

    spans = {s.span_id: s for s in trace.spans}
    attempts = {s.attributes["weft.step"]: s for s in by_name(trace)["weft.attempt"]}
    for step, attempt in attempts.items():
        pod = attempt.attributes["k8s.pod.name"]
        assert f"-{step}-1-" in pod, pod  # weft's pod name of attempt 1 of the step (deleted since)
        assert attempt.attributes["k8s.node.name"] == kubelet.node_name
        assert attempt.attributes["k8s.namespace.name"] == namespace
        assert attempt.attributes["container.image.name"] == "busybox:1.36"
        helpers = [s for s in trace.spans if s.parent_span_id == attempt.span_id and s.service == "weft-podio"]
        assert sorted(s.name for s in helpers) == ["weft.input_fetch", "weft.output_upload"], step
        for helper in helpers:
            assert helper.attributes["k8s.pod.name"] == pod
            assert helper.attributes["k8s.node.name"] == kubelet.node_name
            assert helper.status_code != trace_pb2.Span.STATUS_CODE_ERROR, helper.status_message
            assert ancestry(trace, helper)[:3] == [helper.name, "weft.attempt", "weft.step"]
        fetch = next(s for s in helpers if s.name == "weft.input_fetch")
        upload = next(s for s in helpers if s.name == "weft.output_upload")
        assert fetch.attributes["weft.inputs"] == ("1" if step == "use" else "0")
        assert upload.attributes["weft.manifest"].startswith("sha256:")
        # In order on the time axis: fetched, then (the step ran, then) uploaded.
        assert fetch.end_time.ToNanoseconds() <= upload.start_time.ToNanoseconds()
        assert spans[attempt.parent_span_id].name == "weft.step"
        # The executor's wait on the pod, a child of the attempt, on the pod's node.
        (wait,) = [s for s in by_name(trace)["weft.wait"] if s.parent_span_id == attempt.span_id]
        assert wait.attributes["k8s.pod.name"] == pod
        assert wait.attributes["k8s.node.name"] == kubelet.node_name
        assert wait.attributes["weft.verdict"] == "succeeded"


def test_a_helper_whose_tracer_is_away_still_ends_in_time(tmp_path: Path) -> None:
    """The export is bounded (podio.EXPORT_TIMEOUT): the SDK's default would hold the
    pod for 10 s and more."""
    shared, log = tmp_path / "shared", tmp_path / "termination"
    podio.prepare_dirs(shared)
    (shared / podio.STATUS / podio.EXIT_CODE_FILE).write_text("3\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        "PATH": "/usr/bin:/bin",
        **otlp_env(f"127.0.0.1:{port}"),
        "TRACEPARENT": format_traceparent(0x1234, 0x5678),
    }
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "weft_executor.podio", "upload", "--api", "127.0.0.1:1", "--dir", str(shared),
         "--termination-log", str(log), "--max-bytes", "100", "out"],
        capture_output=True, timeout=60, env=env,
    )  # fmt: skip
    elapsed = time.monotonic() - started

    assert done.returncode == 0, done.stderr
    assert podio.TerminationMessage.decode(log.read_text()) == podio.TerminationMessage(
        skipped="step exited with code 3"
    )
    assert elapsed < 6, (elapsed, done.stderr)  # unbounded: 8 s here


@pytest.mark.kube
async def test_with_auth_on_every_container_of_a_pod_exports_with_the_attempts_span_token(
    harness: Harness, cluster: KubeCluster, kubelet: SimulatedKubelet, namespace: str
) -> None:
    """The tracer refuses exports without a token; the executor (its own spans: the peer
    token) gives each pod a span token, with which the helpers' spans and the step's own
    span (the main container, the OpenTelemetry SDK configured by the environment) land."""
    h = harness
    service_token = secrets.token_urlsafe(32)
    tokens_file = h.tmp / "tokens.yaml"
    tokens_file.write_text(render_token_file([("weft-services", service_token, {"*": "admin"})]))
    span_key = h.tmp / "span-token.key"
    span_key.write_text(secrets.token_hex(32) + "\n")
    config = tracer_config(
        h.tmp / "spans.db", h.etcd_endpoint, h.keyspace.root, auth_tokens_file=tokens_file, span_token_key_file=span_key
    )
    async with running_tracer(config) as tracer:
        address = f"127.0.0.1:{tracer.port}"
        env = {
            **otlp_env(address, token=service_token),
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "WEFT_SPAN_TOKEN_KEY_FILE": str(span_key),
        }
        executor = start_kube_executor_process(h, cluster, namespace, env=env)
        script = h.tmp / "user_step.py"
        script.write_text(USER_STEP)
        pipeline = await h.apply("token-pods", [h.step("own", command=[sys.executable, str(script)])])
        run = await h.wait((await h.run(pipeline.name)).name, timeout=60)
        assert run.state == Run.STATE_SUCCEEDED, run.message
        await asyncio.to_thread(executor.stop)

        async with grpc.aio.insecure_channel(address) as channel:
            client = TraceClient(channel)
            metadata = [("authorization", f"Bearer {service_token}")]

            async def complete() -> trace_pb2.RunTrace:
                trace: trace_pb2.RunTrace = await client.stub.GetRunTrace(
                    trace_pb2.GetRunTraceRequest(run=run.name), metadata=metadata
                )
                names = by_name(trace)
                assert {"weft.attempt", "weft.input_fetch", "weft.output_upload", "user.work"} <= set(names), names
                return trace

            trace = await assert_eventually_async(complete, timeout=20, what="the pod's spans are stored")
            status = await client.stub.GetTracerStatus(trace_pb2.GetTracerStatusRequest(), metadata=metadata)
    (attempt,) = by_name(trace)["weft.attempt"]
    for name in ("weft.input_fetch", "weft.output_upload", "user.work"):
        (found,) = by_name(trace)[name]
        assert found.parent_span_id == attempt.span_id, name
        assert ancestry(trace, found)[:3] == [name, "weft.attempt", "weft.step"]
    assert (status.refused, status.dropped) == (0, 0)
