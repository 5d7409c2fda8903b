"""Fixtures of the executor tests: a real etcd, a real in-process weft-api, and a harness
that starts real executors (in-process or as `weft-executor` subprocesses) against them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from tests.integration.conftest import InProcessApi
from tests.integration.executor.support import Harness
from weft.localstack import EtcdProcess
from weft_core.store import Store


@pytest.fixture
async def harness(etcd: EtcdProcess, api: InProcessApi, tmp_path: Path) -> AsyncIterator[Harness]:
    """An api on port 0 with its own keyspace, and no executor yet (start them in the test)."""
    store = Store(etcd.endpoint)
    async with grpc.aio.insecure_channel(api.address) as channel:
        harness = Harness(
            etcd_endpoint=etcd.endpoint,
            api_address=api.address,
            keyspace=api.keyspace,
            blob_dir=api.blob_dir,
            tmp=tmp_path,
            channel=channel,
            store=store,
        )
        try:
            yield harness
        finally:
            await harness.close()
            await store.close()
