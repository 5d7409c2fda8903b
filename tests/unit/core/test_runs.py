"""weft_core.runs: the run index summary keeps what lists show and drops what makes it large."""

from __future__ import annotations

from weft.v1 import run_pb2
from weft_core.runs import MAX_SUMMARY_MESSAGE_CHARS, run_summary


def test_the_summary_drops_parameters_and_trace_context_and_keeps_the_rest() -> None:
    run = run_pb2.Run(
        name="namespaces/default/runs/etl-abcde",
        pipeline="namespaces/default/pipelines/etl",
        pipeline_version="sha256:" + "a" * 64,
        parameters={"data": "x" * 65_000},
        parameter_digests={"data": "sha256:" + "b" * 64},
        state=run_pb2.Run.STATE_FAILED,
        message="step s failed",
        failed_step="s",
        traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01",
        resumed_from="namespaces/default/runs/etl-00000",
        step_counts={"FAILED": 1},
        labels={"team": "data"},
        etag="7",
        steps=[run_pb2.StepRun(step="s")],
    )
    run.options.cache_mode = run_pb2.CACHE_MODE_REFRESH
    run.create_time.FromSeconds(100)
    run.end_time.FromSeconds(200)
    summary = run_summary(run)
    expected = run_pb2.Run()
    expected.CopyFrom(run)
    for field in ("parameters", "parameter_digests", "traceparent", "steps"):
        expected.ClearField(field)
    assert summary == expected
    assert run.parameters["data"]  # the input is left alone
    assert len(summary.SerializeToString()) < 1024


def test_a_long_message_is_cut() -> None:
    summary = run_summary(run_pb2.Run(message="m" * 100_000))
    assert len(summary.message) == MAX_SUMMARY_MESSAGE_CHARS
    assert summary.message.endswith("…")
