"""The local runtime: each step attempt is a process on the executor's machine.

weft's embedded default: with it `weft up` runs real pipelines on a laptop with no
cluster. An attempt gets a fresh directory `WORK/<ns>/<run>/<step>/<attempt>/` with

    work/      the default working directory; a `working_dir` is relative and inside it
    inputs/    `$WEFT_INPUTS`: every input fetched from the artifact store by digest
               (made only for a step with inputs)
    outputs/   `$WEFT_OUTPUTS`: where the step writes its declared outputs (made only
               for a step that declares outputs)

Each directory operation costs a millisecond or more of wall time on a busy disk, so a
launch makes no more of them than the step needs, all in one thread hop.

Its stdout and stderr go to two unnamed files (O_TMPFILE) that only the executor and the
step hold open: no path on disk ever names a raw, unredacted log. The directory is
removed when the attempt ends, whichever way it ends (success, failure, timeout, cancel,
abandon, a shutdown): the outputs and the redacted logs are in the artifact store by then.
The image is recorded in the DNA but not pulled: the command runs on the host.

Processes are started by one spawner process per runtime (`spawner.py`), the step the
leader of its own session and process group, so a timeout or a cancel stops the whole
group (SIGTERM, then SIGKILL after the grace). A process must not outlive its executor:
when the executor dies, the spawner reads EOF on its socket and SIGKILLs every group it
started, grandchildren included.

A launch is held: `launch` returns once the process exists (its pid known) but waits at
its gate, and its command runs only at `LocalAttempt.start`, which the executor calls once
the attempt's record, pid included, is in etcd. So a launch costs one etcd write, and a
command never runs unrecorded: an attempt abandoned, released or killed before `start`
(the record failed), or an executor that dies first, closes the gate and the process
exits without running anything.

Who a step runs as (`--step-user`): when the executor runs as root, steps run as an
unprivileged user (default `nobody`, uid 65534) with no supplementary groups and
no_new_privs; otherwise as the executor's own user, with no_new_privs. A step's work,
inputs and outputs directories belong to that user, and `$HOME` is its work directory
when it runs as another user than the executor. Such a step could not read the
executor's OTLP CA file either (`weft up --secure` keeps it in a private directory): it
is copied, world-readable (a CA certificate is public), into the work directory once at
start, and the step's certificate variable names the copy.

Secrets: values come from the executor's environment (`WEFT_SECRET_<NAME>_<KEY>`,
upper-cased, other characters as '_'), which `weft-executor` reads once and then re-execs
itself without (see `__main__`), so `/proc/<executor>/environ` holds none; the executor
and the spawner are non-dumpable, so a same-user step can read neither memory nor
environment; a step's parent is the spawner, whose environment is empty. A secret value
reaches only the environment of the steps granted it. Every stored log, live log stream
and failure message has every secret value the executor holds replaced by `*****`
(invariant 8), streamed in bounded memory off the event loop.

The limits: steps running at the same time as the same user can read each other
(`/proc/<pid>/environ` of a step granted a secret, its files); with `--step-user root`
(or an executor that is not root) a step can read every file of the executor's user.
The local runtime is for code you trust with your machine. Nothing here writes to etcd.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import pwd
import re
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TypeVar

from opentelemetry.trace import Status, StatusCode

from weft.v1 import run_pb2
from weft_core.auth import SpanTokenKey
from weft_core.blobs import BlobStore
from weft_core.errors import NotFound, ServiceError, Unavailable
from weft_core.telemetry import step_telemetry_env, tracer
from weft_core.units import human_bytes, human_seconds
from weft_executor.runtime import (
    STDERR,
    STDOUT,
    AttemptResult,
    AttemptSetupError,
    AttemptSpec,
    LaunchedAttempt,
    span_token_env,
)
from weft_executor.runtime.spawner import Child, Spawner, SpawnError, SpawnRequest

log = logging.getLogger(__name__)

T = TypeVar("T")

Attempt = run_pb2.Attempt

#: Variables passed from the executor's environment to every attempt.
INHERITED_ENV = ("PATH", "HOME", "LANG")
#: Prefix of the executor environment variables that hold secret values.
SECRET_ENV_PREFIX = "WEFT_SECRET_"
#: The exporter variables naming a CA file (copied for a step user, see the module docstring).
OTLP_CERTIFICATE_ENV = ("OTEL_EXPORTER_OTLP_CERTIFICATE", "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE")
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
#: Chunk in which a stored log is redacted: what redaction holds in memory per log.
REDACT_CHUNK_BYTES = 1024 * 1024
#: The step user of a root executor when `--step-user` is not given.
DEFAULT_STEP_USER = "nobody"
#: nobody's ids where the user database has no `nobody`.
NOBODY_ID = 65534


def secret_variable(secret: str, key: str) -> str:
    """The executor environment variable holding a secret's key, e.g. WEFT_SECRET_DB_PASSWORD."""
    return SECRET_ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", f"{secret}_{key}".upper())


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


