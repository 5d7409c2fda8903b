"""The local runtime: each step attempt is a process on the executor's machine.

weft's embedded default: with it `weft up` runs real pipelines on a laptop with no
cluster. An attempt gets a fresh directory `WORK/<ns>/<run>/<step>/<attempt>/` with

    work/      the default working directory (a relative `working_dir` lives inside it)
    inputs/    `$WEFT_INPUTS`: every input fetched from the artifact store by digest
    outputs/   `$WEFT_OUTPUTS`: where the step writes its declared outputs
    logs/      stdout and stderr, stored as log blobs when the attempt ends

and runs as its own process group (a new session), so a timeout or a cancel stops the
whole group (SIGTERM, then SIGKILL after a grace period). The image is recorded in the
DNA but not pulled: the command runs on the host.

A process must not outlive its executor: the child asks the kernel for SIGKILL when
its parent dies (`prctl(PR_SET_PDEATHSIG)`), so a SIGKILLed executor leaves no step
running and the executor that takes the step over starts a new attempt. The request is
made by util-linux `setpriv --pdeathsig KILL`, which then execs the step's command (the
pid stays the same). It is not made from a Python `preexec_fn`: forking a process with
gRPC's threads and running Python in the child crashed the child (SIGSEGV) in tests.
The limits: the signal reaches only the direct child, so grandchildren (what a shell
step starts) survive an executor SIGKILL unless they die with their parent (a graceful
stop, a timeout and a cancel kill the whole group); an executor killed in the
microseconds between fork and setpriv's prctl leaves the process running; without
setpriv (not Linux) there is no such protection and a warning says so at start.
PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, so attempts are
launched from the event loop's thread, never from a thread pool.

Trust: local steps run as the executor's user, so a step can read every file that user
can read (the work dir of other attempts, a kubeconfig, ...). The local runtime is for
trusted code. What is protected: a step gets only the secrets it was granted, and
`weft-executor` makes itself non-dumpable (prctl PR_SET_DUMPABLE 0) and drops the
WEFT_SECRET_* variables from its os.environ at start, so a step cannot read the
executor's environment through /proc/<ppid>/environ.

Secret environment variables are read from the executor's own environment
(`WEFT_SECRET_<NAME>_<KEY>`, upper-cased, other characters as '_') and reach only the
child's environment; stored logs and live log streams have every secret value replaced
by `*****` (invariant 8). Nothing here writes to etcd.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from opentelemetry.trace import Status, StatusCode

from weft.v1 import run_pb2
from weft_core.blobs import BlobStore
from weft_core.errors import NotFound, ServiceError, Unavailable
from weft_core.telemetry import tracer
from weft_executor.runtime import (
    STDERR,
    STDOUT,
    AttemptResult,
    AttemptSetupError,
    AttemptSpec,
    LaunchedAttempt,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

Attempt = run_pb2.Attempt

#: Variables passed from the executor's environment to every attempt.
INHERITED_ENV = ("PATH", "HOME", "LANG")
#: Prefix of the executor environment variables that hold secret values.
SECRET_ENV_PREFIX = "WEFT_SECRET_"
#: What a secret value is replaced with in logs.
REDACTED = b"*****"
#: Default largest output: bigger files fail the attempt rather than fill the store.
DEFAULT_MAX_OUTPUT_BYTES = 1024**3
#: Default seconds between SIGTERM and SIGKILL when stopping an attempt.
DEFAULT_KILL_GRACE = 5.0
#: Lines of stderr quoted in a failed attempt's message, and at most this many characters.
FAILURE_LOG_LINES = 10
FAILURE_LOG_CHARS = 2000
#: Seconds an ended attempt waits for an unavailable artifact store before it fails.
STORE_PATIENCE = 60.0
#: How often a followed log stream looks for new bytes.
LOG_POLL_SECONDS = 0.1
#: Largest chunk of a log stream.
LOG_CHUNK_BYTES = 64 * 1024


def secret_variable(secret: str, key: str) -> str:
    """The executor environment variable holding a secret's key, e.g. WEFT_SECRET_DB_PASSWORD."""
    return SECRET_ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", f"{secret}_{key}".upper())


