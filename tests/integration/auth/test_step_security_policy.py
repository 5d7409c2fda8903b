"""The namespace policy on steps that relax the hardened pod defaults: refused by
validation (naming the field) outside the namespaces weft-api allows, with nothing written."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from tests.integration.api.support import Clients, keyspace_snapshot, simple
from tests.integration.conftest import InProcessApi, running_api
from weft.localstack import EtcdProcess
from weft.v1 import pipeline_pb2
from weft_core.keyspace import Keyspace
from weft_core.store import Store


@pytest.fixture
async def policed_api(etcd: EtcdProcess, keyspace: Keyspace, tmp_path: Path) -> AsyncIterator[InProcessApi]:
    async with running_api(
        etcd.endpoint, keyspace, tmp_path / "blobs", relaxed_security_namespaces=frozenset({"ops"})
    ) as api:
        yield api


def relaxed_pipeline(namespace: str, **security: object) -> pipeline_pb2.CreatePipelineRequest:
    spec = simple(2)
    spec.steps[1].container.security.CopyFrom(pipeline_pb2.StepSecurity(**security))  # type: ignore[arg-type]
    return pipeline_pb2.CreatePipelineRequest(
        parent=f"namespaces/{namespace}", pipeline=pipeline_pb2.Pipeline(name="relaxed", spec=spec)
    )


async def test_relaxing_step_security_is_refused_outside_the_allowed_namespaces(
    policed_api: InProcessApi, store: Store
) -> None:
    async with grpc.aio.insecure_channel(policed_api.address) as channel:
        clients = Clients.of(channel)
        before = await keyspace_snapshot(store, policed_api.keyspace)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await clients.pipelines.CreatePipeline(relaxed_pipeline("default", run_as_root=True))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = refused.value.details() or ""
        assert details.startswith("pipeline.spec.steps[1].container.security"), details
        assert "--relaxed-security-namespaces" in details
        with pytest.raises(grpc.aio.AioRpcError) as malformed:
            await clients.pipelines.CreatePipeline(relaxed_pipeline("ops", add_capabilities=["cap_sys_admin"]))
        assert (malformed.value.details() or "").startswith(
            "pipeline.spec.steps[1].container.security.add_capabilities[0]"
        )
        assert await keyspace_snapshot(store, policed_api.keyspace) == before
        created = await clients.pipelines.CreatePipeline(
            relaxed_pipeline("ops", mount_service_account_token=True, add_capabilities=["NET_BIND_SERVICE"])
        )
        assert created.spec.steps[1].container.security.mount_service_account_token
        # A step that asks for nothing is fine anywhere.
        plain = pipeline_pb2.CreatePipelineRequest(pipeline=pipeline_pb2.Pipeline(name="plain", spec=simple(2)))
        await clients.pipelines.CreatePipeline(plain)
