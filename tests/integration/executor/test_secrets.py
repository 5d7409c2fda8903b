"""Invariant 8: a secret reaches the step's process and nothing else (etcd, DNA, logs).

The executor reads secret values from its own environment (`WEFT_SECRET_<NAME>_<KEY>`);
the test then searches every etcd key of the installation, every stored blob, the
step's log streams and the executor's own log records for the value.
"""

from __future__ import annotations

import asyncio
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
PASSWORD = {"PASSWORD": ("db", "password")}


async def read_logs(h: Harness, run: str, step: str) -> dict[int, bytes]:
    chunks = h.clients.runs.ReadLogs(run_pb2.ReadLogsRequest(run=run, step=step))
    streams: dict[int, bytes] = {}
    async for chunk in chunks:
        streams[chunk.stream] = streams.get(chunk.stream, b"") + chunk.data
    return streams


async def test_secrets_reach_the_step_and_nothing_else(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    h = harness
    other = "other-token-value-42"  # held by the executor, granted to no step
    environ = {**os.environ, "WEFT_SECRET_DB_PASSWORD": SECRET, "WEFT_SECRET_OTHER_TOKEN": other}
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
        # Prints a secret it was not granted (it knows the value some other way).
        h.step("guesses", "printf 'token other-token-%s-%d\\n' value 42; printf x > \"$WEFT_OUTPUTS/out\""),
    ]
    pipeline = await h.apply("secrets", steps)

    run = await h.wait((await h.run(pipeline.name)).name)

    assert states(run) == {"uses-secret": "SUCCEEDED", "leaks-and-fails": "FAILED", "guesses": "SUCCEEDED"}
    # The process had the value.
    assert await h.output(run, "uses-secret") == (hashlib.sha256(SECRET.encode()).hexdigest() + "\n").encode()
    # Its logs and the failure message show it masked.
    logs = await read_logs(h, run.name, "uses-secret")
    assert logs[run_pb2.LogChunk.STREAM_STDOUT] == b"connecting with *****\n"
    assert logs[run_pb2.LogChunk.STREAM_STDERR] == b"warning: ***** rejected once\n"
    assert (await read_logs(h, run.name, "guesses"))[run_pb2.LogChunk.STREAM_STDOUT] == b"token *****\n"
    failed = steps_by_name(run)["leaks-and-fails"]
    assert failed.message == "exit code 1; last stderr lines:\nbad password *****"
    # The DNA names the reference only.
    explanation = await h.explain(run.name, "uses-secret")
    assert {c.name: c.value for c in explanation.components}["env:PASSWORD"] == "secret:db/password"
    # Nowhere in etcd, the artifact store or the executor's log.
    everything = await h.store.range_all(h.keyspace.root.encode() + b"/")
    assert everything.kvs
    for value in (SECRET, other):
        for kv in everything.kvs:
            assert value.encode() not in kv.value, kv.key
        blobs = [p for p in h.blob_dir.rglob("*") if p.is_file()]
        assert blobs
        for blob in blobs:
            assert value.encode() not in blob.read_bytes(), blob
        assert value not in caplog.text
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


