"""The Kubernetes test harness behaves like a real cluster where weft's runtime depends on it.

weft's Kubernetes runtime will be tested against tests.kube (a real kube-apiserver plus a
simulated kubelet), so these tests pin what that runtime relies on: pods are scheduled and
run to a terminal phase with the exit codes and reasons a kubelet reports, watches resume
from a list's resourceVersion and see every transition, logs are served with and without
``follow``, graceful deletes complete (404 afterwards), duplicate names are 409, and the
simulated kubelet can really run a container's command. One cluster serves the module.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest

from tests.kube.cluster import KubeCluster, require_kube, start_cluster
from tests.kube.kubelet import (
    PodRun,
    SimulatedKubelet,
    by_name,
    complete,
    evicted,
    fail,
    image_pull_failure,
    keep_running,
    oom_killed,
    run_locally,
    start_kubelet,
    succeed,
    unschedulable,
)
from tests.support import assert_eventually

pytestmark = pytest.mark.kube

NAMESPACE = "smoke"

#: Released by test_follow_streams_until_the_container_exits to let its pod finish.
FOLLOW_GATE = threading.Event()


def _follow_behaviour(run: PodRun) -> Any:
    run.start()
    run.log("main", "first line")
    FOLLOW_GATE.wait(10)
    run.log("main", "last line")
    return complete(0)(run)


def _init_then_main(run: PodRun) -> Any:
    run.bind()
    run.init_running("prepare")
    run.log("prepare", "preparing")
    run.init_exited("prepare", 0)
    run.start()
    run.log("main", "working")
    return complete(0)(run)


BEHAVIOURS = {
    f"{NAMESPACE}/fail-*": fail(3, logs=["reading input", "Traceback: boom"]),
    f"{NAMESPACE}/oom-*": oom_killed(),
    f"{NAMESPACE}/pull-*": image_pull_failure(backoff_after=0.2),
    f"{NAMESPACE}/evict-*": evicted(),
    f"{NAMESPACE}/pending-*": unschedulable("0/1 nodes are available: 1 Insufficient memory."),
    f"{NAMESPACE}/serve-*": keep_running(logs=["serving"]),
    f"{NAMESPACE}/follow-*": _follow_behaviour,
    f"{NAMESPACE}/init-*": _init_then_main,
    f"{NAMESPACE}/local-*": run_locally(),
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[KubeCluster]:
    require_kube()  # skips (fails under WEFT_REQUIRE_KUBE=1) when the binaries are not built
    with start_cluster() as running:
        yield running


@pytest.fixture(scope="module")
def kubelet(cluster: KubeCluster) -> Iterator[SimulatedKubelet]:
    behaviour = by_name(BEHAVIOURS, default=succeed(after=0.3, logs=["hello", "world"]))
    with start_kubelet(cluster, behaviour, heartbeat_interval=1.0) as running:
        yield running
    assert running.errors == []


@pytest.fixture(scope="module")
def core(cluster: KubeCluster, kubelet: SimulatedKubelet) -> Iterator[Any]:
    from kubernetes import client

    with cluster.api_client() as api_client:
        # Any: the generated models make every status field Optional; a test asserts on them.
        api: Any = client.CoreV1Api(api_client)
        api.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        yield api


def _pod(name: str, *, command: list[str] | None = None, env: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "registry.example/step:1"}
    if command:
        container["command"] = command
    if env:
        container["env"] = env
    spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if name.startswith("init-"):
        spec["initContainers"] = [{"name": "prepare", "image": "registry.example/prepare:1"}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def _wait_for_phase(core: Any, name: str, phase: str, timeout: float = 15.0) -> Any:
    def reached() -> Any:
        pod = core.read_namespaced_pod(name, NAMESPACE)
        return pod if pod.status.phase == phase else None

    return assert_eventually(reached, timeout=timeout, what=f"pod {name} {phase}")


def _events(core: Any, pod: str, kind: str) -> list[Any]:
    selector = f"involvedObject.name={pod},type={kind}"
    return assert_eventually(
        lambda: core.list_namespaced_event(NAMESPACE, field_selector=selector).items, timeout=5, what=f"events of {pod}"
    )


def test_a_pod_is_scheduled_and_runs_to_succeeded(core: Any, kubelet: SimulatedKubelet) -> None:
    core.create_namespaced_pod(NAMESPACE, _pod("ok-1"))

    pod = _wait_for_phase(core, "ok-1", "Succeeded")

    assert pod.spec.node_name == kubelet.node_name
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")
    conditions = {c.type: c.status for c in pod.status.conditions}
    assert conditions["PodScheduled"] == "True"
    assert conditions["Ready"] == "False"  # a completed pod is not ready
    assert {"Scheduled", "Started"} <= {event.reason for event in _events(core, "ok-1", "Normal")}


def test_watch_from_a_list_version_sees_every_transition(core: Any) -> None:
    from kubernetes import watch

    version = core.list_namespaced_pod(NAMESPACE).metadata.resource_version
    events: list[tuple[str, str]] = []
    watcher: Any = cast(Any, watch).Watch()  # kubernetes.watch is untyped

    def follow() -> None:
        for event in watcher.stream(
            core.list_namespaced_pod,
            NAMESPACE,
            field_selector="metadata.name=watched-1",
            resource_version=version,
            timeout_seconds=30,
        ):
            events.append((event["type"], event["object"].status.phase))
            if event["type"] == "DELETED":
                watcher.stop()

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    core.create_namespaced_pod(NAMESPACE, _pod("watched-1"))
    _wait_for_phase(core, "watched-1", "Succeeded")
    core.delete_namespaced_pod("watched-1", NAMESPACE)
    follower.join(20)

    kinds = [kind for kind, _ in events]
    assert kinds[0] == "ADDED"
    assert kinds[-1] == "DELETED"
    assert set(kinds[1:-1]) == {"MODIFIED"}
    phases = [phase for _, phase in events]
    # Pending (created, bound, ContainerCreating) -> Running -> Succeeded, never backwards.
    order = {"Pending": 0, "Running": 1, "Succeeded": 2}
    assert phases == sorted(phases, key=order.__getitem__)
    assert {"Pending", "Running", "Succeeded"} <= set(phases)


def test_logs_without_follow(core: Any) -> None:
    core.create_namespaced_pod(NAMESPACE, _pod("logs-1"))
    _wait_for_phase(core, "logs-1", "Succeeded")

    assert core.read_namespaced_pod_log("logs-1", NAMESPACE) == "hello\nworld\n"
    assert core.read_namespaced_pod_log("logs-1", NAMESPACE, tail_lines=1) == "world\n"
    stamped = core.read_namespaced_pod_log("logs-1", NAMESPACE, timestamps=True).splitlines()
    assert [line.split(" ", 1)[1] for line in stamped] == ["hello", "world"]
    assert all(line.split(" ", 1)[0].endswith("Z") for line in stamped)  # RFC 3339 in UTC


def test_follow_streams_until_the_container_exits(core: Any) -> None:
    core.create_namespaced_pod(NAMESPACE, _pod("follow-1"))
    _wait_for_phase(core, "follow-1", "Running")
    stream = core.read_namespaced_pod_log("follow-1", NAMESPACE, follow=True, _preload_content=False)
    received: list[str] = []
    try:
        lines = iter(stream)
        received.append(next(lines).decode())
        # The first line arrived while the container is still running: this is streaming.
        assert core.read_namespaced_pod("follow-1", NAMESPACE).status.phase == "Running"
        FOLLOW_GATE.set()
        received.extend(line.decode() for line in lines)  # ends when the container exits
    finally:
        stream.close()

    assert received == ["first line\n", "last line\n"]
    _wait_for_phase(core, "follow-1", "Succeeded")


def test_read_after_graceful_delete_is_404(core: Any) -> None:
    from kubernetes.client.exceptions import ApiException

    core.create_namespaced_pod(NAMESPACE, _pod("serve-1"))
    _wait_for_phase(core, "serve-1", "Running")

    core.delete_namespaced_pod("serve-1", NAMESPACE)  # default grace: the kubelet must confirm

    def gone() -> bool:
        try:
            core.read_namespaced_pod("serve-1", NAMESPACE)
        except ApiException as error:
            return bool(error.status == 404)
        return False

    assert_eventually(gone, timeout=10, what="pod serve-1 deleted")


def test_creating_an_existing_name_is_409(core: Any) -> None:
    from kubernetes.client.exceptions import ApiException

    core.create_namespaced_pod(NAMESPACE, _pod("dup-1"))
    with pytest.raises(ApiException) as raised:
        core.create_namespaced_pod(NAMESPACE, _pod("dup-1"))

    assert raised.value.status == 409
    assert raised.value.reason == "Conflict"


def test_a_failing_container_reports_its_exit_code_and_logs(core: Any) -> None:
    core.create_namespaced_pod(NAMESPACE, _pod("fail-1"))

    pod = _wait_for_phase(core, "fail-1", "Failed")

    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (3, "Error")
    assert core.read_namespaced_pod_log("fail-1", NAMESPACE) == "reading input\nTraceback: boom\n"


def test_oom_killed_and_evicted_pods_fail_with_their_reasons(core: Any) -> None:
    core.create_namespaced_pod(NAMESPACE, _pod("oom-1"))
    core.create_namespaced_pod(NAMESPACE, _pod("evict-1"))

    oom = _wait_for_phase(core, "oom-1", "Failed")
    evicted_pod = _wait_for_phase(core, "evict-1", "Failed")

    terminated = oom.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (137, "OOMKilled")
    assert evicted_pod.status.reason == "Evicted"
    assert "low on resource" in evicted_pod.status.message


def test_image_pull_failure_leaves_the_pod_pending_in_back_off(core: Any) -> None:
    core.create_namespaced_pod(NAMESPACE, _pod("pull-1"))

    def backing_off() -> Any:
        pod = core.read_namespaced_pod("pull-1", NAMESPACE)
        statuses = pod.status.container_statuses or []
        waiting = statuses[0].state.waiting if statuses else None
        return pod if waiting is not None and waiting.reason == "ImagePullBackOff" else None

    pod = assert_eventually(backing_off, timeout=10, what="ImagePullBackOff")
    assert pod.status.phase == "Pending"
    assert pod.spec.node_name  # bound: pulling is the node's job
    # `kubectl describe` (and weft's diagnosis of a stuck step) reads the why from events.
    warnings = _events(core, "pull-1", "Warning")
    assert {"Failed", "BackOff"} <= {event.reason for event in warnings}
    assert all(event.involved_object.field_path == "spec.containers{main}" for event in warnings)


def test_an_unschedulable_pod_is_never_bound(core: Any) -> None:
    core.create_namespaced_pod(NAMESPACE, _pod("pending-1"))

    def unschedulable_reported() -> Any:
        pod = core.read_namespaced_pod("pending-1", NAMESPACE)
        scheduled = [c for c in pod.status.conditions or [] if c.type == "PodScheduled"]
        return pod if scheduled and scheduled[0].reason == "Unschedulable" else None

    pod = assert_eventually(unschedulable_reported, timeout=10, what="PodScheduled=False")
    assert pod.spec.node_name is None
    assert pod.status.phase == "Pending"
    assert "Insufficient memory" in pod.status.conditions[0].message
    assert [event.reason for event in _events(core, "pending-1", "Warning")] == ["FailedScheduling"]


def test_init_containers_complete_before_the_main_container(core: Any) -> None:
    core.create_namespaced_pod(NAMESPACE, _pod("init-1"))

    pod = _wait_for_phase(core, "init-1", "Succeeded")

    init = pod.status.init_container_statuses[0].state.terminated
    main = pod.status.container_statuses[0].state.terminated
    assert (init.exit_code, init.reason, main.exit_code) == (0, "Completed", 0)
    assert init.finished_at <= main.started_at
    assert core.read_namespaced_pod_log("init-1", NAMESPACE, container="prepare") == "preparing\n"


def test_run_locally_runs_the_command_with_the_pod_environment(core: Any) -> None:
    command = ["sh", "-c", 'echo "$GREETING from $POD_NAME in $POD_NAMESPACE"; echo "$(EXPANDED)"; exit 7']
    env: list[dict[str, Any]] = [
        {"name": "GREETING", "value": "hello"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "EXPANDED", "value": "$(GREETING)-again"},
    ]
    core.create_namespaced_pod(NAMESPACE, _pod("local-1", command=command, env=env))

    pod = _wait_for_phase(core, "local-1", "Failed")

    assert pod.status.container_statuses[0].state.terminated.exit_code == 7
    assert core.read_namespaced_pod_log("local-1", NAMESPACE) == "hello from local-1 in smoke\nhello-again\n"


def test_deleting_a_locally_run_pod_stops_its_process(core: Any, tmp_path: Any) -> None:
    from kubernetes.client.exceptions import ApiException

    marker = tmp_path / "still-running"
    # The shell's child outlives a plain SIGTERM of the shell; the whole container must stop.
    command = ["sh", "-c", f"(sleep 30; touch {marker}) & echo started; wait"]
    core.create_namespaced_pod(NAMESPACE, _pod("local-2", command=command))
    _wait_for_phase(core, "local-2", "Running")
    assert_eventually(lambda: core.read_namespaced_pod_log("local-2", NAMESPACE) == "started\n", what="started")

    started = time.monotonic()
    core.delete_namespaced_pod("local-2", NAMESPACE)

    def gone() -> bool:
        try:
            core.read_namespaced_pod("local-2", NAMESPACE)
        except ApiException as error:
            return bool(error.status == 404)
        return False

    assert_eventually(gone, timeout=10, what="pod local-2 deleted")
    assert time.monotonic() - started < 5  # SIGTERM, not the 30 s sleep or the 30 s grace period
    processes = subprocess.run(["pgrep", "-f", f"touch {marker}"], capture_output=True, text=True)
    assert processes.stdout == ""


def test_the_node_keeps_its_heartbeat(cluster: KubeCluster, core: Any, kubelet: SimulatedKubelet) -> None:
    from kubernetes import client

    with cluster.api_client() as api_client:
        leases: Any = client.CoordinationV1Api(api_client)
        first = leases.read_namespaced_lease(kubelet.node_name, "kube-node-lease").spec.renew_time
        time.sleep(1.5)
        second = leases.read_namespaced_lease(kubelet.node_name, "kube-node-lease").spec.renew_time

    assert second > first
    node = core.read_node(kubelet.node_name)
    ready = next(c for c in node.status.conditions if c.type == "Ready")
    assert ready.status == "True"
    assert node.status.daemon_endpoints.kubelet_endpoint.port == kubelet.port
