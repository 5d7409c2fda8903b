"""PipelineService against a real etcd: versioning, idempotency, listing, deletion."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import yaml
from google.protobuf import json_format

from tests.integration.api.support import Clients, create_pipeline, diamond, simple, step
from tests.integration.conftest import InProcessApi
from tests.unit.core.test_spec import DIAMOND_YAML, DIAMOND_YAML_REORDERED
from weft.v1 import pipeline_pb2
from weft_core.store import Store


@pytest.fixture
def clients(channel: grpc.aio.Channel) -> Clients:
    return Clients.of(channel)


def from_yaml(text: str) -> pipeline_pb2.PipelineSpec:
    return json_format.ParseDict(yaml.safe_load(text), pipeline_pb2.PipelineSpec())


async def get(clients: Clients, name: str, version: str = "") -> pipeline_pb2.Pipeline:
    got: pipeline_pb2.Pipeline = await clients.pipelines.GetPipeline(
        pipeline_pb2.GetPipelineRequest(name=f"namespaces/default/pipelines/{name}", version=version)
    )
    return got


async def test_the_same_spec_is_the_same_version_even_with_reordered_yaml_keys(
    clients: Clients, api: InProcessApi, store: Store
) -> None:
    first = await create_pipeline(clients, "etl", from_yaml(DIAMOND_YAML))
    head_key = api.keyspace.pipeline_head("default", "etl")
    revision = (await store.get(head_key)).mod_revision  # type: ignore[union-attr]
    again = await create_pipeline(clients, "etl", from_yaml(DIAMOND_YAML_REORDERED))
    assert again.version == first.version
    assert again.version_count == 1
    # Nothing was written: the head's revision is unchanged.
    assert (await store.get(head_key)).mod_revision == revision  # type: ignore[union-attr]
    assert first.name == "namespaces/default/pipelines/etl"
    assert first.spec == from_yaml(DIAMOND_YAML)


async def test_a_changed_spec_is_a_new_version_and_old_versions_stay_readable(clients: Clients) -> None:
    v1 = await create_pipeline(clients, "etl", diamond("true"))
    v2 = await create_pipeline(clients, "etl", diamond("false"))
    assert v2.version != v1.version
    assert v2.version_count == 2
    assert (await get(clients, "etl")).version == v2.version
    old = await get(clients, "etl", v1.version)
    assert old.spec.steps[0].container.command == ["true"]
    # A unique prefix of the hex part works too, with or without "sha256:".
    assert (await get(clients, "etl", v1.version[7:19])).version == v1.version
    assert (await get(clients, "etl", "sha256:" + v1.version[7:19])).version == v1.version
    # Re-creating the first spec makes it the latest again without a third version.
    back = await create_pipeline(clients, "etl", diamond("true"))
    assert back.version == v1.version
    assert back.version_count == 2
    assert (await get(clients, "etl")).version == v1.version

    versions = await clients.pipelines.ListPipelineVersions(
        pipeline_pb2.ListPipelineVersionsRequest(name="namespaces/default/pipelines/etl")
    )
    assert [v.version for v in versions.versions] == [v2.version, v1.version]  # newest first


async def test_concurrent_creates_of_different_specs_lose_no_version(clients: Clients) -> None:
    specs = [simple(i + 1) for i in range(12)]
    created = await asyncio.gather(*(create_pipeline(clients, "busy", spec) for spec in specs))
    latest = await get(clients, "busy")
    assert latest.version_count == 12
    versions = await clients.pipelines.ListPipelineVersions(
        pipeline_pb2.ListPipelineVersionsRequest(name="namespaces/default/pipelines/busy")
    )
    assert sorted(v.version for v in versions.versions) == sorted(p.version for p in created)


async def test_request_id_makes_a_retry_return_the_first_result(clients: Clients) -> None:
    request = pipeline_pb2.CreatePipelineRequest(
        pipeline=pipeline_pb2.Pipeline(name="etl", spec=simple(1)), request_id="req-1"
    )
    first = await clients.pipelines.CreatePipeline(request)
    await create_pipeline(clients, "etl", simple(2))  # someone else moves the head on
    retried = await clients.pipelines.CreatePipeline(request)
    assert retried.version == first.version
    assert (await get(clients, "etl")).version_count == 2


async def test_a_request_id_used_when_the_spec_was_already_the_latest_never_moves_the_head_back(
    clients: Clients,
) -> None:
    first = await create_pipeline(clients, "etl", simple(1))
    request = pipeline_pb2.CreatePipelineRequest(
        pipeline=pipeline_pb2.Pipeline(name="etl", spec=simple(1)), request_id="req-latest"
    )
    answered = await clients.pipelines.CreatePipeline(request)  # already the latest: nothing changes
    assert answered.version == first.version
    newer = await create_pipeline(clients, "etl", simple(2))  # someone else moves the head on
    retried = await clients.pipelines.CreatePipeline(request)  # e.g. the first answer was lost
    assert retried.version == first.version
    head = await get(clients, "etl")
    assert head.version == newer.version, "a retry moved the head back to the version it first answered"
    assert head.version_count == 2


async def test_concurrent_requests_with_one_request_id_change_the_pipeline_once(clients: Clients) -> None:
    for attempt in range(5):
        name = f"etl-{attempt}"
        requests = [
            pipeline_pb2.CreatePipelineRequest(
                pipeline=pipeline_pb2.Pipeline(name=name, spec=simple(n)), request_id=f"req-race-{attempt}"
            )
            for n in (1, 2)
        ]
        answers = await asyncio.gather(*(clients.pipelines.CreatePipeline(r) for r in requests), return_exceptions=True)
        # Two different bodies under one id: the first to commit wins, the other is refused
        # as a misuse of the id (AIP-155), never answered with the winner's version.
        won = [a for a in answers if isinstance(a, pipeline_pb2.Pipeline)]
        refused = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
        assert len(won) == 1, answers
        assert len(refused) == 1, answers
        assert refused[0].code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (refused[0].details() or "").startswith(f'request_id: "req-race-{attempt}" was already used')
        head = await get(clients, name)
        assert head.version_count == 1, f"one request id created {head.version_count} versions"
        assert head.version == won[0].version
        # The same body again is a retry: it answers the first result.
        winner = requests[answers.index(won[0])]
        assert (await clients.pipelines.CreatePipeline(winner)).version == won[0].version


async def test_pipelines_list_in_pages_with_filters(clients: Clients) -> None:
    for i in range(7):
        labels = {"team": "data" if i % 2 == 0 else "web"}
        await create_pipeline(clients, f"etl-{i}", simple(1), labels=labels)
        await create_pipeline(clients, f"etl-{i}", simple(2), labels=labels)  # a second version each
    await create_pipeline(clients, "other", simple(1))

    names: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await clients.pipelines.ListPipelines(pipeline_pb2.ListPipelinesRequest(page_size=3, page_token=token))
        names += [p.name.rsplit("/", 1)[1] for p in page.pipelines]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert names == [f"etl-{i}" for i in range(7)] + ["other"]
    assert pages == 3
    listed = await clients.pipelines.ListPipelines(pipeline_pb2.ListPipelinesRequest())
    assert all(p.version_count == 2 for p in listed.pipelines if p.name.endswith(tuple("0123456")))
    assert not any(p.HasField("spec") for p in listed.pipelines)

    data = await clients.pipelines.ListPipelines(pipeline_pb2.ListPipelinesRequest(filter="label.team=data"))
    assert [p.name.rsplit("/", 1)[1] for p in data.pipelines] == ["etl-0", "etl-2", "etl-4", "etl-6"]
    prefixed = await clients.pipelines.ListPipelines(pipeline_pb2.ListPipelinesRequest(filter="name=oth*"))
    assert [p.name.rsplit("/", 1)[1] for p in prefixed.pipelines] == ["other"]
    exact = await clients.pipelines.ListPipelines(pipeline_pb2.ListPipelinesRequest(filter="name=etl-1 label.team=web"))
    assert [p.name.rsplit("/", 1)[1] for p in exact.pipelines] == ["etl-1"]


async def test_versions_list_in_pages_newest_first(clients: Clients) -> None:
    created = [await create_pipeline(clients, "etl", simple(i + 1)) for i in range(5)]
    seen: list[str] = []
    token = ""
    while True:
        page = await clients.pipelines.ListPipelineVersions(
            pipeline_pb2.ListPipelineVersionsRequest(
                name="namespaces/default/pipelines/etl", page_size=2, page_token=token
            )
        )
        seen += [v.version for v in page.versions]
        token = page.next_page_token
        if not token:
            break
    assert seen == [p.version for p in reversed(created)]


async def test_delete_checks_the_etag_and_removes_every_version(
    clients: Clients, api: InProcessApi, store: Store
) -> None:
    await create_pipeline(clients, "etl", simple(1))
    current = await create_pipeline(clients, "etl", simple(2))
    stale_etag = str(int(current.etag) - 1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await clients.pipelines.DeletePipeline(
            pipeline_pb2.DeletePipelineRequest(name="namespaces/default/pipelines/etl", etag=stale_etag)
        )
    assert caught.value.code() == grpc.StatusCode.ABORTED
    assert "changed since you read it" in (caught.value.details() or "")

    await clients.pipelines.DeletePipeline(
        pipeline_pb2.DeletePipelineRequest(name="namespaces/default/pipelines/etl", etag=current.etag)
    )
    assert await store.count(api.keyspace.pipeline_all("default", "etl")) == 0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await get(clients, "etl")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_pipeline_named_like_the_prefix_of_another_is_kept_on_delete(clients: Clients) -> None:
    await create_pipeline(clients, "etl", simple(1))
    await create_pipeline(clients, "etl-2", simple(1))
    await clients.pipelines.DeletePipeline(pipeline_pb2.DeletePipelineRequest(name="namespaces/default/pipelines/etl"))
    assert (await get(clients, "etl-2")).version_count == 1


async def test_labels_and_description_follow_the_latest_create(clients: Clients) -> None:
    spec = pipeline_pb2.PipelineSpec(steps=[step("a")])
    await create_pipeline(clients, "etl", spec, description="first", labels={"tier": "1"})
    updated = await create_pipeline(clients, "etl", spec, description="second", labels={"tier": "2"})
    assert updated.version_count == 1
    got = await get(clients, "etl")
    assert got.description == "second"
    assert dict(got.labels) == {"tier": "2"}
