"""Invariant 8: a secret reaches the step's process and nothing else (etcd, DNA, logs).

The executor reads secret values from its own environment (`WEFT_SECRET_<NAME>_<KEY>`);
the test then searches every etcd key of the installation, every stored blob, the
step's log streams and the executor's own log records for the value.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.integration.executor.support import ExecutorProcess, Harness, executor_command, states, steps_by_name
from weft.v1 import pipeline_pb2, run_pb2

Run = run_pb2.Run

SECRET = "hunter2-very-s3cret-value"


async def read_logs(h: Harness, run: str, step: str) -> dict[int, bytes]:
    chunks = h.clients.runs.ReadLogs(run_pb2.ReadLogsRequest(run=run, step=step))
    streams: dict[int, bytes] = {}
    async for chunk in chunks:
        streams[chunk.stream] = streams.get(chunk.stream, b"") + chunk.data
    return streams


async def test_secrets_reach_the_step_and_nothing_else(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    h = harness
    environ = {**os.environ, "WEFT_SECRET_DB_PASSWORD": SECRET}
    await h.start_executor(environ=environ)
    secrets = {"PASSWORD": ("db", "password")}
    steps = [
        h.step(
            "uses-secret",
            'echo "connecting with $PASSWORD"; echo "warning: $PASSWORD rejected once" >&2; '
            'printf %s "$PASSWORD" | sha256sum | cut -d" " -f1 > "$WEFT_OUTPUTS/out"',
            secrets=secrets,
        ),
        h.step("leaks-and-fails", 'echo "bad password $PASSWORD" >&2; exit 1', secrets=secrets),
    ]
    pipeline = await h.apply("secrets", steps)

    run = await h.wait((await h.run(pipeline.name)).name)

    assert states(run) == {"uses-secret": "SUCCEEDED", "leaks-and-fails": "FAILED"}
    # The process had the value.
    assert await h.output(run, "uses-secret") == (hashlib.sha256(SECRET.encode()).hexdigest() + "\n").encode()
    # Its logs and the failure message show it masked.
    logs = await read_logs(h, run.name, "uses-secret")
    assert logs[run_pb2.LogChunk.STREAM_STDOUT] == b"connecting with *****\n"
    assert logs[run_pb2.LogChunk.STREAM_STDERR] == b"warning: ***** rejected once\n"
    failed = steps_by_name(run)["leaks-and-fails"]
    assert failed.message == "exit code 1; last stderr lines:\nbad password *****"
    # The DNA names the reference only.
    explanation = await h.explain(run.name, "uses-secret")
    assert {c.name: c.value for c in explanation.components}["env:PASSWORD"] == "secret:db/password"
    # Nowhere in etcd, the artifact store or the executor's log.
    everything = await h.store.range_all(h.keyspace.root.encode() + b"/")
    assert everything.kvs
    for kv in everything.kvs:
        assert SECRET.encode() not in kv.value, kv.key
    blobs = [p for p in h.blob_dir.rglob("*") if p.is_file()]
    assert blobs
    for blob in blobs:
        assert SECRET.encode() not in blob.read_bytes(), blob
    assert SECRET not in caplog.text
    # The attempts' raw log files (which do hold it) are gone from the executor's disk.
    for path in (h.tmp / "work-0").rglob("*"):
        assert not path.is_file() or SECRET.encode() not in path.read_bytes(), path


async def test_a_missing_secret_fails_the_attempt_naming_the_variable(harness: Harness) -> None:
    h = harness
    await h.start_executor(environ={"PATH": os.environ["PATH"]})
    pipeline = await h.apply("no-secret", [h.step("needs", secrets={"TOKEN": ("api-token", "value")})])

    run = await h.wait((await h.run(pipeline.name)).name)

    needs = steps_by_name(run)["needs"]
    assert needs.state == run_pb2.StepRun.STATE_FAILED
    assert needs.message == (
        "secret env TOKEN (secret 'api-token', key 'value') is not available: "
        "start the executor with the environment variable WEFT_SECRET_API_TOKEN_VALUE set"
    )
    assert h.launches() == {}


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
async def test_a_step_of_a_real_executor_cannot_read_the_executors_environment(harness: Harness) -> None:
    # A real weft-executor process running as an unprivileged user, as in production; its
    # step runs as that same user and was granted no secret.
    h = harness
    secret = "s3cr3t-from-the-executor-env"
    home = Path(tempfile.mkdtemp(prefix="weft-unpriv-"))
    os.chmod(home, 0o777)  # the unprivileged executor writes its work dir here
    config = h.executor_config(work_dir=home / "work", executor_id="unprivileged")
    argv = [
        "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
        executor_command(),
        "--etcd-endpoints", config.etcd_endpoints,
        "--api", config.api,
        "--runtime", "local",
        "--work-dir", str(config.work_dir),
        "--listen", "127.0.0.1:0",
        "--etcd-root", config.etcd_root,
        "--executor-id", config.executor_id,
    ]  # fmt: skip
    process = ExecutorProcess(argv, home / "executor.log", {"WEFT_SECRET_DB_PASSWORD": secret})
    process.start()
    h.processes.append(process)
    try:
        peek = pipeline_pb2.Step(
            name="peek",
            container=pipeline_pb2.Container(
                image="busybox:1.36",
                command=[
                    "sh",
                    "-c",
                    'cat "/proc/$PPID/environ" > "$WEFT_OUTPUTS/out" 2>&1; id -u >> "$WEFT_OUTPUTS/out"',
                ],
            ),
            outputs=[pipeline_pb2.Output(name="out")],
        )
        pipeline = await h.apply("peek", [peek])
        run = await h.wait((await h.run(pipeline.name)).name, timeout=30)
        assert run.state == Run.STATE_SUCCEEDED, run.message + process.tail()
        seen = await h.output(run, "peek")
        assert seen.endswith(b"65534\n")  # the step really ran as the executor's unprivileged user
        assert secret.encode() not in seen
        assert b"WEFT_SECRET" not in seen
    finally:
        process.stop()
        shutil.rmtree(home, ignore_errors=True)
