"""Provenance on real runs: every miss explained against the nearest previous outcome, and
DiffRuns naming root causes, the steps they changed, and nondeterministic steps.

Real api, real executor, real processes (tests/integration/executor/support.py); each
test builds its runs and asserts the changes it made itself.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from tests.integration.executor.support import Harness, steps_by_name
from weft import AsyncClient
from weft.v1 import pipeline_pb2, run_pb2

Explanation = run_pb2.StepExplanation
WEFT = str(Path(sys.executable).parent / "weft")
StepDiff = run_pb2.StepDiff


def _command(step: pipeline_pb2.Step) -> str:
    return json.dumps(list(step.container.command), separators=(",", ":"))


def chain(h: Harness, report_script: str = 'cat "$WEFT_INPUTS/in" > "$WEFT_OUTPUTS/out"') -> list[pipeline_pb2.Step]:
    """generate (reads the seed parameter) → middle → report."""
    return [
        h.step("generate", 'echo "seed $(cat "$WEFT_INPUTS/seed")" > "$WEFT_OUTPUTS/out"', parameters={"seed": "seed"}),
        h.step("middle", 'tr a-z A-Z < "$WEFT_INPUTS/in" > "$WEFT_OUTPUTS/out"', reads={"in": ("generate", "out")}),
        h.step("report", report_script, reads={"in": ("middle", "out")}),
    ]


async def diff(h: Harness, a: str, b: str) -> dict[str, run_pb2.StepDiff]:
    response = await h.clients.runs.DiffRuns(run_pb2.DiffRunsRequest(run_a=a, run_b=b))
    return {d.step: d for d in response.steps}


async def test_a_miss_from_an_edited_command_names_the_command_with_both_values(harness: Harness) -> None:
    h = harness
    await h.start_executor()
    before = chain(h)
    pipeline = await h.apply("edits", before, {"seed": "1"})
    first = await h.wait((await h.run(pipeline.name)).name)
    after = chain(h, report_script='cat "$WEFT_INPUTS/in" "$WEFT_INPUTS/in" > "$WEFT_OUTPUTS/out"')
    edited = await h.apply("edits", after, {"seed": "1"})
    second = await h.wait((await h.run(edited.name)).name)

    report = await h.explain(second.name, "report")

    assert report.decision == Explanation.DECISION_MISS
    assert report.compared_run == first.name
    assert report.compared_outcome.dna == steps_by_name(first)["report"].outcome.dna
    assert [(c.name, c.old_value, c.new_value) for c in report.changes] == [
        ("command", _command(before[2]), _command(after[2]))
    ]
    assert report.reason.startswith("miss: command changed (was ")
    assert report.reason.endswith(f"(compared with {first.name} step report)")
    # The unchanged upstream was reused: its hit names the run, the step and when.
    generate = await h.explain(second.name, "generate")
    assert generate.decision == Explanation.DECISION_HIT
    assert generate.reason.startswith(f"hit: outcome of {first.name} step generate, produced 20")


async def test_a_miss_from_a_parameter_two_steps_upstream_traces_it_to_the_parameter(harness: Harness) -> None:
    h = harness
    await h.start_executor()
    pipeline = await h.apply("seeded", chain(h), {"seed": "1"})
    first = await h.wait((await h.run(pipeline.name, {"seed": "1"})).name)
    second = await h.wait((await h.run(pipeline.name, {"seed": "2"})).name)
    steps_first, steps_second = steps_by_name(first), steps_by_name(second)

    report = await h.explain(second.name, "report")

    assert report.decision == Explanation.DECISION_MISS
    assert report.compared_run == first.name
    [change] = report.changes
    assert change.name == "input:in"
    assert change.old_value == steps_first["middle"].outcome.outputs["out"]
    assert change.new_value == steps_second["middle"].outcome.outputs["out"]
    assert change.upstream_step == "middle"
    assert change.cause == (
        "upstream middle re-ran: input in changed (upstream generate re-ran: "
        "input seed changed (parameter seed was 1, now 2))"
    )
    assert report.reason.startswith("miss: input in changed (upstream middle re-ran:")
    generate = await h.explain(second.name, "generate")
    [seed] = generate.changes
    assert (seed.name, seed.cause, seed.upstream_step) == ("input:seed", "parameter seed was 1, now 2", "")


async def test_a_miss_from_a_bumped_cache_version_says_old_and_new_version(harness: Harness) -> None:
    h = harness
    await h.start_executor()
    versioned = [h.step("model", cache=pipeline_pb2.CachePolicy(version="2"))]
    pipeline = await h.apply("versioned", versioned)
    first = await h.wait((await h.run(pipeline.name)).name)
    bumped = await h.apply("versioned", [h.step("model", cache=pipeline_pb2.CachePolicy(version="3"))])
    second = await h.wait((await h.run(bumped.name)).name)

    model = await h.explain(second.name, "model")

    assert model.decision == Explanation.DECISION_MISS
    assert [(c.name, c.old_value, c.new_value) for c in model.changes] == [("cache_version", "2", "3")]
    assert model.reason == f"miss: cache version 2 → 3 (compared with {first.name} step model)"


async def test_a_miss_falls_back_to_a_step_of_the_same_name_in_another_pipeline(harness: Harness) -> None:
    h = harness
    await h.start_executor()
    other = await h.apply("other", [h.step("shared", 'echo one > "$WEFT_OUTPUTS/out"')])
    first = await h.wait((await h.run(other.name)).name)
    mine = await h.apply("mine", [h.step("shared", 'echo two > "$WEFT_OUTPUTS/out"')])
    second = await h.wait((await h.run(mine.name)).name)

    shared = await h.explain(second.name, "shared")

    assert shared.compared_run == first.name
    assert [c.name for c in shared.changes] == ["command"]


async def test_a_first_miss_has_nothing_to_compare_with(harness: Harness) -> None:
    h = harness
    await h.start_executor()
    pipeline = await h.apply("lonely", [h.step("alone")])
    run = await h.wait((await h.run(pipeline.name)).name)

    alone = await h.explain(run.name, "alone")

    assert alone.reason == "miss: no outcome with this DNA"
    assert not alone.compared_run
    assert not alone.changes


async def test_diff_names_the_edited_step_as_root_cause_and_its_downstream_as_caused_by_it(harness: Harness) -> None:
    h = harness
    await h.start_executor()
    steps = [
        *chain(h),
        h.step("side", 'wc -c < "$WEFT_INPUTS/in" > "$WEFT_OUTPUTS/out"', reads={"in": ("generate", "out")}),
    ]
    pipeline = await h.apply("diffed", steps, {"seed": "1"})
    first = await h.wait((await h.run(pipeline.name)).name)
    steps[1] = h.step(
        "middle", 'tr a-z A-Z < "$WEFT_INPUTS/in" | rev > "$WEFT_OUTPUTS/out"', reads={"in": ("generate", "out")}
    )
    steps.append(h.step("extra"))
    edited = await h.apply("diffed", steps, {"seed": "1"})
    second = await h.wait((await h.run(edited.name)).name)

    response = await h.clients.runs.DiffRuns(run_pb2.DiffRunsRequest(run_a=first.name, run_b=second.name))

    kinds = [(d.step, StepDiff.Kind.Name(d.kind)) for d in response.steps]
    assert kinds == [
        ("middle", "KIND_ROOT_CAUSE"),
        ("report", "KIND_INPUT_CHANGED"),
        ("extra", "KIND_ADDED"),
        ("generate", "KIND_SAME"),
        ("side", "KIND_SAME"),
    ]
    by_step = {d.step: d for d in response.steps}
    assert [c.name for c in by_step["middle"].changes] == ["command"]
    assert by_step["middle"].outputs_differ
    assert list(by_step["report"].caused_by) == ["middle"]
    assert by_step["report"].message == "input in changed (upstream middle re-ran)"
    assert by_step["report"].dna_a != by_step["report"].dna_b
    assert not by_step["generate"].outputs_differ

    # Diffed the other way round, the added step is a removed one.
    backwards = await diff(h, second.name, first.name)
    assert backwards["extra"].kind == StepDiff.KIND_REMOVED


async def test_diff_flags_a_step_that_writes_random_bytes_as_nondeterministic(harness: Harness) -> None:
    h = harness
    await h.start_executor()
    steps = [
        h.step("dice", 'head -c 16 /dev/urandom > "$WEFT_OUTPUTS/out"'),
        h.step("count", 'wc -c < "$WEFT_INPUTS/in" > "$WEFT_OUTPUTS/out"', reads={"in": ("dice", "out")}),
        h.step("steady"),
    ]
    pipeline = await h.apply("dice", steps)
    first = await h.wait((await h.run(pipeline.name, cache_mode=run_pb2.CACHE_MODE_OFF)).name)
    second = await h.wait((await h.run(pipeline.name, cache_mode=run_pb2.CACHE_MODE_OFF)).name)

    diffs = await diff(h, first.name, second.name)

    assert diffs["dice"].kind == StepDiff.KIND_NONDETERMINISTIC
    assert diffs["dice"].outputs_differ
    assert diffs["dice"].dna_a == diffs["dice"].dna_b
    # count's input changed only because dice is nondeterministic; its output did not.
    assert diffs["count"].kind == StepDiff.KIND_INPUT_CHANGED
    assert list(diffs["count"].caused_by) == ["dice"]
    assert not diffs["count"].outputs_differ
    assert diffs["steady"].kind == StepDiff.KIND_SAME


async def test_replay_reruns_everything_and_flags_exactly_the_nondeterministic_step(harness: Harness) -> None:
    h = harness
    await h.start_executor()
    steps = [
        h.step("seeded", 'echo "$(cat "$WEFT_INPUTS/n")" > "$WEFT_OUTPUTS/out"', parameters={"n": "n"}),
        h.step(
            "dice",
            'cat "$WEFT_INPUTS/in" > "$WEFT_OUTPUTS/out"; head -c 8 /dev/urandom >> "$WEFT_OUTPUTS/out"',
            reads={"in": ("seeded", "out")},
        ),
        h.step("count", 'wc -c < "$WEFT_INPUTS/in" > "$WEFT_OUTPUTS/out"', reads={"in": ("dice", "out")}),
    ]
    pipeline = await h.apply("replayed", steps, {"n": "1"})
    original = await h.wait((await h.run(pipeline.name, {"n": "5"})).name)
    h.clear_launches()

    started = await h.clients.runs.ReplayRun(run_pb2.ReplayRunRequest(name=original.name))
    replay = await h.wait(started.name)

    assert replay.state == run_pb2.Run.STATE_SUCCEEDED, replay.message
    assert replay.replay_of == original.name
    assert (replay.pipeline_version, dict(replay.parameters)) == (original.pipeline_version, {"n": "5"})
    assert replay.options.cache_mode == run_pb2.CACHE_MODE_OFF
    assert h.launches() == {"seeded": 1, "dice": 1, "count": 1}
    diffs = await diff(h, original.name, replay.name)
    nondeterministic = [s for s, d in diffs.items() if d.kind == StepDiff.KIND_NONDETERMINISTIC]
    assert nondeterministic == ["dice"]
    assert diffs["seeded"].kind == StepDiff.KIND_SAME
    assert diffs["count"].kind == StepDiff.KIND_INPUT_CHANGED
    assert list(diffs["count"].caused_by) == ["dice"]


async def test_a_running_run_cannot_be_replayed(harness: Harness) -> None:
    h = harness
    pipeline = await h.apply("pending", [h.step("only")])
    pending = await h.run(pipeline.name)  # no executor: it stays PENDING
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await h.clients.runs.ReplayRun(run_pb2.ReplayRunRequest(name=pending.name))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "only a finished run can be replayed" in (refused.value.details() or "")


def _replay_steps(h: Harness) -> list[pipeline_pb2.Step]:
    """seeded → dice (nondeterministic) → count."""
    return [
        h.step("seeded", 'echo "$(cat "$WEFT_INPUTS/n")" > "$WEFT_OUTPUTS/out"', parameters={"n": "n"}),
        h.step(
            "dice",
            'cat "$WEFT_INPUTS/in" > "$WEFT_OUTPUTS/out"; head -c 8 /dev/urandom >> "$WEFT_OUTPUTS/out"',
            reads={"in": ("seeded", "out")},
        ),
        h.step("count", 'wc -c < "$WEFT_INPUTS/in" > "$WEFT_OUTPUTS/out"', reads={"in": ("dice", "out")}),
    ]


async def test_a_step_replay_launches_only_that_step_on_its_recorded_inputs(harness: Harness) -> None:
    """ReplayRun with steps: the upstream steps are resumed from the original (their
    recorded outcomes, no launch), the step launches with the cache off, the downstream
    steps are not part of the replay, and the diff flags the step as nondeterministic."""
    h = harness
    await h.start_executor()
    pipeline = await h.apply("step-replayed", _replay_steps(h), {"n": "1"})
    original = await h.wait((await h.run(pipeline.name, {"n": "5"})).name)
    h.clear_launches()

    started = await h.clients.runs.ReplayRun(run_pb2.ReplayRunRequest(name=original.name, steps=["dice"]))
    replay = await h.wait(started.name)

    assert replay.state == run_pb2.Run.STATE_SUCCEEDED, replay.message
    assert (replay.replay_of, replay.resumed_from) == (original.name, original.name)
    assert list(replay.options.only_steps) == ["dice"]
    assert h.launches() == {"dice": 1}
    states = {s.step: run_pb2.StepRun.State.Name(s.state) for s in replay.steps}
    assert states == {"seeded": "STATE_CACHED", "dice": "STATE_SUCCEEDED"}
    seeded = steps_by_name(replay)["seeded"]
    assert seeded.outcome.dna == steps_by_name(original)["seeded"].outcome.dna
    dice = await h.explain(replay.name, "dice")
    assert dice.decision == Explanation.DECISION_MISS
    assert "resumed" not in dice.reason
    diffs = await diff(h, original.name, replay.name)
    assert set(diffs) == {"seeded", "dice"}  # count is not part of the replay, not "removed"
    assert diffs["dice"].kind == StepDiff.KIND_NONDETERMINISTIC
    assert diffs["seeded"].kind == StepDiff.KIND_SAME


async def test_a_step_replay_with_upstream_launches_the_step_and_its_upstream(harness: Harness) -> None:
    h = harness
    await h.start_executor()
    pipeline = await h.apply("upstream-replayed", _replay_steps(h), {"n": "1"})
    original = await h.wait((await h.run(pipeline.name)).name)
    h.clear_launches()

    started = await h.clients.runs.ReplayRun(
        run_pb2.ReplayRunRequest(name=original.name, steps=["dice"], with_upstream=True)
    )
    replay = await h.wait(started.name)

    assert replay.state == run_pb2.Run.STATE_SUCCEEDED, replay.message
    assert replay.resumed_from == ""
    assert h.launches() == {"seeded": 1, "dice": 1}
    diffs = await diff(h, original.name, replay.name)
    assert [s for s, d in diffs.items() if d.kind == StepDiff.KIND_NONDETERMINISTIC] == ["dice"]


async def test_a_step_replay_naming_an_unknown_step_is_refused_naming_the_field(harness: Harness) -> None:
    h = harness
    await h.start_executor()
    pipeline = await h.apply("unknown-replayed", _replay_steps(h), {"n": "1"})
    original = await h.wait((await h.run(pipeline.name)).name)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await h.clients.runs.ReplayRun(run_pb2.ReplayRunRequest(name=original.name, steps=["dice", "nope"]))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.value.details() or "").startswith('steps[1]: run "')
    assert 'has no step "nope"' in (refused.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as alone:
        await h.clients.runs.ReplayRun(run_pb2.ReplayRunRequest(name=original.name, with_upstream=True))
    assert alone.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (alone.value.details() or "").startswith("with_upstream:")


def _wide_join(h: Harness, join_script: str, width: int) -> list[pipeline_pb2.Step]:
    """One step with `width` outputs and a join reading them all: wide enough that the
    join's DNA components and input outcomes spill to blobs (past INLINE_RECORD_BYTES)."""
    outputs = [f"o{i}" for i in range(width)]
    return [
        h.step("fan", "".join(f'echo {i} > "$WEFT_OUTPUTS/o{i}"; ' for i in range(width)), outputs=outputs),
        h.step("join", join_script, reads={f"i{i}": ("fan", f"o{i}") for i in range(width)}),
    ]


