"""The local runtime on its own: real processes through its spawner, a real directory store.

What the executor-level tests cannot pin down precisely: that every way an attempt ends
removes its directory, that no step process outlives its executor or its spawner, that a
working_dir never leads outside the attempt, who a step runs as, and that a large log is
redacted in bounded memory, off the event loop, across chunk boundaries.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.integration.executor.support import process_alive
from tests.support import assert_eventually, assert_eventually_async
from weft.v1 import run_pb2
from weft_core.blobs import DirectoryBlobStore, digest_of
from weft_executor.runtime import STDOUT, AttemptSetupError, AttemptSpec
from weft_executor.runtime import local as local_runtime
from weft_executor.runtime.local import LocalAttempt, LocalRuntime

Attempt = run_pb2.Attempt

ROOT = os.geteuid() == 0
SECRET = "s3cret-in-a-large-log"


def spec(script: str, *, attempt: int = 1, timeout: float | None = None, **fields: object) -> AttemptSpec:
    values: dict[str, object] = {
        "namespace": "ns",
        "run": "r1",
        "step": "s",
        "attempt": attempt,
        "image": "busybox",
        "command": ("sh", "-c", script),
        "working_dir": "",
        "env": {},
        "secret_env": {},
        "inputs": {},
        "outputs": (),
        "timeout": timeout,
        "dna": "sha256:" + "0" * 64,
    }
    values.update(fields)
    return AttemptSpec(**values)  # type: ignore[arg-type]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user can enter (pytest's tmp dir is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="weft-local-runtime-"))
    path.chmod(0o755)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


@pytest.fixture
async def runtime(shared_dir: Path) -> AsyncIterator[LocalRuntime]:
    # The default step user: nobody when the tests run as root.
    local = LocalRuntime(
        shared_dir / "work",
        DirectoryBlobStore(shared_dir / "blobs"),
        kill_grace=0.5,
        environ={"PATH": os.environ["PATH"], "WEFT_SECRET_DB_PASSWORD": SECRET},
    )
    yield local
    await local.close()


async def started(runtime: LocalRuntime, attempt_spec: AttemptSpec) -> LocalAttempt:
    """An attempt launched and let past its gate, as the executor does once it is recorded."""
    attempt = await runtime.launch(attempt_spec)
    attempt.start()
    return attempt


def group_members(pgid: int) -> list[int]:
    """Live processes (not zombies) of process group `pgid`."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


async def start_group(runtime: LocalRuntime, *, timeout: float | None = None) -> LocalAttempt:
    """An attempt whose process group has a background child besides its leader."""
    attempt = await started(runtime, spec("sleep 60 & sleep 60", timeout=timeout))
    await assert_eventually_async(
        lambda: _true(len(group_members(attempt.pid)) >= 2), what="the step started its background child"
    )
    return attempt


async def group_gone(attempt: LocalAttempt) -> None:
    # SIGKILL is delivered at once but takes effect a moment later (under load, visibly).
    await assert_eventually_async(lambda: _true(not group_members(attempt.pid)), what="the process group is gone")


async def _true(value: bool) -> bool:
    return value


# Every way an attempt ends removes its directory -------------------------------------


async def test_success_and_failure_remove_the_attempt_directory(runtime: LocalRuntime) -> None:
    ok = await started(runtime, spec('echo hi; printf x > "$WEFT_OUTPUTS/out"', outputs=("out",)))
    assert ok.root.is_dir()
    result = await runtime.wait(ok)
    assert result.state == Attempt.STATE_SUCCEEDED
    assert not ok.root.exists()

    failed = await started(runtime, spec("echo bad >&2; exit 3", attempt=2))
    result = await runtime.wait(failed)
    assert (result.state, result.exit_code) == (Attempt.STATE_FAILED, 3)
    assert result.message == "exit code 3; last stderr lines:\nbad"
    assert not failed.root.exists()


async def test_a_timeout_kills_the_group_and_removes_the_directory(runtime: LocalRuntime) -> None:
    attempt = await start_group(runtime, timeout=0.5)
    result = await runtime.wait(attempt)
    assert result.message == "timed out after 0.5s"
    await group_gone(attempt)
    assert not attempt.root.exists()


