"""Runs of real pipelines on a real executor: outputs, data handover, DNA caching, ExplainStep.

Each test talks to a real weft-api over gRPC and counts the processes the steps really
started (tests/integration/executor/support.py).
"""

from __future__ import annotations

import json

from tests.integration.executor.support import Harness, duration, states, steps_by_name
from weft.v1 import pipeline_pb2, run_pb2
from weft_core.dna import content_digest

Explanation = run_pb2.StepExplanation


def diamond_steps(h: Harness, left_script: str = "") -> list[pipeline_pb2.Step]:
    """generate 1..size → left (sum) and right (count) → join ("sum count")."""
    return [
        h.step("generate", 'seq 1 "$(cat "$WEFT_INPUTS/size")" > "$WEFT_OUTPUTS/out"', parameters={"size": "size"}),
        h.step(
            "left",
            left_script or 'awk "{s+=\\$1} END {print s}" "$WEFT_INPUTS/in" > "$WEFT_OUTPUTS/out"',
            reads={"in": ("generate", "out")},
        ),
        h.step(
            "right", 'wc -l < "$WEFT_INPUTS/in" | tr -d " " > "$WEFT_OUTPUTS/out"', reads={"in": ("generate", "out")}
        ),
        h.step(
            "join",
            'echo "$(cat "$WEFT_INPUTS/a") $(cat "$WEFT_INPUTS/b")" > "$WEFT_OUTPUTS/out"',
            reads={"a": ("left", "out"), "b": ("right", "out")},
        ),
    ]


async def test_diamond_runs_every_step_once_and_hands_outputs_downstream(harness: Harness) -> None:
    h = harness
    await h.start_executor()
    pipeline = await h.apply("diamond", diamond_steps(h), {"size": "10"})

    run = await h.wait((await h.run(pipeline.name, {"size": "100"})).name)

    assert run.state == run_pb2.Run.STATE_SUCCEEDED, run.message
    assert states(run) == {s: "SUCCEEDED" for s in ("generate", "left", "right", "join")}
    assert await h.output(run, "join") == b"5050 100\n"
    assert h.launches() == {"generate": 1, "left": 1, "right": 1, "join": 1}
    steps = steps_by_name(run)
    # Lineage: the join's outcome names the outcomes its inputs came from.
    assert dict(steps["join"].outcome.input_outcomes) == {"a": steps["left"].dna, "b": steps["right"].dna}
    assert steps["join"].outcome.run == run.name
    assert steps["join"].outcome.executor == "exec-0"
    assert run.HasField("start_time")
    assert run.HasField("end_time")
    # Each step knows when it became ready, which is before its attempt started.
    for record in run.steps:
        assert record.HasField("ready_time"), record.step
        assert record.ready_time.ToNanoseconds() <= record.attempts[0].start_time.ToNanoseconds()
    assert steps["join"].ready_time.ToNanoseconds() >= steps["left"].end_time.ToNanoseconds()
    # Listings read one small record per run: the executor stored the counts as it ended.
    listed = await h.clients.runs.ListRuns(run_pb2.ListRunsRequest(parent="namespaces/default"))
    assert [dict(r.step_counts) for r in listed.runs if r.name == run.name] == [{"SUCCEEDED": 4}]


async def test_hundred_wide_fan_out_and_join(harness: Harness) -> None:
    h = harness
    await h.start_executor(max_parallel=8)
    width = 100
    steps = [h.step("root", 'echo 7 > "$WEFT_OUTPUTS/out"')]
    steps += [
        h.step(
            f"w{i}", f'echo $(( $(cat "$WEFT_INPUTS/in") * {i} )) > "$WEFT_OUTPUTS/out"', reads={"in": ("root", "out")}
        )
        for i in range(width)
    ]
    steps.append(
        h.step(
            "total",
            'cat "$WEFT_INPUTS"/* | awk "{s+=\\$1} END {print s}" > "$WEFT_OUTPUTS/out"',
            reads={f"w{i}": (f"w{i}", "out") for i in range(width)},
        )
    )
    pipeline = await h.apply("fan-out", steps)

    run = await h.wait((await h.run(pipeline.name)).name, timeout=90)

    assert run.state == run_pb2.Run.STATE_SUCCEEDED, run.message
    assert set(states(run).values()) == {"SUCCEEDED"}
    assert await h.output(run, "total") == f"{7 * sum(range(width))}\n".encode()
    assert await h.output(run, "w42") == b"294\n"
    launches = h.launches()
    assert len(launches) == width + 2
    assert set(launches.values()) == {1}


