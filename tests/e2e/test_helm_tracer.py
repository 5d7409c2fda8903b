"""The chart's weft-tracer: a real deployment with probes, its span store on a volume, and
forwarding to Jaeger when asked. Rendered with helm (the same helpers as test_helm_chart)."""

from __future__ import annotations

import subprocess

import pytest

from tests.e2e.test_helm_chart import CHART, HELM, _containers, _find, _helm, _objects


def test_the_tracer_runs_weft_tracer_with_its_store_on_a_claim_and_probes() -> None:
    objects = _objects("--set", "tracer.enabled=true")
    deployment = _find(objects, "Deployment", "rel-weft-tracer")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # one writer per store, even mid-upgrade
    container = _containers(objects)["rel-weft-tracer/tracer"]
    command = container["command"]
    assert command[0] == "weft-tracer"
    assert "--listen=0.0.0.0:4317" in command
    assert "--store=/var/lib/weft-tracer/spans.db" in command
    # TLS is on by default: the tracer reads timelines from etcd over TLS like the others.
    assert "--etcd-endpoints=https://rel-weft-etcd:2379" in command, command
    assert "--etcd-client-cert=/etc/weft/tls/tls.crt" in command, command
    assert not any(arg.startswith("--forward") for arg in command)
    assert container["readinessProbe"]
    assert container["livenessProbe"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["store"] == "/var/lib/weft-tracer"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["store"]["persistentVolumeClaim"]["claimName"] == "rel-weft-tracer"
    claim = _find(objects, "PersistentVolumeClaim", "rel-weft-tracer")
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"


def test_a_jaeger_endpoint_is_forwarded_to_and_persistence_can_be_off() -> None:
    objects = _objects(
        "--set", "tracer.enabled=true",
        "--set", "tracer.jaegerEndpoint=jaeger-collector.observability:4317",
        "--set", "tracer.persistence.enabled=false",
    )  # fmt: skip
    command = _containers(objects)["rel-weft-tracer/tracer"]["command"]
    assert "--forward=jaeger-collector.observability:4317" in command
    deployment = _find(objects, "Deployment", "rel-weft-tracer")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["store"] == {"name": "store", "emptyDir": {}}
    assert not [
        o for o in objects if o["kind"] == "PersistentVolumeClaim" and o["metadata"]["name"] == "rel-weft-tracer"
    ]


@pytest.mark.parametrize(
    "flags",
    [
        ("--set", "tracer.replicas=2"),
        ("--set", "tracer.jaegerEndpoint=not an endpoint"),
    ],
    ids=["two-replicas", "bad-endpoint"],
)
def test_values_the_tracer_cannot_honour_are_refused(flags: tuple[str, ...]) -> None:
    assert HELM is not None
    result = _helm("template", "rel", str(CHART), "--set", "tracer.enabled=true", *flags, check=False)
    assert result.returncode != 0
    assert "tracer" in result.stderr


def test_lint_is_strict_clean_with_the_tracer() -> None:
    assert HELM is not None
    result = subprocess.run(
        [str(HELM), "lint", "--strict", str(CHART), "--set", "tracer.enabled=true"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_with_auth_and_tls_the_tracer_is_secured_and_the_services_export_to_it_with_their_token() -> None:
    objects = _objects("--set", "tracer.enabled=true", "--set", "auth.enabled=true", "--set", "tls.enabled=true")
    containers = _containers(objects)
    tracer = containers["rel-weft-tracer/tracer"]
    assert {
        "--auth-tokens-file=/etc/weft/auth/tokens.yaml",
        "--tls-cert=/etc/weft/tls/tls.crt",
        "--etcd-ca-cert=/etc/weft/tls/ca.crt",
        "--etcd-client-cert=/etc/weft/tls/tls.crt",
    } <= set(tracer["command"])
    probe = tracer["readinessProbe"]["exec"]["command"]
    assert probe[probe.index("--ca-cert") + 1] == "/etc/weft/tls/ca.crt", probe
    assert {m["name"] for m in tracer["volumeMounts"]} >= {"auth", "tls"}
    for name in ("rel-weft-api/api", "rel-weft-executor/executor"):
        env = [e["name"] for e in containers[name]["env"]]
        values = {e["name"]: e.get("value") for e in containers[name]["env"]}
        assert values["OTEL_EXPORTER_OTLP_ENDPOINT"] == "https://rel-weft-tracer.weft.svc.cluster.local:4317"
        assert values["OTEL_EXPORTER_OTLP_CERTIFICATE"] == "/etc/weft/tls/ca.crt"
        assert values["OTEL_EXPORTER_OTLP_HEADERS"] == "authorization=Bearer%20$(WEFT_PEER_TOKEN)"
        # Kubernetes expands $(VAR) only from variables defined before it.
        assert env.index("WEFT_PEER_TOKEN") < env.index("OTEL_EXPORTER_OTLP_HEADERS"), name


def test_the_services_token_is_never_sent_to_an_explicit_otlp_endpoint() -> None:
    objects = _objects(
        "--set", "tracer.enabled=true", "--set", "auth.enabled=true", "--set", "tls.enabled=true",
        "--set", "otlp.endpoint=http://collector.observability:4317",
    )  # fmt: skip
    for name in ("rel-weft-api/api", "rel-weft-executor/executor"):
        names = {e["name"] for e in _containers(objects)[name]["env"]}
        assert "OTEL_EXPORTER_OTLP_HEADERS" not in names, name
        assert "OTEL_EXPORTER_OTLP_CERTIFICATE" not in names, name