async def test_a_killed_attempt_is_cancelled_and_leaves_nothing(runtime: LocalRuntime) -> None:
    attempt = await start_group(runtime)
    waiting = asyncio.create_task(runtime.wait(attempt))
    await runtime.kill(attempt, "run cancelled")
    result = await waiting
    assert (result.state, result.message) == (Attempt.STATE_CANCELLED, "run cancelled")
    await group_gone(attempt)
    assert not attempt.root.exists()


async def test_an_abandoned_attempt_is_killed_and_removed(runtime: LocalRuntime) -> None:
    # The executor cancels the wait when it loses its lease: the attempt has no end.
    attempt = await start_group(runtime)
    waiting = asyncio.create_task(runtime.wait(attempt))
    await asyncio.sleep(0.1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await assert_eventually_async(
        lambda: _true(not attempt.root.exists() and not group_members(attempt.pid)),
        what="the abandoned attempt's group and directory are gone",
    )


async def test_an_attempt_abandoned_without_a_wait_is_removed(runtime: LocalRuntime) -> None:
    # E.g. the step record could not be written after the launch: abandon, no wait.
    attempt = await start_group(runtime)
    runtime.abandon(attempt)
    await assert_eventually_async(
        lambda: _true(not attempt.root.exists() and not group_members(attempt.pid)),
        what="the abandoned attempt's group and directory are gone",
    )


async def test_a_release_without_a_wait_removes_the_attempt(runtime: LocalRuntime) -> None:
    # E.g. the run ended (or a commit failed) before anything waited on the attempt.
    attempt = await start_group(runtime)
    await runtime.release(attempt)
    assert not attempt.root.exists()
    await assert_eventually_async(lambda: _true(not group_members(attempt.pid)), what="the group is gone")


async def test_closing_the_runtime_kills_and_removes_running_attempts(shared_dir: Path) -> None:
    local = LocalRuntime(shared_dir / "work", DirectoryBlobStore(shared_dir / "blobs"), kill_grace=0.5)
    attempt = await start_group(local)
    await local.close()
    await group_gone(attempt)
    assert not attempt.root.exists()


async def test_an_attempt_that_cannot_start_leaves_no_directory(runtime: LocalRuntime) -> None:
    missing = spec("true", inputs={"data": digest_of(b"never stored")})
    with pytest.raises(AttemptSetupError, match="input 'data'"):
        await runtime.launch(missing)
    assert not runtime.attempt_dir(missing).exists()
    with pytest.raises(AttemptSetupError, match="command 'no-such-command-weft' not found"):
        await runtime.launch(spec("", command=("no-such-command-weft",)))
    assert not runtime.attempt_dir(missing).exists()


# Nothing outlives the executor or its spawner ----------------------------------------

EXECUTOR = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from weft_core.blobs import DirectoryBlobStore
    from weft_executor.runtime import AttemptSpec
    from weft_executor.runtime.local import LocalRuntime

    async def main():
        work = Path(sys.argv[1])
        runtime = LocalRuntime(work / "work", DirectoryBlobStore(work / "blobs"))
        spec = AttemptSpec("ns", "r", "s", 1, "busybox", ("sh", "-c", "sleep 60 & sleep 60"), "", {}, {}, {}, (),
                           None, "sha256:" + "0" * 64)
        attempt = await runtime.launch(spec)
        attempt.start()
        print(attempt.pid, runtime.spawner_pid, flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("how", ["the executor", "the executor's process group"])
def test_a_sigkilled_executor_leaves_no_step_process(shared_dir: Path, how: str) -> None:
    executor = subprocess.Popen(
        [sys.executable, "-c", EXECUTOR, str(shared_dir)], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert executor.stdout is not None
        step, spawner = (int(n) for n in executor.stdout.readline().split())
        assert_eventually(lambda: len(group_members(step)) >= 2, what="the step and its background child run")
        if how == "the executor":
            executor.kill()
        else:
            os.killpg(executor.pid, signal.SIGKILL)  # the spawner has its own session: it still cleans up
        executor.wait()
        assert_eventually(lambda: group_members(step) == [], timeout=10, what="every step process is gone")
        assert_eventually(lambda: not process_alive(spawner), what="the spawner exited")
    finally:
        if executor.poll() is None:
            executor.kill()
            executor.wait()


# The spawn gate: a command runs only once its attempt is recorded ----------------------


def marker_in(shared_dir: Path) -> Path:
    """Where a step (nobody, under a root test run) can leave a file."""
    directory = shared_dir / "markers"
    directory.mkdir(exist_ok=True)
    directory.chmod(0o777)
    return directory / "ran"


HELD_EXECUTOR = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from weft_core.blobs import DirectoryBlobStore
    from weft_executor.runtime import AttemptSpec
    from weft_executor.runtime.local import LocalRuntime

    async def main():
        work, marker = Path(sys.argv[1]), sys.argv[2]
        runtime = LocalRuntime(work / "work", DirectoryBlobStore(work / "blobs"))
        spec = AttemptSpec("ns", "r", "s", 1, "busybox", ("sh", "-c", f"touch {marker}"), "", {}, {}, {}, (),
                           None, "sha256:" + "0" * 64)
        attempt = await runtime.launch(spec)  # held: as if its record were still being written
        print(attempt.pid, flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


def test_an_executor_killed_between_spawn_and_record_never_runs_the_command(shared_dir: Path) -> None:
    """Invariant "a launch always leaves a trace" with one write: the process exists before
    its record, so an executor SIGKILLed in between must take it down unrun."""
    marker = marker_in(shared_dir)
    executor = subprocess.Popen(
        [sys.executable, "-c", HELD_EXECUTOR, str(shared_dir), str(marker)],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert executor.stdout is not None
        held = int(executor.stdout.readline())
        assert process_alive(held)
        time.sleep(0.5)  # time enough for `touch` to run, were the process not held
        assert process_alive(held)
        assert not marker.exists()
        executor.kill()
        executor.wait()
        assert_eventually(lambda: not process_alive(held), timeout=10, what="the held process is gone")
        time.sleep(0.2)
        assert not marker.exists()
    finally:
        if executor.poll() is None:
            executor.kill()
            executor.wait()


@pytest.mark.parametrize("how", ["abandon", "release", "kill"])
async def test_a_held_attempt_given_up_before_its_start_never_runs(
    runtime: LocalRuntime, shared_dir: Path, how: str
) -> None:
    marker = marker_in(shared_dir)
    attempt = await runtime.launch(spec(f"touch {marker}"))
    assert attempt.held
    assert process_alive(attempt.pid)
    if how == "abandon":
        runtime.abandon(attempt)
    elif how == "release":
        await runtime.release(attempt)
    else:
        await runtime.kill(attempt, "run cancelled")
        result = await runtime.wait(attempt)
        assert result.state == Attempt.STATE_CANCELLED
    attempt.start()  # too late: the gate is closed
    await assert_eventually_async(lambda: _true(not process_alive(attempt.pid)), what="the held process exited")
    assert not marker.exists()
    assert not runtime.attempt_dir(attempt.spec).exists() or how == "kill"


async def test_a_held_attempt_runs_its_command_only_at_start(runtime: LocalRuntime, shared_dir: Path) -> None:
    marker = marker_in(shared_dir)
    script = f'touch {marker}; ls -l /proc/$$/fd > "$WEFT_OUTPUTS/fds"'
    attempt = await runtime.launch(spec(script, outputs=("fds",)))
    await asyncio.sleep(0.3)
    assert not marker.exists()
    attempt.start()
    result = await runtime.wait(attempt)
    assert result.state == Attempt.STATE_SUCCEEDED, result.message
    assert marker.exists()
    # Nothing of the spawner's (its socket above all) is left open in the step.
    fds = await runtime.blobs.get(result.output_digests["fds"])
    held_open = [line for line in fds.decode().splitlines() if " -> " in line]
    assert not [line for line in held_open if "socket:" in line or "pipe:" in line], held_open
    assert len(held_open) <= 4, held_open  # 0, 1, 2, and the shell's saved stdout (10)


async def test_an_exec_that_fails_past_the_gate_fails_the_attempt_with_the_reason(
    runtime: LocalRuntime, shared_dir: Path
) -> None:
    # Executable by its mode, so every check before the fork passes; the kernel refuses it.
    program = shared_dir / "not-a-program"
    program.write_bytes(b"\x00\x01\x02 not an executable format")
    program.chmod(0o755)
    attempt = await started(runtime, spec("", command=(str(program),)))
    result = await runtime.wait(attempt)
    assert result.state == Attempt.STATE_FAILED
    assert result.message.startswith(f"command '{program}' could not be started: Exec format error"), result.message


async def test_a_dead_spawner_takes_its_steps_with_it_and_is_replaced(runtime: LocalRuntime) -> None:
    attempt = await start_group(runtime)
    assert runtime.spawner_pid > 0
    os.kill(runtime.spawner_pid, signal.SIGKILL)
    result = await runtime.wait(attempt)
    assert result.message.startswith("killed by signal SIGKILL")
    await group_gone(attempt)
    again = await started(runtime, spec("exit 0", attempt=2))
    assert (await runtime.wait(again)).state == Attempt.STATE_SUCCEEDED


# The working directory --------------------------------------------------------------


@pytest.mark.parametrize(
    ("working_dir", "problem"),
    [
        ("../../elsewhere", "leaves the attempt's directory"),
        ("a/../../../../../elsewhere", "leaves the attempt's directory"),
        ("..", "leaves the attempt's directory"),
        ("/tmp", "is absolute"),
    ],
)
async def test_a_working_dir_outside_the_attempt_is_refused(
    runtime: LocalRuntime, working_dir: str, problem: str
) -> None:
    refused = spec("touch here", working_dir=working_dir)
    with pytest.raises(AttemptSetupError, match=problem) as error:
        await runtime.launch(refused)
    assert f"working_dir '{working_dir}'" in str(error.value)
    assert not runtime.attempt_dir(refused).exists()
    assert not (runtime.work_dir / "ns" / "elsewhere").exists()
    assert not (runtime.work_dir / "ns" / "r1" / "elsewhere").exists()


async def test_an_empty_working_dir_is_a_fresh_directory_and_a_relative_one_is_inside(runtime: LocalRuntime) -> None:
    script = 'pwd > "$WEFT_OUTPUTS/pwd"; ls -A > "$WEFT_OUTPUTS/ls"; touch leftover'
    first = await started(runtime, spec(script, outputs=("pwd", "ls")))
    fresh = runtime.attempt_dir(first.spec) / "work"
    result = await runtime.wait(first)
    assert result.state == Attempt.STATE_SUCCEEDED, result.message
    assert await runtime.blobs.get(result.output_digests["pwd"]) == f"{fresh}\n".encode()
    # The next attempt does not see what the first left behind.
    second = await started(runtime, spec(script, attempt=2, outputs=("pwd", "ls")))
    result = await runtime.wait(second)
    assert await runtime.blobs.get(result.output_digests["ls"]) == b""

    inside = await started(
        runtime, spec('pwd > "$WEFT_OUTPUTS/pwd"', attempt=3, outputs=("pwd",), working_dir="a/../b")
    )
    where = runtime.attempt_dir(inside.spec) / "work" / "b"
    result = await runtime.wait(inside)
    assert await runtime.blobs.get(result.output_digests["pwd"]) == f"{where}\n".encode()


# Who a step runs as -------------------------------------------------------------------


@pytest.mark.skipif(not ROOT, reason="needs root")
async def test_a_root_executors_steps_run_as_nobody_without_new_privileges(runtime: LocalRuntime) -> None:
    script = '{ id -u; id -G; grep NoNewPrivs /proc/self/status; echo "$HOME"; } > "$WEFT_OUTPUTS/out"'
    attempt = await started(runtime, spec(script, outputs=("out",)))
    home = runtime.attempt_dir(attempt.spec) / "work"
    result = await runtime.wait(attempt)
    assert result.state == Attempt.STATE_SUCCEEDED, result.message
    lines = (await runtime.blobs.get(result.output_digests["out"])).decode().splitlines()
    assert lines == ["65534", "65534", "NoNewPrivs:\t1", str(home)]


@pytest.mark.skipif(not ROOT, reason="needs root")
def test_a_work_dir_the_step_user_cannot_enter_is_refused_at_start(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(RuntimeError, match=r"steps run as nobody \(uid 65534, gid 65534\), who cannot enter"):
        LocalRuntime(private / "work", DirectoryBlobStore(tmp_path / "blobs"))


# Log redaction ------------------------------------------------------------------------

#: Writes `size` bytes of 'a' with the secret at the given offsets, to stdout.
LARGE_LOG = textwrap.dedent(
    """
    import os, sys
    size, secret, offsets = int(sys.argv[1]), os.environ["SHOWN"].encode(), [int(o) for o in sys.argv[2:]]
    out, position = sys.stdout.buffer, 0
    for offset in offsets:
        while position < offset:
            n = min(offset - position, 1 << 20)
            out.write(b"a" * n)
            position += n
        out.write(secret)
        position += len(secret)
    while position < size:
        n = min(size - position, 1 << 20)
        out.write(b"a" * n)
        position += n
    """
)


async def test_a_large_log_is_redacted_in_bounded_memory_off_the_event_loop(runtime: LocalRuntime) -> None:
    chunk = local_runtime.REDACT_CHUNK_BYTES
    size = 40 * 1024 * 1024
    # One secret split across the first chunk boundary, one across the twentieth, others inside.
    offsets = [chunk - 7, 3 * chunk + 100, 20 * chunk - 1, 33 * chunk + 5]
    attempt = await started(
        runtime,
        spec(
            "",
            command=("python3", "-c", LARGE_LOG, str(size), *map(str, offsets)),
            secret_env={"SHOWN": ("db", "password")},
        ),
    )
    await asyncio.shield(attempt.exited)  # type: ignore[arg-type]

    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    ticker = asyncio.create_task(tick())
    tracemalloc.start()
    try:
        result = await runtime.wait(attempt)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        ticker.cancel()
    assert result.state == Attempt.STATE_SUCCEEDED, result.message
    assert peak < 12 * 1024 * 1024, f"redacting a 40 MiB log held {peak / 2**20:.1f} MiB"
    assert ticks > 3, "the event loop was blocked while the log was redacted"

    stored = await runtime.blobs.get(result.stdout_digest)
    assert SECRET.encode() not in stored
    assert stored.count(local_runtime.REDACTED) == len(offsets)
    assert len(stored) == size - len(offsets) * (len(SECRET) - len(local_runtime.REDACTED))
    assert not attempt.root.exists()


def test_redacted_copy_replaces_a_secret_split_by_every_chunk_boundary(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(local_runtime, "REDACT_CHUNK_BYTES", 8)
    secret = b"0123456789abc"  # longer than a chunk
    for shift in range(20):
        content = b"x" * shift + secret + b"y" * 5 + secret[:4]
        fd = os.open(tmp_path, os.O_TMPFILE | os.O_RDWR)
        try:
            os.write(fd, content)
            with local_runtime.redacted_copy(fd, [secret], tmp_path) as copy:
                assert copy.read() == b"x" * shift + b"*****" + b"y" * 5 + secret[:4]
        finally:
            os.close(fd)


async def test_logs_read_after_the_end_are_the_stored_redacted_ones(runtime: LocalRuntime) -> None:
    # Between the end of the attempt and its commit, ReadAttemptLogs still asks us.
    attempt = await started(runtime, spec('echo "$SHOWN is here"', secret_env={"SHOWN": ("db", "password")}))
    result = await runtime.wait(attempt)
    assert result.state == Attempt.STATE_SUCCEEDED
    read = [(stream, data) async for stream, data in runtime.read_logs(attempt, follow=False)]
    assert read == [(STDOUT, b"***** is here\n")]


@pytest.mark.skipif(not ROOT, reason="needs root")
async def test_a_step_user_reads_the_executors_otlp_ca_through_a_copy(shared_dir: Path, tmp_path: Path) -> None:
    """`weft up --secure`'s CA is in a private directory nobody cannot enter: the step gets
    a readable copy, so its exporter can check the tracer's certificate."""
    private = tmp_path / "secure"
    private.mkdir(mode=0o700)
    (private / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n")
    environ = {
        "PATH": os.environ["PATH"],
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://127.0.0.1:1",
        "OTEL_EXPORTER_OTLP_CERTIFICATE": str(private / "ca.crt"),
    }
    local = LocalRuntime(shared_dir / "work", DirectoryBlobStore(shared_dir / "blobs"), environ=environ)
    try:
        script = 'cat "$OTEL_EXPORTER_OTLP_CERTIFICATE" > "$WEFT_OUTPUTS/out"'
        result = await local.wait(await started(local, spec(script, outputs=("out",))))
        assert result.state == Attempt.STATE_SUCCEEDED, result.message
        assert await local.blobs.get(result.output_digests["out"]) == (private / "ca.crt").read_bytes()
    finally:
        await local.close()