async def test_second_run_is_fully_cached_and_launches_nothing(harness: Harness) -> None:
    h = harness
    executor = await h.start_executor()
    pipeline = await h.apply("diamond", diamond_steps(h), {"size": "10"})
    first = await h.wait((await h.run(pipeline.name)).name)
    assert first.state == run_pb2.Run.STATE_SUCCEEDED, first.message
    launched_before = (sum(h.launches().values()), executor.launches)

    second = await h.wait((await h.run(pipeline.name)).name)

    assert second.state == run_pb2.Run.STATE_SUCCEEDED, second.message
    assert states(second) == {s: "CACHED" for s in ("generate", "left", "right", "join")}
    assert (sum(h.launches().values()), executor.launches) == launched_before == (4, 4)
    assert await h.output(second, "join") == b"55 10\n"
    join = steps_by_name(second)["join"]
    assert join.reused_from_run == first.name
    assert join.outcome.run == first.name
    assert not join.attempts
    explanation = await h.explain(second.name, "join")
    assert explanation.decision == Explanation.DECISION_HIT
    assert explanation.reason.startswith(f"hit: outcome of {first.name} step join, produced 20")


async def test_a_new_parameter_value_reruns_what_reads_it(harness: Harness) -> None:
    h = harness
    await h.start_executor()
    pipeline = await h.apply("diamond", diamond_steps(h), {"size": "10"})
    await h.wait((await h.run(pipeline.name)).name)
    h.clear_launches()

    run = await h.wait((await h.run(pipeline.name, {"size": "4"})).name)

    assert await h.output(run, "join") == b"10 4\n"
    assert h.launches() == {"generate": 1, "left": 1, "right": 1, "join": 1}


async def test_an_edited_step_reruns_only_itself_and_its_downstream(harness: Harness) -> None:
    h = harness
    await h.start_executor()
    pipeline = await h.apply("diamond", diamond_steps(h), {"size": "10"})
    first = await h.wait((await h.run(pipeline.name)).name)
    h.clear_launches()
    edited = await h.apply(
        "diamond",
        diamond_steps(h, left_script='awk "{s+=\\$1*2} END {print s}" "$WEFT_INPUTS/in" > "$WEFT_OUTPUTS/out"'),
        {"size": "10"},
    )
    assert edited.version != first.pipeline_version

    run = await h.wait((await h.run(pipeline.name)).name)

    assert run.pipeline_version == edited.version
    assert states(run) == {"generate": "CACHED", "left": "SUCCEEDED", "right": "CACHED", "join": "SUCCEEDED"}
    assert h.launches() == {"left": 1, "join": 1}
    assert await h.output(run, "join") == b"110 10\n"
    left = await h.explain(run.name, "left")
    assert left.decision == Explanation.DECISION_MISS
    # The miss names what changed since the nearest previous outcome of the step.
    assert left.reason.startswith("miss: command changed (was ")
    assert [c.name for c in left.changes] == ["command"]
    components = {c.name: c.value for c in left.components}
    assert "$1*2" in json.loads(components["command"])[2]


