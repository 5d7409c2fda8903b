"""What a step's exporters get: the attempt's span token (`span_token_env`) and, in a pod,
a CA file that exists there (`kube_pods.pod_telemetry`), in every container of the pod."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from weft_core.auth import SpanTokenKey
from weft_core.span_tokens import EXPIRY_GRACE_SECONDS, HEADERS_ENV, PREFIX, verify
from weft_core.telemetry import format_traceparent
from weft_executor.config import ExecutorConfig, KubeSettings
from weft_executor.runtime import AttemptSpec, span_token_env
from weft_executor.runtime.kube_pods import API_CA_DIR, API_CA_VOLUME, build_pod

TRACE = 0x0AF7651916CD43DD8448EB211C80319C
TELEMETRY = {
    "OTEL_EXPORTER_OTLP_ENDPOINT": "https://weft-tracer.weft.svc.cluster.local:4317",
    "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
    "OTEL_EXPORTER_OTLP_CERTIFICATE": "/etc/weft/tls/ca.crt",
}


def spec(env: dict[str, str] | None = None, timeout: float | None = 600.0) -> AttemptSpec:
    return AttemptSpec(
        namespace="team-a",
        run="r1",
        step="s",
        attempt=1,
        image="busybox:1.36",
        command=("true",),
        working_dir="",
        env={"TRACEPARENT": format_traceparent(TRACE, 0x1234), **(env or {})},
        secret_env={},
        inputs={},
        outputs=("out",),
        timeout=timeout,
        dna="sha256:" + "0" * 64,
    )


def key(tmp_path: Path) -> SpanTokenKey:
    path = tmp_path / "span.key"
    path.write_text("k" * 64 + "\n")
    return SpanTokenKey(path)


def test_an_attempt_gets_a_token_for_its_runs_trace_until_its_timeout_and_the_grace(tmp_path: Path) -> None:
    span_key = key(tmp_path)
    now = time.time()
    env = span_token_env(spec(), TELEMETRY, span_key, now)
    header = env[HEADERS_ENV]
    assert header.startswith(f"authorization=Bearer%20{PREFIX}")
    grant = verify(span_key.keys, header.removeprefix("authorization=Bearer%20"), now)
    assert grant is not None
    assert (grant.run, grant.trace_id, grant.expires_at) == (
        "namespaces/team-a/runs/r1",
        TRACE,
        int(now + 600 + EXPIRY_GRACE_SECONDS),
    )


def test_no_token_without_a_key_an_endpoint_a_traceparent_or_when_the_step_exports_elsewhere(tmp_path: Path) -> None:
    span_key = key(tmp_path)
    assert span_token_env(spec(), TELEMETRY, None) == {}
    assert span_token_env(spec(), {}, span_key) == {}
    assert span_token_env(spec({"TRACEPARENT": "garbage"}), TELEMETRY, span_key) == {}
    assert span_token_env(spec({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://mine:4317"}), TELEMETRY, span_key) == {}


def config(**kube: Any) -> ExecutorConfig:
    settings = KubeSettings(namespace="weft-steps", pod_image="weft.test/weft:dev", **kube)
    return ExecutorConfig(etcd_endpoints="http://127.0.0.1:1", api="127.0.0.1:1", work_dir=Path("/x"), kube=settings)


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod["spec"]["initContainers"], *pod["spec"]["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {v["name"]: v.get("value", "") for v in container["env"]}


def test_every_container_of_a_pod_trusts_the_tracer_through_the_pods_ca_secret_and_sends_the_token(
    tmp_path: Path,
) -> None:
    telemetry = {**TELEMETRY, **span_token_env(spec(), TELEMETRY, key(tmp_path))}
    pod = build_pod(spec(), config(pod_api_ca_secret="rel-weft-pods-ca"), telemetry=telemetry)
    assert {"name": API_CA_VOLUME, "secret": {"secretName": "rel-weft-pods-ca"}} in pod["spec"]["volumes"]
    assert len(containers(pod)) == 3
    for container in containers(pod):
        env = env_of(container)
        assert env["OTEL_EXPORTER_OTLP_CERTIFICATE"] == f"{API_CA_DIR}/ca.crt", container["name"]
        assert env[HEADERS_ENV] == telemetry[HEADERS_ENV], container["name"]
        assert {"name": API_CA_VOLUME, "mountPath": API_CA_DIR, "readOnly": True} in container["volumeMounts"]


def test_without_the_pods_ca_secret_the_ca_variable_passes_unchanged_and_nothing_is_mounted() -> None:
    pod = build_pod(spec(), config(), telemetry=TELEMETRY)
    for container in containers(pod):
        assert env_of(container)["OTEL_EXPORTER_OTLP_CERTIFICATE"] == "/etc/weft/tls/ca.crt"
        assert all(m["name"] != API_CA_VOLUME for m in container["volumeMounts"])
        assert HEADERS_ENV not in env_of(container)