def human_bytes(size: int) -> str:
    """`1536` → "1.5 KiB"."""
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def human_seconds(seconds: float) -> str:
    """`90` → "1m30s", `2.5` → "2.5s"."""
    if seconds < 60:
        return f"{seconds:g}s"
    minutes, rest = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{rest}s" if rest else "")
    return text


class Redactor:
    """Replaces secret values in a byte stream, also across chunk boundaries.

    `feed` returns what is safe to emit and holds back the tail that could be the start
    of a secret; `flush` returns the rest at the end of the stream.
    """

    def __init__(self, secrets: Sequence[bytes]) -> None:
        # Longest first, so a secret containing another is replaced whole.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self.hold = max((len(s) for s in self.secrets), default=1) - 1
        self._pending = b""

    def redact(self, data: bytes) -> bytes:
        for secret in self.secrets:
            data = data.replace(secret, REDACTED)
        return data

    def feed(self, data: bytes) -> bytes:
        if not self.secrets:
            return data
        text = self.redact(self._pending + data)
        if self.hold and len(text) > self.hold:
            self._pending, text = text[-self.hold :], text[: -self.hold]
        elif self.hold:
            self._pending, text = text, b""
        return text

    def flush(self) -> bytes:
        rest, self._pending = self.redact(self._pending), b""
        return rest


@dataclass
class LocalAttempt(LaunchedAttempt):
    """A launched local process and the files of its attempt."""

    process: subprocess.Popen[bytes] | None = None
    root: Path = Path()
    pidfd: int = -1
    started: float = 0.0
    secrets: tuple[bytes, ...] = ()
    exited: asyncio.Future[None] | None = None
    kill_reason: str = ""
    timed_out: bool = False
    ended: bool = False
    stopper: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def stdout_path(self) -> Path:
        return self.root / "logs" / "stdout"

    @property
    def stderr_path(self) -> Path:
        return self.root / "logs" / "stderr"

    @property
    def outputs_dir(self) -> Path:
        return self.root / "outputs"


