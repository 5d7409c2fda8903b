"""A pod whose executor died is never forgotten: a cancel deletes it, and an executor that
re-attached to it lets go of it completely once the step is committed (review findings 3
and 10 of issue #7)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.executor.support import Harness
from tests.integration.kube.conftest import (
    kube_executor_settings,
    list_pods,
    start_kube_executor_process,
    wait_until,
)
from tests.kube.cluster import KubeCluster
from tests.kube.kubelet import SimulatedKubelet
from weft.v1 import run_pb2

pytestmark = pytest.mark.kube

Run = run_pb2.Run


def main_running(core: Any, namespace: str, name: str) -> bool:
    pod = core.read_namespaced_pod(name, namespace)
    statuses = pod.status.container_statuses or []
    return any(s.name == "main" and s.state.running is not None for s in statuses)


def pod_gone_or_going(core: Any, namespace: str, name: str) -> bool:
    found = [pod for pod in list_pods(core, namespace) if pod.metadata.name == name]
    return not found or found[0].metadata.deletion_timestamp is not None


async def test_cancelling_a_run_deletes_the_pod_its_dead_executor_left_running(
    harness: Harness, cluster: KubeCluster, kubelet: SimulatedKubelet, core: Any, namespace: str
) -> None:
    """Finding 3: the cancel never read the RUNNING attempt's pod name, so the pod of an
    executor that died kept running for hours after the run showed CANCELLED."""
    h = harness
    steps = [h.step("long", 'sleep 300; printf done > "$WEFT_OUTPUTS/out"')]
    pipeline = await h.apply("orphaned-pod", steps)
    dying = start_kube_executor_process(h, cluster, namespace, lease_ttl=2)
    run_name = (await h.run(pipeline.name)).name
    pods = await wait_until(lambda: list_pods(core, namespace), what="pod created")
    pod = pods[0].metadata.name
    await wait_until(lambda: main_running(core, namespace, pod), what="step running")

    dying.kill()  # SIGKILL: the pod keeps running, the claim expires with the lease
    await h.cancel(run_name)
    await h.start_executor(**kube_executor_settings(cluster, namespace, lease_ttl=2))
    run = await h.wait(run_name, timeout=30)

    assert run.state == Run.STATE_CANCELLED
    await wait_until(lambda: pod_gone_or_going(core, namespace, pod), timeout=20, what="the orphaned pod deleted")


async def test_an_executor_that_re_attached_to_a_pod_forgets_it_once_committed(
    harness: Harness, cluster: KubeCluster, kubelet: SimulatedKubelet, core: Any, namespace: str
) -> None:
    """Finding 10: after an adoption the attempt was forgotten under the next attempt's
    number, so its live-logs entry (and the runtime's handle) leaked for as long as the
    executor lived."""
    h = harness
    gate = h.tmp / "gate"
    steps = [h.step("long", f'while [ ! -e {gate} ]; do sleep 0.1; done; printf done > "$WEFT_OUTPUTS/out"')]
    pipeline = await h.apply("adopted", steps)
    dying = start_kube_executor_process(h, cluster, namespace, lease_ttl=2)
    run_name = (await h.run(pipeline.name)).name
    pods = await wait_until(lambda: list_pods(core, namespace), what="pod created")
    await wait_until(lambda: main_running(core, namespace, pods[0].metadata.name), what="step running")

    dying.kill()
    successor = await h.start_executor(**kube_executor_settings(cluster, namespace, lease_ttl=2))
    await wait_until(lambda: successor.running_steps(), timeout=15, what="step taken over")
    await wait_until(lambda: successor.live_attempts, timeout=15, what="the pod re-attached")
    gate.touch()
    run = await h.wait(run_name, timeout=30)

    assert run.state == Run.STATE_SUCCEEDED, run.message
    await wait_until(lambda: not successor.running_steps(), timeout=10, what="the step let go")
    assert successor.live_attempts == {}
