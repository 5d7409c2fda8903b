"""The kubernetes runtime against a real kube-apiserver, a kubelet that runs the pods for
real, a real weft-api (artifact store) and real etcd.

Each test has its own Kubernetes namespace (so pods can be counted) and its own runtime.
Step pods really fetch their inputs, run their shell command and upload their outputs
through `python -m weft_executor.podio`; failure kinds a local process cannot produce
(OOMKilled, eviction, image pulls, scheduling) come from the kubelet's canned behaviours,
chosen by the step's name (see conftest.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import InProcessApi
from tests.integration.executor.support import Harness, duration, steps_by_name
from tests.integration.kube.conftest import (
    kube_executor_settings,
    kube_runtime,
    list_pods,
    restart_apiserver,
    settings_for,
    start_kube_executor_process,
    wait_until,
)
from tests.kube.cluster import KubeCluster
from tests.kube.kubelet import SimulatedKubelet
from weft.v1 import pipeline_pb2, run_pb2
from weft_core.blobs import RemoteBlobStore
from weft_executor.runtime import AttemptSpec
from weft_executor.runtime.kube_pods import (
    ANNOTATION_ATTEMPT_KEY,
    ANNOTATION_DNA,
    LABEL_ATTEMPT,
    LABEL_RUN,
    LABEL_STEP,
    MANAGED_BY_LABEL,
    pod_name,
)
from weft_executor.runtime.kubernetes import KubeAttempt, KubernetesRuntime

pytestmark = pytest.mark.kube

Attempt = run_pb2.Attempt
Run = run_pb2.Run
StepRun = run_pb2.StepRun
DNA = "sha256:" + "d" * 64


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def attempt_spec(
    step: str,
    script: str,
    *,
    namespace: str = "default",
    run: str = "etl-k8s01",
    attempt: int = 1,
    inputs: Mapping[str, str] | None = None,
    outputs: Sequence[str] = ("out",),
    env: Mapping[str, str] | None = None,
    secret_env: Mapping[str, tuple[str, str]] | None = None,
    timeout: float | None = None,
) -> AttemptSpec:
    return AttemptSpec(
        namespace=namespace,
        run=run,
        step=step,
        attempt=attempt,
        image="busybox:1.36",
        command=("sh", "-c", script),
        working_dir="",
        env={"WEFT_RUN": run, "WEFT_STEP": step, "WEFT_ATTEMPT": str(attempt), **(env or {})},
        secret_env=dict(secret_env or {}),
        inputs=dict(inputs or {}),
        outputs=tuple(outputs),
        timeout=timeout,
        dna=DNA,
    )


async def run_attempt(runtime: KubernetesRuntime, spec: AttemptSpec, timeout: float = 60.0) -> Any:
    attempt = await runtime.launch(spec)
    result = await asyncio.wait_for(runtime.wait(attempt), timeout)
    return attempt, result


async def blob(api: InProcessApi, digest: str) -> bytes:
    store = RemoteBlobStore(api.address)
    try:
        return await store.get(digest)
    finally:
        await store.close()


async def put_blob(api: InProcessApi, data: bytes) -> str:
    store = RemoteBlobStore(api.address)
    try:
        return (await store.put(data)).digest
    finally:
        await store.close()


def pod_exists(core: Any, namespace: str, name: str) -> bool:
    return any(pod.metadata.name == name for pod in list_pods(core, namespace))


# A step's life ----------------------------------------------------------------------------


async def test_a_step_runs_in_a_pod_with_its_inputs_and_outputs(
    runtime: KubernetesRuntime, api: InProcessApi, core: Any, namespace: str
) -> None:
    orders = await put_blob(api, b"3\n4\n5\n")
    script = 'echo "summing $WEFT_STEP"; awk \'{s+=$1} END {print s}\' "$WEFT_INPUTS/orders" > "$WEFT_OUTPUTS/total"'
    spec = attempt_spec("sum", script, namespace="ns-a", inputs={"orders": orders}, outputs=("total",))

    attempt, result = await run_attempt(runtime, spec)

    assert (result.state, result.message, result.exit_code) == (Attempt.STATE_SUCCEEDED, "", 0)
    assert result.output_digests == {"total": sha(b"12\n")}
    assert await blob(api, result.output_digests["total"]) == b"12\n"
    assert await blob(api, result.stdout_digest) == b"summing sum\n"
    assert attempt.handle == pod_name("ns-a", "etl-k8s01", "sum", 1)
    # Kept until the executor recorded the result (an adopter may still need it), then deleted.
    assert pod_exists(core, namespace, attempt.handle)
    await runtime.release(attempt)
    await wait_until(lambda: not pod_exists(core, namespace, attempt.handle), what="pod deleted on success")


async def test_the_pod_is_named_labelled_and_built_from_the_attempt(
    runtime: KubernetesRuntime, api: InProcessApi, core: Any, namespace: str
) -> None:
    from kubernetes import client

    secret = client.V1Secret(metadata=client.V1ObjectMeta(name="db"), string_data={"password": "s3cr3t-value"})
    core.create_namespaced_secret(namespace, secret)
    run = "a-run-with-a-rather-long-id-that-goes-on-and-on-12345"
    step = "Step_With.Odd-Characters-and-a-long-name-too"
    script = (
        'printf "%s|%s|%s" "$LITERAL" "$WEFT_RUN" "$(cat "$WEFT_INPUTS/seed")" > "$WEFT_OUTPUTS/out"; '
        # Compared with an input, so that the value is in neither the command nor the pod.
        '[ "$DB_PASSWORD" = "$(cat "$WEFT_INPUTS/expected")" ] && echo "secret ok"'
    )
    spec = attempt_spec(
        step,
        script,
        run=run,
        attempt=3,
        inputs={"seed": await put_blob(api, b"7"), "expected": await put_blob(api, b"s3cr3t-value")},
        env={"LITERAL": "$(WEFT_RUN) and $$ stay literal"},
        secret_env={"DB_PASSWORD": ("db", "password")},
    )

    attempt, result = await run_attempt(runtime, spec)

    assert result.state == Attempt.STATE_SUCCEEDED, result.message
    # Kubernetes' $(VAR) expansion did not touch what the step declared.
    assert await blob(api, result.output_digests["out"]) == f"$(WEFT_RUN) and $$ stay literal|{run}|7".encode()
    assert await blob(api, result.stdout_digest) == b"secret ok\n"
    pod = core.read_namespaced_pod(attempt.handle, namespace)
    name = pod.metadata.name
    assert len(name) <= 63
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name)
    assert name.startswith("a-run-with")
    assert "-3-" in name
    labels = pod.metadata.labels
    assert labels[MANAGED_BY_LABEL] == "weft"
    assert labels[LABEL_RUN] == run
    assert labels[LABEL_STEP] == "Step_With.Odd-Characters-and-a-long-name-too"
    assert labels[LABEL_ATTEMPT] == "3"
    assert pod.metadata.annotations[ANNOTATION_DNA] == DNA
    assert pod.metadata.annotations[ANNOTATION_ATTEMPT_KEY] == f'["default","{run}","{step}",3]'
    assert pod.spec.restart_policy == "Never"
    main = next(c for c in pod.spec.containers if c.name == "main")
    secret_vars = [e for e in main.env if e.name == "DB_PASSWORD"]
    assert secret_vars[0].value is None
    assert (secret_vars[0].value_from.secret_key_ref.name, secret_vars[0].value_from.secret_key_ref.key) == (
        "db",
        "password",
    )
    assert "s3cr3t-value" not in str(pod.to_dict())
    await runtime.release(attempt)


# Failures -----------------------------------------------------------------------------------


async def test_a_non_zero_exit_fails_with_the_last_log_lines_and_the_pod_is_kept(
    cluster: KubeCluster, api: InProcessApi, core: Any, namespace: str, kubelet: SimulatedKubelet
) -> None:
    script = 'for i in $(seq 1 15); do echo "line $i"; done; echo "Traceback: boom" >&2; exit 3'
    async with kube_runtime(cluster, settings_for(namespace, api, keep_failed_pods=2.0), api) as runtime:
        attempt, result = await run_attempt(runtime, attempt_spec("fails", script))

        assert result.state == Attempt.STATE_FAILED
        assert result.exit_code == 3
        lines = [f"line {i}" for i in range(7, 16)]
        assert result.message == "exit code 3; last log lines:\n" + "\n".join([*lines, "Traceback: boom"])
        log = await blob(api, result.stdout_digest)
        assert log.startswith(b"line 1\n")
        assert log.endswith(b"Traceback: boom\n")
        await runtime.release(attempt)
        # Kept for inspection, then swept once `keep_failed_pods` passed.
        assert pod_exists(core, namespace, attempt.handle)
        await wait_until(lambda: not pod_exists(core, namespace, attempt.handle), what="failed pod swept")


async def test_a_missing_or_oversized_output_fails_the_attempt(
    cluster: KubeCluster, api: InProcessApi, namespace: str, kubelet: SimulatedKubelet
) -> None:
    async with kube_runtime(cluster, settings_for(namespace, api, max_output_bytes=10), api) as runtime:
        missing = attempt_spec("forgetful", 'echo "done"', outputs=("report",))
        large = attempt_spec("verbose", 'seq 1 100 > "$WEFT_OUTPUTS/out"')
        (_, no_output), (_, too_big) = await asyncio.gather(run_attempt(runtime, missing), run_attempt(runtime, large))

    assert no_output.state == Attempt.STATE_FAILED
    assert no_output.message == "step wrote no output 'report': write it to $WEFT_OUTPUTS/report"
    assert await blob(api, no_output.stdout_digest) == b"done\n"
    assert too_big.state == Attempt.STATE_FAILED
    assert too_big.message == (
        "output 'out' is 292 bytes, over the limit of 10 bytes (executor flag --max-output-bytes); "
        "write less or raise the limit"
    )


async def test_an_input_missing_from_the_artifact_store_fails_before_the_step_starts(
    runtime: KubernetesRuntime, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    absent = sha(b"never stored")
    spec = attempt_spec("orphan", f"touch {marker}", inputs={"data": absent})

    _, result = await run_attempt(runtime, spec)

    assert result.state == Attempt.STATE_FAILED
    assert result.message == (
        f"could not fetch the inputs: input 'data' ({absent}) is not in the artifact store; "
        "re-run the step that produced it (e.g. a run with cache mode REFRESH)"
    )
    assert not marker.exists()


async def test_kubernetes_failures_become_clear_attempt_failures(
    runtime: KubernetesRuntime, core: Any, namespace: str
) -> None:
    specs = {kind: attempt_spec(kind, "true") for kind in ("oom-step", "evict-step", "pull-step", "pending-step")}
    specs["oom-step"] = replace_resources(specs["oom-step"], limits={"memory": "64Mi"})

    results = dict(
        zip(specs, await asyncio.gather(*(run_attempt(runtime, spec) for spec in specs.values())), strict=True)
    )

    oom = results["oom-step"][1]
    assert oom.state == Attempt.STATE_FAILED
    assert oom.message == (
        "OOMKilled: the step used more than its memory limit of 64Mi; raise container.resources.limits.memory"
    )
    assert oom.exit_code == 137
    evicted = results["evict-step"][1]
    assert evicted.message == "evicted by Kubernetes: The node was low on resource: memory."
    assert evicted.exit_code not in (0, None)  # killed by the node: never recorded as a clean exit
    for attempt, result in results.values():
        # Never negative: the end (whole seconds from the node) is clamped to the start.
        assert result.end_time >= attempt.start_time, (attempt.handle, attempt.start_time, result.end_time)
    pulled = results["pull-step"][1]
    assert pulled.message.startswith("image 'busybox:1.36' of container main could not be pulled for 1s (")
    assert "failed to pull and unpack image" in pulled.message or "Back-off pulling image" in pulled.message
    pending = results["pending-step"][1]
    assert pending.message == (
        f"pod {results['pending-step'][0].handle} could not be scheduled for 1s: "
        "0/1 nodes are available: 1 Insufficient memory."
    )
    # Stuck pods are deleted; pods that ran and failed are kept for inspection.
    remaining = await wait_until(
        lambda: (
            {p.metadata.name for p in list_pods(core, namespace) if not p.metadata.deletion_timestamp}
            == {results["oom-step"][0].handle, results["evict-step"][0].handle}
        ),
        what="stuck pods deleted",
    )
    assert remaining


def replace_resources(spec: AttemptSpec, limits: Mapping[str, str]) -> AttemptSpec:
    return replace(spec, resources=pipeline_pb2.Resources(limits=dict(limits)))


async def test_a_missing_secret_fails_after_the_grace_period(runtime: KubernetesRuntime) -> None:
    spec = attempt_spec("needs-secret", "true", secret_env={"TOKEN": ("absent", "token")})

    _, result = await run_attempt(runtime, spec)

    assert result.state == Attempt.STATE_FAILED
    assert result.message.startswith(
        "container main could not be created for 1s (CreateContainerConfigError; a missing secret or config map?)"
    )


async def test_a_pod_deleted_by_someone_else_fails_the_attempt(
    runtime: KubernetesRuntime, core: Any, namespace: str
) -> None:
    attempt = await runtime.launch(attempt_spec("doomed", "echo started; sleep 30"))
    waiting = asyncio.create_task(runtime.wait(attempt))
    await wait_until(lambda: _main_running(core, namespace, attempt.handle), what="step running")

    await asyncio.to_thread(core.delete_namespaced_pod, attempt.handle, namespace)
    result = await asyncio.wait_for(waiting, 20)

    assert result.state == Attempt.STATE_FAILED
    assert result.message.startswith(f"pod {attempt.handle} is being deleted by someone else (not by weft)")


def _main_running(core: Any, namespace: str, name: str) -> bool:
    pod = core.read_namespaced_pod(name, namespace)
    statuses = pod.status.container_statuses or []
    return any(s.name == "main" and s.state.running is not None for s in statuses)


async def test_a_timeout_deletes_the_pod(runtime: KubernetesRuntime, core: Any, namespace: str) -> None:
    attempt, result = await run_attempt(runtime, attempt_spec("slow", "echo begun; sleep 30", timeout=1.5))

    assert result.state == Attempt.STATE_FAILED
    assert result.message == "timed out after 1.5s"
    await wait_until(lambda: not pod_exists(core, namespace, attempt.handle), what="timed-out pod deleted")


async def test_kill_cancels_the_attempt_and_deletes_its_pod(
    runtime: KubernetesRuntime, api: InProcessApi, core: Any, namespace: str
) -> None:
    attempt = await runtime.launch(attempt_spec("endless", "echo working; sleep 30"))
    waiting = asyncio.create_task(runtime.wait(attempt))
    await wait_until(lambda: _main_running(core, namespace, attempt.handle), what="step running")
    # The log stored at the kill is what the step wrote by then: wait until it wrote its line.
    await wait_until(
        lambda: "working" in core.read_namespaced_pod_log(attempt.handle, namespace, container="main"),
        what="the step's first line in its log",
    )

    await runtime.kill(attempt, "run cancelled: test")
    result = await asyncio.wait_for(waiting, 20)

    assert (result.state, result.message) == (Attempt.STATE_CANCELLED, "run cancelled: test")
    assert await blob(api, result.stdout_digest) == b"working\n"
    await wait_until(lambda: not pod_exists(core, namespace, attempt.handle), what="cancelled pod deleted")


async def test_read_logs_follows_a_running_pod(runtime: KubernetesRuntime, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    script = f'echo "first"; while [ ! -e {gate} ]; do sleep 0.1; done; echo "last"; echo x > "$WEFT_OUTPUTS/out"'
    attempt = await runtime.launch(attempt_spec("chatty", script))
    waiting = asyncio.create_task(runtime.wait(attempt))

    received = b""
    stream = runtime.read_logs(attempt, follow=True)
    async for _, chunk in stream:
        received += chunk
        if received == b"first\n":
            assert not waiting.done()  # streaming while the step still runs
            gate.touch()
    result = await asyncio.wait_for(waiting, 20)

    assert received == b"first\nlast\n"
    assert result.state == Attempt.STATE_SUCCEEDED


# At most one pod per attempt ----------------------------------------------------------------


async def test_creating_an_existing_pod_adopts_it(
    cluster: KubeCluster, api: InProcessApi, core: Any, namespace: str, kubelet: SimulatedKubelet, tmp_path: Path
) -> None:
    launches = tmp_path / "launches"
    spec = attempt_spec("twice", f'echo run >> {launches}; sleep 1; echo 1 > "$WEFT_OUTPUTS/out"')
    async with (
        kube_runtime(cluster, settings_for(namespace, api), api) as first,
        kube_runtime(cluster, settings_for(namespace, api), api) as second,
    ):
        one = await first.launch(spec)
        two = await second.launch(spec)  # 409: the pod exists

        assert (one.adopted, two.adopted) == (False, True)
        assert (first.created, second.created) == (1, 0)
        assert two.handle == one.handle
        result = await asyncio.wait_for(second.wait(two), 30)
        first.abandon(one)

    assert result.state == Attempt.STATE_SUCCEEDED
    assert launches.read_text() == "run\n"
    assert [p.metadata.name for p in list_pods(core, namespace)] == [one.handle]


async def test_an_executor_that_takes_over_re_attaches_to_the_running_pod(
    cluster: KubeCluster, api: InProcessApi, core: Any, namespace: str, kubelet: SimulatedKubelet, tmp_path: Path
) -> None:
    launches, gate = tmp_path / "launches", tmp_path / "gate"
    script = f'echo run >> {launches}; while [ ! -e {gate} ]; do sleep 0.1; done; echo 2 > "$WEFT_OUTPUTS/out"'
    spec = attempt_spec("survivor", script)
    async with kube_runtime(cluster, settings_for(namespace, api), api) as dying:
        launched = await dying.launch(spec)
        waiting = asyncio.create_task(dying.wait(launched))
        await wait_until(lambda: _main_running(core, namespace, launched.handle), what="step running")
        waiting.cancel()  # the executor dies: its wait is cancelled, the pod is left running
        with pytest.raises(asyncio.CancelledError):
            await waiting

    async with kube_runtime(cluster, settings_for(namespace, api), api) as successor:
        assert await successor.adopt(spec, "12345") is None  # a local runtime's pid: not ours
        assert await successor.adopt(attempt_spec("other", "true"), launched.handle) is None
        adopted = await successor.adopt(spec, launched.handle)
        assert isinstance(adopted, KubeAttempt)
        gate.touch()
        result = await asyncio.wait_for(successor.wait(adopted), 30)
        await successor.release(adopted)

    assert result.state == Attempt.STATE_SUCCEEDED
    assert result.output_digests == {"out": sha(b"2\n")}
    assert launches.read_text() == "run\n"
    assert successor.created == 0


# Watching -----------------------------------------------------------------------------------


@pytest.mark.slow  # restarting kube-apiserver takes about ten seconds
async def test_the_watch_recovers_from_a_restart_of_the_api_server(
    runtime: KubernetesRuntime,
    cluster: KubeCluster,
    kubelet: SimulatedKubelet,
    core: Any,
    namespace: str,
    tmp_path: Path,
) -> None:
    gate = tmp_path / "gate"
    script = f'while [ ! -e {gate} ]; do sleep 0.1; done; echo 3 > "$WEFT_OUTPUTS/out"'
    attempt = await runtime.launch(attempt_spec("patient", script))
    waiting = asyncio.create_task(runtime.wait(attempt))
    await wait_until(lambda: _main_running(core, namespace, attempt.handle), what="step running")
    watches, errors = runtime.watcher.stats.watches, len(kubelet.errors)

    wait_ready = restart_apiserver(cluster)  # breaks the open watch stream
    await asyncio.to_thread(wait_ready)
    gate.touch()  # the step ends after the restart: only a resumed watch can tell
    result = await asyncio.wait_for(waiting, 60)

    assert result.state == Attempt.STATE_SUCCEEDED
    assert result.output_digests == {"out": sha(b"3\n")}
    assert runtime.watcher.stats.watches > watches
    assert runtime.watcher.stats.errors >= 1
    # The simulated node's heartbeats failed while the API server was down; nothing else did.
    assert all(error.startswith("heartbeat:") for error in kubelet.errors[errors:])
    del kubelet.errors[errors:]


# Whole pipelines through weft-executor --------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "etl" / "pipeline.yaml"


async def test_the_example_pipeline_gives_the_same_outputs_on_kubernetes_as_locally(
    harness: Harness, cluster: KubeCluster, kubelet: SimulatedKubelet, core: Any, namespace: str
) -> None:
    from weft import load_pipeline

    h = harness
    spec = load_pipeline(EXAMPLE).spec()
    request = pipeline_pb2.CreatePipelineRequest(pipeline=pipeline_pb2.Pipeline(name="etl", spec=spec))
    await h.clients.pipelines.CreatePipeline(request)
    parameters = {"rows": "400", "seed": "11"}
    on_kube = await h.start_executor(**kube_executor_settings(cluster, namespace, max_parallel=8))

    kube_run = await h.wait((await h.run("etl", parameters)).name, timeout=90)

    assert kube_run.state == Run.STATE_SUCCEEDED, kube_run.message
    assert on_kube.launches == len(spec.steps)
    await on_kube.stop()
    h.executors.remove(on_kube)
    await h.start_executor(runtime="local")
    local_run = await h.wait((await h.run("etl", parameters, cache_mode=run_pb2.CACHE_MODE_REFRESH)).name, timeout=90)

    assert local_run.state == Run.STATE_SUCCEEDED, local_run.message
    kube_steps, local_steps = steps_by_name(kube_run), steps_by_name(local_run)
    assert {s: kube_steps[s].state for s in kube_steps} == {s: StepRun.STATE_SUCCEEDED for s in kube_steps}
    for name, step in kube_steps.items():
        assert dict(step.outcome.outputs) == dict(local_steps[name].outcome.outputs), name
        assert step.outcome.handle == pod_name("default", kube_run.name.rsplit("/", 1)[1], name, 1)
    report = await h.output(kube_run, "report", "report")
    assert report.startswith(b"Orders by region (400 generated)")
    logs = await h.blob(kube_steps["report"].attempts[0].stdout_digest)
    assert logs == report  # the step printed its report: the pod's log is the attempt's stdout
    # Succeeded pods are deleted once their results are committed.
    await wait_until(lambda: list_pods(core, namespace) == [], what="step pods deleted")


async def test_a_failing_step_is_retried_in_new_pods_and_fails_the_run(
    harness: Harness, cluster: KubeCluster, kubelet: SimulatedKubelet, core: Any, namespace: str
) -> None:
    h = harness
    retry = pipeline_pb2.RetryPolicy(max_attempts=2, backoff=duration(0.1))
    steps = [
        h.step("prepare"),
        h.step("crunch", 'echo reading; echo "bad row 17" >&2; exit 4', reads={"in": ("prepare", "out")}, retry=retry),
        h.step("publish", reads={"in": ("crunch", "out")}),
    ]
    pipeline = await h.apply("failing", steps)
    await h.start_executor(**kube_executor_settings(cluster, namespace))

    run = await h.wait((await h.run(pipeline.name)).name, timeout=60)

    assert run.state == Run.STATE_FAILED
    crunch = steps_by_name(run)["crunch"]
    assert crunch.state == StepRun.STATE_FAILED
    assert [a.state for a in crunch.attempts] == [Attempt.STATE_FAILED, Attempt.STATE_FAILED]
    assert [a.exit_code for a in crunch.attempts] == [4, 4]
    assert crunch.attempts[1].message == "exit code 4; last log lines:\nreading\nbad row 17"
    assert len({a.handle for a in crunch.attempts}) == 2  # one pod per attempt
    assert steps_by_name(run)["publish"].state == StepRun.STATE_SKIPPED
    assert h.launches() == {"prepare": 1, "crunch": 2}
    # The failed pods are kept for inspection; the succeeded one is gone.
    kept = await wait_until(lambda: sorted(p.metadata.name for p in list_pods(core, namespace)), what="pods")
    assert kept == sorted(a.handle for a in crunch.attempts)


async def test_a_killed_executors_pod_is_re_attached_not_launched_again(
    harness: Harness, cluster: KubeCluster, kubelet: SimulatedKubelet, core: Any, namespace: str
) -> None:
    h = harness
    gate = h.tmp / "gate"
    steps = [h.step("long", f'while [ ! -e {gate} ]; do sleep 0.1; done; printf done > "$WEFT_OUTPUTS/out"')]
    pipeline = await h.apply("failover", steps)
    dying = start_kube_executor_process(h, cluster, namespace, lease_ttl=2)
    run_name = (await h.run(pipeline.name)).name
    pods = await wait_until(lambda: list_pods(core, namespace), what="pod created")
    await wait_until(lambda: _main_running(core, namespace, pods[0].metadata.name), what="step running")

    dying.kill()  # SIGKILL: the pod keeps running, the claim expires with the lease
    successor = await h.start_executor(**kube_executor_settings(cluster, namespace, lease_ttl=2))
    await wait_until(lambda: successor.running_steps(), timeout=15, what="step taken over")
    gate.touch()
    run = await h.wait(run_name, timeout=30)

    assert run.state == Run.STATE_SUCCEEDED, run.message
    assert await h.output(run, "long") == b"done"
    long = steps_by_name(run)["long"]
    assert [(a.number, a.state, a.executor) for a in long.attempts] == [
        (1, Attempt.STATE_SUCCEEDED, successor.executor_id)
    ]
    assert long.attempts[0].handle == pods[0].metadata.name
    assert h.launches() == {"long": 1}  # the step's process started once
    assert successor.launches == 0
    assert successor.runtime.created == 0  # type: ignore[attr-defined]


async def test_read_logs_follows_a_step_pod_through_the_api(
    harness: Harness, cluster: KubeCluster, kubelet: SimulatedKubelet, core: Any, namespace: str
) -> None:
    h = harness
    gate = h.tmp / "gate"
    script = f'echo "loading"; while [ ! -e {gate} ]; do sleep 0.1; done; echo "saved"; printf ok > "$WEFT_OUTPUTS/out"'
    pipeline = await h.apply("chatty", [h.step("talk", script)])
    await h.start_executor(**kube_executor_settings(cluster, namespace))
    run_name = (await h.run(pipeline.name)).name
    pods = await wait_until(lambda: list_pods(core, namespace), what="pod created")
    await wait_until(lambda: _main_running(core, namespace, pods[0].metadata.name), what="step running")

    # What `weft logs -f RUN talk` does: the api proxies the executor, which follows the pod.
    follow = h.clients.runs.ReadLogs(run_pb2.ReadLogsRequest(run=run_name, step="talk", follow=True))
    received = b""
    async for chunk in follow:
        received += chunk.data
        if received == b"loading\n":
            gate.touch()  # the first line arrived while the step was still waiting
    run = await h.wait(run_name, timeout=30)
    stored = h.clients.runs.ReadLogs(run_pb2.ReadLogsRequest(run=run_name, step="talk"))
    after = b"".join([chunk.data async for chunk in stored])

    assert run.state == Run.STATE_SUCCEEDED, run.message
    assert received == b"loading\nsaved\n"
    assert after == b"loading\nsaved\n"  # once ended, read from the stored log blob
