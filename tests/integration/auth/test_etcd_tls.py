"""weft over a real etcd that speaks only TLS and requires client certificates (started
with --cert-file, --trusted-ca-file and --client-cert-auth): the store, weft-api and an
executor reach it with the CA and a client certificate, and nothing without one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.integration.auth.conftest import Pki
from tests.integration.conftest import running_api
from tests.integration.executor.support import Harness
from weft.localstack import EtcdProcess, EtcdTls
from weft.v1 import pipeline_pb2, run_pb2
from weft_core.errors import Unavailable
from weft_core.keyspace import Keyspace
from weft_core.store import Store
from weft_core.tls import ClientTls

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def tls_etcd(tmp_path: Path, pki: Pki) -> Iterator[EtcdProcess]:
    server = EtcdProcess(tmp_path / "etcd-tls", tls=EtcdTls(pki.server.cert, pki.server.key, pki.ca.cert))
    server.start()
    yield server
    server.stop()


async def test_the_store_needs_the_ca_and_a_client_certificate(tls_etcd: EtcdProcess, pki: Pki) -> None:
    assert tls_etcd.endpoint.startswith("https://")
    store = Store(tls_etcd.endpoint, tls=ClientTls(pki.ca.cert, pki.client.cert, pki.client.key), timeout=5)
    try:
        await store.put(b"/tls/k", b"v")
        found = await store.get(b"/tls/k")
        assert found is not None
        assert found.value == b"v"
    finally:
        await store.close()
    anonymous = Store(tls_etcd.endpoint, tls=ClientTls(pki.ca.cert), timeout=2)
    try:
        with pytest.raises(Unavailable):
            await anonymous.get(b"/tls/k")
    finally:
        await anonymous.close()
    with pytest.raises(ValueError, match="need TLS settings"):
        Store(tls_etcd.endpoint)


async def test_api_and_executor_run_a_pipeline_over_etcd_tls(
    tls_etcd: EtcdProcess, pki: Pki, keyspace: Keyspace, tmp_path: Path
) -> None:
    etcd_tls: dict[str, Any] = {
        "etcd_ca_cert": pki.ca.cert,
        "etcd_client_cert": pki.client.cert,
        "etcd_client_key": pki.client.key,
    }
    store = Store(tls_etcd.endpoint, tls=ClientTls(pki.ca.cert, pki.client.cert, pki.client.key))
    async with (
        running_api(tls_etcd.endpoint, keyspace, tmp_path / "blobs", **etcd_tls) as api,
        grpc.aio.insecure_channel(api.address) as channel,
    ):
        h = Harness(tls_etcd.endpoint, api.address, keyspace, api.blob_dir, tmp_path, channel, store)
        try:
            await h.start_executor(**etcd_tls)
            pipeline = await h.apply("over-tls", [h.step("only")])
            run = await h.run(pipeline.name)
            finished = await h.wait(run.name)
            assert finished.state == run_pb2.Run.STATE_SUCCEEDED, finished.message
            assert await h.output(finished, "only") == b"only"
            assert isinstance(pipeline, pipeline_pb2.Pipeline)
        finally:
            await h.close()
            await store.close()