def pdeathsig_wrapper() -> list[str]:
    """The argv prefix that makes a command die with its parent, or [] where unsupported."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return []
    try:
        usage = subprocess.run([setpriv, "--help"], capture_output=True, timeout=5, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [setpriv, "--pdeathsig", "KILL", "--"] if b"pdeathsig" in usage else []


class LocalRuntime:
    """Runs attempts as processes under `work_dir` (see the module docstring).

    Args:
        work_dir: Where attempt directories are created.
        blobs: The artifact store inputs come from and outputs and logs go to.
        max_output_bytes: Largest output file accepted; larger fails the attempt.
        kill_grace: Seconds between SIGTERM and SIGKILL when stopping an attempt.
        environ: Where PATH/HOME/LANG and secret values are read (default: os.environ).
    """

    name = "local"

    def __init__(
        self,
        work_dir: Path,
        blobs: BlobStore,
        *,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        kill_grace: float = DEFAULT_KILL_GRACE,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.work_dir = Path(work_dir)
        self.blobs = blobs
        self.max_output_bytes = max_output_bytes
        self.kill_grace = kill_grace
        self.environ = os.environ if environ is None else environ
        self._running: dict[tuple[str, str, str, int], LocalAttempt] = {}
        self._wrapper = pdeathsig_wrapper()
        if not self._wrapper:
            log.warning(
                "setpriv with --pdeathsig (util-linux) is not available: step processes of an executor that is "
                "killed with SIGKILL keep running"
            )

    # Launch ---------------------------------------------------------------------------

    def attempt_dir(self, spec: AttemptSpec) -> Path:
        return self.work_dir / spec.namespace / spec.run / spec.step / str(spec.attempt)

    async def launch(self, spec: AttemptSpec) -> LocalAttempt:
        root = self.attempt_dir(spec)
        if root.exists():
            # A launch of this attempt that was never recorded: its executor died before
            # writing the step record, and PDEATHSIG killed its process. Start clean.
            await asyncio.to_thread(shutil.rmtree, root, True)
        try:
            process, secrets = await self._prepare_and_spawn(spec, root)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        attempt = LocalAttempt(
            spec=spec,
            handle=str(process.pid),
            start_time=datetime.now(UTC),
            process=process,
            root=root,
            started=time.monotonic(),
            secrets=tuple(v.encode() for v in secrets.values()),
        )
        self._watch_exit(attempt)
        self._running[spec.key] = attempt
        return attempt

    async def _prepare_and_spawn(self, spec: AttemptSpec, root: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
        for sub in ("work", "inputs", "outputs", "logs"):
            (root / sub).mkdir(parents=True, exist_ok=True)

        with tracer().start_as_current_span("weft.input_fetch", attributes={"weft.inputs": len(spec.inputs)}):
            for name, digest in spec.inputs.items():
                await self._fetch_input(name, digest, root / "inputs" / name)

        secrets = self._resolve_secrets(spec)
        env = self._environment(spec, root, secrets)
        argv = list(spec.command)
        if not argv:
            raise AttemptSetupError('the step has no command: set container.command (e.g. ["sh", "-c", "..."])')
        cwd = self._working_dir(spec, root)
        self._check_command(argv[0], cwd, env.get("PATH", os.defpath))

        with tracer().start_as_current_span("weft.launch", attributes={"process.command": argv[0]}) as span:
            process = self._spawn(argv, cwd, env, root)
            span.set_attribute("process.pid", process.pid)
        log.info("launched %s (pid %d) for %s", argv[0], process.pid, "/".join(map(str, spec.key)))
        return process, secrets

    async def _fetch_input(self, name: str, digest: str, path: Path) -> None:
        try:
            with open(path, "wb") as target:  # noqa: ASYNC230  (small writes; a thread per chunk costs more)
                async for chunk in self.blobs.read(digest):
                    target.write(chunk)
        except NotFound:
            raise AttemptSetupError(
                f"input '{name}' ({digest}) is not in the artifact store; "
                "re-run the step that produced it (e.g. a run with cache mode REFRESH)"
            ) from None
        except ServiceError as error:
            raise AttemptSetupError(f"could not fetch input '{name}' ({digest}): {error.message}") from None

    def _resolve_secrets(self, spec: AttemptSpec) -> dict[str, str]:
        values: dict[str, str] = {}
        for name, (secret, key) in spec.secret_env.items():
            variable = secret_variable(secret, key)
            value = self.environ.get(variable)
            if value is None:
                raise AttemptSetupError(
                    f"secret env {name} (secret '{secret}', key '{key}') is not available: "
                    f"start the executor with the environment variable {variable} set"
                )
            values[name] = value
        return values

    def _environment(self, spec: AttemptSpec, root: Path, secrets: Mapping[str, str]) -> dict[str, str]:
        env = {k: self.environ[k] for k in INHERITED_ENV if k in self.environ}
        env.setdefault("PATH", os.defpath)
        env.update(spec.env)
        env.update(secrets)
        env["WEFT_INPUTS"] = str(root / "inputs")
        env["WEFT_OUTPUTS"] = str(root / "outputs")
        return env

    def _working_dir(self, spec: AttemptSpec, root: Path) -> Path:
        if not spec.working_dir:
            return root / "work"
        requested = Path(spec.working_dir)
        if requested.is_absolute():
            if not requested.is_dir():
                raise AttemptSetupError(
                    f"working directory '{requested}' does not exist on this machine; "
                    "use a relative working_dir (created inside the attempt's directory) or create it"
                )
            return requested
        cwd = root / "work" / requested
        cwd.mkdir(parents=True, exist_ok=True)
        return cwd

    def _check_command(self, command: str, cwd: Path, path: str) -> None:
        # Checked here because the wrapper would otherwise report it as its own exit code.
        if "/" not in command:
            if shutil.which(command, path=path) is None:
                raise AttemptSetupError(f"command '{command}' not found (PATH={path})")
            return
        target = Path(command) if os.path.isabs(command) else cwd / command
        if not target.is_file():
            raise AttemptSetupError(f"command '{command}' not found (no file {target})")
        if not os.access(target, os.X_OK):
            raise AttemptSetupError(f"command '{command}' is not executable (chmod +x {target})")

    def _spawn(self, argv: list[str], cwd: Path, env: dict[str, str], root: Path) -> subprocess.Popen[bytes]:
        stdout = open(root / "logs" / "stdout", "wb")  # noqa: SIM115  (the child owns it; closed below)
        stderr = open(root / "logs" / "stderr", "wb")  # noqa: SIM115
        try:
            return subprocess.Popen(
                [*self._wrapper, *argv],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
                close_fds=True,
            )
        except FileNotFoundError:
            raise AttemptSetupError(f"command '{argv[0]}' not found (PATH={env.get('PATH', '')})") from None
        except PermissionError:
            raise AttemptSetupError(f"command '{argv[0]}' is not executable (check its permissions)") from None
        except OSError as error:
            raise AttemptSetupError(f"command '{argv[0]}' could not be started: {error.strerror}") from None
        finally:
            stdout.close()
            stderr.close()

    def _watch_exit(self, attempt: LocalAttempt) -> None:
        assert attempt.process is not None
        loop = asyncio.get_running_loop()
        attempt.exited = loop.create_future()
        # A pidfd becomes readable when the process exits: no thread, no SIGCHLD handler.
        attempt.pidfd = os.pidfd_open(attempt.process.pid)
        exited = attempt.exited

        def on_exit() -> None:
            loop.remove_reader(attempt.pidfd)
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(attempt.pidfd, on_exit)

    async def adopt(self, spec: AttemptSpec, handle: str) -> LocalAttempt | None:
        # A local process dies with the executor that launched it (PDEATHSIG), so there
        # is never anything to re-attach to: the step gets a new attempt.
        return None

    # Wait -----------------------------------------------------------------------------

    async def wait(self, attempt: LaunchedAttempt) -> AttemptResult:
        assert isinstance(attempt, LocalAttempt)
        try:
            await self._wait_for_exit(attempt)
        except asyncio.CancelledError:
            self.abandon(attempt)
            raise
        exit_code = self._reap(attempt, signal.SIGKILL)
        end_time = datetime.now(UTC)
        try:
            stdout_digest, stderr_digest = await _patiently(lambda: self._store_logs(attempt))
        except ServiceError as error:
            return self._result(attempt, Attempt.STATE_FAILED, f"could not store logs: {error.message}", exit_code)

        def failed(message: str) -> AttemptResult:
            state = Attempt.STATE_FAILED
            return self._result(attempt, state, message, exit_code, stdout_digest, stderr_digest, end_time)

        if attempt.kill_reason:
            return self._result(
                attempt, Attempt.STATE_CANCELLED, attempt.kill_reason, exit_code, stdout_digest, stderr_digest, end_time
            )
        if attempt.timed_out:
            return failed(f"timed out after {human_seconds(attempt.spec.timeout or 0)}")
        if exit_code < 0:
            name = _signal_name(-exit_code)
            return failed(_with_log_tail(f"killed by signal {name}", self._stderr_tail(attempt)))
        if exit_code > 0:
            return failed(_with_log_tail(f"exit code {exit_code}", self._stderr_tail(attempt)))
        problem = self._check_outputs(attempt)
        if problem:
            return failed(problem)
        try:
            outputs = await _patiently(lambda: self._store_outputs(attempt))
        except ServiceError as error:
            return failed(f"could not store outputs: {error.message}")
        return AttemptResult(
            state=Attempt.STATE_SUCCEEDED,
            message="",
            exit_code=0,
            output_digests=outputs,
            stdout_digest=stdout_digest,
            stderr_digest=stderr_digest,
            end_time=end_time,
        )

    def _result(
        self,
        attempt: LocalAttempt,
        state: run_pb2.Attempt.State,
        message: str,
        exit_code: int,
        stdout_digest: str = "",
        stderr_digest: str = "",
        end_time: datetime | None = None,
    ) -> AttemptResult:
        return AttemptResult(
            state=state,
            message=message,
            exit_code=exit_code,
            output_digests={},
            stdout_digest=stdout_digest,
            stderr_digest=stderr_digest,
            end_time=end_time or datetime.now(UTC),
        )

    async def _wait_for_exit(self, attempt: LocalAttempt) -> None:
        assert attempt.exited is not None
        timeout = attempt.spec.timeout
        if timeout is None:
            await asyncio.shield(attempt.exited)
            return
        remaining = max(0.0, timeout - (time.monotonic() - attempt.started))
        try:
            await asyncio.wait_for(asyncio.shield(attempt.exited), remaining)
        except TimeoutError:
            attempt.timed_out = True
            await self._stop(attempt)
            await asyncio.shield(attempt.exited)

    def _reap(self, attempt: LocalAttempt, leftover_signal: int) -> int:
        """Kills what is left of the process group, collects the exit status, frees the pidfd."""
        assert attempt.process is not None
        if attempt.ended:
            return attempt.process.returncode or 0
        # The group leader is not reaped yet, so its id cannot have been reused: killing
        # the group reaches only the step's own leftovers (background children).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(attempt.process.pid, leftover_signal)
        exit_code = attempt.process.wait()
        attempt.ended = True
        loop = asyncio.get_running_loop()
        loop.remove_reader(attempt.pidfd)
        os.close(attempt.pidfd)
        if attempt.exited is not None and not attempt.exited.done():
            attempt.exited.set_result(None)
        if attempt.stopper is not None:
            attempt.stopper.cancel()
        self._running.pop(attempt.spec.key, None)
        return exit_code

    async def _stop(self, attempt: LocalAttempt) -> None:
        """SIGTERM to the group, then SIGKILL once the grace period is over."""
        assert attempt.process is not None
        assert attempt.exited is not None
        if attempt.ended:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(attempt.process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(attempt.exited), self.kill_grace)
        except TimeoutError:
            if not attempt.ended:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(attempt.process.pid, signal.SIGKILL)

    async def kill(self, attempt: LaunchedAttempt, reason: str) -> None:
        assert isinstance(attempt, LocalAttempt)
        if attempt.ended or attempt.kill_reason:
            return
        attempt.kill_reason = reason
        # Stopping takes up to the grace period; the pending `wait` reports the end.
        attempt.stopper = asyncio.create_task(self._stop(attempt))

    def abandon(self, attempt: LaunchedAttempt) -> None:
        assert isinstance(attempt, LocalAttempt)
        # The executor gave up on the attempt (lease lost, shutdown): nothing may outlive it.
        self._reap(attempt, signal.SIGKILL)

    # Outputs and logs -----------------------------------------------------------------

    def _check_outputs(self, attempt: LocalAttempt) -> str:
        for name in attempt.spec.outputs:
            path = attempt.outputs_dir / name
            if not path.exists():
                return f"step wrote no output '{name}': write it to $WEFT_OUTPUTS/{name}"
            if not path.is_file():
                return (
                    f"output '{name}' is not a regular file: write a file to $WEFT_OUTPUTS/{name} (e.g. a tar archive)"
                )
            size = path.stat().st_size
            if size > self.max_output_bytes:
                return (
                    f"output '{name}' is {human_bytes(size)}, over the limit of {human_bytes(self.max_output_bytes)} "
                    "(executor flag --max-output-bytes); write less or raise the limit"
                )
        return ""

    async def _store_outputs(self, attempt: LocalAttempt) -> dict[str, str]:
        outputs: dict[str, str] = {}
        attributes = {"weft.outputs": len(attempt.spec.outputs)}
        with tracer().start_as_current_span("weft.output_upload", attributes=attributes) as span:
            try:
                for name in attempt.spec.outputs:
                    info = await self.blobs.put_file(attempt.outputs_dir / name)
                    outputs[name] = info.digest
            except ServiceError as error:
                span.set_status(Status(StatusCode.ERROR, error.message))
                raise
        return outputs

    async def _store_logs(self, attempt: LocalAttempt) -> tuple[str, str]:
        """Stores stdout and stderr as blobs; an empty log has no blob and digest ""."""
        digests = []
        for path in (attempt.stdout_path, attempt.stderr_path):
            if path.stat().st_size == 0:
                digests.append("")
            elif attempt.secrets:
                redactor = Redactor(attempt.secrets)
                data = redactor.feed(await asyncio.to_thread(path.read_bytes)) + redactor.flush()
                digests.append((await self.blobs.put(data)).digest)
            else:
                digests.append((await self.blobs.put_file(path)).digest)
        return digests[0], digests[1]

    def _stderr_tail(self, attempt: LocalAttempt) -> str:
        try:
            with open(attempt.stderr_path, "rb") as stderr:
                stderr.seek(0, os.SEEK_END)
                size = stderr.tell()
                stderr.seek(max(0, size - 4096))
                tail = stderr.read()
        except OSError:
            return ""
        tail = Redactor(attempt.secrets).redact(tail)
        lines = tail.decode(errors="replace").rstrip("\n").splitlines()[-FAILURE_LOG_LINES:]
        # Bounded: the message is stored in every step record of the attempt (invariant 6).
        return "\n".join(lines)[-FAILURE_LOG_CHARS:]

    async def read_logs(self, attempt: LaunchedAttempt, *, follow: bool) -> AsyncIterator[tuple[int, bytes]]:
        assert isinstance(attempt, LocalAttempt)
        with contextlib.ExitStack() as files:
            try:
                # Opened once: the files stay readable after `release` removes the directory.
                streams = [
                    (STDOUT, files.enter_context(open(attempt.stdout_path, "rb"))),  # noqa: ASYNC230 (local file, no wait)
                    (STDERR, files.enter_context(open(attempt.stderr_path, "rb"))),  # noqa: ASYNC230
                ]
            except FileNotFoundError:
                return  # released already: the logs are in the artifact store
            redactors = {stream: Redactor(attempt.secrets) for stream, _ in streams}
            while True:
                # Decide before reading, so bytes written just before the end are still read.
                finished = attempt.ended or (attempt.exited is not None and attempt.exited.done()) or not follow
                for stream, source in streams:
                    while chunk := source.read(LOG_CHUNK_BYTES):
                        safe = redactors[stream].feed(chunk)
                        if safe:
                            yield stream, safe
                if finished:
                    for stream, _ in streams:
                        rest = redactors[stream].flush()
                        if rest:
                            yield stream, rest
                    return
                await asyncio.sleep(LOG_POLL_SECONDS)

    # Clean-up -------------------------------------------------------------------------

    async def release(self, attempt: LaunchedAttempt) -> None:
        assert isinstance(attempt, LocalAttempt)
        # Everything worth keeping is in the artifact store by now (outputs, redacted logs);
        # the raw log files may hold secret values a step printed, so they go too.
        await asyncio.to_thread(shutil.rmtree, attempt.root, True)

    async def close(self) -> None:
        for attempt in list(self._running.values()):
            self.abandon(attempt)

    def running(self) -> list[LocalAttempt]:
        """Attempts launched and not yet reaped."""
        return list(self._running.values())


async def _patiently(store: Callable[[], Awaitable[T]]) -> T:
    """Retries a store to the artifact store while it is unavailable (an api restart), for
    up to STORE_PATIENCE seconds: a finished attempt is worth waiting for."""
    deadline = time.monotonic() + STORE_PATIENCE
    delay = 0.1
    while True:
        try:
            return await store()
        except Unavailable as error:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("artifact store unavailable (%s); retrying in %.1fs", error.message, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _with_log_tail(message: str, tail: str) -> str:
    return f"{message}; last stderr lines:\n{tail}" if tail else message
