"""Failing steps on a real executor: retries, timeouts, skipped downstream, bad behaviour.

A failure must give a message a person can act on and lose nothing: every other branch
still finishes and commits its outcome.
"""

from __future__ import annotations

import time

from tests.integration.executor.support import (
    Harness,
    duration,
    process_alive,
    state_name,
    states,
    steps_by_name,
    until,
)
from weft.v1 import pipeline_pb2, run_pb2

Attempt = run_pb2.Attempt
Run = run_pb2.Run


async def test_a_failing_attempt_is_retried_with_backoff_until_it_succeeds(harness: Harness) -> None:
    h = harness
    await h.start_executor()
    counter = h.tmp / "count"
    script = f"n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}; "
    script += 'if [ "$n" -lt 2 ]; then echo "not yet ($n)" >&2; exit 1; fi; echo done > "$WEFT_OUTPUTS/out"'
    retry = pipeline_pb2.RetryPolicy(max_attempts=3, backoff=duration(0.2), backoff_factor=1.5)
    pipeline = await h.apply("flaky", [h.step("flaky", script, retry=retry)])

    run = await h.wait((await h.run(pipeline.name)).name)

    assert run.state == Run.STATE_SUCCEEDED, run.message
    flaky = steps_by_name(run)["flaky"]
    assert [state_name(a.state, Attempt.State) for a in flaky.attempts] == ["FAILED", "FAILED", "SUCCEEDED"]
    assert [a.number for a in flaky.attempts] == [1, 2, 3]
    assert flaky.attempts[0].message == "exit code 1; last stderr lines:\nnot yet (0)"
    assert flaky.attempts[0].exit_code == 1
    assert flaky.outcome.attempt == 3
    assert h.launches() == {"flaky": 3}
    # Backoff: 0.2 s before the second attempt, 0.3 s before the third.
    gaps = [
        flaky.attempts[i + 1].start_time.ToNanoseconds() - flaky.attempts[i].end_time.ToNanoseconds() for i in range(2)
    ]
    assert gaps[0] >= 0.2e9
    assert gaps[1] >= 0.3e9
    assert await h.output(run, "flaky") == b"done\n"
    # Each failed attempt's logs were kept.
    assert await h.blob(flaky.attempts[1].stderr_digest) == b"not yet (1)\n"


async def test_a_final_failure_skips_downstream_and_fails_the_run(harness: Harness) -> None:
    h = harness
    await h.start_executor()
    retry = pipeline_pb2.RetryPolicy(max_attempts=2, backoff=duration(0.05))
    steps = [
        h.step("broken", 'echo "disk full" >&2; exit 3', retry=retry),
        h.step("after", reads={"in": ("broken", "out")}),
        h.step("after-after", reads={"in": ("after", "out")}),
        h.step("independent"),
        h.step("uses-independent", reads={"in": ("independent", "out")}),
    ]
    pipeline = await h.apply("failing", steps)

    run = await h.wait((await h.run(pipeline.name)).name)

    assert run.state == Run.STATE_FAILED
    assert run.failed_step == "broken"
    assert run.message == "step broken failed: failed 2 of 2 attempts, the last with: exit code 3"
    assert states(run) == {
        "broken": "FAILED",
        "after": "SKIPPED",
        "after-after": "SKIPPED",
        "independent": "SUCCEEDED",
        "uses-independent": "SUCCEEDED",
    }
    by_name = steps_by_name(run)
    assert by_name["broken"].message.endswith("exit code 3; last stderr lines:\ndisk full")
    assert by_name["after"].message == "upstream step broken failed"
    assert by_name["after-after"].message == "upstream step broken failed"
    assert h.launches() == {"broken": 2, "independent": 1, "uses-independent": 1}
    # Nothing lost: the independent branch's outcome is committed and reused next time.
    h.clear_launches()
    again = await h.wait((await h.run(pipeline.name)).name)
    assert states(again)["uses-independent"] == "CACHED"
    assert h.launches() == {"broken": 2}


async def test_a_timeout_kills_the_whole_process_group(harness: Harness) -> None:
    h = harness
    await h.start_executor(kill_grace=0.5)
    pid_file = h.tmp / "background.pid"
    # The background sleep ignores nothing but is a grandchild: only a group kill reaches it.
    script = f'sleep 60 & echo $! > {pid_file}; sleep 60; echo never > "$WEFT_OUTPUTS/out"'
    pipeline = await h.apply("slow", [h.step("slow", script, timeout=0.5)])
    started = time.monotonic()

    run = await h.wait((await h.run(pipeline.name)).name)

    assert time.monotonic() - started < 10
    assert run.state == Run.STATE_FAILED
    slow = steps_by_name(run)["slow"]
    assert slow.message == "timed out after 0.5s"
    assert slow.attempts[0].state == Attempt.STATE_FAILED
    background = int(pid_file.read_text())
    await until(lambda: not process_alive(background), timeout=3, what="the background process was killed")


