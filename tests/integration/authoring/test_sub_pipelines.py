"""Pipelines used as steps: expansion at CreatePipeline, validation, reuse across parents.

A real weft-api expands `Step.pipeline` into the used version's steps; a real executor
runs them, and the launch file counts the processes that really started (a step shared
by two parent pipelines must start once).
"""

from __future__ import annotations

import grpc
import pytest

import weft
from tests.integration.api.support import keyspace_snapshot
from tests.integration.executor.support import Harness, states, steps_by_name
from weft.v1 import pipeline_pb2, run_pb2

P = pipeline_pb2
CODE = grpc.StatusCode


async def create(h: Harness, pipeline: P.Pipeline) -> P.Pipeline:
    created: P.Pipeline = await h.clients.pipelines.CreatePipeline(P.CreatePipelineRequest(pipeline=pipeline))
    return created


async def normalise(h: Harness) -> P.Pipeline:
    """`normalise`: clean (upper-cases its `raw` parameter) → dedupe (sorts unique lines)."""
    spec = P.PipelineSpec(
        steps=[
            h.step("clean", 'tr a-z A-Z < "$WEFT_INPUTS/raw" > "$WEFT_OUTPUTS/out"', parameters={"raw": "raw"}),
            h.step("dedupe", 'sort -u "$WEFT_INPUTS/in" > "$WEFT_OUTPUTS/out"', reads={"in": ("clean", "out")}),
        ]
    )
    spec.parameters.add(name="raw", default_value="b\na\nb\n")
    spec.parameters.add(name="unused", default_value="x")
    return await create(h, P.Pipeline(name="normalise", spec=spec))


def parent(h: Harness, name: str, version: str, **inputs: str) -> P.Pipeline:
    """`name`: uses normalise (its `raw` fed by the literal inputs), then counts its lines."""
    use = P.Step(name="normalise", pipeline=P.PipelineRef(name="normalise", version=version))
    for key, value in inputs.items():
        use.inputs.add(name=key, literal=value)
    count = h.step("count", 'wc -l < "$WEFT_INPUTS/in" | tr -d " " > "$WEFT_OUTPUTS/out"', depends_on=["normalise"])
    count.inputs.add(name="in", step_output=P.OutputRef(step="normalise.dedupe", output="out"))
    return P.Pipeline(name=name, spec=P.PipelineSpec(steps=[use, count]))


async def test_a_used_pipeline_expands_into_prefixed_steps_and_records_its_version(harness: Harness) -> None:
    h = harness
    used = await normalise(h)

    created = await create(h, parent(h, "etl-a", used.version, raw="z\ny\nz\n"))

    steps = {s.name: s for s in created.spec.steps}
    assert list(steps) == ["normalise.clean", "normalise.dedupe", "count"]
    assert steps["normalise.clean"].inputs[0].literal == "z\ny\nz\n"  # the parameter, mapped
    assert steps["normalise.dedupe"].inputs[0].step_output.step == "normalise.clean"
    # A depends_on on the using step waits for every one of its steps.
    assert list(steps["count"].depends_on) == ["normalise.clean", "normalise.dedupe"]
    assert [(u.step, u.pipeline.name, u.pipeline.version) for u in created.spec.uses] == [
        ("normalise", "normalise", used.version)
    ]
    stored: P.Pipeline = await h.clients.pipelines.GetPipeline(P.GetPipelineRequest(name=created.name))
    assert stored.spec == created.spec
    assert stored.version == created.version
    # The same request again is the same version: expansion is deterministic.
    again = await create(h, parent(h, "etl-a", used.version, raw="z\ny\nz\n"))
    assert again.version == created.version
    # So is re-applying the stored, expanded spec.
    reapplied = await create(h, P.Pipeline(name="etl-a", spec=stored.spec))
    assert reapplied.version == created.version


async def test_a_pipeline_used_by_two_parents_computes_its_steps_once(harness: Harness) -> None:
    h = harness
    await h.start_executor()
    used = await normalise(h)
    # One parent written with the SDK builder, the other as a message.
    with weft.Pipeline("etl-a") as a:
        sub = a.use("normalise", version=used.version, inputs={"raw": weft.literal("q\np\nq\n")})
        a.step(
            "first",
            image="busybox:1.36",
            command=["sh", "-c", 'head -n1 "$WEFT_INPUTS/in" > "$WEFT_OUTPUTS/out"'],
            inputs={"in": sub.output("dedupe", "out")},
            outputs=["out"],
        )
    created_a = await create(h, a.to_proto())
    created_b = await create(h, parent(h, "etl-b", used.version[:19], raw="q\np\nq\n"))
    assert created_b.spec.uses[0].pipeline.version == used.version  # a prefix pins the full digest

    run_a = await h.wait((await h.run(created_a.name)).name)
    run_b = await h.wait((await h.run(created_b.name)).name)

    assert run_a.state == run_pb2.Run.STATE_SUCCEEDED, run_a.message
    assert run_b.state == run_pb2.Run.STATE_SUCCEEDED, run_b.message
    assert states(run_b) == {"normalise.clean": "CACHED", "normalise.dedupe": "CACHED", "count": "SUCCEEDED"}
    assert h.launches() == {"normalise.clean": 1, "normalise.dedupe": 1, "count": 1}
    assert await h.output(run_a, "first") == b"P\n"
    assert await h.output(run_b, "count") == b"2\n"
    # Lineage and explain work on expanded steps like on any other.
    b_steps, a_steps = steps_by_name(run_b), steps_by_name(run_a)
    assert b_steps["normalise.dedupe"].dna == a_steps["normalise.dedupe"].dna
    assert dict(b_steps["count"].outcome.input_outcomes) == {"in": a_steps["normalise.dedupe"].dna}
    explanation = await h.explain(run_b.name, "normalise.clean")
    assert explanation.dna == a_steps["normalise.clean"].dna


