"""The kubernetes runtime through outages and restarts, on the test cluster (issue #15).

- a weft-api restart at the moment a pod finishes: the step still succeeds, with its log;
- every executor restarted: finished orphan pods are swept with no new launch;
- etcd away longer than the lease: the running pods are re-attached, none created twice;
- `weft logs` of a step whose pod never started says why and exits non-zero.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.integration.conftest import ApiProcess, InProcessApi, running_api
from tests.integration.executor.support import Harness, steps_by_name
from tests.integration.kube.conftest import (
    kube_executor_settings,
    kube_runtime,
    list_pods,
    settings_for,
    start_kube_executor_process,
    wait_until,
)
from tests.integration.kube.test_kubernetes_runtime import attempt_spec, pod_exists, run_attempt
from tests.kube.cluster import KubeCluster
from tests.kube.kubelet import SimulatedKubelet
from weft.localstack import EtcdProcess
from weft.v1 import run_pb2
from weft_core.keyspace import Keyspace
from weft_core.store import Store
from weft_executor.runtime.kubernetes import KubernetesRuntime

pytestmark = pytest.mark.kube

Attempt = run_pb2.Attempt
Run = run_pb2.Run
StepRun = run_pb2.StepRun


def _weft_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("weft")]


async def test_an_api_restart_as_a_pod_finishes_leaves_the_step_succeeded_with_its_log(
    etcd: EtcdProcess,
    api_process: ApiProcess,
    keyspace: Keyspace,
    tmp_path: Path,
    cluster: KubeCluster,
    kubelet: SimulatedKubelet,
    pods_root: Path,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    store = Store(etcd.endpoint)
    async with grpc.aio.insecure_channel(api_process.address) as channel:
        h = Harness(etcd.endpoint, api_process.address, keyspace, api_process.blob_dir, tmp_path, channel, store)
        try:
            gate = tmp_path / "gate"
            script = f'echo "working"; while [ ! -e {gate} ]; do sleep 0.05; done; printf done > "$WEFT_OUTPUTS/out"'
            pipeline = await h.apply("api-at-finish", [h.step("finish", script)])
            await h.start_executor(**kube_executor_settings(cluster, namespace))
            run_name = (await h.run(pipeline.name)).name
            await wait_until(lambda: list_pods(h_core(cluster), namespace), what="pod created")

            # The output container writes its termination message (naming the manifest) just
            # before it exits; the executor reads the manifest once the pod status says so.
            gate.touch()
            deadline = time.monotonic() + 30
            while not _outputs_reported(pods_root, namespace):
                assert time.monotonic() < deadline, "the output container never reported"
                await asyncio.sleep(0.002)
            api_process.kill()
            await asyncio.sleep(1.5)
            await asyncio.to_thread(api_process.start)

            run = await h.wait(run_name, timeout=60)
            assert run.state == Run.STATE_SUCCEEDED, run.message
            step = steps_by_name(run)["finish"]
            assert [a.state for a in step.attempts] == [Attempt.STATE_SUCCEEDED]
            assert await h.output(run, "finish") == b"done"
            assert await h.blob(step.attempts[0].stdout_digest) == b"working\n"  # its log was stored
            assert h.launches() == {"finish": 1}
            warned = [r.getMessage() for r in caplog.records if "is unreachable" in r.getMessage()]
            assert warned, "the executor never met the api outage (the kill came too late)"
        finally:
            await h.close()
            await store.close()
    assert _weft_errors(caplog) == []


def _outputs_reported(pods_root: Path, namespace: str) -> bool:
    """The output container of a pod in `namespace` wrote its termination message."""
    return any(path.stat().st_size for path in pods_root.glob(f"{namespace}.*/weft-outputs.termination-log"))


_cores: dict[str, Any] = {}


def h_core(cluster: KubeCluster) -> Any:
    """A CoreV1Api for tests that do not take the `core` fixture."""
    from kubernetes import client

    if cluster.host not in _cores:
        _cores[cluster.host] = client.CoreV1Api(cluster.api_client())
    return _cores[cluster.host]


def _age_pod(core: Any, namespace: str, name: str, by: timedelta) -> None:
    """Moves every container end of a finished pod `by` into the past (as if it ended long ago)."""
    pod = core.read_namespaced_pod(name, namespace)
    for status in [*(pod.status.init_container_statuses or []), *(pod.status.container_statuses or [])]:
        if status.state.terminated is not None:
            status.state.terminated.finished_at = datetime.now(UTC) - by
            status.state.terminated.started_at = datetime.now(UTC) - by - timedelta(seconds=1)
    core.replace_namespaced_pod_status(name, namespace, pod)


async def test_after_every_executor_restarted_finished_orphan_pods_are_swept_without_a_launch(
    harness: Harness, api: InProcessApi, cluster: KubeCluster, kubelet: SimulatedKubelet, core: Any, namespace: str
) -> None:
    # A failed pod, kept for inspection by an executor that is gone now, of a step nobody claims.
    async with kube_runtime(cluster, settings_for(namespace, api), api) as gone:
        attempt, result = await run_attempt(gone, attempt_spec("orphan-step", "exit 3", run="sweep-r2"))
        assert result.state == Attempt.STATE_FAILED
        await gone.release(attempt)
    assert pod_exists(core, namespace, attempt.handle)
    await asyncio.to_thread(_age_pod, core, namespace, attempt.handle, timedelta(hours=2))

    executor = await harness.start_executor(**kube_executor_settings(cluster, namespace, keep_failed_pods=60.0))
    runtime = executor.runtime
    assert isinstance(runtime, KubernetesRuntime)

    # Within one sweep interval of the start (15 s here), with nothing launched or adopted.
    await wait_until(
        lambda: not pod_exists(core, namespace, attempt.handle), timeout=runtime.sweep_interval, what="orphan swept"
    )
    assert executor.launches == 0
    assert runtime.created == 0
    assert runtime.running() == []


async def test_etcd_away_longer_than_the_lease_re_attaches_every_running_pod(
    private_etcd: EtcdProcess,
    tmp_path: Path,
    cluster: KubeCluster,
    kubelet: SimulatedKubelet,
    core: Any,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    keyspace = Keyspace("/kube-outage")
    async with running_api(private_etcd.endpoint, keyspace, tmp_path / "blobs") as api:
        store = Store(private_etcd.endpoint)
        async with grpc.aio.insecure_channel(api.address) as channel:
            h = Harness(private_etcd.endpoint, api.address, keyspace, api.blob_dir, tmp_path, channel, store)
            try:
                gate = tmp_path / "gate"
                wait = f"while [ ! -e {gate} ]; do sleep 0.05; done"
                steps = [h.step(f"s{i}", f'{wait}; printf {i} > "$WEFT_OUTPUTS/out"') for i in range(3)]
                pipeline = await h.apply("kube-outage", steps)
                executor = await h.start_executor(**kube_executor_settings(cluster, namespace, lease_ttl=2))
                runtime = executor.runtime
                assert isinstance(runtime, KubernetesRuntime)
                run_name = (await h.run(pipeline.name)).name
                await until_pods_run(core, namespace, 3)

                private_etcd.stop()  # longer than the lease (2 s): it counts as lost
                await wait_until(lambda: executor.registration.lost_at > 0, timeout=10, what="lease declared lost")
                await asyncio.sleep(1.0)
                private_etcd.start()
                await wait_until(lambda: len(executor.running_steps()) == 3, timeout=20, what="steps taken up again")
                gate.touch()
                run = await h.wait(run_name, timeout=60)

                assert run.state == Run.STATE_SUCCEEDED, run.message
                # No pod created twice: the same three pods ran the steps to their end.
                assert runtime.created == 3
                assert h.launches() == {"s0": 1, "s1": 1, "s2": 1}
                for step in run.steps:
                    assert [(a.number, a.state) for a in step.attempts] == [(1, Attempt.STATE_SUCCEEDED)], step.step
            finally:
                await h.close()
                await store.close()
    assert _weft_errors(caplog) == []


async def _running_attempt_recorded(h: Harness, run_name: str, step: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        found = steps_by_name(await h.get(run_name)).get(step)
        if found is not None and any(a.state == Attempt.STATE_RUNNING and a.handle for a in found.attempts):
            return
        assert time.monotonic() < deadline, f"no RUNNING attempt of {step} recorded"
        await asyncio.sleep(0.1)


async def until_pods_run(core: Any, namespace: str, count: int) -> None:
    def running() -> bool:
        pods = list_pods(core, namespace)
        return len(pods) == count and all(
            any(s.name == "main" and s.state.running is not None for s in (p.status.container_statuses or []))
            for p in pods
        )

    await wait_until(running, timeout=30, what=f"{count} step pods running")


async def test_weft_logs_of_a_step_whose_pod_never_started_says_why_and_fails(
    harness: Harness, api: InProcessApi, cluster: KubeCluster, kubelet: SimulatedKubelet, namespace: str
) -> None:
    h = harness
    pipeline = await h.apply("never-started", [h.step("pull-forever")])
    await h.start_executor(**kube_executor_settings(cluster, namespace))
    run = await h.wait((await h.run(pipeline.name)).name, timeout=60)
    assert run.state == Run.STATE_FAILED

    env = {**os.environ, "WEFT_SERVER": api.address, "WEFT_NAMESPACE": "default", "NO_COLOR": "1"}
    weft = str(Path(sys.executable).parent / "weft")
    done = await asyncio.to_thread(
        subprocess.run, [weft, "logs", run.name, "pull-forever"], capture_output=True, text=True, env=env, timeout=60
    )

    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert "attempt 1 of step pull-forever is FAILED and left no log: image 'busybox:1.36'" in done.stderr
    assert "could not be pulled" in done.stderr


async def test_a_step_cancelled_after_its_executor_died_keeps_no_running_attempt_and_its_log(
    harness: Harness, cluster: KubeCluster, kubelet: SimulatedKubelet, core: Any, namespace: str
) -> None:
    h = harness
    gate = h.tmp / "gate"
    script = f'echo "started"; while [ ! -e {gate} ]; do sleep 0.05; done; printf late > "$WEFT_OUTPUTS/out"'
    pipeline = await h.apply("cancel-orphan", [h.step("long", script)])
    dying = start_kube_executor_process(h, cluster, namespace, lease_ttl=2)
    run_name = (await h.run(pipeline.name)).name
    await until_pods_run(core, namespace, 1)
    await _running_attempt_recorded(h, run_name, "long")
    dying.kill()  # its pod keeps running
    await h.cancel(run_name, "not needed any more")
    survivor = await h.start_executor(**kube_executor_settings(cluster, namespace, lease_ttl=2))

    run = await h.wait(run_name, timeout=30)

    assert run.state == Run.STATE_CANCELLED
    long = steps_by_name(run)["long"]
    assert long.state == StepRun.STATE_CANCELLED
    assert [a.state for a in long.attempts] == [Attempt.STATE_CANCELLED], long.attempts
    assert await h.blob(long.attempts[0].stdout_digest) == b"started\n"  # the log was stored
    stored = h.clients.runs.ReadLogs(run_pb2.ReadLogsRequest(run=run_name, step="long"))
    assert b"".join([chunk.data async for chunk in stored]) == b"started\n"
    await wait_until(lambda: list_pods(core, namespace) == [], what="the orphaned pod deleted")
    assert survivor.launches == 0


async def test_an_api_away_longer_than_the_patience_costs_no_attempt_the_pod_is_re_attached(
    etcd: EtcdProcess,
    api_process: ApiProcess,
    keyspace: Keyspace,
    tmp_path: Path,
    cluster: KubeCluster,
    kubelet: SimulatedKubelet,
    pods_root: Path,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    store = Store(etcd.endpoint)
    async with grpc.aio.insecure_channel(api_process.address) as channel:
        h = Harness(etcd.endpoint, api_process.address, keyspace, api_process.blob_dir, tmp_path, channel, store)
        try:
            gate = tmp_path / "gate"
            script = f'echo "working"; while [ ! -e {gate} ]; do sleep 0.05; done; printf done > "$WEFT_OUTPUTS/out"'
            pipeline = await h.apply("api-past-patience", [h.step("finish", script)])
            executor = await h.start_executor(**kube_executor_settings(cluster, namespace, api_patience=1.0))
            run_name = (await h.run(pipeline.name)).name
            await wait_until(lambda: list_pods(h_core(cluster), namespace), what="pod created")
            gate.touch()
            deadline = time.monotonic() + 30
            while not _outputs_reported(pods_root, namespace):
                assert time.monotonic() < deadline, "the output container never reported"
                await asyncio.sleep(0.002)
            api_process.kill()
            await asyncio.sleep(3.0)  # three times the patience
            await asyncio.to_thread(api_process.start)

            run = await h.wait(run_name, timeout=60)
            assert run.state == Run.STATE_SUCCEEDED, run.message
            step = steps_by_name(run)["finish"]
            # The same attempt, re-attached: no attempt was spent on the outage.
            assert [(a.number, a.state) for a in step.attempts] == [(1, Attempt.STATE_SUCCEEDED)]
            assert await h.blob(step.attempts[0].stdout_digest) == b"working\n"
            runtime = executor.runtime
            assert isinstance(runtime, KubernetesRuntime)
            assert runtime.created == 1
        finally:
            await h.close()
            await store.close()
    assert _weft_errors(caplog) == []
