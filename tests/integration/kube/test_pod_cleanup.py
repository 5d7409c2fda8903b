"""Which step pods the kubernetes runtime deletes, and when: against the real test cluster.

The sweep (`KubernetesRuntime.sweep`) must delete only pods that no executor still uses:
every container ended (an output container may still upload after the step ended) and no
claim on the step in etcd (an executor works on the step, or is taking it over after a
failover). A pod whose step container ended without recording its exit code would run
forever (its output container waits for the marker): the runtime deletes it once the
attempt's verdict is known. `--keep-failed-pods` below the safe minimum is refused.
"""

from __future__ import annotations

import asyncio
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import InProcessApi
from tests.integration.executor.support import executor_command
from tests.integration.kube.conftest import kube_runtime, settings_for, wait_until
from tests.integration.kube.test_kubernetes_runtime import attempt_spec, pod_exists, run_attempt
from tests.kube.cluster import KubeCluster
from tests.kube.kubelet import SimulatedKubelet
from weft.v1 import run_pb2
from weft_core.store import Store
from weft_executor.runtime.kube_pods import read_pod
from weft_executor.runtime.kubernetes import KubernetesRuntime

pytestmark = pytest.mark.kube

Attempt = run_pb2.Attempt
RUN = "sweep-r1"


def _step_container_ended(core: Any, namespace: str, name: str) -> bool:
    statuses = core.read_namespaced_pod(name, namespace).status.container_statuses or []
    return any(s.name == "main" and s.state.terminated is not None for s in statuses)


async def _seen_by(runtime: KubernetesRuntime, names: list[str], *, terminal: list[str]) -> None:
    """Waits until the runtime's watch has every pod in `names`, those in `terminal` ended."""
    watcher = runtime.watcher
    await asyncio.wait_for(watcher.synced.wait(), 15)

    def seen() -> bool:
        pods = watcher.pods
        return all(name in pods for name in names) and all(read_pod(pods[name]).terminal for name in terminal)

    await wait_until(seen, what=f"the sweeping runtime saw pods {names}")


async def test_the_sweep_spares_pods_still_uploading_and_pods_of_claimed_steps(
    cluster: KubeCluster, api: InProcessApi, core: Any, namespace: str, kubelet: SimulatedKubelet
) -> None:
    store = Store(api.config.etcd_endpoints)
    try:
        async with (
            kube_runtime(cluster, settings_for(namespace, api), api) as owner,
            kube_runtime(cluster, settings_for(namespace, api), api) as sweeper,
        ):
            # The owner's pods: one whose step ended while its outputs are still being
            # uploaded, and two failed ones, of which one's step is still claimed.
            uploading = await owner.launch(attempt_spec("uploading-step", "true", run=RUN))
            claimed, claimed_result = await run_attempt(owner, attempt_spec("claimed-step", "exit 3", run=RUN))
            orphan, orphan_result = await run_attempt(owner, attempt_spec("orphan-step", "exit 3", run=RUN))
            assert (claimed_result.state, orphan_result.state) == (Attempt.STATE_FAILED, Attempt.STATE_FAILED)
            await owner.release(claimed)
            await owner.release(orphan)
            await wait_until(lambda: _step_container_ended(core, namespace, uploading.handle), what="step ended")
            claim = api.keyspace.claim("default", RUN, "claimed-step")
            await store.put(claim, b"executor-a")
            names = [uploading.handle, claimed.handle, orphan.handle]
            await _seen_by(sweeper, names, terminal=[claimed.handle, orphan.handle])
            # Long after all of them ended, as far as `keep_failed_pods` is concerned.
            later = datetime.now(UTC) + timedelta(hours=2)

            assert await sweeper.sweep(now=later) == 1
            await wait_until(lambda: not pod_exists(core, namespace, orphan.handle), what="orphan pod swept")
            assert pod_exists(core, namespace, uploading.handle)
            assert pod_exists(core, namespace, claimed.handle)

            # The step's executor is done with it (or died): its claim is gone, so is the pod.
            await store.delete(claim)
            assert await sweeper.sweep(now=later) == 1
            await wait_until(lambda: not pod_exists(core, namespace, claimed.handle), what="claimed pod swept")
            assert pod_exists(core, namespace, uploading.handle)
            assert not uploading.ended
            owner.abandon(uploading)
    finally:
        await store.close()


async def test_a_step_container_killed_before_recording_its_exit_code_fails_and_its_pod_is_deleted(
    cluster: KubeCluster, api: InProcessApi, core: Any, namespace: str, kubelet: SimulatedKubelet
) -> None:
    # The whole step container is OOM-killed (cgroup group kill): its wrapper never writes
    # the exit-code marker, so the output container would wait for it forever.
    async with kube_runtime(cluster, settings_for(namespace, api, helper_grace=1.0), api) as runtime:
        attempt, result = await run_attempt(runtime, attempt_spec("groupkilled-step", "true", run=RUN), timeout=30)

        assert result.state == Attempt.STATE_FAILED
        assert result.message.startswith("OOMKilled: the step used more than")
        assert result.exit_code == 137
        await wait_until(
            lambda: not pod_exists(core, namespace, attempt.handle), timeout=10, what="pod of the killed step deleted"
        )
        await runtime.release(attempt)


async def test_a_keep_failed_pods_below_the_safe_minimum_is_refused(
    api: InProcessApi, cluster: KubeCluster, tmp_path: Path
) -> None:
    argv = [
        executor_command(),
        "--etcd-endpoints", api.config.etcd_endpoints,
        "--api", api.address,
        "--runtime", "kubernetes",
        "--kubeconfig", str(cluster.kubeconfig_path),
        "--pod-image", "weft.test/weft:dev",
        "--work-dir", str(tmp_path),
        "--etcd-root", api.keyspace.root,
        "--lease-ttl", "10",
        "--keep-failed-pods", "5",
    ]  # fmt: skip

    done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=60, check=False)

    assert done.returncode == 1, done.stderr
    assert (
        "weft-executor: --keep-failed-pods 5 is too short: failed pods must be kept at least 60 seconds" in done.stderr
    )
