"""weft_core.spec: names, validation messages, the version digest and the DAG helpers."""

from __future__ import annotations

import time

import pytest
import yaml
from google.protobuf import json_format

from weft.v1 import pipeline_pb2
from weft_core.errors import InvalidArgument
from weft_core.spec import (
    MAX_SPEC_BYTES,
    MAX_STEPS,
    Dag,
    canonical_spec,
    check_dns_label,
    parameter_variable,
    parse_namespace,
    parse_pipeline_name,
    parse_run_name,
    spec_digest,
    validate_pipeline,
    validate_spec,
)
from weft_executor.steps import env_suffix

DIAMOND_YAML = """
parameters:
  - name: size
    default_value: "10"
steps:
  - name: generate
    container: {image: "python:3.11-slim", command: ["python", "-c", "print(1)"], env: [{name: A, value: "1"}]}
    inputs: [{name: size, parameter: size}]
    outputs: [{name: data}]
  - name: left
    container: {image: "python:3.11-slim", command: ["cat"]}
    inputs: [{name: data, step_output: {step: generate, output: data}}]
    outputs: [{name: out}]
  - name: right
    container: {image: "python:3.11-slim", command: ["cat"], resources: {requests: {cpu: 500m, memory: 1Gi}}}
    inputs: [{name: data, step_output: {step: generate, output: data}}]
    outputs: [{name: out}]
  - name: join
    container: {image: "python:3.11-slim", command: ["cat"]}
    inputs:
      - {name: l, step_output: {step: left, output: out}}
      - {name: r, step_output: {step: right, output: out}}
    timeout: 30s
"""

# The same pipeline with every mapping's keys in another order (and map entries swapped).
DIAMOND_YAML_REORDERED = """
steps:
  - container: {command: ["python", "-c", "print(1)"], env: [{value: "1", name: A}], image: "python:3.11-slim"}
    outputs: [{name: data}]
    inputs: [{parameter: size, name: size}]
    name: generate
  - inputs: [{step_output: {output: data, step: generate}, name: data}]
    name: left
    outputs: [{name: out}]
    container: {command: ["cat"], image: "python:3.11-slim"}
  - name: right
    outputs: [{name: out}]
    inputs: [{step_output: {output: data, step: generate}, name: data}]
    container: {resources: {requests: {memory: 1Gi, cpu: 500m}}, command: ["cat"], image: "python:3.11-slim"}
  - timeout: 30s
    inputs:
      - {step_output: {output: out, step: left}, name: l}
      - {name: r, step_output: {output: out, step: right}}
    container: {image: "python:3.11-slim", command: ["cat"]}
    name: join
parameters:
  - default_value: "10"
    name: size
"""


def parse(text: str) -> pipeline_pb2.PipelineSpec:
    return json_format.ParseDict(yaml.safe_load(text), pipeline_pb2.PipelineSpec())


def step(name: str, *, reads: tuple[str, ...] = (), depends_on: tuple[str, ...] = ()) -> pipeline_pb2.Step:
    return pipeline_pb2.Step(
        name=name,
        container=pipeline_pb2.Container(image="busybox", command=["true"]),
        inputs=[
            pipeline_pb2.Input(name=f"in{i}", step_output=pipeline_pb2.OutputRef(step=r, output="out"))
            for i, r in enumerate(reads)
        ],
        outputs=[pipeline_pb2.Output(name="out")],
        depends_on=list(depends_on),
    )


def problem(spec: pipeline_pb2.PipelineSpec) -> str:
    with pytest.raises(InvalidArgument) as caught:
        validate_spec(spec)
    return caught.value.message


def test_reordered_yaml_keys_give_the_same_digest() -> None:
    first, second = parse(DIAMOND_YAML), parse(DIAMOND_YAML_REORDERED)
    assert canonical_spec(first) == canonical_spec(second)
    assert spec_digest(first) == spec_digest(second)
    assert spec_digest(first).startswith("sha256:")
    assert len(spec_digest(first)) == 71


def test_any_change_to_the_spec_changes_the_digest() -> None:
    base = parse(DIAMOND_YAML)
    changed = parse(DIAMOND_YAML)
    changed.steps[1].container.command.append("-")
    default_changed = parse(DIAMOND_YAML)
    default_changed.parameters[0].default_value = "11"
    digests = {spec_digest(base), spec_digest(changed), spec_digest(default_changed)}
    assert len(digests) == 3


