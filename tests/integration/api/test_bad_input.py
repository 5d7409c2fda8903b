"""Every bad request is refused with the right code and an actionable message, and writes
nothing: the etcd keyspace and the blob directory are byte-for-byte unchanged."""

# The table of cases reads best one case per line, message included.
# ruff: noqa: E501

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from tests.integration.api.support import (
    Clients,
    create_pipeline,
    create_run,
    diamond,
    files_under,
    keyspace_snapshot,
    simple,
    step,
)
from tests.integration.conftest import InProcessApi
from weft.v1 import pipeline_pb2, run_pb2
from weft_core.store import Store

P = pipeline_pb2
R = run_pb2
CODE = grpc.StatusCode


def pipeline(name: str = "fresh", spec: P.PipelineSpec | None = None, **fields: Any) -> P.CreatePipelineRequest:
    return P.CreatePipelineRequest(pipeline=P.Pipeline(name=name, spec=spec or simple(1), **fields))


def with_steps(*steps: P.Step) -> P.PipelineSpec:
    return P.PipelineSpec(steps=list(steps))


def run(pipeline: str = "etl", run_id: str = "", **parameters: str) -> R.CreateRunRequest:
    return R.CreateRunRequest(run=R.Run(pipeline=pipeline, parameters=parameters), run_id=run_id)


def huge_spec() -> P.PipelineSpec:
    big = step("a")
    big.inputs.add(name="blob", literal="x" * (17 * 1024 * 1024))
    return with_steps(big)


def in_dir(working_dir: str) -> P.Step:
    built = step("a")
    built.container.working_dir = working_dir
    return built


def bad_step() -> P.Step:
    return P.Step(name="a")  # no container at all


