"""TLS on real servers: the right CA connects, a wrong CA or plaintext does not, mTLS needs
a client certificate, a rotated certificate is served (and a rotated client certificate
presented) without a restart, and an executor
and the api talk TLS (mTLS) both ways through a whole run."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.integration.api.support import Clients
from tests.integration.auth.conftest import Pki, Tokens
from tests.integration.conftest import InProcessApi, running_api
from tests.integration.executor.support import Harness, states
from tests.support import assert_eventually_async
from weft._auth import RotatingChannel, channel_credentials, open_channel
from weft._pki import LocalCA
from weft.localstack import EtcdProcess
from weft.v1 import pipeline_pb2, run_pb2
from weft_api.app import create_api_server
from weft_core.config import ApiConfig
from weft_core.keyspace import Keyspace
from weft_core.store import Store
from weft_core.tls import ClientTls, Peer

pytestmark = pytest.mark.timeout(90)
LIST = run_pb2.ListRunsRequest(parent="namespaces/team-a")


async def list_runs(address: str, tokens: Tokens, **tls: Any) -> grpc.StatusCode:
    async with tokens.channel(address, "viewer-a", **tls) as channel:
        try:
            await Clients.of(channel).runs.ListRuns(LIST, timeout=5)
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


@pytest.fixture
async def tls_api(
    etcd: EtcdProcess, keyspace: Keyspace, tmp_path: Path, tokens: Tokens, pki: Pki
) -> AsyncIterator[InProcessApi]:
    """weft-api with auth and TLS; clients must present a certificate of the same CA (mTLS)."""
    # Copies the test may replace to rotate the certificate.
    serving = tmp_path / "serving"
    serving.mkdir()
    shutil.copy(pki.server.cert, serving / "tls.crt")
    shutil.copy(pki.server.key, serving / "tls.key")
    async with running_api(
        etcd.endpoint,
        keyspace,
        tmp_path / "blobs",
        auth_tokens_file=tokens.path,
        tls_cert=serving / "tls.crt",
        tls_key=serving / "tls.key",
        tls_client_ca=pki.ca.cert,
        peer_token=tokens.tokens["cluster-admin"],
        peer_ca_cert=pki.ca.cert,
        peer_client_cert=pki.client.cert,
        peer_client_key=pki.client.key,
    ) as server:
        yield server


async def test_tls_needs_the_right_ca_and_with_mtls_a_client_certificate(
    tls_api: InProcessApi, tokens: Tokens, pki: Pki, tmp_path: Path
) -> None:
    client = {"client_cert": pki.client.cert, "client_key": pki.client.key}
    assert await list_runs(tls_api.address, tokens, ca_cert=pki.ca.cert, **client) == grpc.StatusCode.OK
    other = LocalCA.create(tmp_path / "other-ca")
    assert await list_runs(tls_api.address, tokens, ca_cert=other.cert, **client) == grpc.StatusCode.UNAVAILABLE
    assert await list_runs(tls_api.address, tokens) == grpc.StatusCode.UNAVAILABLE  # plaintext
    # mTLS: the right CA but no client certificate, or one from another CA.
    assert await list_runs(tls_api.address, tokens, ca_cert=pki.ca.cert) == grpc.StatusCode.UNAVAILABLE
    stranger = other.issue("stranger", (), client=True)
    wrong_client = {"client_cert": stranger.cert, "client_key": stranger.key}
    assert await list_runs(tls_api.address, tokens, ca_cert=pki.ca.cert, **wrong_client) == grpc.StatusCode.UNAVAILABLE
    # TLS does not replace the token.
    async with tokens.channel(tls_api.address, "", ca_cert=pki.ca.cert, **client) as anonymous:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await Clients.of(anonymous).runs.ListRuns(LIST, timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_rotated_certificate_is_served_without_a_restart(
    tls_api: InProcessApi, tokens: Tokens, pki: Pki, tmp_path: Path
) -> None:
    client = {"client_cert": pki.client.cert, "client_key": pki.client.key}
    assert await list_runs(tls_api.address, tokens, ca_cert=pki.ca.cert, **client) == grpc.StatusCode.OK
    # The server's certificate now comes from a new CA (clients keep theirs from the old one).
    renewed_ca = LocalCA.create(tmp_path / "renewed")
    renewed = renewed_ca.issue("server", ("127.0.0.1",))
    assert tls_api.config.tls_cert is not None
    assert tls_api.config.tls_key is not None
    for source, target in ((renewed.key, tls_api.config.tls_key), (renewed.cert, tls_api.config.tls_cert)):
        spool = target.with_suffix(".new")
        shutil.copy(source, spool)
        os.replace(spool, target)
    assert await list_runs(tls_api.address, tokens, ca_cert=renewed_ca.cert, **client) == grpc.StatusCode.OK
    assert await list_runs(tls_api.address, tokens, ca_cert=pki.ca.cert, **client) == grpc.StatusCode.UNAVAILABLE


async def test_an_executor_and_the_api_talk_mtls_both_ways_through_a_run(
    etcd: EtcdProcess, tls_api: InProcessApi, tokens: Tokens, pki: Pki, tmp_path: Path
) -> None:
    client = {"client_cert": pki.client.cert, "client_key": pki.client.key}
    store = Store(etcd.endpoint)
    async with tokens.channel(tls_api.address, "admin-a", ca_cert=pki.ca.cert, **client) as channel:
        h = Harness(etcd.endpoint, tls_api.address, tls_api.keyspace, tls_api.blob_dir, tmp_path, channel, store)
        try:
            await h.start_executor(
                auth_tokens_file=tokens.path,
                tls_cert=pki.server.cert,
                tls_key=pki.server.key,
                tls_client_ca=pki.ca.cert,
                peer_token=tokens.tokens["cluster-admin"],
                peer_ca_cert=pki.ca.cert,
                peer_client_cert=pki.client.cert,
                peer_client_key=pki.client.key,
            )
            release = tmp_path / "release"
            script = f'echo hello; while [ ! -e {release} ]; do sleep 0.05; done; printf x > "$WEFT_OUTPUTS/out"'
            spec = pipeline_pb2.PipelineSpec(steps=[h.step("only", script)])
            await h.clients.pipelines.CreatePipeline(
                pipeline_pb2.CreatePipelineRequest(
                    parent="namespaces/team-a", pipeline=pipeline_pb2.Pipeline(name="one", spec=spec)
                )
            )
            run = await h.clients.runs.CreateRun(
                run_pb2.CreateRunRequest(parent="namespaces/team-a", run=run_pb2.Run(pipeline="one"))
            )

            async def running() -> bool:
                return states(await h.get(run.name)).get("only") == "RUNNING"

            await assert_eventually_async(running, timeout=30, what="the step runs")
            # Live logs: api → executor over mTLS, with the api's peer token.
            logs = h.clients.runs.ReadLogs(run_pb2.ReadLogsRequest(run=run.name, step="only", follow=True))
            async for chunk in logs:
                assert chunk.data == b"hello\n"
                break
            logs.cancel()
            release.touch()
            finished = await h.wait(run.name)
            assert finished.state == run_pb2.Run.STATE_SUCCEEDED, finished.message
        finally:
            await h.close()
            await store.close()


def replace_file(source: Path, target: Path) -> None:
    """Replaces `target` by a copy of `source` at once, as a rotated Secret does."""
    spool = target.with_suffix(".new")
    shutil.copy(source, spool)
    os.replace(spool, target)


async def test_a_client_certificate_rotates_without_reopening_the_channel(
    etcd: EtcdProcess, keyspace: Keyspace, tmp_path: Path, tokens: Tokens, pki: Pki
) -> None:
    """The SDK's channel and a peer's (the executor's to the api) re-read their client
    certificate when its files change: after the server starts trusting only the new CA,
    the same channel objects still work, while a channel holding the old certificate
    in memory is refused."""
    serving, held = tmp_path / "serving", tmp_path / "client"
    serving.mkdir()
    held.mkdir()
    replace_file(pki.ca.cert, serving / "clients-ca.crt")
    replace_file(pki.client.cert, held / "tls.crt")
    replace_file(pki.client.key, held / "tls.key")
    config = ApiConfig(
        etcd_endpoints=etcd.endpoint,
        listen="127.0.0.1:0",
        blob_dir=tmp_path / "blobs",
        etcd_root=keyspace.root,
        auth_tokens_file=tokens.path,
        tls_cert=pki.server.cert,
        tls_key=pki.server.key,
        tls_client_ca=serving / "clients-ca.crt",
    )
    server, port = create_api_server(config)
    await server.start()
    address = f"127.0.0.1:{port}"
    client: dict[str, Any] = {"ca_cert": pki.ca.cert, "client_cert": held / "tls.crt", "client_key": held / "tls.key"}
    sdk = open_channel(address, token=tokens.tokens["viewer-a"], **client)
    peer = Peer(tokens.tokens["viewer-a"], ClientTls(**client)).open_channel(address)
    frozen = open_channel(address, token=tokens.tokens["viewer-a"], credentials=channel_credentials(**client))
    stubs = {"sdk": Clients.of(sdk).runs, "peer": Clients.of(peer).runs, "frozen": Clients.of(frozen).runs}

    async def codes() -> dict[str, grpc.StatusCode]:
        found = {}
        for name, stub in stubs.items():
            try:
                await stub.ListRuns(LIST, timeout=5)
                found[name] = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                found[name] = error.code()
        return found

    try:
        assert await codes() == dict.fromkeys(stubs, grpc.StatusCode.OK)
        # Rotation: a client certificate from a new CA, which the server now trusts alone.
        renewed_ca = LocalCA.create(tmp_path / "renewed")
        renewed = renewed_ca.issue("client", (), client=True)
        replace_file(renewed.key, held / "tls.key")
        replace_file(renewed.cert, held / "tls.crt")
        replace_file(renewed_ca.cert, serving / "clients-ca.crt")
        # A restart of the server drops every connection, so each channel handshakes again.
        await server.stop(0)
        server, _ = create_api_server(dataclasses.replace(config, listen=address))
        await server.start()

        async def rotated() -> bool:
            return await codes() == {
                "sdk": grpc.StatusCode.OK,
                "peer": grpc.StatusCode.OK,
                "frozen": grpc.StatusCode.UNAVAILABLE,
            }

        await assert_eventually_async(rotated, timeout=20, what="the channels present the new certificate")
        assert isinstance(sdk, RotatingChannel)
        assert sdk.generation == 1
    finally:
        for channel in (sdk, peer, frozen):
            await channel.close(None)
        await server.stop(0)