def test_the_canonical_encoding_is_sorted_compact_json() -> None:
    encoded = canonical_spec(parse(DIAMOND_YAML)).decode()
    assert encoded.startswith('{"parameters":[{"default_value":"10","name":"size"}],"steps":[{"container":')
    assert " " not in encoded.replace("print(1)", "")  # no whitespace outside values


def test_a_valid_diamond_has_the_expected_dag() -> None:
    dag = validate_spec(parse(DIAMOND_YAML))
    assert dag.roots() == ["generate"]
    assert dag.upstream_of("join") == ("left", "right")
    assert dag.successors("generate") == ("left", "right")
    assert dag.topological_order() == ["generate", "left", "right", "join"]
    assert dag.ready_after("left", {"generate", "left"}) == []
    assert dag.ready_after("right", {"generate", "left", "right"}) == ["join"]


@pytest.mark.parametrize(
    ("name", "ok"),
    [("etl", True), ("a", True), ("a-1", True), ("x" * 63, True), ("x" * 64, False), ("Etl", False),
     ("-a", False), ("a-", False), ("a_b", False), ("", False), ("a.b", False)],
)  # fmt: skip
def test_dns_labels(name: str, ok: bool) -> None:
    if ok:
        assert check_dns_label(name, "f") == name
    else:
        with pytest.raises(InvalidArgument, match=r"^f: .*63 lower-case letters"):
            check_dns_label(name, "f")


def test_resource_names_parse_and_reject_with_the_expected_form() -> None:
    assert parse_namespace("") == "default"
    assert parse_namespace("namespaces/team-a") == "team-a"
    assert parse_pipeline_name("namespaces/ns/pipelines/etl") == ("ns", "etl")
    assert parse_pipeline_name("etl", default_ns="ns") == ("ns", "etl")
    assert parse_run_name("namespaces/ns/runs/etl-abcde") == ("ns", "etl-abcde")
    with pytest.raises(InvalidArgument, match='name: "pipelines/etl" is not a pipeline name; use "namespaces/'):
        parse_pipeline_name("pipelines/etl")
    with pytest.raises(InvalidArgument, match=r"parent: .* is not a namespace name"):
        parse_namespace("ns")
    with pytest.raises(InvalidArgument, match=r"name \(namespace\): .*not a valid name"):
        parse_run_name("namespaces/NS/runs/r")


def test_a_reference_to_a_missing_step_names_the_field_and_the_fix() -> None:
    spec = pipeline_pb2.PipelineSpec(steps=[step("a"), step("b"), step("c"), step("d", reads=("foo",))])
    assert problem(spec) == (
        'pipeline.spec.steps[3].inputs[0].step_output.step: step "foo" does not exist; declare it or fix the reference'
    )


def test_references_to_unknown_outputs_parameters_and_dependencies_are_reported() -> None:
    bad_output = step("b")
    bad_output.inputs.add(name="x", step_output=pipeline_pb2.OutputRef(step="a", output="nope"))
    bad_parameter = step("c")
    bad_parameter.inputs.add(name="p", parameter="missing")
    spec = pipeline_pb2.PipelineSpec(steps=[step("a"), bad_output, bad_parameter, step("d", depends_on=("ghost",))])
    message = problem(spec)
    assert (
        'pipeline.spec.steps[1].inputs[0].step_output.output: step "a" has no output "nope" (its outputs: out)'
        in message
    )
    assert 'pipeline.spec.steps[2].inputs[0].parameter: parameter "missing" does not exist (declared: none)' in message
    assert 'pipeline.spec.steps[3].depends_on[0]: step "ghost" does not exist' in message


def test_duplicates_and_bad_names_are_reported_with_their_paths() -> None:
    spec = pipeline_pb2.PipelineSpec(
        parameters=[
            pipeline_pb2.Parameter(name="p"),
            pipeline_pb2.Parameter(name="p"),
            pipeline_pb2.Parameter(name="1x"),
        ],
        steps=[step("a"), step("a"), step("Bad_Name")],
    )
    message = problem(spec)
    assert 'pipeline.spec.parameters[1].name: parameter "p" is declared twice' in message
    assert 'pipeline.spec.parameters[2].name: "1x" is not a valid name' in message
    assert 'pipeline.spec.steps[1].name: step "a" is declared twice (also steps[0]); rename one' in message
    assert 'pipeline.spec.steps[2].name: "Bad_Name" is not a valid name' in message