#: A step that tries every way to a secret it was not granted and reports what it got:
#: the environment and memory of its parent (the spawner) and of the executor, ptrace of
#: both, /proc of every process, and every file under the directories in argv (the
#: executor's work dir and log).
PEEK = r"""
import os, subprocess, sys
report = []

def attempt(what, read):
    try:
        data = read()
    except Exception as error:
        report.append(f"{what}: {type(error).__name__}: {error}".encode())
    else:
        report.append(f"{what}: read {len(data)} bytes".encode())
        report.append(data)

def memory(pid):
    data = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            start, end = (int(x, 16) for x in span.split("-"))
            if perms.startswith("rw") and end - start <= 256 << 20:
                mem.seek(start)
                try:
                    data.append(mem.read(end - start))
                except OSError:
                    pass
    return b"".join(data)

def ptrace(pid):
    try:
        done = subprocess.run(["strace", "-p", str(pid), "-e", "trace=read"], capture_output=True, timeout=2)
    except subprocess.TimeoutExpired as attached:
        return b"ATTACH" + b"ED " + (attached.stderr or b"")  # split: the script is in our cmdline
    return done.stderr

spawner = os.getppid()
executor = int(open(f"/proc/{spawner}/stat").read().rsplit(")", 1)[1].split()[1])
report.append(f"uid {os.getuid()} spawner {spawner} executor {executor}".encode())
for pid in (spawner, executor):
    attempt(f"{pid} mem", lambda: memory(pid))
    attempt(f"{pid} strace", lambda: ptrace(pid))
for entry in os.listdir("/proc"):
    if entry.isdigit():
        for name in ("environ", "cmdline"):
            attempt(f"{entry} {name}", lambda: open(f"/proc/{entry}/{name}", "rb").read())
for top in sys.argv[1:]:
    for directory, _, files in os.walk(top):
        for name in files:
            attempt(os.path.join(directory, name), lambda: open(os.path.join(directory, name), "rb").read())
everything = b"\n".join(report)
open(os.environ["WEFT_OUTPUTS"] + "/out", "wb").write(everything)
sys.stdout.buffer.write(everything)
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
@pytest.mark.parametrize("executor_user", ["root", "unprivileged"])
async def test_a_step_without_a_grant_reads_no_secret_by_any_means(harness: Harness, executor_user: str) -> None:
    # A real weft-executor process, as `weft up` starts one: as root (its steps run as
    # nobody by default) or as an unprivileged user (its steps run as that same user).
    h = harness
    secret = "s3cr3t-from-the-executor-env"
    home = Path(tempfile.mkdtemp(prefix="weft-peek-"))
    os.chmod(home, 0o777 if executor_user == "unprivileged" else 0o755)
    config = h.executor_config(work_dir=home / "work", executor_id=f"peek-{executor_user}")
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if executor_user == "unprivileged" else []
    argv = [
        *drop,
        executor_command(),
        "--etcd-endpoints", config.etcd_endpoints,
        "--api", config.api,
        "--runtime", "local",
        "--work-dir", str(config.work_dir),
        "--listen", "127.0.0.1:0",
        "--etcd-root", config.etcd_root,
        "--executor-id", config.executor_id,
    ]  # fmt: skip
    # The executor's own token towards weft-api is a secret too (handed over the same way).
    peer_token = "peer-token-of-the-executor"
    process = ExecutorProcess(
        argv, home / "executor.log", {"WEFT_SECRET_DB_PASSWORD": secret, "WEFT_PEER_TOKEN": peer_token}
    )
    process.start()
    h.processes.append(process)
    try:
        granted = h.step(
            "granted", 'echo "connecting with $PASSWORD"; printf done > "$WEFT_OUTPUTS/out"', secrets=PASSWORD
        )
        peek = pipeline_pb2.Step(
            name="peek",
            container=pipeline_pb2.Container(image="python:3.11-slim", command=["python3", "-c", PEEK, str(home)]),
            outputs=[pipeline_pb2.Output(name="out")],
            depends_on=["granted"],  # not at the same time: steps of one user can read each other
        )
        del granted.container.env[0]  # no launch file: nobody cannot reach the test's tmp dir
        pipeline = await h.apply(f"peek-{executor_user}", [granted, peek])
        run = await h.wait((await h.run(pipeline.name)).name, timeout=60)
        assert run.state == Run.STATE_SUCCEEDED, run.message + process.tail()

        seen = await h.output(run, "peek")
        header = seen.split(b"\n", 1)[0].decode()
        assert header.startswith("uid 65534 ")  # nobody, whoever the executor runs as
        spawner, executor = header.split()[3], header.split()[5]
        assert executor == str(process.child.process.pid if process.child.process else 0), header
        for pid in (spawner, executor):  # each way was tried, and refused
            assert f"{pid} mem: PermissionError".encode() in seen, seen[:2000]
            if shutil.which("strace"):
                assert f"{pid} strace: read".encode() in seen
                assert b"ATTACHED" not in seen
            assert f"{pid} environ: PermissionError".encode() in seen or f"{pid} environ: read".encode() in seen
        assert secret.encode() not in seen
        assert b"WEFT_SECRET" not in seen
        assert peer_token.encode() not in seen
        assert b"WEFT_PEER_TOKEN" not in seen
        # Its initial environment (what /proc shows for its whole life) holds neither: root
        # reads it here, as a step of a root executor could not.
        initial = await asyncio.to_thread(Path(f"/proc/{executor}/environ").read_bytes)
        assert secret.encode() not in initial
        assert peer_token.encode() not in initial

        # Nothing stored or answered holds it: etcd, blobs, logs, API answers.
        logs = await read_logs(h, run.name, "granted")
        assert logs[run_pb2.LogChunk.STREAM_STDOUT] == b"connecting with *****\n"
        answers = [
            (await h.clients.runs.GetRun(run_pb2.GetRunRequest(name=run.name))).SerializeToString(),
            (await h.explain(run.name, "granted")).SerializeToString(),
            b"".join((await read_logs(h, run.name, "peek")).values()),
        ]
        for answer in answers:
            assert secret.encode() not in answer
        for kv in (await h.store.range_all(h.keyspace.root.encode() + b"/")).kvs:
            assert secret.encode() not in kv.value, kv.key
        for blob in (p for p in h.blob_dir.rglob("*") if p.is_file()):
            assert secret.encode() not in blob.read_bytes(), blob
        # No attempt directory is left, so no raw log either; the executor's log is clean.
        assert not [p for p in (home / "work").rglob("*") if p.is_file()]
        assert secret.encode() not in (home / "executor.log").read_bytes()
    finally:
        process.stop()
        shutil.rmtree(home, ignore_errors=True)
