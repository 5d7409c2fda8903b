"""The example ETL pipeline on the Kubernetes test cluster with the S3 backend (a real moto
server): the pods' input and output containers read and write the bucket directly, with
nothing but the presigned URLs of their attempt (no credentials anywhere in the pod) or,
with `--pod-blob-store-secret`, with the credentials of a Secret that only they get; no
step data passes through weft-api (its byte counters stay still), the outputs are right,
and a second run is fully CACHED."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.integration.blobs.s3server import S3Server, signatures_valid
from tests.integration.conftest import running_api
from tests.integration.executor.support import Harness, steps_by_name
from tests.integration.kube.conftest import kube_executor_settings, list_pods
from tests.kube.cluster import KubeCluster
from tests.kube.kubelet import SimulatedKubelet
from weft import load_pipeline
from weft.localstack import EtcdProcess
from weft.v1 import pipeline_pb2, run_pb2
from weft_api.artifacts import TRAFFIC
from weft_core import metrics
from weft_core.blobs import missing_blobs
from weft_core.keyspace import Keyspace
from weft_core.objectstore import ObjectBlobStore
from weft_core.store import Store
from weft_executor import podio
from weft_executor.runtime.kube_pods import FETCH_CONTAINER, MAIN_CONTAINER, UPLOAD_CONTAINER

pytestmark = pytest.mark.kube

Run = run_pb2.Run
StepRun = run_pb2.StepRun
EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "etl" / "pipeline.yaml"
SECRET = "weft-blob-store"


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("moto") / "moto.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def s3_harness(
    etcd: EtcdProcess, keyspace: Keyspace, tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Harness, str]]:
    """weft-api on a fresh bucket (this process reads the AWS variables, as a pod with the
    Secret would), and the executor tests' harness around it."""
    for name, value in s3_server.environ().items():
        monkeypatch.setenv(name, value)
    # No "/weft" anywhere in it: the simulated kubelet maps that path (the pods' shared
    # volume) in every argument.
    url = f"s3://{s3_server.make_bucket('artifacts-' + uuid.uuid4().hex[:8])}/runs"
    store = Store(etcd.endpoint)
    async with (
        running_api(etcd.endpoint, keyspace, tmp_path / "no-blob-dir", blob_store=url) as api,
        grpc.aio.insecure_channel(api.address) as channel,
    ):
        harness = Harness(etcd.endpoint, api.address, keyspace, tmp_path / "no-blob-dir", tmp_path, channel, store)
        try:
            yield harness, url
        finally:
            await harness.close()
            await store.close()


@contextlib.asynccontextmanager
async def recorded_pods(core: Any, namespace: str) -> AsyncIterator[dict[str, Any]]:
    """Every step pod seen in `namespace` while the block runs, by name (pods are deleted
    once their results are committed, so the test keeps what it saw)."""
    seen: dict[str, Any] = {}

    async def record() -> None:
        while True:
            for pod in await asyncio.to_thread(list_pods, core, namespace):
                seen[pod.metadata.name] = pod
            await asyncio.sleep(0.05)

    task = asyncio.create_task(record())
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _pod_bytes() -> tuple[float, float]:
    def value(direction: str) -> float:
        return float(metrics.BLOB_STORE_BYTES.labels(direction, "pod")._value.get())

    return value("out"), value("in")


def _signed_access(container: Any) -> podio.SignedAccess | None:
    env = {var.name: (var.value or "").replace("$$", "$") for var in container.env or []}
    if not any(name.startswith(podio.SIGNED_ACCESS_ENV) for name in env):
        return None
    return podio.SignedAccess.from_environment(env)