@pytest.mark.parametrize(("first", "second"), [("a-b", "a_b"), ("x", "X"), ("in-Path", "IN_path")])
def test_parameter_names_that_reach_steps_as_the_same_variable_are_rejected(first: str, second: str) -> None:
    spec = pipeline_pb2.PipelineSpec(
        parameters=[pipeline_pb2.Parameter(name=first), pipeline_pb2.Parameter(name=second)], steps=[step("a")]
    )
    message = problem(spec)
    variable = parameter_variable(first)
    assert (
        f'pipeline.spec.parameters[1].name: parameter "{second}" and parameter "{first}" both reach steps as '
        f"${variable}"
    ) in message


def test_parameter_variables_are_what_the_executor_sets() -> None:
    # The check is only sound if it predicts the executor's variable names exactly.
    for name in ("a", "a-b", "a_b", "X", "_in-put_2"):
        assert parameter_variable(name) == f"WEFT_PARAM_{env_suffix(name)}"
    assert parameter_variable("input-path") == "WEFT_PARAM_INPUT_PATH"


def test_parameter_names_with_distinct_variables_are_accepted() -> None:
    spec = pipeline_pb2.PipelineSpec(
        parameters=[pipeline_pb2.Parameter(name="a-b"), pipeline_pb2.Parameter(name="ab")], steps=[step("a")]
    )
    validate_spec(spec)


def test_missing_image_and_command_are_reported() -> None:
    spec = pipeline_pb2.PipelineSpec(steps=[pipeline_pb2.Step(name="a")])
    message = problem(spec)
    assert "pipeline.spec.steps[0].container.image: is required" in message
    assert "pipeline.spec.steps[0].container.command: is required" in message


def test_a_cycle_names_its_steps_in_order() -> None:
    spec = pipeline_pb2.PipelineSpec(
        steps=[step("start"), step("a", reads=("start", "c")), step("b", reads=("a",)), step("c", reads=("b",)),
               step("after", reads=("c",))]
    )  # fmt: skip
    assert problem(spec) == (
        "pipeline.spec.steps[1]: the steps form a cycle: a -> b -> c -> a (each step reads from or depends on "
        "the one before it); remove one of these edges"
    )


def test_self_references_are_rejected() -> None:
    message = problem(pipeline_pb2.PipelineSpec(steps=[step("a", reads=("a",), depends_on=("a",))]))
    assert "pipeline.spec.steps[0].inputs[0].step_output.step: a step cannot read its own output" in message
    assert "pipeline.spec.steps[0].depends_on[0]: a step cannot depend on itself" in message


def test_exactly_the_step_limit_is_accepted_and_one_more_rejected() -> None:
    steps = [step(f"s{i}") for i in range(MAX_STEPS)]
    started = time.monotonic()
    dag = validate_spec(pipeline_pb2.PipelineSpec(steps=steps))
    digest = spec_digest(pipeline_pb2.PipelineSpec(steps=steps))
    assert time.monotonic() - started < 5 * MAX_STEPS / 10_000  # linear: 5 s per 10,000 steps, as before
    assert len(dag.roots()) == MAX_STEPS == 50_000
    assert digest
    too_many = pipeline_pb2.PipelineSpec(steps=[*steps, step("one-more")])
    assert problem(too_many) == "pipeline.spec.steps: 50001 steps exceed the limit of 50000; split the pipeline"


def test_a_10000_step_chain_is_validated_and_ordered_quickly() -> None:
    steps = [step("s0")] + [step(f"s{i}", reads=(f"s{i - 1}",)) for i in range(1, 10_000)]
    spec = pipeline_pb2.PipelineSpec(steps=list(reversed(steps)))  # declared last-first
    started = time.monotonic()
    dag = validate_spec(spec)
    order = dag.topological_order()
    assert time.monotonic() - started < 5
    assert order[:3] == ["s0", "s1", "s2"]
    assert order[-1] == "s9999"
    assert dag.roots() == ["s0"]


def test_a_cycle_through_10000_steps_is_found_quickly() -> None:
    steps = [step(f"s{i}", reads=(f"s{(i - 1) % 10_000}",)) for i in range(10_000)]
    started = time.monotonic()
    message = problem(pipeline_pb2.PipelineSpec(steps=steps))
    assert time.monotonic() - started < 5
    assert message.startswith("pipeline.spec.steps[0]: the steps form a cycle: s0 -> s1 -> s2")


