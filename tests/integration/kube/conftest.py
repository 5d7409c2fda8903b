"""Fixtures of the kubernetes-runtime tests: a real control plane, a kubelet that runs step
pods for real, a real weft-api, and the runtime under test.

Step pods run through the simulated kubelet's `run_locally` (tests.kube.kubelet): the
init container and the output container run `python -m weft_executor.podio` with this
virtualenv's python (the "image" `POD_IMAGE` maps to it), the step container runs its
`/bin/sh` wrapper on this machine. Volumes are not simulated, so `prepare` maps the pod's
shared volume (`/weft`) to a directory of its own and each container's termination-message
file to a file beside it, which the behaviour reports back as the container's termination
message, as a kubelet would. A pod whose step name starts with `oom`, `evict`, `pull` or
`pending` gets the matching canned behaviour instead (OOMKilled, evicted, image pull
failure, unschedulable), since a local process cannot produce those; `groupkilled` and
`uploading` end the step container alone (OOMKilled without an exit-code marker; exit 0
with the outputs still "uploading") and leave the output container running.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import ssl
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import InProcessApi
from tests.integration.executor.support import ExecutorProcess, Harness, executor_command
from tests.kube.cluster import KubeCluster, require_kube, start_cluster
from tests.kube.kubelet import (
    Exited,
    Hold,
    LocalProcess,
    PodOutcome,
    PodRun,
    SimulatedKubelet,
    evicted,
    image_pull_failure,
    oom_killed,
    run_locally,
    start_kubelet,
    unschedulable,
)
from weft_core.blobs import RemoteBlobStore
from weft_core.store import Store
from weft_executor import podio
from weft_executor.config import ExecutorConfig, KubeSettings
from weft_executor.runtime.kube_client import KubeApi
from weft_executor.runtime.kube_pods import LABEL_STEP, MAIN_CONTAINER, POD_SELECTOR
from weft_executor.runtime.kubernetes import KubernetesRuntime, claims_in_etcd

#: The "image" of weft's helper containers in these tests: this virtualenv's python.
POD_IMAGE = "weft.test/weft:dev"

_namespaces = itertools.count()


def _map_paths(text: str, shared: Path) -> str:
    return text.replace(podio.SHARED_DIR, str(shared))


def pod_dir(root: Path, run: PodRun) -> Path:
    """Where a pod's shared volume and termination messages live on this machine."""
    return root / f"{run.namespace}.{run.name}.{run.uid[:8]}"


def step_container_ends_alone(exit_code: int, reason: str | None = None) -> Callable[[PodRun], PodOutcome | None]:
    """The step container ends without recording its exit code (as when a cgroup OOM group
    kill takes the wrapper with it) while the output container keeps waiting for it."""

    def behaviour(run: PodRun) -> PodOutcome | None:
        run.start()
        run.log(MAIN_CONTAINER, "allocating")
        run.sleep(0.2)
        run.exited(MAIN_CONTAINER, exit_code, reason)
        return Hold()

    return behaviour


def weft_pods(root: Path) -> Callable[[PodRun], PodOutcome | None]:
    """The kubelet behaviour that runs weft's step pods for real (see the module docstring)."""

    def prepare(run: PodRun, container: dict[str, Any], process: LocalProcess) -> LocalProcess:
        directory = pod_dir(root, run)
        shared = directory / "volume"
        (directory / "work").mkdir(parents=True, exist_ok=True)
        argv = [_map_paths(arg, shared) for arg in process.argv]
        if container.get("image") == POD_IMAGE:
            if argv and argv[0] == "python":
                argv[0] = sys.executable
            # podio's subcommand is argv[3]; its termination message goes to a file here.
            argv[4:4] = ["--termination-log", str(directory / f"{container['name']}.termination-log")]
        env = {key: _map_paths(value, shared) for key, value in process.env.items()}
        cwd = process.cwd or str(directory / "work")
        return LocalProcess(argv=argv, env=env, cwd=cwd)

    local = run_locally(prepare=prepare, kill_grace=1.0)

    def termination_message(run: PodRun, container: str) -> str | None:
        path = pod_dir(root, run) / f"{container}.termination-log"
        try:
            return path.read_text()[: podio.TERMINATION_LIMIT] or None
        except FileNotFoundError:
            return None

    def behaviour(run: PodRun) -> PodOutcome | None:
        step = (run.pod["metadata"].get("labels") or {}).get(LABEL_STEP, "")
        for prefix, canned in (
            ("oom", oom_killed(after=0.2, logs=["allocating"])),
            ("evict", evicted(after=0.2)),
            ("pull", image_pull_failure(backoff_after=0.2)),
            ("pending", unschedulable("0/1 nodes are available: 1 Insufficient memory.")),
            ("groupkilled", step_container_ends_alone(137, "OOMKilled")),
            ("uploading", step_container_ends_alone(0)),
        ):
            if step.startswith(prefix):
                return canned(run)
        init_exited = run.init_exited

        def init_exited_with_message(
            name: str, exit_code: int = 0, reason: str | None = None, message: str | None = None
        ) -> None:
            init_exited(name, exit_code, reason, message or termination_message(run, name))

        run.init_exited = init_exited_with_message  # type: ignore[method-assign]
        outcome = local(run)
        if isinstance(outcome, Exited) and outcome.containers:
            containers = {
                name: replace(exited, message=exited.message or termination_message(run, name))
                for name, exited in outcome.containers.items()
            }
            return replace(outcome, containers=containers)
        return outcome

    return behaviour