CASES: list[tuple[str, str, Callable[[], Any], grpc.StatusCode, str]] = [
    # PipelineService
    ("pipeline-bad-parent", "CreatePipeline", lambda: P.CreatePipelineRequest(parent="ns", pipeline=P.Pipeline(name="x", spec=simple(1))),
     CODE.INVALID_ARGUMENT, 'parent: "ns" is not a namespace name; use "namespaces/NAMESPACE"'),
    ("pipeline-no-name", "CreatePipeline", lambda: pipeline(""), CODE.INVALID_ARGUMENT, "pipeline.name: is required"),
    ("pipeline-bad-name", "CreatePipeline", lambda: pipeline("Not_OK"), CODE.INVALID_ARGUMENT,
     'pipeline.name: "Not_OK" is not a valid name (6 characters); use at most 63 lower-case'),
    ("pipeline-long-name", "CreatePipeline", lambda: pipeline("x" * 64), CODE.INVALID_ARGUMENT, "(64 characters)"),
    ("pipeline-other-namespace", "CreatePipeline",
     lambda: P.CreatePipelineRequest(parent="namespaces/a", pipeline=P.Pipeline(name="namespaces/b/pipelines/x", spec=simple(1))),
     CODE.INVALID_ARGUMENT, 'is in namespace "b" but parent is "a"'),
    ("pipeline-cycle", "CreatePipeline", lambda: pipeline(spec=with_steps(step("a", reads=("b",)), step("b", reads=("a",)))),
     CODE.INVALID_ARGUMENT, "pipeline.spec.steps[0]: the steps form a cycle: a -> b -> a"),
    ("pipeline-unknown-step", "CreatePipeline", lambda: pipeline(spec=with_steps(step("a"), step("b", reads=("zzz",)))),
     CODE.INVALID_ARGUMENT, 'pipeline.spec.steps[1].inputs[0].step_output.step: step "zzz" does not exist; declare it'),
    ("pipeline-unknown-output", "CreatePipeline",
     lambda: pipeline(spec=with_steps(step("a"), P.Step(name="b", container=P.Container(image="i", command=["c"]),
                                                        inputs=[P.Input(name="x", step_output=P.OutputRef(step="a", output="nope"))]))),
     CODE.INVALID_ARGUMENT, 'pipeline.spec.steps[1].inputs[0].step_output.output: step "a" has no output "nope"'),
    ("pipeline-unknown-parameter", "CreatePipeline", lambda: pipeline(spec=with_steps(step("a", parameters=("who",)))),
     CODE.INVALID_ARGUMENT, 'pipeline.spec.steps[0].inputs[0].parameter: parameter "who" does not exist'),
    ("pipeline-duplicate-steps", "CreatePipeline", lambda: pipeline(spec=with_steps(step("a"), step("a"))),
     CODE.INVALID_ARGUMENT, 'pipeline.spec.steps[1].name: step "a" is declared twice (also steps[0]); rename one'),
    ("pipeline-no-image", "CreatePipeline", lambda: pipeline(spec=with_steps(bad_step())),
     CODE.INVALID_ARGUMENT, "pipeline.spec.steps[0].container.image: is required"),
    ("pipeline-too-many-steps", "CreatePipeline", lambda: pipeline(spec=with_steps(*[step(f"s{i}") for i in range(50_001)])),
     CODE.INVALID_ARGUMENT, "pipeline.spec.steps: 50001 steps exceed the limit of 50000"),
    ("pipeline-too-large", "CreatePipeline", lambda: pipeline(spec=huge_spec()),
     CODE.INVALID_ARGUMENT, "pipeline.spec: the spec is 17.0 MiB, over the limit of 16 MiB"),
    ("pipeline-no-steps", "CreatePipeline", lambda: pipeline(spec=P.PipelineSpec(steps=[])),
     CODE.INVALID_ARGUMENT, "pipeline.spec.steps: a pipeline needs at least one step"),
    ("pipeline-bad-label", "CreatePipeline", lambda: pipeline(labels={"ok": "not ok"}),
     CODE.INVALID_ARGUMENT, 'pipeline.labels["ok"]: value "not ok" is not a valid label value'),
    ("pipeline-bad-request-id", "CreatePipeline", lambda: P.CreatePipelineRequest(pipeline=P.Pipeline(name="x", spec=simple(1)), request_id="a b"),
     CODE.INVALID_ARGUMENT, "request_id: use at most 128 letters"),
    ("pipeline-working-dir-escapes", "CreatePipeline", lambda: pipeline(spec=with_steps(in_dir("../../../../elsewhere"))),
     CODE.INVALID_ARGUMENT, 'pipeline.spec.steps[0].container.working_dir: "../../../../elsewhere" climbs out of the step\'s working directory'),
    ("pipeline-working-dir-escapes-midway", "CreatePipeline", lambda: pipeline(spec=with_steps(in_dir("src/../../x"))),
     CODE.INVALID_ARGUMENT, "pipeline.spec.steps[0].container.working_dir: "),
    ("pipeline-working-dir-nul", "CreatePipeline", lambda: pipeline(spec=with_steps(in_dir("a\0b"))),
     CODE.INVALID_ARGUMENT, "pipeline.spec.steps[0].container.working_dir: contains a NUL character"),
    ("pipeline-request-id-reused", "CreatePipeline", lambda: P.CreatePipelineRequest(pipeline=P.Pipeline(name="etl", spec=simple(2)), request_id="pipeline-request"),
     CODE.INVALID_ARGUMENT, 'request_id: "pipeline-request" was already used for a different request'),
    ("pipeline-get-unknown", "GetPipeline", lambda: P.GetPipelineRequest(name="namespaces/default/pipelines/nope"),
     CODE.NOT_FOUND, 'pipeline "namespaces/default/pipelines/nope" does not exist; create it with `weft apply'),
    ("pipeline-get-bad-version", "GetPipeline", lambda: P.GetPipelineRequest(name="namespaces/default/pipelines/etl", version="xyz"),
     CODE.INVALID_ARGUMENT, 'version: "xyz" is not a version'),
    ("pipeline-get-unknown-version", "GetPipeline", lambda: P.GetPipelineRequest(name="namespaces/default/pipelines/etl", version="sha256:" + "0" * 64),
     CODE.NOT_FOUND, 'has no version "sha256:0000'),
    ("pipeline-get-bad-name", "GetPipeline", lambda: P.GetPipelineRequest(name="etl"),
     CODE.INVALID_ARGUMENT, 'name: "etl" is not a pipeline name; use "namespaces/NAMESPACE/pipelines/ID"'),
    ("pipeline-delete-unknown", "DeletePipeline", lambda: P.DeletePipelineRequest(name="namespaces/default/pipelines/nope"),
     CODE.NOT_FOUND, 'pipeline "namespaces/default/pipelines/nope" does not exist'),
    ("pipeline-delete-stale-etag", "DeletePipeline", lambda: P.DeletePipelineRequest(name="namespaces/default/pipelines/etl", etag="1"),
     CODE.ABORTED, "changed since you read it"),
    ("pipeline-list-bad-filter", "ListPipelines", lambda: P.ListPipelinesRequest(filter="team=data"),
     CODE.INVALID_ARGUMENT, 'filter: cannot understand "team=data"'),
    ("pipeline-list-bad-token", "ListPipelines", lambda: P.ListPipelinesRequest(page_token="garbage"),
     CODE.INVALID_ARGUMENT, "page_token: not a token of this listing"),
    ("pipeline-list-negative-size", "ListPipelines", lambda: P.ListPipelinesRequest(page_size=-1),
     CODE.INVALID_ARGUMENT, "page_size: -1 is negative"),
    ("versions-unknown", "ListPipelineVersions", lambda: P.ListPipelineVersionsRequest(name="namespaces/default/pipelines/nope"),
     CODE.NOT_FOUND, "does not exist"),
    # RunService
    ("run-unknown-pipeline", "CreateRun", lambda: run("nope"), CODE.NOT_FOUND,
     'pipeline "namespaces/default/pipelines/nope" does not exist; create it with `weft apply -f pipeline.yaml` or see '
     "the existing ones with `weft pipelines list`"),
    ("run-no-pipeline", "CreateRun", lambda: run(""), CODE.INVALID_ARGUMENT, "run.pipeline: is required"),
    ("run-unknown-parameter", "CreateRun", lambda: run(label="x", colour="red"), CODE.INVALID_ARGUMENT,
     'run.parameters["colour"]: pipeline "etl" has no parameter "colour" (its parameters: size, label)'),
    ("run-missing-parameter", "CreateRun", lambda: run(), CODE.INVALID_ARGUMENT,
     'run.parameters["label"]: parameter "label" is required (it has no default); pass it, e.g. `weft run etl -p label=VALUE`'),
    ("run-huge-parameter", "CreateRun", lambda: run(label="x" * 70_000), CODE.INVALID_ARGUMENT,
     'run.parameters["label"]: the value has 70000 bytes, over the limit of 65536'),
    ("run-bad-run-id", "CreateRun", lambda: run(run_id="UPPER", label="x"), CODE.INVALID_ARGUMENT, 'run_id: "UPPER" is not a valid name'),
    ("run-taken-run-id", "CreateRun", lambda: run(run_id="taken", label="x"), CODE.ALREADY_EXISTS,
     'run_id: run "namespaces/default/runs/taken" already exists'),
    ("run-taken-run-id-new-parameter", "CreateRun", lambda: run(run_id="taken", label="a value no blob holds yet"), CODE.ALREADY_EXISTS,
     'run_id: run "namespaces/default/runs/taken" already exists'),
    ("run-request-id-reused", "CreateRun", lambda: R.CreateRunRequest(run=R.Run(pipeline="etl", parameters={"label": "other"}), request_id="run-request"),
     CODE.INVALID_ARGUMENT, 'request_id: "run-request" was already used for a different request'),
    ("run-request-id-of-a-pipeline", "CreateRun", lambda: R.CreateRunRequest(run=R.Run(pipeline="etl", parameters={"label": "x"}), request_id="pipeline-request"),
     CODE.INVALID_ARGUMENT, 'request_id: "pipeline-request" was already used for a different request'),
    ("run-get-bad-view", "GetRun", lambda: R.GetRunRequest(name="namespaces/default/runs/taken", view=99),  # type: ignore[arg-type]
     CODE.INVALID_ARGUMENT, "view: 99 is not a run view; use RUN_VIEW_BASIC or RUN_VIEW_FULL"),
    ("run-list-bad-view", "ListRuns", lambda: R.ListRunsRequest(view=-1),  # type: ignore[arg-type]
     CODE.INVALID_ARGUMENT, "view: -1 is not a run view"),
    ("run-unknown-version", "CreateRun",
     lambda: R.CreateRunRequest(run=R.Run(pipeline="etl", pipeline_version="abcdef12", parameters={"label": "x"})),
     CODE.NOT_FOUND, 'run.pipeline_version: pipeline "namespaces/default/pipelines/etl" has no version "abcdef12"'),
    ("run-bad-cache-mode", "CreateRun",
     lambda: R.CreateRunRequest(run=R.Run(pipeline="etl", parameters={"label": "x"}, options=R.RunOptions(cache_mode=42))),  # type: ignore[arg-type]
     CODE.INVALID_ARGUMENT, "run.options.cache_mode: unknown cache mode"),
    ("run-get-unknown", "GetRun", lambda: R.GetRunRequest(name="namespaces/default/runs/nope"),
     CODE.NOT_FOUND, 'run "namespaces/default/runs/nope" does not exist; see `weft runs list`'),
    ("run-get-bad-name", "GetRun", lambda: R.GetRunRequest(name="runs/x"), CODE.INVALID_ARGUMENT, "is not a run name"),
    ("run-cancel-unknown", "CancelRun", lambda: R.CancelRunRequest(name="namespaces/default/runs/nope"), CODE.NOT_FOUND, "does not exist"),
    ("run-resume-unknown", "ResumeRun", lambda: R.ResumeRunRequest(name="namespaces/default/runs/nope"), CODE.NOT_FOUND, "does not exist"),
    ("run-explain-unknown", "ExplainStep", lambda: R.ExplainStepRequest(run="namespaces/default/runs/nope", step="a"),
     CODE.NOT_FOUND, "does not exist"),
    ("run-list-bad-state", "ListRuns", lambda: R.ListRunsRequest(filter="state=DONE"), CODE.INVALID_ARGUMENT,
     'filter: "DONE" is not a run state; use one or more of PENDING, RUNNING'),
    ("run-list-bad-term", "ListRuns", lambda: R.ListRunsRequest(filter="owner=me"), CODE.INVALID_ARGUMENT,
     'filter: cannot understand "owner=me"'),
]  # fmt: skip


