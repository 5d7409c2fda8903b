"""A whole run with authentication on: weft-api and a weft-executor that authenticate each
other with peer tokens, callers with their own roles, outputs readable in their namespace
only, live logs proxied from the executor with the api's token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from tests.integration.api.support import Clients
from tests.integration.auth.conftest import Tokens
from tests.integration.conftest import InProcessApi, harness_on
from tests.integration.executor.support import Harness, states
from tests.support import assert_eventually_async
from weft.localstack import EtcdProcess
from weft.v1 import artifact_pb2, pipeline_pb2, run_pb2
from weft_core.blobs import RemoteBlobStore, blob_namespace
from weft_core.errors import PermissionDenied, Unauthenticated
from weft_core.tls import Peer

pytestmark = pytest.mark.timeout(90)
Run = run_pb2.Run


@pytest.fixture
async def secure_harness(
    etcd: EtcdProcess, secure_api: InProcessApi, tokens: Tokens, tmp_path: Path
) -> AsyncIterator[Harness]:
    """The executor tests' harness on the secure api, calling it as admin-a."""
    async with (
        tokens.channel(secure_api.address, "admin-a") as channel,
        harness_on(etcd, secure_api, tmp_path, channel) as harness,
    ):
        yield harness


async def test_a_run_with_auth_on_from_create_to_outputs(secure_harness: Harness, tokens: Tokens) -> None:
    h = secure_harness
    await h.start_executor(auth_tokens_file=tokens.path, peer_token=tokens.tokens["cluster-admin"])
    release = h.tmp / "release"
    first = h.step(
        "first", f'echo "tick"; while [ ! -e {release} ]; do sleep 0.05; done; printf one > "$WEFT_OUTPUTS/out"'
    )
    second = h.step("second", 'cat "$WEFT_INPUTS/x" > "$WEFT_OUTPUTS/out"; printf %s -two >> "$WEFT_OUTPUTS/out"')
    second.inputs.add(name="x", step_output=pipeline_pb2.OutputRef(step="first", output="out"))
    spec = pipeline_pb2.PipelineSpec(steps=[first, second])
    await h.clients.pipelines.CreatePipeline(
        pipeline_pb2.CreatePipelineRequest(
            parent="namespaces/team-a", pipeline=pipeline_pb2.Pipeline(name="two", spec=spec)
        )
    )
    address = h.api_address
    async with (
        tokens.channel(address, "runner-a") as runner,
        tokens.channel(address, "viewer-a") as viewer_a,
        tokens.channel(address, "viewer-b") as viewer_b,
    ):
        run = await Clients.of(runner).runs.CreateRun(
            run_pb2.CreateRunRequest(parent="namespaces/team-a", run=Run(pipeline="two"))
        )

        async def running() -> bool:
            return states(await h.get(run.name)).get("first") == "RUNNING"

        await assert_eventually_async(running, timeout=30, what="the first step runs")
        # Live logs: the api proxies the executor's ExecutorService with its peer token.
        logs = Clients.of(viewer_a).runs.ReadLogs(run_pb2.ReadLogsRequest(run=run.name, step="first", follow=True))
        async for chunk in logs:
            assert chunk.data == b"tick\n"
            break
        logs.cancel()
        release.touch()
        finished = await h.wait(run.name)
        assert finished.state == Run.STATE_SUCCEEDED, finished.message
        assert finished.created_by == "runner-a"

        digest = {s.step: s for s in finished.steps}["second"].outcome.outputs["out"]
        chunks = Clients.of(viewer_a).artifacts.GetBlob(artifact_pb2.GetBlobRequest(digest=digest, namespace="team-a"))
        assert b"".join([c.data async for c in chunks]) == b"one-two"
        with pytest.raises(grpc.aio.AioRpcError) as hidden:
            await Clients.of(viewer_b).artifacts.StatBlob(
                artifact_pb2.StatBlobRequest(digest=digest, namespace="team-b")
            )
        assert hidden.value.code() == grpc.StatusCode.NOT_FOUND

        # A second run is served from the cache: the executor's stat in team-a finds the
        # outputs it uploaded for team-a.
        again = await Clients.of(runner).runs.CreateRun(
            run_pb2.CreateRunRequest(parent="namespaces/team-a", run=Run(pipeline="two"))
        )
        cached = await h.wait(again.name)
        assert cached.state == Run.STATE_SUCCEEDED
        assert set(states(cached).values()) == {"CACHED"}


async def test_the_executors_blob_client_reports_a_wrong_peer_token_as_such(
    secure_api: InProcessApi, tokens: Tokens
) -> None:
    # Not as UNAVAILABLE ("retry later"): a wrong token is a setting to fix.
    store = RemoteBlobStore(secure_api.address, peer=Peer(token="not-the-token"))
    try:
        with pytest.raises(Unauthenticated, match="not valid"):
            await store.put(b"x" * 10)
    finally:
        await store.close()
    store = RemoteBlobStore(secure_api.address, peer=Peer(token=tokens.tokens["viewer-a"]))
    try:
        token = blob_namespace.set("team-a")
        with pytest.raises(PermissionDenied, match="needs the role runner"):
            await store.put(b"x" * 10)
        blob_namespace.reset(token)
    finally:
        await store.close()