@pytest.fixture(scope="module")
def cluster() -> Iterator[KubeCluster]:
    """etcd + kube-apiserver for the module (skipped when the binaries are not built)."""
    require_kube()
    with start_cluster() as running:
        yield running


@pytest.fixture(scope="module")
def pods_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pods")


@pytest.fixture(scope="module")
def kubelet(cluster: KubeCluster, pods_root: Path) -> Iterator[SimulatedKubelet]:
    """A simulated node that runs weft's step pods for real."""
    with start_kubelet(cluster, weft_pods(pods_root), heartbeat_interval=2.0) as running:
        yield running
    assert running.errors == []


@pytest.fixture(scope="module")
def core(cluster: KubeCluster) -> Iterator[Any]:
    """The official client's CoreV1Api, for the tests' own checks (Any: untyped models)."""
    from kubernetes import client

    with cluster.api_client() as api_client:
        yield client.CoreV1Api(api_client)


@pytest.fixture
def namespace(core: Any, request: pytest.FixtureRequest) -> str:
    """A Kubernetes namespace of this test alone, so pods can be counted."""
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = f"t{next(_namespaces)}-{name}".strip("-")[:63].rstrip("-")
    core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


#: ExecutorConfig fields that `settings_for` accepts besides the KubeSettings fields.
_EXECUTOR_FIELDS = {f.name for f in fields(ExecutorConfig)} - {"kube"}


def settings_for(namespace: str, api: InProcessApi, **overrides: Any) -> ExecutorConfig:
    """Runtime settings for tests: short grace periods, the test "image" for helpers.

    `overrides` may name fields of ExecutorConfig (`kill_grace`, `max_output_bytes`, ...)
    or of its KubeSettings (`keep_failed_pods`, `helper_grace`, ...).
    """
    kube: dict[str, Any] = {
        "namespace": namespace,
        "pod_image": POD_IMAGE,
        "image_pull_grace": 1.0,
        "unschedulable_timeout": 1.0,
        "keep_failed_pods": 3600.0,
        "kube_qps": 50.0,
        "kube_burst": 100,
    }
    executor: dict[str, Any] = {
        "etcd_endpoints": api.config.etcd_endpoints,
        "api": api.address,
        "work_dir": Path("/nonexistent-kube-work-dir"),
        "etcd_root": api.keyspace.root,
        "kill_grace": 1.0,
    }
    for name, value in overrides.items():
        (executor if name in _EXECUTOR_FIELDS else kube)[name] = value
    return ExecutorConfig(**executor, kube=KubeSettings(**kube))


@contextlib.asynccontextmanager
async def kube_runtime(
    cluster: KubeCluster, config: ExecutorConfig, weft_api: InProcessApi
) -> AsyncIterator[KubernetesRuntime]:
    """A KubernetesRuntime against the cluster with its own artifact-store and etcd clients.

    Its sweep reads the steps' claims under `weft_api`'s keyspace, in `weft_api`'s etcd.
    Its watch and sweep start with the first launch or adoption (`start()` starts them now).
    """
    blobs = RemoteBlobStore(config.api, patience=config.api_patience)
    store = Store(weft_api.config.etcd_endpoints)
    api = KubeApi(cluster.configuration(), qps=config.kube.kube_qps, burst=config.kube.kube_burst)
    runtime = KubernetesRuntime(api, blobs, config, claims_in_etcd(store, weft_api.keyspace))
    try:
        yield runtime
    finally:
        await runtime.close()
        await blobs.close()
        await store.close()