@pytest.fixture
async def prepared(api: InProcessApi, channel: grpc.aio.Channel) -> Clients:
    clients = Clients.of(channel)
    await create_pipeline(clients, "etl", diamond())
    await clients.runs.CreateRun(
        R.CreateRunRequest(run=R.Run(pipeline="etl", parameters={"label": "x"}), run_id="taken")
    )
    await create_run(clients, "etl", label="y")
    # Request ids a later case reuses with another body.
    await clients.runs.CreateRun(
        R.CreateRunRequest(run=R.Run(pipeline="etl", parameters={"label": "z"}), request_id="run-request")
    )
    await clients.pipelines.CreatePipeline(
        P.CreatePipelineRequest(pipeline=P.Pipeline(name="etl", spec=diamond()), request_id="pipeline-request")
    )
    return clients


async def call(clients: Clients, method: str, request: Any) -> Any:
    for stub in (clients.pipelines, clients.runs):
        if hasattr(stub, method):
            return await getattr(stub, method)(request)
    raise AssertionError(method)


@pytest.mark.parametrize(("case", "method", "request_of", "code", "message"), CASES, ids=[c[0] for c in CASES])
async def test_bad_input_is_refused_and_writes_nothing(
    prepared: Clients,
    api: InProcessApi,
    store: Store,
    case: str,
    method: str,
    request_of: Callable[[], Any],
    code: grpc.StatusCode,
    message: str,
) -> None:
    before = await keyspace_snapshot(store, api.keyspace)
    blobs_before = files_under(api.blob_dir)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(prepared, method, request_of())
    assert caught.value.code() == code, caught.value.details()
    assert message in (caught.value.details() or ""), caught.value.details()
    assert await keyspace_snapshot(store, api.keyspace) == before
    assert files_under(api.blob_dir) == blobs_before


async def test_watch_of_an_unknown_run_is_not_found(prepared: Clients) -> None:
    stream = prepared.runs.WatchRun(R.WatchRunRequest(name="namespaces/default/runs/nope"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        _ = [event async for event in stream]
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