@dataclass(frozen=True)
class StepUser:
    """The user local steps run as, when it is not the executor's own."""

    name: str
    uid: int
    gid: int

    def __str__(self) -> str:
        return f"{self.name} (uid {self.uid}, gid {self.gid})"


def resolve_step_user(value: str, *, euid: int | None = None) -> StepUser | None:
    """The user named by `--step-user`, or None when steps run as the executor's user.

    `value` is a user name, a uid, or `uid:gid`; "" means `nobody` for a root executor and
    the executor's own user otherwise. Raises ValueError with the fix when the user does
    not exist or this process cannot switch to it.
    """
    euid = os.geteuid() if euid is None else euid
    if not value:
        if euid != 0:
            return None
        value = DEFAULT_STEP_USER
    name, _, group = value.partition(":")
    try:
        entry: pwd.struct_passwd | None = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        entry = None
    if entry is not None:
        uid, gid, label = entry.pw_uid, entry.pw_gid, entry.pw_name
    elif name.isdigit():
        uid, gid, label = int(name), int(name), name
    elif name == DEFAULT_STEP_USER:
        uid, gid, label = NOBODY_ID, NOBODY_ID, name
    else:
        raise ValueError(f"--step-user {value!r}: no such user; give an existing user name or a numeric uid[:gid]")
    if group:
        if not group.isdigit():
            raise ValueError(f"--step-user {value!r}: the group must be a numeric gid, e.g. 65534:65534")
        gid = int(group)
    if uid == euid and gid == os.getegid():
        return None
    if euid != 0:
        raise ValueError(
            f"--step-user {value!r}: only an executor running as root can run steps as another user; "
            "leave --step-user empty to run them as the executor's user"
        )
    return StepUser(label, uid, gid)


def unreachable_ancestor(path: Path, user: StepUser) -> Path | None:
    """The first directory from / down to `path` that `user` may not enter, or None."""
    for directory in [*reversed(path.parents), path]:
        try:
            info = directory.stat()
        except FileNotFoundError:
            return None  # created by the executor, with modes the step user can enter
        if info.st_uid == user.uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid == user.gid:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return directory
    return None


