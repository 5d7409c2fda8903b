"""The Pipeline builder: what it puts in the spec, and the wiring mistakes it refuses."""

from __future__ import annotations

from datetime import timedelta

import pytest

from weft import Cache, Pipeline, Redundancy, Retry, literal, loads_pipeline, secret
from weft.v1 import pipeline_pb2


def _etl() -> Pipeline:
    p = Pipeline("etl", parameters={"n": "10", "who": None}, description="demo", labels={"team": "data"})
    gen = p.step("gen", image="python:3.11", command=["python3", "-c", "print(1)"], outputs=["data"])
    p.step(
        "sum",
        image="python:3.11",
        command=["sh", "-c", "cat $WEFT_INPUTS/data > $WEFT_OUTPUTS/total"],
        inputs={"data": gen.output("data"), "n": p.param("n"), "k": literal("3")},
        outputs=["total"],
        env={"MODE": "fast", "TOKEN": secret("api", "token")},
        requests={"cpu": "500m"},
        limits={"memory": "1Gi"},
        depends_on=[gen],
        retry=Retry(max_attempts=3, backoff=2, backoff_factor=1.5, max_backoff=timedelta(minutes=1)),
        cache=Cache(version="2", max_age=timedelta(hours=1)),
        timeout=90,
        redundancy=Redundancy(replicas=3, select="majority", hedge_after=30),
    )
    return p


def test_builder_produces_the_spec() -> None:
    spec = _etl().spec()
    assert [(p.name, p.HasField("default_value"), p.default_value) for p in spec.parameters] == [
        ("n", True, "10"),
        ("who", False, ""),
    ]
    gen, total = spec.steps
    assert gen.container.command == ["python3", "-c", "print(1)"]
    assert [o.name for o in gen.outputs] == ["data"]
    assert [(i.name, i.WhichOneof("source")) for i in total.inputs] == [
        ("data", "step_output"),
        ("n", "parameter"),
        ("k", "literal"),
    ]
    assert total.inputs[0].step_output == pipeline_pb2.OutputRef(step="gen", output="data")
    assert total.inputs[2].literal == "3"
    assert [(e.name, e.WhichOneof("source")) for e in total.container.env] == [("MODE", "value"), ("TOKEN", "secret")]
    assert total.container.env[1].secret == pipeline_pb2.SecretKeyRef(name="api", key="token")
    assert dict(total.container.resources.requests) == {"cpu": "500m"}
    assert dict(total.container.resources.limits) == {"memory": "1Gi"}
    assert list(total.depends_on) == ["gen"]
    assert total.retry.max_attempts == 3
    assert total.retry.backoff.seconds == 2
    assert total.retry.max_backoff.seconds == 60
    assert total.retry.backoff_factor == 1.5
    assert total.cache.enabled is True
    assert total.cache.version == "2"
    assert total.cache.max_age.seconds == 3600
    assert not total.cache.HasField("share_in_flight")  # unset means shared
    assert total.timeout.seconds == 90
    assert total.redundancy.replicas == 3
    assert total.redundancy.select == pipeline_pb2.Redundancy.SELECT_MAJORITY
    assert total.redundancy.hedge_after.seconds == 30


def test_a_step_can_opt_out_of_sharing_an_attempt_in_flight() -> None:
    assert Cache(share_in_flight=False).to_proto().share_in_flight is False
    assert Cache(share_in_flight=False).to_proto().HasField("share_in_flight")


def test_unset_policies_stay_unset() -> None:
    p = Pipeline("x")
    p.step("a", image="alpine")
    step = p.spec().steps[0]
    for field in ("cache", "retry", "timeout", "redundancy"):
        assert not step.HasField(field), field


def test_shorthands_for_policies() -> None:
    p = Pipeline("x")
    p.step("a", image="alpine", cache=False, retry=4, redundancy=2, timeout=timedelta(seconds=1.5))
    step = p.spec().steps[0]
    assert step.cache.HasField("enabled")
    assert step.cache.enabled is False
    assert step.retry.max_attempts == 4
    assert step.redundancy.replicas == 2
    assert step.timeout.ToTimedelta() == timedelta(seconds=1.5)


def test_to_proto_carries_name_description_and_labels() -> None:
    message = _etl().to_proto()
    assert message.name == "etl"
    assert message.description == "demo"
    assert dict(message.labels) == {"team": "data"}
    assert len(message.spec.steps) == 2


def test_yaml_round_trip_is_exact() -> None:
    p = _etl()
    text = p.to_yaml()
    assert "stepOutput" in text  # proto-JSON names, as pipeline files use
    assert loads_pipeline(text).to_proto() == p.to_proto()


def test_from_proto_keeps_building() -> None:
    p = Pipeline.from_proto(_etl().to_proto())
    total = p.get_step("sum")
    p.step("report", image="alpine", inputs={"total": total.output("total")})
    assert [s.name for s in p.steps] == ["gen", "sum", "report"]


def test_output_the_producer_does_not_declare() -> None:
    p = Pipeline("x")
    gen = p.step("gen", image="alpine", outputs=["data"])
    with pytest.raises(ValueError, match=r"step 'gen' has no output 'dta' \(declared: data\)"):
        gen.output("dta")


def test_undeclared_parameter() -> None:
    p = Pipeline("x", parameters={"n": "1"})
    with pytest.raises(ValueError, match=r"no parameter 'm' \(declared: n\)"):
        p.param("m")


def test_duplicate_names() -> None:
    p = Pipeline("x", parameters={"n": "1"})
    p.step("a", image="alpine")
    with pytest.raises(ValueError, match="step 'a' is defined twice"):
        p.step("a", image="alpine")
    with pytest.raises(ValueError, match="parameter 'n' is declared twice"):
        p.parameter("n")


def test_references_to_another_pipeline_or_unknown_steps() -> None:
    other = Pipeline("other")
    foreign = other.step("gen", image="alpine", outputs=["data"])
    p = Pipeline("x")
    with pytest.raises(ValueError, match="reads step 'gen', which is not a step of 'x'"):
        p.step("use", image="alpine", inputs={"data": foreign.output("data")})
    with pytest.raises(ValueError, match="depends on 'nope'"):
        p.step("use", image="alpine", depends_on=["nope"])


def test_inputs_must_be_references_or_literals() -> None:
    p = Pipeline("x")
    with pytest.raises(TypeError, match=r"use p.param\(NAME\), other_step.output\(NAME\) or literal\(VALUE\)"):
        p.step("a", image="alpine", inputs={"k": "3"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="literal values are strings"):
        literal(3)  # type: ignore[arg-type]


def test_bad_policy_values() -> None:
    p = Pipeline("x")
    with pytest.raises(ValueError, match="cannot be negative"):
        p.step("a", image="alpine", timeout=-1)
    with pytest.raises(ValueError, match="not one of: first, majority"):
        p.step("b", image="alpine", redundancy=Redundancy(2, select="most"))  # type: ignore[arg-type]
