"""The chart's auth and TLS (on by default): what the manifests say, that they validate
strictly with and without, and that what the chart generates really works: a weft-api
started with the rendered token file and certificate accepts the rendered admin token
over TLS with the rendered CA, and nothing else."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.e2e.test_helm_chart import KUBE_VERSIONS, _containers, _find, _kubernetes_validate, _objects, _template
from tests.integration.api.support import Clients
from tests.integration.conftest import InProcessApi, running_api
from weft._auth import open_channel
from weft.localstack import EtcdProcess
from weft.v1 import run_pb2
from weft_core.auth import TokenFile, token_digest
from weft_core.keyspace import Keyspace
from weft_core.span_tokens import parse_keys

SECURITY_VALUE_SETS = {
    "secure-defaults": (),
    "insecure": ("--set", "auth.enabled=false", "--set", "tls.enabled=false", "--set", "networkPolicy.enabled=false"),
    "auth-only": ("--set", "tls.enabled=false"),
    "with-tracer": ("--set", "tracer.enabled=true"),
    "tls-only": ("--set", "auth.enabled=false"),
    "kube-roles-and-tokens": (
        "--set", "auth.kubeRoles[0].group=system:serviceaccounts:ci",
        "--set", "auth.kubeRoles[0].roles.ci=runner",
        "--set", "auth.tokens[0].subject=alice",
        "--set", "auth.tokens[0].sha256=" + "a" * 64,
        "--set", "auth.tokens[0].roles.team-a=viewer",
        "--set", "etcd.replicas=3",
    ),
}  # fmt: skip


def secret_data(objects: list[dict[str, Any]], name: str) -> dict[str, str]:
    secret = _find(objects, "Secret", name)
    return dict(secret.get("stringData") or {}) | {
        k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()
    }


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", SECURITY_VALUE_SETS.values(), ids=SECURITY_VALUE_SETS.keys())
def test_security_value_sets_validate_strictly(values: tuple[str, ...], kube_version: str) -> None:
    rendered = _template(*values, kube_version=kube_version)
    validate = [_kubernetes_validate(), "--strict", "--quiet", "-k", KUBE_VERSIONS[kube_version], "-"]
    result = subprocess.run(validate, input=rendered, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_auth_and_tls_are_on_by_default_for_every_service_and_etcd() -> None:
    objects = _objects()
    containers = _containers(objects)
    for name in ("rel-weft-api/api", "rel-weft-executor/executor"):
        command = containers[name]["command"]
        assert "--auth-tokens-file=/etc/weft/auth/tokens.yaml" in command, name
        assert {"--tls-cert=/etc/weft/tls/tls.crt", "--etcd-client-cert=/etc/weft/tls/tls.crt"} <= set(command)
        assert "--etcd-endpoints=https://rel-weft-etcd:2379" in command
        peer = next(e for e in containers[name]["env"] if e["name"] == "WEFT_PEER_TOKEN")
        assert peer["valueFrom"]["secretKeyRef"] == {"name": "rel-weft-auth", "key": "service-token"}
        # Kubernetes' gRPC probe speaks no TLS: the exec probe does, even on 1.35.
        probe = containers[name]["readinessProbe"]["exec"]["command"]
        assert probe[probe.index("--ca-cert") + 1] == "/etc/weft/tls/ca.crt", probe
    executor = containers["rel-weft-executor/executor"]["command"]
    assert {"--pod-api-token-secret=rel-weft-pods-token", "--pod-api-ca-secret=rel-weft-pods-ca"} <= set(executor)
    etcd = containers["rel-weft-etcd/etcd"]["command"]
    assert {"--client-cert-auth", "--peer-client-cert-auth", "--trusted-ca-file=/etc/weft/tls/ca.crt"} <= set(etcd)
    assert any(arg.startswith("--listen-client-urls=https://") for arg in etcd)
    policy = _find(objects, "NetworkPolicy", "rel-weft-etcd")
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "etcd"
    allowed = {
        p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in policy["spec"]["ingress"][0]["from"]
    }
    # The snapshot and defrag CronJobs (templates/operations.yaml) talk to etcd too.
    assert allowed == {"api", "executor", "tracer", "etcd", "etcd-backup", "etcd-defrag"}
    test_pod = _find(objects, "Pod", "rel-weft-test-api-health")
    call = next(c for c in test_pod["spec"]["containers"] if c["name"] == "authenticated-call")
    assert call["command"][:2] == ["weft", "--server"]
    assert {e["name"] for e in call["env"]} == {"WEFT_TOKEN", "WEFT_CA_CERT"}


def test_without_auth_and_tls_the_chart_is_plaintext() -> None:
    objects = _objects(*SECURITY_VALUE_SETS["insecure"])
    assert not [o for o in objects if o["kind"] in ("Secret", "NetworkPolicy")]
    command = _containers(objects)["rel-weft-api/api"]["command"]
    assert "--etcd-endpoints=http://rel-weft-etcd:2379" in command
    assert not [arg for arg in command if arg.startswith(("--auth", "--tls"))]


def test_the_generated_token_file_holds_only_hashes() -> None:
    objects = _objects()
    data = secret_data(objects, "rel-weft-auth")
    admin, service = data["admin-token"], data["service-token"]
    assert len(admin) >= 40
    assert admin != service
    assert admin not in data["tokens.yaml"]
    assert token_digest(admin) in data["tokens.yaml"]
    pods = secret_data(objects, "rel-weft-pods-token")
    assert pods["token"] == service


@pytest.fixture
async def chart_api(etcd: EtcdProcess, keyspace: Keyspace, tmp_path: Path) -> AsyncIterator[tuple[InProcessApi, Path]]:
    """A real weft-api serving the chart's generated certificate and token file."""
    objects = _objects()
    auth, tls = secret_data(objects, "rel-weft-auth"), secret_data(objects, "rel-weft-tls")
    for name, text in (("tokens.yaml", auth["tokens.yaml"]), ("admin", auth["admin-token"]), *tls.items()):
        (tmp_path / name).write_text(text)
    assert TokenFile(tmp_path / "tokens.yaml").lookup(auth["admin-token"]) is not None
    async with running_api(
        etcd.endpoint,
        keyspace,
        tmp_path / "blobs",
        auth_tokens_file=tmp_path / "tokens.yaml",
        tls_cert=tmp_path / "tls.crt",
        tls_key=tmp_path / "tls.key",
    ) as api:
        yield api, tmp_path