@pytest.fixture
async def runtime(
    cluster: KubeCluster, kubelet: SimulatedKubelet, namespace: str, api: InProcessApi
) -> AsyncIterator[KubernetesRuntime]:
    """The runtime under test, in the test's namespace, with the in-process api's store."""
    async with kube_runtime(cluster, settings_for(namespace, api), api) as running:
        yield running


def list_pods(core: Any, namespace: str) -> list[Any]:
    """weft's step pods in `namespace` (one API list, as the tests count them)."""
    return list(core.list_namespaced_pod(namespace, label_selector=POD_SELECTOR).items)


def restart_apiserver(cluster: KubeCluster) -> Callable[[], None]:
    """Stops kube-apiserver and starts it again with the same flags (same port and data).

    Must be called from the main thread (the new process dies with the thread that started
    it). Returns a blocking function that waits until the new server answers /readyz; run
    it in a thread.
    """
    from tests.kube import cluster as cluster_module

    processes = cluster._processes
    index = next(i for i, p in enumerate(processes) if p.name == "kube-apiserver")
    old = processes[index]
    argv = [str(arg) for arg in old.popen.args]  # type: ignore[union-attr]
    old.stop()
    new = cluster_module._ControlPlaneProcess("kube-apiserver", argv, old.log_path)
    processes[index] = new
    context = ssl.create_default_context(cafile=str(cluster.ca_cert_path))

    def wait_ready(timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not new.alive():
                raise RuntimeError(f"kube-apiserver did not restart:\n{new.log_tail()}")
            request = urllib.request.Request(f"{cluster.host}/readyz")
            request.add_header("Authorization", f"Bearer {cluster.token}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(request, timeout=2, context=context) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"kube-apiserver not ready {timeout}s after a restart:\n{new.log_tail()}")

    return wait_ready


async def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    """Polls a blocking predicate in a thread (the client is synchronous) until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {what or predicate}")
        await asyncio.sleep(0.1)


# Whole pipelines through weft-executor -------------------------------------------------------


def kube_executor_settings(cluster: KubeCluster, namespace: str, **overrides: Any) -> dict[str, Any]:
    """ExecutorConfig fields of a kubernetes-runtime executor on the test cluster.

    `overrides` may name fields of ExecutorConfig or of its KubeSettings.
    """
    kube: dict[str, Any] = {
        "namespace": namespace,
        "kubeconfig": cluster.kubeconfig_path,
        "pod_image": POD_IMAGE,
        "image_pull_grace": 1.0,
        "unschedulable_timeout": 1.0,
        "kube_qps": 50.0,
        "kube_burst": 100,
    }
    settings: dict[str, Any] = {"runtime": "kubernetes"}
    for name, value in overrides.items():
        (settings if name in _EXECUTOR_FIELDS else kube)[name] = value
    settings["kube"] = KubeSettings(**kube)
    return settings


def start_kube_executor_process(
    harness: Harness, cluster: KubeCluster, namespace: str, *, lease_ttl: int = 2, env: dict[str, str] | None = None
) -> ExecutorProcess:
    """`weft-executor --runtime kubernetes ...` as a child process a test may SIGKILL
    (`env`: added to its environment)."""
    config = harness.executor_config(lease_ttl=lease_ttl)
    argv = [
        executor_command(),
        "--etcd-endpoints", config.etcd_endpoints,
        "--api", config.api,
        "--runtime", "kubernetes",
        "--namespace", namespace,
        "--kubeconfig", str(cluster.kubeconfig_path),
        "--pod-image", POD_IMAGE,
        "--max-parallel", "4",
        "--listen", "127.0.0.1:0",
        "--etcd-root", config.etcd_root,
        "--executor-id", config.executor_id,
        "--lease-ttl", str(config.lease_ttl),
    ]  # fmt: skip
    process = ExecutorProcess(argv, harness.tmp / f"{config.executor_id}.log", env=env)
    process.start()
    harness.processes.append(process)
    return process
