"""DNA: canonical, sensitive to every component, blind to secret values and to ordering."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from weft.v1 import pipeline_pb2
from weft_core.dna import EXECUTION_PROTOCOL, content_digest, diff_components, step_dna


def base_step() -> pipeline_pb2.Step:
    step = pipeline_pb2.Step(
        name="train",
        container=pipeline_pb2.Container(
            image="python:3.11", command=["python", "-c"], args=["print(1)"], working_dir="src"
        ),
        outputs=[pipeline_pb2.Output(name="model")],
    )
    step.container.env.add(name="MODE", value="fast")
    step.container.env.add(name="TOKEN", secret=pipeline_pb2.SecretKeyRef(name="vault", key="token"))
    step.inputs.add(name="data", parameter="path")
    step.inputs.add(name="config", literal="x=1")
    return step


INPUTS = {"data": content_digest(b"/data"), "config": content_digest(b"x=1")}


def test_dna_is_stable_and_lists_components_in_hashing_order() -> None:
    first = step_dna(base_step(), INPUTS)
    again = step_dna(base_step(), dict(reversed(list(INPUTS.items()))))
    assert first == again
    assert first.digest.startswith("sha256:")
    assert len(first.hex) == 64
    assert [name for name, _ in first.components] == [
        "protocol",
        "step",
        "image",
        "command",
        "args",
        "env:MODE",
        "env:TOKEN",
        "working_dir",
        "outputs",
        "input:config",
        "input:data",
        "cache_version",
    ]
    assert dict(first.components)["protocol"] == EXECUTION_PROTOCOL
    assert [c.name for c in first.as_pb()] == [name for name, _ in first.components]


def test_secret_env_contributes_its_reference_only() -> None:
    dna = step_dna(base_step(), INPUTS)
    assert dict(dna.components)["env:TOKEN"] == "secret:vault/token"
    other_key = base_step()
    other_key.container.env[1].secret.key = "other"
    assert step_dna(other_key, INPUTS).digest != dna.digest


def test_env_order_does_not_matter() -> None:
    reordered = base_step()
    first, second = list(reordered.container.env)
    del reordered.container.env[:]
    reordered.container.env.extend([second, first])
    assert step_dna(reordered, INPUTS).digest == step_dna(base_step(), INPUTS).digest


def _mutations() -> list[tuple[str, pipeline_pb2.Step]]:
    def change(fn: Callable[[pipeline_pb2.Step], object]) -> pipeline_pb2.Step:
        step = base_step()
        fn(step)
        return step

    return [
        ("step", change(lambda s: setattr(s, "name", "train2"))),
        ("image", change(lambda s: setattr(s.container, "image", "python:3.12"))),
        ("command", change(lambda s: s.container.command.append("-u"))),
        ("args", change(lambda s: s.container.args.append("more"))),
        ("env:MODE", change(lambda s: setattr(s.container.env[0], "value", "slow"))),
        ("working_dir", change(lambda s: setattr(s.container, "working_dir", "other"))),
        ("outputs", change(lambda s: s.outputs.add(name="metrics"))),
        ("cache_version", change(lambda s: setattr(s.cache, "version", "2"))),
    ]


@pytest.mark.parametrize(("component", "step"), _mutations(), ids=[name for name, _ in _mutations()])
def test_every_component_changes_the_dna(component: str, step: pipeline_pb2.Step) -> None:
    before = step_dna(base_step(), INPUTS)
    after = step_dna(step, INPUTS)
    assert after.digest != before.digest
    assert component in [name for name, _, _ in diff_components(before.components, after.components)]


def test_input_content_changes_the_dna_and_command_boundaries_are_kept() -> None:
    before = step_dna(base_step(), INPUTS)
    after = step_dna(base_step(), {**INPUTS, "data": content_digest(b"/other")})
    assert [name for name, _, _ in diff_components(before.components, after.components)] == ["input:data"]
    joined, split = base_step(), base_step()
    joined.container.args[:] = ["a b"]
    split.container.args[:] = ["a", "b"]
    assert step_dna(joined, INPUTS).digest != step_dna(split, INPUTS).digest


def test_resources_count_only_when_declared_result_changing() -> None:
    gpu = base_step()
    gpu.container.resources.limits["nvidia.com/gpu"] = "1"
    gpu.container.resources.requests["cpu"] = "4"
    assert step_dna(gpu, INPUTS).digest == step_dna(base_step(), INPUTS).digest
    declared = step_dna(gpu, INPUTS, result_resources=["nvidia.com/gpu"])
    assert dict(declared.components)["resource:limits.nvidia.com/gpu"] == "1"
    assert declared.digest != step_dna(base_step(), INPUTS, result_resources=["nvidia.com/gpu"]).digest


def test_a_missing_input_digest_is_an_error() -> None:
    with pytest.raises(ValueError, match="config"):
        step_dna(base_step(), {"data": INPUTS["data"]})