@pytest.mark.parametrize("access", ["presigned", "credentials"])
async def test_the_example_on_kubernetes_with_s3_moves_no_step_data_through_the_api(
    s3_harness: tuple[Harness, str],
    s3_server: S3Server,
    cluster: KubeCluster,
    kubelet: SimulatedKubelet,
    core: Any,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    access: str,
) -> None:
    h, url = s3_harness
    spec = load_pipeline(EXAMPLE).spec()
    request = pipeline_pb2.CreatePipelineRequest(pipeline=pipeline_pb2.Pipeline(name="etl", spec=spec))
    await h.clients.pipelines.CreatePipeline(request)
    secret: dict[str, Any] = {}
    if access == "credentials":
        core.create_namespaced_secret(
            namespace,
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET}, "stringData": s3_server.environ()},
        )
        secret = {"pod_blob_store_secret": SECRET}
    settings = kube_executor_settings(cluster, namespace, max_parallel=8, blob_store=url, **secret)
    executor = await h.start_executor(**settings)
    if access == "presigned":
        # The simulated kubelet's pods inherit this process's environment: from now on it has
        # no AWS variable (the api and the executor opened their stores already), so helpers
        # that reached S3 did it with their URLs alone.
        for name in s3_server.environ():
            monkeypatch.delenv(name)
    through_api = (TRAFFIC.bytes_received, TRAFFIC.bytes_sent, TRAFFIC.blobs_received, TRAFFIC.blobs_sent)
    pod_bytes = _pod_bytes()

    async with recorded_pods(core, namespace) as pods:
        first = await h.wait((await h.run("etl", {"rows": "400", "seed": "11"})).name, timeout=120)

    assert first.state == Run.STATE_SUCCEEDED, first.message
    retried = {s.step: [a.message for a in s.attempts] for s in first.steps if len(s.attempts) > 1}
    assert executor.launches == len(spec.steps), retried
    assert (TRAFFIC.bytes_received, TRAFFIC.bytes_sent, TRAFFIC.blobs_received, TRAFFIC.blobs_sent) == through_api
    # The bytes the helpers moved straight to the bucket are counted by the executor.
    moved_out, moved_in = (after - before for after, before in zip(_pod_bytes(), pod_bytes, strict=True))
    assert moved_out > 0
    assert moved_in > 0
    # The helpers were told the bucket, not the api, and only they got access to it.
    assert len(pods) == len(spec.steps)
    steps = steps_by_name(first)
    for name, pod in pods.items():
        containers = {c.name: c for c in [*pod.spec.init_containers, *pod.spec.containers]}
        for helper in (FETCH_CONTAINER, UPLOAD_CONTAINER):
            command = containers[helper].command
            assert "--api" not in command, name
            if access == "credentials":
                assert command[command.index("--blob-store") + 1] == url, name
                assert [source.secret_ref.name for source in containers[helper].env_from] == [SECRET], name
                assert _signed_access(containers[helper]) is None, name
            else:
                assert "--signed" in command, name
                assert "--blob-store" not in command, name
                assert containers[helper].env_from is None, name
                assert not any(var.name.startswith("AWS_") for var in containers[helper].env or []), name
        main = containers[MAIN_CONTAINER]
        assert main.env_from is None, name
        assert not any(var.name.startswith("AWS_") for var in main.env or []), name
        assert _signed_access(main) is None, name
        if access == "presigned":
            # Each helper holds only what it needs: reads of the step's inputs, writes of its outputs.
            step = steps[pod.metadata.labels["weft.dev/step"]]
            reads = _signed_access(containers[FETCH_CONTAINER])
            writes = _signed_access(containers[UPLOAD_CONTAINER])
            assert reads is not None, name
            assert writes is not None, name
            fetched = {arg.split("=", 1)[1] for arg in containers[FETCH_CONTAINER].command if "=sha256:" in arg}
            assert set(reads.reads) == fetched, name
            assert not reads.writes, name
            assert not reads.manifest, name
            assert not writes.reads, name
            assert set(writes.writes) == set(step.outcome.outputs), name
            assert all("/uploads/attempts/" in u for u in [*writes.writes.values(), writes.manifest]), name
            urls = [("GET", u) for u in reads.reads.values()] + [("PUT", u) for u in writes.writes.values()]
            assert all(signatures_valid(urls)), name
    # The outputs are right, and in the bucket.
    if access == "presigned":
        for name, value in s3_server.environ().items():
            monkeypatch.setenv(name, value)
    bucket = ObjectBlobStore.from_url(url)
    assert {s.state for s in steps.values()} == {StepRun.STATE_SUCCEEDED}
    outputs = [digest for step in steps.values() for digest in step.outcome.outputs.values()]
    assert await missing_blobs(bucket, outputs) == []
    report = await bucket.get(steps["report"].outcome.outputs["report"])
    assert report.startswith(b"Orders by region (400 generated)")
    assert await bucket.get(steps["report"].attempts[0].stdout_digest) == report

    second = await h.wait((await h.run("etl", {"rows": "400", "seed": "11"})).name, timeout=60)

    assert second.state == Run.STATE_SUCCEEDED, second.message
    assert {s.step: s.state for s in second.steps} == {s: StepRun.STATE_CACHED for s in steps}
    assert executor.launches == len(spec.steps)