async def test_a_wide_join_whose_components_spilled_is_explained_diffed_and_walked_like_a_narrow_one(
    harness: Harness,
) -> None:
    """The join's records keep only blob digests of its components and input outcomes;
    ExplainStep and DiffRuns still name exactly the edited command, and lineage still walks
    from the join up to the step that produced its inputs."""
    h = harness
    await h.start_executor()
    width = 120
    before = _wide_join(h, 'ls "$WEFT_INPUTS" | wc -l > "$WEFT_OUTPUTS/out"', width)
    pipeline = await h.apply("wide-explained", before)
    first = await h.wait((await h.run(pipeline.name)).name, timeout=60)
    after = _wide_join(h, 'ls "$WEFT_INPUTS" | wc -l > "$WEFT_OUTPUTS/out"; true', width)
    edited = await h.apply("wide-explained", after)
    second = await h.wait((await h.run(edited.name)).name, timeout=60)
    assert second.state == run_pb2.Run.STATE_SUCCEEDED, second.message
    record, _ = (await h.done_records(first.name))["join"]
    assert record.explanation.components_digest
    assert not record.explanation.components
    assert record.outcome.input_outcomes_digest
    assert not record.outcome.input_outcomes

    explained = await h.explain(second.name, "join")
    diffs = await diff(h, first.name, second.name)
    lineage = await h.clients.runs.GetLineage(
        run_pb2.GetLineageRequest(run=second.name, step="join", direction=run_pb2.LINEAGE_DIRECTION_UPSTREAM, depth=1)
    )

    expected = [("command", _command(before[1]), _command(after[1]))]
    assert explained.compared_run == first.name
    assert [(c.name, c.old_value, c.new_value) for c in explained.changes] == expected
    assert explained.reason.startswith("miss: command changed (was ")
    assert diffs["join"].kind == StepDiff.KIND_ROOT_CAUSE
    assert [(c.name, c.old_value, c.new_value) for c in diffs["join"].changes] == expected
    assert diffs["fan"].kind == StepDiff.KIND_SAME
    fan_dna = steps_by_name(second)["fan"].outcome.dna
    assert {n.step for n in lineage.nodes} == {"join", "fan"}
    assert {(e.producer, e.input) for e in lineage.edges} == {(fan_dna, f"i{i}") for i in range(width)}
    join_node = next(n for n in lineage.nodes if n.step == "join")
    assert sum(1 for c in join_node.components if c.name.startswith("input:")) == width
    # `weft provenance` reads the spilled components back: every input is a dependency.
    exported = await asyncio.to_thread(
        subprocess.run,
        [WEFT, "--server", h.api_address, "provenance", second.name, "--step", "join"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert exported.returncode == 0, exported.stderr
    dependencies = json.loads(exported.stdout)["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert sum(1 for d in dependencies if d["name"].startswith("join/inputs/")) == width


async def test_diff_runs_pages_follow_one_order_and_a_bad_token_names_the_field(harness: Harness) -> None:
    """page_size/page_token per AIP-158: the pages put together are the unpaged answer,
    the SDK follows them, and a foreign or garbled token is INVALID_ARGUMENT naming it."""
    h = harness
    await h.start_executor()
    pipeline = await h.apply("paged", chain(h), {"seed": "1"})
    first = await h.wait((await h.run(pipeline.name)).name)
    second = await h.wait((await h.run(pipeline.name, {"seed": "2"})).name)
    runs = h.clients.runs

    whole = await runs.DiffRuns(run_pb2.DiffRunsRequest(run_a=first.name, run_b=second.name))
    pages, token = [], ""
    while True:
        page = await runs.DiffRuns(
            run_pb2.DiffRunsRequest(run_a=first.name, run_b=second.name, page_size=1, page_token=token)
        )
        pages.append(list(page.steps))
        token = page.next_page_token
        if not token:
            break
    async with await AsyncClient.connect(h.api_address) as client:
        followed = await client.diff_runs(first.name, second.name, page_size=1)

    assert not whole.next_page_token
    assert [len(p) for p in pages] == [1, 1, 1]
    assert [d for p in pages for d in p] == list(whole.steps)
    assert list(followed.steps) == list(whole.steps)
    assert [d.step for d in whole.steps] == ["generate", "middle", "report"]
    one = await runs.DiffRuns(run_pb2.DiffRunsRequest(run_a=first.name, run_b=second.name, page_size=1))
    for request, message in (
        (run_pb2.DiffRunsRequest(run_a=first.name, run_b=second.name, page_token="garbage"), "page_token: not a token"),
        (
            run_pb2.DiffRunsRequest(run_a=second.name, run_b=first.name, page_token=one.next_page_token),
            "page_token: it pages through another pair of runs",
        ),
        (run_pb2.DiffRunsRequest(run_a=first.name, run_b=second.name, page_size=-1), "page_size: must be 0"),
        (run_pb2.DiffRunsRequest(run_a=first.name, run_b=second.name, page_size=1001), "page_size: must be 0"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await runs.DiffRuns(request)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (refused.value.details() or "").startswith(message)