async def test_a_deleted_blob_turns_a_hit_into_a_miss(harness: Harness) -> None:
    h = harness
    await h.start_executor()
    pipeline = await h.apply("diamond", diamond_steps(h), {"size": "10"})
    first = await h.wait((await h.run(pipeline.name)).name)
    gone = steps_by_name(first)["right"].outcome.outputs["out"]
    h.delete_blob(gone)
    h.clear_launches()

    run = await h.wait((await h.run(pipeline.name)).name)

    assert run.state == run_pb2.Run.STATE_SUCCEEDED, run.message
    # `right` ran again and wrote the same content, so `join`'s inputs (and DNA) are unchanged.
    assert states(run) == {"generate": "CACHED", "left": "CACHED", "right": "SUCCEEDED", "join": "CACHED"}
    assert h.launches() == {"right": 1}
    explanation = await h.explain(run.name, "right")
    assert explanation.decision == Explanation.DECISION_MISS
    assert explanation.reason == f"miss: outcome blob {gone} is gone"
    assert await h.blob(gone) == b"10\n"  # stored again


async def test_cache_modes_and_policies_are_explained(harness: Harness) -> None:
    h = harness
    await h.start_executor()
    steps = [
        h.step("plain"),
        h.step("off", cache=pipeline_pb2.CachePolicy(enabled=False)),
        h.step("young", cache=pipeline_pb2.CachePolicy(max_age=duration(0.5))),
        h.step("versioned", cache=pipeline_pb2.CachePolicy(version="1")),
    ]
    pipeline = await h.apply("policies", steps)
    first = await h.wait((await h.run(pipeline.name)).name)
    assert first.state == run_pb2.Run.STATE_SUCCEEDED, first.message
    first_reasons = {s: (await h.explain(first.name, s)).reason for s in ("plain", "off", "young", "versioned")}
    assert first_reasons == {
        "plain": "miss: no outcome with this DNA",
        "off": "miss: cache disabled for step",
        "young": "miss: no outcome with this DNA",
        "versioned": "miss: no outcome with this DNA",
    }

    refreshed = await h.wait((await h.run(pipeline.name, cache_mode=run_pb2.CACHE_MODE_REFRESH)).name)
    assert set(states(refreshed).values()) == {"SUCCEEDED"}
    assert (await h.explain(refreshed.name, "plain")).reason == "miss: cache mode REFRESH"

    import asyncio

    await asyncio.sleep(0.6)  # older than `young`'s max_age of 0.5 s
    again = await h.wait((await h.run(pipeline.name)).name)
    assert states(again) == {"plain": "CACHED", "off": "SUCCEEDED", "young": "SUCCEEDED", "versioned": "CACHED"}
    assert (await h.explain(again.name, "young")).reason == "miss: outcome older than max_age 0.5s"
    # REFRESH stored new outcomes: the hit names the refreshed run.
    assert (await h.explain(again.name, "plain")).reason.startswith(f"hit: outcome of {refreshed.name} step plain, ")

    off = await h.wait((await h.run(pipeline.name, cache_mode=run_pb2.CACHE_MODE_OFF)).name)
    assert set(states(off).values()) == {"SUCCEEDED"}
    assert (await h.explain(off.name, "plain")).reason == "miss: cache mode OFF"
    # OFF stores nothing for later runs: the next hit still names the refreshed run.
    later = await h.wait((await h.run(pipeline.name)).name)
    assert (await h.explain(later.name, "plain")).reason.startswith(f"hit: outcome of {refreshed.name} step plain, ")

    versioned = steps[3]
    versioned.cache.version = "2"
    bumped = await h.apply("policies", steps)
    rerun = await h.wait((await h.run(pipeline.name, version=bumped.version)).name)
    assert states(rerun)["versioned"] == "SUCCEEDED"
    assert states(rerun)["plain"] == "CACHED"