def test_a_too_large_spec_is_rejected_with_its_size() -> None:
    big = step("a")
    big.inputs.add(name="blob", literal="x" * (MAX_SPEC_BYTES + 1))
    message = problem(pipeline_pb2.PipelineSpec(steps=[big]))
    assert message.startswith("pipeline.spec: the spec is 16.0 MiB, over the limit of 16 MiB")


def test_an_empty_spec_is_rejected() -> None:
    assert problem(pipeline_pb2.PipelineSpec()) == "pipeline.spec.steps: a pipeline needs at least one step"


def test_policies_and_env_are_checked() -> None:
    bad = step("a")
    bad.retry.max_attempts = -1
    bad.redundancy.replicas = 1000
    bad.timeout.seconds = -5
    bad.container.env.add(name="1BAD", value="x")
    bad.container.env.add(name="OK", value="x")
    bad.container.env.add(name="OK", value="y")
    bad.container.resources.limits["memory"] = "lots"
    message = problem(pipeline_pb2.PipelineSpec(steps=[bad]))
    for expected in (
        "steps[0].container.env[0].name",
        'steps[0].container.env[2].name: "OK" is set twice',
        'steps[0].container.resources.limits["memory"]: "lots" is not a quantity',
    ):
        assert expected in message
    assert message.endswith("(and 1 more)")


def test_pipeline_name_and_labels_are_checked() -> None:
    pipeline = pipeline_pb2.Pipeline(name="Bad Name", spec=pipeline_pb2.PipelineSpec(steps=[step("a")]))
    pipeline.labels["team"] = "not ok!"
    with pytest.raises(InvalidArgument) as caught:
        validate_pipeline(pipeline)
    assert caught.value.message.startswith('pipeline.name: "Bad Name" is not a valid name')
    assert 'pipeline.labels["team"]: value "not ok!" is not a valid label value' in caught.value.message


def test_dag_of_a_wide_fan_out() -> None:
    steps = (
        [step("src")]
        + [step(f"w{i}", reads=("src",)) for i in range(2000)]
        + [step("sink", depends_on=tuple(f"w{i}" for i in range(2000)))]
    )
    dag = Dag.from_spec(pipeline_pb2.PipelineSpec(steps=steps))
    assert len(dag.successors("src")) == 2000
    assert len(dag.upstream_of("sink")) == 2000
    assert dag.topological_order()[-1] == "sink"


def _redundant(**fields: object) -> pipeline_pb2.PipelineSpec:
    spec = pipeline_pb2.PipelineSpec(
        steps=[pipeline_pb2.Step(name="a", container=pipeline_pb2.Container(image="busybox", command=["true"]))]
    )
    redundancy = spec.steps[0].redundancy
    for name, value in fields.items():
        if name == "hedge_after":
            redundancy.hedge_after.FromNanoseconds(int(float(value) * 1e9))  # type: ignore[arg-type]
        else:
            setattr(redundancy, name, value)
    return spec


def test_redundancy_is_accepted_within_its_bounds() -> None:
    majority = pipeline_pb2.Redundancy.SELECT_MAJORITY
    validate_spec(_redundant(replicas=3))
    validate_spec(_redundant(replicas=16, select=majority))
    validate_spec(_redundant(replicas=2, select=majority))
    validate_spec(_redundant(replicas=1, hedge_after=30))
    validate_spec(_redundant(hedge_after=0.5))


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"replicas": 17}, r"steps\[0\]\.redundancy\.replicas: must be between 0 and 16"),
        ({"replicas": -1}, r"steps\[0\]\.redundancy\.replicas: must be between 0 and 16"),
        ({"select": 7}, r"steps\[0\]\.redundancy\.select: must be SELECT_FIRST or SELECT_MAJORITY"),
        ({"replicas": 1, "select": 2}, r"steps\[0\]\.redundancy\.replicas: SELECT_MAJORITY needs at least 2"),
        ({"replicas": 3, "hedge_after": 5}, r"steps\[0\]\.redundancy\.hedge_after: a hedge is the backup"),
        ({"select": 2, "hedge_after": 5}, r"steps\[0\]\.redundancy\.hedge_after: a hedge takes the first success"),
        ({"hedge_after": 0}, r"steps\[0\]\.redundancy\.hedge_after: must be more than 0s"),
        ({"hedge_after": -1}, r"steps\[0\]\.redundancy\.hedge_after: must not be negative"),
    ],
)
def test_bad_redundancy_names_the_field(fields: dict[str, object], expected: str) -> None:
    with pytest.raises(InvalidArgument, match=expected):
        validate_spec(_redundant(**fields))