async def test_bad_step_behaviour_gets_clear_errors_and_loses_nothing(harness: Harness) -> None:
    h = harness
    await h.start_executor(max_output_bytes=1000)
    steps = [
        h.step("no-output", "true"),
        h.step("too-big", 'head -c 2000 /dev/zero > "$WEFT_OUTPUTS/out"'),
        h.step("missing-command", command=["no-such-command-weft"]),
        h.step("segfault", "kill -SEGV $$"),
        h.step("fine"),
    ]
    steps += [h.step(f"after-{s.name}", reads={"in": (s.name, "out")}) for s in list(steps)]
    pipeline = await h.apply("bad", steps)

    run = await h.wait((await h.run(pipeline.name)).name)

    assert run.state == Run.STATE_FAILED
    by_name = steps_by_name(run)
    assert by_name["no-output"].message == "step wrote no output 'out': write it to $WEFT_OUTPUTS/out"
    assert by_name["too-big"].message == (
        "output 'out' is 2.0 KiB, over the limit of 1000 bytes (executor flag --max-output-bytes); "
        "write less or raise the limit"
    )
    assert by_name["missing-command"].message.startswith("command 'no-such-command-weft' not found (PATH=")
    assert by_name["segfault"].message.startswith("killed by signal SIGSEGV")
    assert by_name["segfault"].attempts[0].exit_code == -11
    for bad in ("no-output", "too-big", "missing-command", "segfault"):
        assert by_name[bad].state == run_pb2.StepRun.STATE_FAILED
        assert by_name[f"after-{bad}"].message == f"upstream step {bad} failed"
    assert run.failed_step in ("no-output", "too-big", "missing-command", "segfault")
    assert states(run)["fine"] == "SUCCEEDED"
    assert states(run)["after-fine"] == "SUCCEEDED"
    assert await h.output(run, "after-fine") == b"after-fine"
    # The launch that could not start left no process; the others did run once.
    assert h.launches() == {"no-output": 1, "too-big": 1, "segfault": 1, "fine": 1, "after-fine": 1}


async def test_no_step_is_left_running_after_a_failed_run(harness: Harness) -> None:
    h = harness
    executor = await h.start_executor()
    pipeline = await h.apply("quick-fail", [h.step("bad", "exit 1"), h.step("good")])
    run = await h.wait((await h.run(pipeline.name)).name)
    assert run.state == Run.STATE_FAILED
    await until(lambda: not executor.running_steps(), what="the executor let go of every claim")
    ns, run_id = "default", run.name.rsplit("/", 1)[1]
    assert await h.store.count(h.keyspace.ready_run_prefix(ns, run_id)) == 0
    assert await h.store.count(h.keyspace.claims_run_prefix(ns, run_id)) == 0


async def test_a_failure_skips_a_two_thousand_wide_downstream(harness: Harness) -> None:
    h = harness
    await h.start_executor()
    width = 2000
    steps = [h.step("root", "exit 1")] + [h.step(f"s{i}", reads={"in": ("root", "out")}) for i in range(width)]
    pipeline = await h.apply("wide-skip", steps)

    run = await h.wait((await h.run(pipeline.name)).name, timeout=60)

    assert run.state == Run.STATE_FAILED
    assert run.failed_step == "root"
    done = await h.done_records(run.name)
    assert len(done) == width + 1
    skipped = [record for name, (record, _) in done.items() if name != "root"]
    assert {record.state for record in skipped} == {run_pb2.StepRun.STATE_SKIPPED}
    assert h.launches() == {"root": 1}


async def test_a_step_that_kills_its_executor_fails_after_three_lost_attempts(harness: Harness) -> None:
    # Attempts lost with their executor do not count against max_attempts; without a cap
    # of their own such a step would take down every executor that runs it, forever.
    h = harness
    processes = [h.start_process(lease_ttl=2, executor_id=f"victim-{i}") for i in range(4)]
    # A step's parent is its executor's spawner; the executor is the spawner's parent.
    kill_executor = 'sleep 0.5; kill -9 "$(cut -d" " -f4 /proc/$PPID/stat)"; sleep 5'
    pipeline = await h.apply("killer", [h.step("killer", kill_executor)])

    run = await h.wait((await h.run(pipeline.name)).name, timeout=45)

    assert run.state == Run.STATE_FAILED
    killer = steps_by_name(run)["killer"]
    assert killer.message == "executor died 3 times running this step (its attempts were lost with their executor)"
    assert [state_name(a.state, Attempt.State) for a in killer.attempts] == ["LOST"] * 3
    assert sum(not p.child.alive() for p in processes) == 3
