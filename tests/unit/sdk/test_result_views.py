"""Result views print as one short line at a prompt and a run renders as a table in a notebook."""

from __future__ import annotations

import weft
from weft._results import Applied, Attempt, Blob, Explanation, LogChunk, PipelineVersion, RunEvent, RunRecord, StepRun
from weft.v1 import artifact_pb2, pipeline_pb2, run_pb2

DIGEST = "sha256:08ce4a" + "0" * 58


def a_run(**fields: object) -> run_pb2.Run:
    run = run_pb2.Run(
        name="namespaces/default/runs/hello-x7k2p",
        pipeline="namespaces/default/pipelines/hello",
        pipeline_version=DIGEST,
        state=run_pb2.Run.STATE_SUCCEEDED,
        **fields,  # type: ignore[arg-type]
    )
    return run


def test_applied_and_versions_print_name_short_version_and_change() -> None:
    version = PipelineVersion(
        pipeline_pb2.Pipeline(
            name="namespaces/default/pipelines/hello",
            version=DIGEST,
            spec=pipeline_pb2.PipelineSpec(steps=[pipeline_pb2.Step(name="say")] * 3),
        )
    )
    applied = Applied(version, "created")
    assert repr(applied) == "Applied(hello @ sha256:08ce4a…, created)"
    assert str(applied) == repr(applied)
    assert applied.pb is version.pb
    assert repr(version) == "PipelineVersion(hello @ sha256:08ce4a…, 3 steps)"


def test_a_run_prints_its_id_state_and_step_count_and_keeps_its_message() -> None:
    full = a_run(steps=[run_pb2.StepRun(step=f"s{i}", state=run_pb2.StepRun.STATE_CACHED) for i in range(6)])
    assert repr(RunRecord(full)) == "RunRecord(hello-x7k2p, SUCCEEDED, 6 steps)"
    summary = a_run(step_counts={"SUCCEEDED": 2, "FAILED": 1}, failed_step="load")
    summary.state = run_pb2.Run.STATE_FAILED
    assert repr(RunRecord(summary)) == "RunRecord(hello-x7k2p, FAILED, 3 steps, failed at load)"
    assert RunRecord(full).pb is full
    # The client's own Run views print the same way (their dataclasses keep RunRecord's repr).
    assert weft.Run.__repr__ is RunRecord.__repr__
    assert weft.AsyncRun.__repr__ is RunRecord.__repr__


def test_a_run_renders_as_a_table_of_its_steps_in_a_notebook() -> None:
    step = run_pb2.StepRun(step="load<x>", state=run_pb2.StepRun.STATE_FAILED, dna=DIGEST, message="exit code 1\nlog")
    step.attempts.add(number=1, state=run_pb2.Attempt.STATE_FAILED)
    page = RunRecord(a_run(steps=[step], message="step load failed"))._repr_html_()
    assert page.startswith("<div><strong>hello-x7k2p · hello @ sha256:08ce4a… · SUCCEEDED</strong>")
    assert "<th>step</th><th>state</th>" in page
    assert "<td>load&lt;x&gt;</td><td>FAILED</td>" in page  # escaped
    assert "<td>exit code 1</td>" in page
    assert "log" not in page.split("exit code 1")[1]


def test_the_other_views_print_one_line() -> None:
    assert repr(StepRun(run_pb2.StepRun(step="t", state=run_pb2.StepRun.STATE_RUNNING))) == "StepRun(t, RUNNING)"
    attempt = run_pb2.Attempt(number=2, state=run_pb2.Attempt.STATE_FAILED, exit_code=3)
    assert repr(Attempt(attempt)) == "Attempt(2, FAILED, exit code 3)"
    event = run_pb2.RunEvent(revision=42, step=run_pb2.StepRun(step="t", state=run_pb2.StepRun.STATE_CACHED))
    assert repr(RunEvent(event)) == "RunEvent(step t CACHED @ 42)"
    explanation = run_pb2.StepExplanation(dna=DIGEST, decision=run_pb2.StepExplanation.DECISION_HIT, reason="same")
    assert repr(Explanation(explanation)) == "Explanation(HIT, sha256:08ce4a…: same)"
    assert repr(Blob(artifact_pb2.Blob(digest=DIGEST, size_bytes=1))) == "Blob(sha256:08ce4a…, 1 byte)"
    assert repr(LogChunk("stderr", b"abc", 1)) == "LogChunk(stderr, attempt 1, 3 bytes)"


def test_pipelines_get_shows_the_composition_and_function_steps_by_name() -> None:
    import io

    from rich.console import Console

    import weft
    from weft.cli._output import pipeline_view
    from weft.functions import Function

    add_one: Function[..., int] = weft.function(_add_one)
    with weft.Pipeline("etl") as p:
        add_one(x=1)
    message = p.to_proto()
    message.name = "namespaces/default/pipelines/etl"
    message.version = DIGEST
    message.spec.uses.add(step="normalise", pipeline=pipeline_pb2.PipelineRef(name="normalise", version=DIGEST))
    console = Console(file=io.StringIO(), width=250)
    console.print(pipeline_view(PipelineVersion(message)))
    shown = console.file.getvalue()  # type: ignore[attr-defined]
    assert f"Uses      normalise @ {DIGEST} as normalise.*" in shown
    assert "weft.function.json = python function _add_one()" not in shown
    assert "python function _add_one()" in shown
    assert "(weft function runner)" in shown


def _add_one(x: int) -> int:
    return x + 1