async def test_the_generated_certificate_and_admin_token_work_with_a_real_api(
    chart_api: tuple[InProcessApi, Path],
) -> None:
    api, files = chart_api
    admin = (files / "admin").read_text()
    listing = run_pb2.ListRunsRequest(parent="namespaces/default")
    # The certificate names the api Service; the channel checks that name, not 127.0.0.1.
    override = [("grpc.ssl_target_name_override", "rel-weft-api")]
    async with open_channel(api.address, token=admin, ca_cert=files / "ca.crt", options=override) as channel:
        await Clients.of(channel).runs.ListRuns(listing, timeout=10)
    async with open_channel(api.address, token="wrong", ca_cert=files / "ca.crt", options=override) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await Clients.of(channel).runs.ListRuns(listing, timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def _pod_spec(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = _find(objects, kind, name)["spec"]["template"]["spec"]
    return spec


def test_with_the_tracer_the_executor_and_the_tracer_share_the_generated_span_token_key() -> None:
    objects = _objects("--set", "tracer.enabled=true")
    data = secret_data(objects, "rel-weft-auth")
    assert parse_keys(data["span-token-key"], "span-token-key")
    assert data["span-token-key"] not in (data["admin-token"], data["service-token"])
    containers = _containers(objects)
    flag = "--span-token-key-file=/etc/weft/span-token/span-token.key"
    for workload, kind, container in (
        ("rel-weft-executor", "Deployment", "executor"),
        ("rel-weft-tracer", "Deployment", "tracer"),
    ):
        assert flag in containers[f"{workload}/{container}"]["command"], workload
        mounts = containers[f"{workload}/{container}"]["volumeMounts"]
        assert {"name": "span-token", "mountPath": "/etc/weft/span-token", "readOnly": True} in mounts
        volume = next(v for v in _pod_spec(objects, kind, workload)["volumes"] if v["name"] == "span-token")
        assert volume["secret"] == {
            "secretName": "rel-weft-auth",
            "items": [{"key": "span-token-key", "path": "span-token.key"}],
        }
    # Only they hold it: not weft-api, and never a step pod's namespace.
    assert flag not in containers["rel-weft-api/api"]["command"]
    assert all(v["name"] != "span-token" for v in _pod_spec(objects, "Deployment", "rel-weft-api")["volumes"])
    assert "span-token-key" not in secret_data(objects, "rel-weft-pods-token")


@pytest.mark.parametrize(
    "values",
    [
        ("--set", "tracer.enabled=true", "--set", "auth.enabled=false"),
        ("--set", "tracer.enabled=true", "--set", "otlp.endpoint=http://jaeger.observability:4317"),
        (),
    ],
    ids=["no-auth", "external-collector", "no-tracer"],
)
def test_without_auth_or_the_charts_tracer_no_span_token_key_is_passed(values: tuple[str, ...]) -> None:
    containers = _containers(_objects(*values))
    for name, container in containers.items():
        assert not [arg for arg in container.get("command", []) if arg.startswith("--span-token-key-file")], name
