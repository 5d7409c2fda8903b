"""Auth on, artifact store in S3 (moto): the outputs a weft-executor writes straight to the
bucket (no PutBlob, so no `blobrefs` key) are readable by the viewers of the run's
namespace, because an outcome of that namespace references them, and by nobody else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from tests.integration.api.support import Clients
from tests.integration.auth.conftest import Tokens, tokens  # noqa: F401 (`tokens` is a fixture)
from tests.integration.conftest import InProcessApi, running_api
from tests.integration.executor.support import Harness, steps_by_name
from weft.localstack import EtcdProcess
from weft.v1 import artifact_pb2, pipeline_pb2, run_pb2
from weft_api.artifacts import TRAFFIC
from weft_core.blobs import check_digest
from weft_core.keyspace import Keyspace
from weft_core.store import Store

pytestmark = pytest.mark.timeout(90)
Run = run_pb2.Run


@pytest.fixture
async def secure_s3_api(
    etcd: EtcdProcess,
    keyspace: Keyspace,
    tmp_path: Path,
    s3_url: str,
    tokens: Tokens,  # noqa: F811
) -> AsyncIterator[InProcessApi]:
    async with running_api(
        etcd.endpoint,
        keyspace,
        tmp_path / "no-blob-dir",
        blob_store=s3_url,
        auth_tokens_file=tokens.path,
        peer_token=tokens.tokens["cluster-admin"],
    ) as api:
        yield api


async def read_blob(channel: grpc.aio.Channel, digest: str, namespace: str) -> bytes | grpc.StatusCode:
    try:
        chunks = Clients.of(channel).artifacts.GetBlob(artifact_pb2.GetBlobRequest(digest=digest, namespace=namespace))
        return b"".join([c.data async for c in chunks])
    except grpc.aio.AioRpcError as error:
        return error.code()


async def test_outputs_written_straight_to_s3_are_readable_by_the_namespaces_viewers_only(
    etcd: EtcdProcess,
    secure_s3_api: InProcessApi,
    s3_url: str,
    tokens: Tokens,  # noqa: F811
    tmp_path: Path,
) -> None:
    api = secure_s3_api
    store = Store(etcd.endpoint)
    async with tokens.channel(api.address, "admin-a") as admin:
        h = Harness(
            etcd_endpoint=etcd.endpoint,
            api_address=api.address,
            keyspace=api.keyspace,
            blob_dir=tmp_path / "no-blob-dir",
            tmp=tmp_path,
            channel=admin,
            store=store,
        )
        try:
            await h.start_executor(
                blob_store=s3_url, auth_tokens_file=tokens.path, peer_token=tokens.tokens["cluster-admin"]
            )
            first = h.step("first", 'printf one > "$WEFT_OUTPUTS/out"')
            second = h.step(
                "second", 'cat "$WEFT_INPUTS/x" > "$WEFT_OUTPUTS/out"; printf %s -two >> "$WEFT_OUTPUTS/out"'
            )
            second.inputs.add(name="x", step_output=pipeline_pb2.OutputRef(step="first", output="out"))
            await h.clients.pipelines.CreatePipeline(
                pipeline_pb2.CreatePipelineRequest(
                    parent="namespaces/team-a",
                    pipeline=pipeline_pb2.Pipeline(name="two", spec=pipeline_pb2.PipelineSpec(steps=[first, second])),
                )
            )
            through_api = (TRAFFIC.bytes_received, TRAFFIC.bytes_sent)
            async with tokens.channel(api.address, "runner-a") as runner:
                run = await Clients.of(runner).runs.CreateRun(
                    run_pb2.CreateRunRequest(parent="namespaces/team-a", run=Run(pipeline="two"))
                )
            finished = await h.wait(run.name)
            assert finished.state == Run.STATE_SUCCEEDED, finished.message
            assert (TRAFFIC.bytes_received, TRAFFIC.bytes_sent) == through_api, "step data went through the api"
            steps = steps_by_name(finished)
            outputs = {name: steps[name].outcome.outputs["out"] for name in ("first", "second")}
            for digest in outputs.values():
                # Written straight to the bucket: no upload ever named a namespace for it.
                assert await store.get(api.keyspace.blob_ref("team-a", check_digest(digest))) is None

            async with (
                tokens.channel(api.address, "viewer-a") as viewer_a,
                tokens.channel(api.address, "viewer-b") as viewer_b,
            ):
                assert await read_blob(viewer_a, outputs["first"], "team-a") == b"one"
                assert await read_blob(viewer_a, outputs["second"], "team-a") == b"one-two"
                stat = await Clients.of(viewer_a).artifacts.StatBlob(
                    artifact_pb2.StatBlobRequest(digest=outputs["second"], namespace="team-a")
                )
                assert stat.size_bytes == len(b"one-two")
                # Another namespace's viewer learns nothing from the digest.
                for digest in outputs.values():
                    assert await read_blob(viewer_b, digest, "team-b") == grpc.StatusCode.NOT_FOUND
        finally:
            await h.close()
            await store.close()