async def test_explanation_lists_the_dna_components(harness: Harness) -> None:
    h = harness
    await h.start_executor()
    step = h.step("s", env={"MODE": "fast"}, literals={"greeting": "hello"}, parameters={"n": "n"})
    pipeline = await h.apply("components", [step], {"n": "3"})
    run = await h.wait((await h.run(pipeline.name)).name)

    explanation = await h.explain(run.name, "s")

    components = [(c.name, c.value) for c in explanation.components]
    names = [name for name, _ in components]
    assert names == [
        "protocol",
        "step",
        "image",
        "command",
        "args",
        "env:LAUNCHES",
        "env:MODE",
        "working_dir",
        "outputs",
        "input:greeting",
        "input:n",
        "cache_version",
    ]
    values = dict(components)
    assert values["image"] == "busybox:1.36"
    assert values["env:MODE"] == "fast"
    assert values["input:greeting"] == content_digest(b"hello")
    assert values["input:n"] == run.parameter_digests["n"]
    assert explanation.dna == steps_by_name(run)["s"].dna
    # The literal input was stored, so the step's lineage can be replayed.
    assert await h.blob(content_digest(b"hello")) == b"hello"


async def test_steps_see_their_environment_and_working_directory(harness: Harness) -> None:
    h = harness
    await h.start_executor()
    script = (
        'env | grep -E "^(WEFT_RUN|WEFT_STEP|WEFT_ATTEMPT|WEFT_NAMESPACE|WEFT_PARAM_INPUT_PATH|MODE)=" | sort '
        '> "$WEFT_OUTPUTS/env"; pwd > "$WEFT_OUTPUTS/pwd"; cat "$WEFT_INPUTS/greeting" > "$WEFT_OUTPUTS/greeting"; '
        'test -n "$TRACEPARENT" && test -n "$HOME" && test -n "$PATH"'
    )
    step = h.step(
        "show",
        script,
        outputs=("env", "pwd", "greeting"),
        env={"MODE": "fast"},
        literals={"greeting": "hi"},
        parameters={"path": "input-path"},
        working_dir="sub/dir",
    )
    pipeline = await h.apply("environment", [step], {"input-path": "/data/x"})
    run = await h.wait((await h.run(pipeline.name)).name)
    assert run.state == run_pb2.Run.STATE_SUCCEEDED, run.message
    run_id = run.name.rsplit("/", 1)[1]

    assert (await h.output(run, "show", "env")).decode().splitlines() == [
        "MODE=fast",
        "WEFT_ATTEMPT=1",
        "WEFT_NAMESPACE=default",
        "WEFT_PARAM_INPUT_PATH=/data/x",
        f"WEFT_RUN={run_id}",
        "WEFT_STEP=show",
    ]
    assert (await h.output(run, "show", "pwd")).decode().strip().endswith(f"default/{run_id}/show/1/work/sub/dir")
    assert await h.output(run, "show", "greeting") == b"hi"


async def test_a_second_namespace_does_not_reuse_the_first_namespaces_outcomes(harness: Harness) -> None:
    # The DNA has no namespace, so the same spec in two namespaces has the same DNA; an
    # outcome (possibly computed with one namespace's secret) must serve only its own.
    h = harness
    executor = await h.start_executor()
    spec = pipeline_pb2.PipelineSpec(steps=[h.step("only")])

    async def run_in(ns: str) -> run_pb2.Run:
        pipeline = pipeline_pb2.Pipeline(name="p", spec=spec)
        request = pipeline_pb2.CreatePipelineRequest(parent=f"namespaces/{ns}", pipeline=pipeline)
        created = await h.clients.pipelines.CreatePipeline(request)
        run = run_pb2.Run(pipeline=created.name)
        started = await h.clients.runs.CreateRun(run_pb2.CreateRunRequest(parent=f"namespaces/{ns}", run=run))
        return await h.wait(started.name)

    first = await run_in("team-a")
    second = await run_in("team-b")
    again = await run_in("team-a")

    assert states(first) == states(second) == {"only": "SUCCEEDED"}
    # Nothing of team-a is compared with: outcomes and explanations stay in their namespace.
    only = await h.explain(second.name, "only")
    assert (only.reason, only.compared_run) == ("miss: no outcome with this DNA", "")
    assert steps_by_name(second)["only"].dna == steps_by_name(first)["only"].dna
    assert states(again) == {"only": "CACHED"}
    assert executor.launches == 2