def _unnamed_file(directory: Path) -> int:
    """A file open for reading and appending that no path names (gone when closed)."""
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_APPEND | os.O_CLOEXEC, 0o600)
    except OSError as error:
        if error.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
    # A filesystem without O_TMPFILE: a named file, unlinked at once.
    handle, name = tempfile.mkstemp(dir=directory)
    try:
        return os.open(name, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
    finally:
        os.unlink(name)
        os.close(handle)


@dataclass
class LocalAttempt(LaunchedAttempt):
    """A launched local process and the files of its attempt.

    Attributes:
        pid: The step's process, leader of its own process group.
        root: The attempt's directory (removed when the attempt ends).
        log_fds: stdout and stderr (unnamed files); -1 once closed.
        log_digests: The stored (redacted) stdout and stderr, once stored.
        child: The spawner's handle on the process (its gate, its exit).
        command: argv[0] as the step wrote it and the executable it resolved to.
    """

    pid: int = 0
    root: Path = Path()
    child: Child | None = field(default=None, repr=False)
    command: tuple[str, str] = ("", "")
    log_fds: list[int] = field(default_factory=lambda: [-1, -1])
    log_digests: tuple[str, str] | None = None
    started: float = 0.0
    secrets: tuple[bytes, ...] = ()
    exited: asyncio.Future[int] | None = None
    kill_reason: str = ""
    timed_out: bool = False
    finished: bool = False
    stopper: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def outputs_dir(self) -> Path:
        return self.root / "outputs"

    @property
    def ended(self) -> bool:
        """Whether the process exited (its leftovers are killed with it)."""
        return self.exited is not None and self.exited.done()

    @property
    def held(self) -> bool:
        """Whether the process waits at its gate: its command has not run."""
        return self.child is not None and self.child.held

    def start(self) -> None:
        """Lets the held process run its command; call it once the attempt is recorded."""
        if self.child is not None and self.child.held and not self.finished:
            self.started = time.monotonic()  # the timeout counts from here
            self.child.release()

    def close_gate(self) -> None:
        """A held process exits without running its command (a no-op once started)."""
        if self.child is not None:
            self.child.close_gate()


class LocalRuntime:
    """Runs attempts as processes under `work_dir` (see the module docstring).

    Args:
        work_dir: Where attempt directories are created.
        blobs: The artifact store inputs come from and outputs and logs go to.
        max_output_bytes: Largest output file accepted; larger fails the attempt.
        kill_grace: Seconds between SIGTERM and SIGKILL when stopping an attempt.
        environ: Where PATH/HOME/LANG and secret values are read (default: os.environ).
        span_key: Mints each attempt's span token (`span_token_env`); None gives none.
        step_user: `--step-user` ("" for the default: nobody when root, else the
            executor's user).

    Raises:
        RuntimeError: The step user does not exist, cannot be switched to, or cannot
            enter `work_dir`.
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
        step_user: str = "",
        span_key: SpanTokenKey | None = None,
    ) -> None:
        self.work_dir = Path(work_dir).absolute()
        self.blobs = blobs
        self.max_output_bytes = max_output_bytes
        self.kill_grace = kill_grace
        self.environ = os.environ if environ is None else environ
        self.span_key = span_key
        try:
            self.step_user = resolve_step_user(step_user)
        except ValueError as error:
            raise RuntimeError(str(error)) from None
        if self.step_user is not None:
            blocked = unreachable_ancestor(self.work_dir, self.step_user)
            if blocked is not None:
                mode = stat.filemode(blocked.stat().st_mode)
                raise RuntimeError(
                    f"steps run as {self.step_user}, who cannot enter {blocked} ({mode}) on the way to the work "
                    f"directory {self.work_dir}: use a --work-dir they can reach (e.g. under {tempfile.gettempdir()}) "
                    "or choose another --step-user"
                )
        #: The exporter variables every step gets: its spans go where the executor's go.
        self.telemetry_env = self._readable_ca(step_telemetry_env(self.environ))
        #: Every secret value the executor holds: redacted from every log, granted or not.
        self.secrets = tuple(
            value.encode() for key, value in self.environ.items() if key.startswith(SECRET_ENV_PREFIX) and value
        )
        self._running: dict[tuple[str, str, str, int], LocalAttempt] = {}
        #: Commands found on PATH: (name, PATH) → executable (see `_find_command`).
        self._commands: dict[tuple[str, str], str] = {}
        self._cleanups: set[asyncio.Task[None]] = set()
        self._spawner = Spawner(
            self.step_user.uid if self.step_user else None, self.step_user.gid if self.step_user else None
        )
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass  # no event loop yet: the spawner starts at the first launch
        else:
            try:
                self._spawner.start()
            except OSError as error:
                raise RuntimeError(f"the local runtime cannot start its step spawner: {error}") from error

    @property
    def spawner_pid(self) -> int:
        """The spawner process's pid (0 before the first launch)."""
        return self._spawner.pid

    # Launch ---------------------------------------------------------------------------

    def attempt_dir(self, spec: AttemptSpec) -> Path:
        namespace, run, step, attempt = spec.key  # a replica has a directory of its own
        return self.work_dir / namespace / run / step / str(attempt)

    def planned_handle(self, spec: AttemptSpec) -> str:
        return ""  # a process id, known only once the process exists

    async def stop_orphan(self, spec: AttemptSpec, handle: str, reason: str) -> bool:
        # A local process dies with the executor that launched it (and a live executor
        # stops its own attempts): a process id recorded elsewhere is never ours to kill.
        return False

    async def launch(self, spec: AttemptSpec) -> LocalAttempt:
        root = self.attempt_dir(spec)
        attempt = LocalAttempt(spec=spec, handle="", start_time=datetime.now(UTC), root=root, secrets=self.secrets)
        try:
            await self._prepare_and_spawn(attempt)
        except BaseException:
            self._close_logs(attempt)
            await asyncio.to_thread(shutil.rmtree, root, True)
            raise
        self._running[spec.key] = attempt
        return attempt

    async def _prepare_and_spawn(self, attempt: LocalAttempt) -> None:
        spec, root = attempt.spec, attempt.root
        cwd = self._working_dir(spec, root)
        # Directory operations cost a millisecond or more of wall time each on a busy disk
        # (the journal), though little CPU: all of them in one thread hop, off the event loop.
        attempt.log_fds = await asyncio.to_thread(self._make_attempt_dir, spec, root, cwd)
        if spec.inputs:
            with tracer().start_as_current_span("weft.input_fetch", attributes={"weft.inputs": len(spec.inputs)}):
                for name, digest in spec.inputs.items():
                    await self._fetch_input(name, digest, root / "inputs" / name)
            if self.step_user is not None:
                for name in spec.inputs:  # a chown each: cheaper than a thread hop
                    os.chown(root / "inputs" / name, self.step_user.uid, self.step_user.gid)

        granted = self._resolve_secrets(spec)
        env = self._environment(spec, root, granted)
        argv = list(spec.command)
        if not argv:
            raise AttemptSetupError('the step has no command: set container.command (e.g. ["sh", "-c", "..."])')
        executable = self._find_command(argv[0], cwd, env.get("PATH", os.defpath))

        with tracer().start_as_current_span("weft.launch", attributes={"process.command": argv[0]}) as span:
            request = SpawnRequest(executable=executable, argv=argv, env=env, cwd=str(cwd))
            attempt.command = (argv[0], executable)
            try:
                attempt.child = await self._spawner.spawn(request, *attempt.log_fds, held=True)
                attempt.pid, attempt.exited = attempt.child.pid, attempt.child.exited
            except SpawnError as error:
                raise AttemptSetupError(self._spawn_failure(argv[0], executable, error)) from None
            except ConnectionError as error:
                raise AttemptSetupError(f"command '{argv[0]}' could not be started: {error}") from None
            span.set_attribute("process.pid", attempt.pid)
        log.info("launched %s (pid %d) for %s", argv[0], attempt.pid, "/".join(map(str, spec.key)))
        attempt.handle = str(attempt.pid)
        attempt.started = time.monotonic()

    def _make_attempt_dir(self, spec: AttemptSpec, root: Path, cwd: Path) -> list[int]:
        """Creates the attempt's directory and returns its two unnamed log files (run in a
        thread). `work/` always; `inputs/` and `outputs/` only when the step has inputs or
        declares outputs: the fewer directory operations, the cheaper a launch."""
        try:
            root.mkdir()
        except FileNotFoundError:
            root.mkdir(parents=True)  # the step's first attempt on this machine
        except FileExistsError:
            # A launch of this attempt that was never recorded: its executor died before the
            # step record landed, so its process never ran (it was held). Start clean.
            shutil.rmtree(root, True)
            root.mkdir()
        made = [root / "work"]
        if spec.inputs:
            made.append(root / "inputs")
        if spec.outputs:
            made.append(root / "outputs")
        for directory in made:
            directory.mkdir()
        work = root / "work"
        if cwd != work:
            cwd.mkdir(parents=True, exist_ok=True)
            # The final guard: nothing (a symlink included) may lead the step outside.
            if not cwd.resolve().is_relative_to(work.resolve()):
                raise AttemptSetupError(
                    f"working_dir '{spec.working_dir}' leaves the attempt's directory; give a path inside it"
                )
        if self.step_user is not None:
            # The step user owns what the step writes and reads; the attempt's directory
            # itself stays the executor's (the unnamed log files live there).
            uid, gid = self.step_user.uid, self.step_user.gid
            for directory in made:
                os.chown(directory, uid, gid)
            if cwd != work:
                for directory in [cwd, *cwd.parents]:
                    if directory == work:
                        break
                    os.chown(directory, uid, gid)
            os.chmod(root, 0o711)  # enter, not list
        return [_unnamed_file(root), _unnamed_file(root)]

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
        if self.step_user is not None:
            env["HOME"] = str(root / "work")  # the executor's home is not the step user's
        env.update(self.telemetry_env)
        env.update(span_token_env(spec, self.telemetry_env, self.span_key))
        env.update(spec.env)
        env.update(secrets)
        env["WEFT_INPUTS"] = str(root / "inputs")
        env["WEFT_OUTPUTS"] = str(root / "outputs")
        return env

    def _readable_ca(self, telemetry: dict[str, str]) -> dict[str, str]:
        """`telemetry` with its CA files copied where a step user can read them (when steps
        run as another user); a CA that cannot be copied is left as it is, with a warning."""
        if self.step_user is None:
            return telemetry
        readable = dict(telemetry)
        for name in OTLP_CERTIFICATE_ENV:
            source = telemetry.get(name)
            if not source:
                continue
            target = self.work_dir / f".{name.lower()}.pem"
            try:
                self.work_dir.mkdir(parents=True, exist_ok=True)
                spool = target.with_suffix(".tmp")
                spool.write_bytes(Path(source).read_bytes())
                spool.chmod(0o644)
                os.replace(spool, target)
            except OSError as error:
                log.warning(
                    "%s %s cannot be copied for the steps (%s): they may not trust the tracer", name, source, error
                )
                continue
            readable[name] = str(target)
        return readable

    def _working_dir(self, spec: AttemptSpec, root: Path) -> Path:
        """`work/` for an empty working_dir (fresh for every attempt), else the relative
        working_dir inside it; nothing outside the attempt's directory, ever."""
        work = root / "work"
        if not spec.working_dir:
            return work
        requested = spec.working_dir
        if os.path.isabs(requested):
            raise AttemptSetupError(
                f"working_dir '{requested}' is absolute; the local runtime runs a step inside its attempt's "
                "directory: give a relative working_dir (e.g. 'src'), created inside it"
            )
        normalized = os.path.normpath(requested)
        if normalized == os.pardir or normalized.startswith(os.pardir + os.sep):
            raise AttemptSetupError(
                f"working_dir '{requested}' leaves the attempt's directory; "
                "give a relative path without '..' components that climb out (e.g. 'src/data')"
            )
        return work / normalized  # created (and checked once more) with the attempt's directory

    def _find_command(self, command: str, cwd: Path, path: str) -> str:
        """The executable to spawn; the checks come first for messages a person can act on.

        A command found on PATH is remembered (by name and PATH) while it stays there: the
        search costs a stat per PATH entry, on every launch of a wide fan-out. A command
        installed later in an earlier PATH directory is found once the remembered one goes.
        """
        if "/" not in command:
            remembered = self._commands.get((command, path))
            if remembered is not None and os.access(remembered, os.X_OK):
                return remembered
            found = self._search_path(command, path)
            self._commands[(command, path)] = found
            return found
        target = Path(command) if os.path.isabs(command) else cwd / command
        if not target.is_file():
            raise AttemptSetupError(f"command '{command}' not found (no file {target})")
        if not os.access(target, os.X_OK):
            raise AttemptSetupError(f"command '{command}' is not executable (chmod +x {target})")
        return str(target)

    def _search_path(self, command: str, path: str) -> str:
        """The executable `command` names on `path`, as the step user would find it."""
        found = shutil.which(command, path=path)
        if found is None:
            raise AttemptSetupError(f"command '{command}' not found (PATH={path})")
        if self.step_user is None:
            return found
        # The executor's rights may find a file the step user cannot run (a Python
        # under /root): look again as the step user would.
        for directory in path.split(os.pathsep):
            candidate = Path(directory or ".") / command
            if candidate.is_file() and self._step_user_may_run(candidate):
                return str(candidate)
        raise AttemptSetupError(
            f"command '{command}' is not executable by the step user {self.step_user} "
            f"anywhere on PATH={path}: install it where that user can run it, or choose another --step-user"
        )

    def _step_user_may_run(self, candidate: Path) -> bool:
        assert self.step_user is not None
        try:
            resolved = candidate.resolve(strict=True)
            info = resolved.stat()
        except OSError:
            return False
        if unreachable_ancestor(resolved.parent, self.step_user) is not None:
            return False
        if info.st_uid == self.step_user.uid:
            return bool(info.st_mode & stat.S_IXUSR)
        if info.st_gid == self.step_user.gid:
            return bool(info.st_mode & stat.S_IXGRP)
        return bool(info.st_mode & stat.S_IXOTH)

    def _spawn_failure(self, command: str, executable: str, error: SpawnError) -> str:
        if error.errno == errno.ENOENT:
            return f"command '{command}' not found ({executable}: {error})"
        if error.errno == errno.EACCES:
            who = f" by the step user {self.step_user}" if self.step_user else ""
            return f"command '{command}' is not executable{who} ({executable}: check its permissions)"
        return f"command '{command}' could not be started: {error}"

    async def adopt(self, spec: AttemptSpec, handle: str) -> LocalAttempt | None:
        # A local process dies with the executor that launched it (its spawner kills it),
        # so there is never anything to re-attach to: the step gets a new attempt.
        return None

    # Wait -----------------------------------------------------------------------------

    async def wait(self, attempt: LaunchedAttempt) -> AttemptResult:
        assert isinstance(attempt, LocalAttempt)
        try:
            with tracer().start_as_current_span("weft.wait", attributes={"process.pid": attempt.pid}) as span:
                exit_code = await self._wait_for_exit(attempt)
                span.set_attribute("process.exit_code", exit_code)
        except asyncio.CancelledError:
            self.abandon(attempt)
            raise
        try:
            return await self._result_of(attempt, exit_code)
        finally:
            # Outputs and redacted logs are stored (or the attempt failed): nothing on
            # disk is worth keeping, and the raw logs may hold secret values.
            await self._finish(attempt)

    async def _result_of(self, attempt: LocalAttempt, exit_code: int) -> AttemptResult:
        end_time = datetime.now(UTC)
        if attempt.finished:  # abandoned while it ran: its logs are gone with it
            return self._result(attempt, Attempt.STATE_FAILED, "abandoned by its executor", exit_code)
        try:
            stdout_digest, stderr_digest = await _patiently(lambda: self._store_logs(attempt))
        except ServiceError as error:
            return self._result(attempt, Attempt.STATE_FAILED, f"could not store logs: {error.message}", exit_code)
        attempt.log_digests = (stdout_digest, stderr_digest)

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
        if attempt.child is not None and attempt.child.failure is not None:
            # The exec failed after the gate opened (the checks before the fork passed).
            return failed(self._spawn_failure(*attempt.command, attempt.child.failure))
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

    async def _wait_for_exit(self, attempt: LocalAttempt) -> int:
        assert attempt.exited is not None
        timeout = attempt.spec.timeout
        if timeout is not None:
            remaining = max(0.0, timeout - (time.monotonic() - attempt.started))
            try:
                return await asyncio.wait_for(asyncio.shield(attempt.exited), remaining)
            except TimeoutError:
                attempt.timed_out = True
                await self._stop(attempt)
        exit_code = await asyncio.shield(attempt.exited)
        if attempt.stopper is not None:
            attempt.stopper.cancel()
        return exit_code

    async def _stop(self, attempt: LocalAttempt) -> None:
        """SIGTERM to the group, then SIGKILL once the grace period is over."""
        assert attempt.exited is not None
        attempt.close_gate()  # held: it ends without running its command
        if attempt.ended:
            return
        await self._spawner.signal_group(attempt.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(attempt.exited), self.kill_grace)
        except TimeoutError:
            await self._spawner.signal_group(attempt.pid, signal.SIGKILL)

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
        if attempt.finished:
            return
        attempt.close_gate()  # at once: a held process must never start after this
        task = asyncio.get_running_loop().create_task(self._abandon(attempt))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def _abandon(self, attempt: LocalAttempt) -> None:
        attempt.close_gate()
        if not attempt.ended:
            await self._spawner.signal_group(attempt.pid, signal.SIGKILL)
        await self._finish(attempt)

    async def _finish(self, attempt: LocalAttempt) -> None:
        """Closes the raw logs and removes the attempt's directory (once)."""
        if attempt.finished:
            return
        attempt.finished = True
        attempt.close_gate()
        self._running.pop(attempt.spec.key, None)
        self._close_logs(attempt)
        await asyncio.to_thread(shutil.rmtree, attempt.root, True)

    def _close_logs(self, attempt: LocalAttempt) -> None:
        for index, fd in enumerate(attempt.log_fds):
            if fd >= 0:
                os.close(fd)
                attempt.log_fds[index] = -1

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
        for fd in attempt.log_fds:
            if os.fstat(fd).st_size == 0:
                digests.append("")
            elif attempt.secrets:
                redacted = await asyncio.to_thread(redacted_copy, fd, attempt.secrets, self.work_dir)
                with redacted:
                    info = await self.blobs.put_file(Path(f"/proc/self/fd/{redacted.fileno()}"))
                digests.append(info.digest)
            else:
                digests.append((await self.blobs.put_file(Path(f"/proc/self/fd/{fd}"))).digest)
        return digests[0], digests[1]

    def _stderr_tail(self, attempt: LocalAttempt) -> str:
        fd = attempt.log_fds[1]
        size = os.fstat(fd).st_size
        tail = os.pread(fd, 4096, max(0, size - 4096))
        tail = Redactor(attempt.secrets).redact(tail)
        lines = tail.decode(errors="replace").rstrip("\n").splitlines()[-FAILURE_LOG_LINES:]
        # Bounded: the message is stored in every step record of the attempt (invariant 6).
        return "\n".join(lines)[-FAILURE_LOG_CHARS:]

    async def read_logs(self, attempt: LaunchedAttempt, *, follow: bool) -> AsyncIterator[tuple[int, bytes]]:
        assert isinstance(attempt, LocalAttempt)
        if attempt.finished or attempt.log_fds[0] < 0:
            # Ended: the redacted logs are blobs (the step record may not name them yet).
            for stream, digest in zip((STDOUT, STDERR), attempt.log_digests or ("", ""), strict=True):
                if digest:
                    async for chunk in self.blobs.read(digest):
                        yield stream, chunk
            return
        # Our own references: the attempt's end closes its descriptors while we stream.
        sources = [(STDOUT, os.dup(attempt.log_fds[0])), (STDERR, os.dup(attempt.log_fds[1]))]
        try:
            redactors = {stream: Redactor(attempt.secrets) for stream, _ in sources}
            offsets = {stream: 0 for stream, _ in sources}
            while True:
                # Decide before reading, so bytes written just before the end are still read.
                done = attempt.ended or not follow
                for stream, fd in sources:
                    while chunk := os.pread(fd, LOG_CHUNK_BYTES, offsets[stream]):
                        offsets[stream] += len(chunk)
                        safe = redactors[stream].feed(chunk)
                        if safe:
                            yield stream, safe
                if done:
                    for stream, _ in sources:
                        rest = redactors[stream].flush()
                        if rest:
                            yield stream, rest
                    return
                await asyncio.sleep(LOG_POLL_SECONDS)
        finally:
            for _, fd in sources:
                os.close(fd)

    # Clean-up -------------------------------------------------------------------------

    async def release(self, attempt: LaunchedAttempt) -> None:
        assert isinstance(attempt, LocalAttempt)
        # `wait` or `abandon` removed everything already; this is for an attempt whose
        # wait never ran.
        if not attempt.finished:
            attempt.close_gate()
            if not attempt.ended:
                await self._spawner.signal_group(attempt.pid, signal.SIGKILL)
            await self._finish(attempt)

    async def close(self) -> None:
        for attempt in list(self._running.values()):
            self.abandon(attempt)
        if self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)
        await self._spawner.close()

    def running(self) -> list[LocalAttempt]:
        """Attempts launched and not yet ended."""
        return list(self._running.values())


def redacted_copy(fd: int, secrets: Sequence[bytes], directory: Path) -> IO[bytes]:
    """An unnamed file with the content of `fd`, every secret replaced, positioned at 0.

    Reads REDACT_CHUNK_BYTES at a time (with pread, leaving `fd`'s offset alone), so
    memory stays bounded whatever the log's size; a secret split across two chunks is
    still replaced (`Redactor` holds back a possible beginning of one).
    """
    redactor = Redactor(secrets)
    target = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115  (returned open, the caller closes it)
    try:
        offset = 0
        while chunk := os.pread(fd, REDACT_CHUNK_BYTES, offset):
            offset += len(chunk)
            target.write(redactor.feed(chunk))
        target.write(redactor.flush())
        target.flush()
        target.seek(0)
    except BaseException:
        target.close()
        raise
    return target


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
