"""`weft trace`'s Gantt drawn from a run record made here: widths, marks, order, the page."""

from __future__ import annotations

import json

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from weft.cli._trace import gantt, html_page
from weft.v1 import run_pb2

Attempt = run_pb2.Attempt
StepRun = run_pb2.StepRun
T0 = 1_800_000_000 * 10**9


def at(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(T0 + int(seconds * 1e9))
    return stamp


def known_run() -> run_pb2.Run:
    run = run_pb2.Run(name="namespaces/default/runs/r", state=run_pb2.Run.STATE_FAILED)
    run.create_time.CopyFrom(at(0))
    run.end_time.CopyFrom(at(10))
    hit = run.steps.add(step="hit", state=StepRun.STATE_CACHED)
    hit.ready_time.CopyFrom(at(0.1))
    hit.end_time.CopyFrom(at(0.5))
    retried = run.steps.add(step="retried", state=StepRun.STATE_SUCCEEDED)
    retried.ready_time.CopyFrom(at(0.5))
    first = retried.attempts.add(number=1, state=Attempt.STATE_FAILED, message="exit code 3")
    first.start_time.CopyFrom(at(1))
    first.end_time.CopyFrom(at(3))
    second = retried.attempts.add(number=2, state=Attempt.STATE_SUCCEEDED)
    second.start_time.CopyFrom(at(4))
    second.end_time.CopyFrom(at(7))
    retried.end_time.CopyFrom(at(7))
    taken = run.steps.add(step="taken-over", state=StepRun.STATE_FAILED)
    lost = taken.attempts.add(number=1, state=Attempt.STATE_LOST)
    lost.start_time.CopyFrom(at(7))
    lost.end_time.CopyFrom(at(8))
    last = taken.attempts.add(number=2, state=Attempt.STATE_FAILED)
    last.start_time.CopyFrom(at(8.5))
    last.end_time.CopyFrom(at(10))
    taken.end_time.CopyFrom(at(10))
    run.steps.add(step="after", state=StepRun.STATE_SKIPPED)
    return run


@pytest.mark.parametrize("width", [40, 60, 100, 200])
def test_every_line_fits_the_width_and_the_steps_keep_their_order(width: int) -> None:
    lines = [line.plain for line in gantt(known_run(), width, now_ns=T0)]
    assert all(len(line) <= width for line in lines), [len(line) for line in lines]
    rows = [line for line in lines if "│" in line]
    assert [row.split("│")[0].strip() for row in rows] == ["hit", "retried", "taken-over", "after"]


def test_marks_say_hit_retry_loss_and_failure_where_they_happened() -> None:
    lines = [line.plain for line in gantt(known_run(), 120, now_ns=T0)]
    rows = {line.split("│")[0].strip(): line.split("│")[1] for line in lines if "│" in line}
    assert "◆" in rows["hit"]
    assert rows["hit"].index("◆") < 10  # at 0.5 s of 10 s
    retried = rows["retried"]
    assert retried.index("✗") < retried.index("█", retried.index("✗"))  # failed, then the retry ran
    assert "░" in rows["taken-over"]
    assert rows["taken-over"].rstrip().endswith("✗")
    assert set(rows["after"]) == {" "}
    labels = {line.split("│")[0].strip(): line.split("│")[2] for line in lines if "│" in line}
    assert "2 attempts, 1 retried" in labels["retried"]
    assert "1 lost" in labels["taken-over"]
    assert "cache hit" in labels["hit"]
    legend = "\n".join(lines[-2:])
    assert "◆ cache hit" in legend
    assert "⊘" not in legend  # no loser in this run, so none in the legend


def test_the_page_holds_its_data_inline_and_cannot_be_closed_by_a_log_line() -> None:
    page = html_page({"run": "r", "steps": [{"log": "</script><script>alert(1)</script>"}], "events": []})
    payload = page.split('<script id="weft-data" type="application/json">')[1].split("</script>")[0]
    assert json.loads(payload)["steps"][0]["log"] == "</script><script>alert(1)</script>"
    assert "src=" not in page  # no external script or image


def test_weft_up_forwards_to_jaeger_or_else_to_the_standard_otlp_variables() -> None:
    from weft.cli._up import forward_target

    assert forward_target("jaeger:4317", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://other:4317"}) == "jaeger:4317"
    assert forward_target("", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://other:4317"}) == "http://other:4317"
    both = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://other:4317", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4317"}
    assert forward_target("", both) == "http://t:4317"
    assert forward_target("", {}) == ""