async def test_a_cycle_through_pipelines_is_refused_with_its_path(harness: Harness) -> None:
    h = harness
    leaf = await create(h, P.Pipeline(name="leaf", spec=P.PipelineSpec(steps=[h.step("only")])))
    mid = await create(
        h,
        P.Pipeline(
            name="mid",
            spec=P.PipelineSpec(steps=[P.Step(name="leaf", pipeline=P.PipelineRef(name="leaf", version=leaf.version))]),
        ),
    )
    top = await create(
        h,
        P.Pipeline(
            name="top",
            spec=P.PipelineSpec(steps=[P.Step(name="inner", pipeline=P.PipelineRef(name="mid", version=mid.version))]),
        ),
    )
    assert [u.step for u in top.spec.uses] == ["inner", "inner.leaf"]
    assert [s.name for s in top.spec.steps] == ["inner.leaf.only"]

    cyclic = P.Pipeline(
        name="leaf",
        spec=P.PipelineSpec(steps=[P.Step(name="up", pipeline=P.PipelineRef(name="top", version=top.version))]),
    )
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await create(h, cyclic)
    assert error.value.code() == CODE.INVALID_ARGUMENT
    assert "the pipelines form a cycle: leaf -> top -> mid -> leaf" in str(error.value.details())

    itself = P.Pipeline(
        name="leaf",
        spec=P.PipelineSpec(steps=[P.Step(name="me", pipeline=P.PipelineRef(name="leaf", version=leaf.version))]),
    )
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await create(h, itself)
    assert "the pipelines form a cycle: leaf -> leaf" in str(error.value.details())


async def test_a_pinned_version_that_no_longer_exists_is_not_found_and_writes_nothing(harness: Harness) -> None:
    h = harness
    used = await normalise(h)
    await h.clients.pipelines.DeletePipeline(P.DeletePipelineRequest(name=used.name))
    before = await keyspace_snapshot(h.store, h.keyspace)

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await create(h, parent(h, "etl-a", used.version))

    assert error.value.code() == CODE.NOT_FOUND
    details = str(error.value.details())
    assert f'pipeline.spec.steps[0].pipeline: cannot use pipeline "normalise" at version "{used.version}"' in details
    assert await keyspace_snapshot(h.store, h.keyspace) == before


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (lambda s: s.inputs.add(name="rwa", literal="x"), "pipeline.spec.steps[0].inputs[0].name",
         'pipeline "normalise" has no parameter "rwa" (its parameters: raw, unused)'),
        (lambda s: s.outputs.add(name="out"), "pipeline.spec.steps[0].outputs",
         "a step that uses a pipeline has no outputs of its own"),
        (lambda s: s.container.CopyFrom(P.Container(image="x", command=["true"])), "pipeline.spec.steps[0].container",
         "a step that uses a pipeline has no container of its own"),
        (lambda s: s.pipeline.ClearField("version"), "pipeline.spec.steps[0].pipeline.version",
         "is required: pin the version to use"),
    ],
)  # fmt: skip
async def test_a_wrong_use_is_refused_naming_the_field(
    harness: Harness, change: object, field: str, message: str
) -> None:
    h = harness
    used = await normalise(h)
    request = parent(h, "etl-a", used.version)
    change(request.spec.steps[0])  # type: ignore[operator]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await create(h, request)
    assert error.value.code() == CODE.INVALID_ARGUMENT
    assert f"{field}: {message}" in str(error.value.details())


async def test_required_parameters_must_be_mapped_and_steps_are_read_by_their_full_name(harness: Harness) -> None:
    h = harness
    spec = P.PipelineSpec(steps=[h.step("clean", parameters={"raw": "raw"})])
    spec.parameters.add(name="raw")
    used = await create(h, P.Pipeline(name="needs", spec=spec))
    use = P.Step(name="needs", pipeline=P.PipelineRef(name="needs", version=used.version))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await create(h, P.Pipeline(name="etl-a", spec=P.PipelineSpec(steps=[use])))
    assert 'parameter "raw" of pipeline "needs" has no default; add an input named "raw"' in str(error.value.details())

    use.inputs.add(name="raw", literal="x")
    reader = h.step("read")
    reader.inputs.add(name="in", step_output=P.OutputRef(step="needs", output="out"))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await create(h, P.Pipeline(name="etl-a", spec=P.PipelineSpec(steps=[use, reader])))
    assert '"needs" is a used pipeline, not a step; read one of its steps\' outputs, e.g. {step: "needs.clean"' in str(
        error.value.details()
    )


async def test_a_dotted_step_name_is_only_for_used_pipelines(harness: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await create(harness, P.Pipeline(name="etl-a", spec=P.PipelineSpec(steps=[harness.step("a.b")])))
    assert error.value.code() == CODE.INVALID_ARGUMENT
    assert "pipeline.spec.steps[0].name: \"a.b\" has a '.', which only the steps of a used pipeline have" in str(
        error.value.details()
    )


async def test_the_yaml_form_uses_a_pipeline(harness: Harness) -> None:
    h = harness
    used = await normalise(h)
    text = f"""
name: from-yaml
spec:
  steps:
    - name: normalise
      pipeline: {{name: normalise, version: "{used.version}"}}
      inputs:
        - {{name: raw, literal: "c\\n"}}
"""
    created = await create(h, weft.loads_pipeline(text).to_proto())
    assert [s.name for s in created.spec.steps] == ["normalise.clean", "normalise.dedupe"]
    assert created.spec.uses[0].pipeline.version == used.version
