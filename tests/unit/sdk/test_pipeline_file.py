"""Pipeline files: the examples load, both key spellings work, and every mistake is named with its place and fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from weft import load_pipeline, loads_pipeline
from weft.errors import PipelineFileError, WeftError

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "etl"


def test_the_etl_example_has_a_fan_out_and_a_join() -> None:
    p = load_pipeline(EXAMPLES / "pipeline.yaml")
    spec = p.spec()
    assert p.name == "etl"
    assert [s.name for s in spec.steps] == [
        "generate",
        "transform-0",
        "transform-1",
        "transform-2",
        "aggregate",
        "report",
    ]
    assert {x.name: x.default_value for x in spec.parameters} == {"rows": "1000", "seed": "7"}
    transforms = [s for s in spec.steps if s.name.startswith("transform-")]
    for index, step in enumerate(transforms):
        assert [i.step_output.step for i in step.inputs if i.HasField("step_output")] == ["generate"]
        assert [i.literal for i in step.inputs if i.HasField("literal")] == [str(index)]
        assert step.container.image == "python:3.11-slim"
    aggregate = spec.steps[4]
    assert sorted(i.step_output.step for i in aggregate.inputs) == ["transform-0", "transform-1", "transform-2"]


def test_the_edited_example_differs_in_one_step_only() -> None:
    # The demo's "only the edited step and its downstream re-ran" depends on this.
    original = load_pipeline(EXAMPLES / "pipeline.yaml").spec()
    edited = load_pipeline(EXAMPLES / "pipeline_edited.yaml").spec()
    assert original.parameters == edited.parameters
    changed = [a.name for a, b in zip(original.steps, edited.steps, strict=True) if a != b]
    assert changed == ["transform-1"]
    a, b = original.steps[2], edited.steps[2]
    assert a.inputs == b.inputs
    assert a.outputs == b.outputs
    assert a.container.command != b.container.command


def test_snake_case_and_camel_case_keys_are_the_same() -> None:
    camel = """
name: x
spec:
  parameters: [{name: n, defaultValue: "1"}]
  steps:
    - {name: a, container: {image: alpine, workingDir: /w}, outputs: [{name: o}], retry: {maxAttempts: 2}}
    - {name: b, container: {image: alpine}, inputs: [{name: i, stepOutput: {step: a, output: o}}], dependsOn: [a]}
"""
    snake = camel.replace("defaultValue", "default_value").replace("workingDir", "working_dir")
    snake = snake.replace("maxAttempts", "max_attempts").replace("stepOutput", "step_output")
    snake = snake.replace("dependsOn", "depends_on")
    assert snake != camel
    assert loads_pipeline(camel).to_proto() == loads_pipeline(snake).to_proto()


def test_a_bare_spec_with_the_name_given() -> None:
    p = loads_pipeline("steps: [{name: a, container: {image: alpine}}]", name="bare")
    assert p.name == "bare"
    assert [s.name for s in p.steps] == ["a"]


def test_the_name_argument_overrides_the_file() -> None:
    assert loads_pipeline("name: a\nspec: {}", name="b").name == "b"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\nspec:\n  steps:\n  - name: a\n    contianer: {}\n",
         "f.yaml: spec.steps[0].contianer: unknown field 'contianer'; did you mean 'container'?"),
        ("name: x\nspec:\n  steps:\n  - name: a\n    inputs: [{name: k, literal: 3}]\n",
         'f.yaml: spec.steps[0].inputs[0].literal: expected a string, got the number 3; quote it: "3"'),
        ("name: x\nspec:\n  steps:\n  - name: a\n    inputs: [{name: k, literal: yes}]\n",
         'f.yaml: spec.steps[0].inputs[0].literal: expected a string, got the boolean true; quote it: "true"'),
        ("name: x\nspec:\n  steps:\n  - name: a\n    timeout: 30\n",
         'f.yaml: spec.steps[0].timeout: expected a duration in seconds like "30s"'),
        ("name: x\nspec:\n  steps:\n  - name: a\n    timeout: 5m\n",
         'f.yaml: spec.steps[0].timeout: expected a duration in seconds like "30s" or "1.5s", got the string \'5m\''),
        ("name: x\nspec: {steps: [{name: a, inputs: [{name: k, literal: '3', parameter: n}]}]}",
         "f.yaml: spec.steps[0].inputs[0].parameter: `literal` is already given"),
        ("name: x\nspec:\n  steps:\n  - name: a\n    redundancy: {select: MAJORITY}\n",
         "f.yaml: spec.steps[0].redundancy.select: 'MAJORITY' is not one of: SELECT_UNSPECIFIED, SELECT_FIRST, "
         "SELECT_MAJORITY; did you mean 'SELECT_MAJORITY'?"),
        ("name: x\nspec:\n  steps:\n  - name: a\n    retry: {maxAttempts: two}\n",
         "f.yaml: spec.steps[0].retry.maxAttempts: expected a whole number, got the string 'two'"),
        ("name: x\nspec:\n  steps:\n  - name: a\n    cache: {enabled: 'no'}\n",
         "f.yaml: spec.steps[0].cache.enabled: expected true or false, got the string 'no'"),
        ("name: x\nspec:\n  steps: {name: a}\n", "f.yaml: spec.steps: expected a list, got a mapping"),
        ("name: x\nspec:\n  steps: [a]\n", "f.yaml: spec.steps[0]: expected a mapping (a Step), got the string 'a'"),
        ("name: x\nspec:\n  steps:\n  - name: a\n    container: {resources: {limits: {cpu: 2}}}\n",
         "f.yaml: spec.steps[0].container.resources.limits.cpu: expected a string, got the number 2"),
        ("spec: {}", "f.yaml: no pipeline name; add `name: <pipeline>` at the top"),
        ("name: x\nnmae: y\nspec: {}", "f.yaml: nmae: unknown key 'nmae'; did you mean 'name'?"),
        ("name: x\n", "f.yaml: no `spec`; add `spec: {parameters: [...], steps: [...]}`"),
        ("- a\n- b\n", "f.yaml: expected a mapping with `name` and `spec` at the top, got a list"),
        ("a: [", "f.yaml: line 1, column 5: not valid YAML"),
        ("name: x\nlabels: {n: 1}\nspec: {}", 'f.yaml: labels: expected a mapping of strings (quote numbers: "1")'),
    ],
)  # fmt: skip
def test_mistakes_are_named_with_their_place(text: str, message: str) -> None:
    with pytest.raises(PipelineFileError) as caught:
        loads_pipeline(text, source="f.yaml")
    assert str(caught.value).startswith(message), str(caught.value)
    assert isinstance(caught.value, WeftError)


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PipelineFileError, match=r"nope.yaml: no such file"):
        load_pipeline(tmp_path / "nope.yaml")


def test_an_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PipelineFileError, match=r"bin\.yaml: cannot read it"):
        load_pipeline(path)
