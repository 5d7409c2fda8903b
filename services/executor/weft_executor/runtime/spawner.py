"""The spawner: one small, single-threaded process that starts every local step process.

Why it exists: the executor has gRPC's threads, so it must not run Python between fork
and exec (a forked child of a threaded process crashed in tests), and wrapping each step
in `setpriv --pdeathsig KILL` cost a second exec per step. The spawner is started once
per local runtime (`python -I -S spawner.py FD [UID GID]`: standard library only, an
environment without the executor's variables, its own session) and starts each step
with `os.posix_spawn` (vfork + exec: one exec per step, no copy of any address space).

What every step gets, all set up once on the spawner itself, since posix_spawn cannot
change ids or set prctl flags in the child:

- the steps' uid and gid when they differ from the executor's (a root executor's steps
  run as an unprivileged user): the spawner's *real* ids are the steps', its effective
  ids stay the executor's, and POSIX_SPAWN_RESETIDS gives each step the real ids as its
  effective ones (the exec makes them its saved ids too); no supplementary groups;
- no_new_privs, so no setuid binary or file capability gives a step more than its uid;
- a session of its own (it leads a new process group, which timeouts and cancels signal
  whole), stdin from /dev/null, stdout and stderr the files the executor sent
  (SCM_RIGHTS), default dispositions for the signals Python ignores or handles.

The spawner makes itself non-dumpable, so a step of the same user can read neither its
memory (`/proc/<pid>/mem`, ptrace) nor its environment; it holds a step's environment
(which may carry granted secret values) only for the duration of one spawn.

It dies with the executor: the executor holds the other end of its socket, so when the
executor exits for any reason (SIGKILL included) the spawner reads EOF, SIGKILLs every
process group it started (grandchildren included) and exits. Its own session keeps a
signal to the executor's process group from taking it down before it cleaned up. If the
spawner itself dies, the executor sees EOF and SIGKILLs the groups it was told about
(checking the leader's start time, so a reused pid is never signalled). The limits: a
step shares the spawner's real uid, so it may signal it (the executor then kills every
step and starts a new spawner); if executor and spawner are SIGKILLed at once (an OOM
kill of both), the steps keep running.

A held spawn (the local runtime's launches) starts the step behind a gate: the spawner
forks (it is single-threaded, so fork is safe there), the child sets up its session and
files and then blocks reading a pipe whose only write end the executor holds. The
executor records the attempt with the child's pid and only then writes one byte to the
gate, and the child execs the step's command; if the gate closes unwritten (the record
failed, the executor died, the spawner died), the child exits without running anything.
So a launch is one etcd write, and a command never runs unrecorded. Checks posix_spawn
would report at once (cwd, exec permission for the steps' real ids) are made before the
fork; an exec that still fails after the gate opened exits 127 and its errno rides on
the exit report.

It signals a process group only while its leader is its own unreaped child, so a pid the
kernel has reused is never signalled. At a leader's exit it SIGKILLs what is left of the
group (background children of a shell step), reaps the leader and reports the exit code.

Wire format (a Unix stream socket): executor → spawner frames are an 8-byte header
(body length, number of fds; the fds ride on the header) and a JSON body; spawner →
executor messages are JSON lines. The spawner must never import weft or a third-party
package, write to disk, or keep a request after the spawn.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import gc
import json
import logging
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

log = logging.getLogger(__name__)

#: prctl(2) options.
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
PR_SET_NO_NEW_PRIVS = 38
#: Header of an executor → spawner frame: body length, number of file descriptors.
FRAME_HEADER = struct.Struct("!II")
#: Signals Python ignores (an exec would keep them ignored) or handles, back to default in steps.
DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGCHLD)
#: Those of them Python ignores: an exec resets handled signals, not ignored ones.
IGNORED_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)
#: Seconds a spawn may take before the spawner is deemed stuck (e.g. SIGSTOPped by a step
#: of its real uid) and replaced.
SPAWN_TIMEOUT = 30.0
#: Seconds `close` waits for the spawner to kill its groups and exit.
CLOSE_TIMEOUT = 10.0
#: The byte that opens a held child's gate; EOF (or anything else) makes it exit unrun.
GATE_OPEN = b"\x01"
#: Exit code of a held child whose gate closed without opening: its command never ran.
GATE_CLOSED_EXIT = 125
#: Exit code of a held child whose exec failed (as a shell's "cannot execute").
EXEC_FAILED_EXIT = 127


class SpawnError(Exception):
    """The spawner could not start the process; `errno` says why (ENOENT, EACCES, ...)."""

    def __init__(self, error_number: int, detail: str) -> None:
        super().__init__(detail or os.strerror(error_number))
        self.errno = error_number


# The spawner process ----------------------------------------------------------------


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))


def start_time_of(pid: int) -> int:
    """The process's start time in clock ticks since boot (0 if it is gone): with the pid,
    it names one process for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return 0
    return int(stat.rpartition(b")")[2].split()[19])


def _read_exactly(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _read_frame(connection: socket.socket) -> tuple[dict[str, Any], list[int]]:
    header, fds, _, _ = socket.recv_fds(connection, FRAME_HEADER.size, 16, socket.MSG_CMSG_CLOEXEC)
    if not header:
        raise EOFError
    if len(header) < FRAME_HEADER.size:
        header += _read_exactly(connection, FRAME_HEADER.size - len(header))
    size, _ = FRAME_HEADER.unpack(header)
    return json.loads(_read_exactly(connection, size)), fds


def serve(connection: socket.socket, *, drop_ids: bool) -> None:
    """The spawner's loop: spawn and signal on request, report exits, stop at EOF.

    With `drop_ids`, each step gets the spawner's real uid and gid as its effective
    ones (`POSIX_SPAWN_RESETIDS`; the exec makes them its saved ids too).
    """
    live: set[int] = set()
    devnull = os.open(os.devnull, os.O_RDONLY)
    wake_read, wake_write = socket.socketpair()
    wake_read.setblocking(False)
    wake_write.setblocking(False)
    signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(connection, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)

    #: Held children's exec-failure pipes (read ends), by pid: read when they exit.
    failures: dict[int, int] = {}

    def send(message: dict[str, Any]) -> None:
        connection.sendall(json.dumps(message).encode() + b"\n")

    def spawn_held(request: dict[str, Any], stdout: int, stderr: int, gate: int) -> None:
        executable = request["executable"]
        try:
            os.chdir(request["cwd"])  # the child inherits it; a refusal is reported now
            # os.access checks the real ids: the steps'. The same refusal posix_spawn reports.
            if not os.access(executable, os.X_OK):
                number = errno.ENOENT if not os.path.exists(executable) else errno.EACCES
                raise OSError(number, os.strerror(number), executable)
            failure_read, failure_write = os.pipe2(os.O_CLOEXEC)
            try:
                pid = os.fork()
            except OSError:
                os.close(failure_read)
                os.close(failure_write)
                raise
            if pid == 0:
                _held_child(request, (devnull, stdout, stderr), gate, failure_write, connection.fileno(), drop_ids)
        except OSError as error:
            detail = f"{error.strerror} ({error.filename})" if error.filename else error.strerror
            send({"id": request["id"], "errno": error.errno or 0, "detail": detail or ""})
            return
        finally:
            os.chdir("/")
        os.close(failure_write)
        failures[pid] = failure_read
        live.add(pid)
        send({"id": request["id"], "pid": pid, "start": start_time_of(pid)})

    def spawn(request: dict[str, Any], stdout: int, stderr: int) -> None:
        try:
            # chdir in the spawner: the child (a vfork) starts where its parent is.
            os.chdir(request["cwd"])
            pid = os.posix_spawn(
                request["executable"],
                request["argv"],
                request["env"],
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, devnull, 0),
                    (os.POSIX_SPAWN_DUP2, stdout, 1),
                    (os.POSIX_SPAWN_DUP2, stderr, 2),
                ],
                setsid=True,
                setsigdef=DEFAULT_SIGNALS,
                resetids=drop_ids,
            )
        except OSError as error:
            detail = f"{error.strerror} ({error.filename})" if error.filename else error.strerror
            send({"id": request["id"], "errno": error.errno or 0, "detail": detail or ""})
            return
        finally:
            os.chdir("/")
        live.add(pid)
        send({"id": request["id"], "pid": pid, "start": start_time_of(pid)})

    def reap() -> None:
        while True:
            try:
                found = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if found is None:
                return
            pid = found.si_pid
            if pid in live:
                # The leader is a zombie, so its group id is still ours: end its leftovers.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            if pid in live:
                live.discard(pid)
                report: dict[str, Any] = {"exit": pid, "code": os.waitstatus_to_exitcode(status)}
                failure = failures.pop(pid, -1)
                if failure >= 0:
                    # Its writer is gone: this read never blocks.
                    number, _, detail = os.read(failure, 4096).decode(errors="replace").partition("\n")
                    os.close(failure)
                    if number:
                        report.update(errno=int(number), detail=detail)
                send(report)

    try:
        while True:
            for key, _ in selector.select():
                if key.fileobj is wake_read:
                    with contextlib.suppress(BlockingIOError):
                        while wake_read.recv(4096):
                            pass
                    continue
                request, fds = _read_frame(connection)
                try:
                    if request["op"] == "spawn" and len(fds) > 2:
                        spawn_held(request, fds[0], fds[1], fds[2])
                    elif request["op"] == "spawn":
                        spawn(request, fds[0], fds[1])
                    elif request["op"] == "signal" and request["pid"] in live:
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.killpg(request["pid"], request["signal"])
                finally:
                    for fd in fds:
                        os.close(fd)
                del request  # it may hold granted secret values
            reap()
    except (EOFError, ConnectionError):
        pass  # the executor is gone: nothing it started may outlive it
    for pid in live:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        # A held child that has not made its session yet has no group to signal.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    for pid in live:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _held_child(
    request: dict[str, Any], stdio: tuple[int, int, int], gate: int, failure: int, connection: int, drop_ids: bool
) -> NoReturn:
    """A held spawn's child (a fork of the single-threaded spawner): its session, its
    files and signals, then the gate; it execs the command only once the gate opens.

    As little as possible runs here (it is all CPU on every launch): the spawner's own
    descriptors are close-on-exec, and handled signals are reset by the exec itself. The
    socket is closed at once, so that the executor sees the spawner's EOF even while
    children are held; the received files once they are in place.
    """
    try:
        os.setsid()  # first: from now on a signal to its group reaches it
        os.close(connection)
        for number in IGNORED_SIGNALS:
            signal.signal(number, signal.SIG_DFL)
        for target, source in enumerate(stdio):
            os.dup2(source, target)  # without close-on-exec: the step's stdin, stdout, stderr
        for received in stdio[1:]:
            os.close(received)  # the executor's log files, now the step's fds 1 and 2
        if os.read(gate, 1) != GATE_OPEN:
            os._exit(GATE_CLOSED_EXIT)  # the attempt was never recorded: run nothing
        os.close(gate)
        if drop_ids:
            # POSIX_SPAWN_RESETIDS by hand: the real ids (the steps') become all of them.
            real_gid, real_uid = os.getresgid()[0], os.getresuid()[0]
            os.setresgid(real_gid, real_gid, real_gid)
            os.setresuid(real_uid, real_uid, real_uid)
        os.execve(request["executable"], request["argv"], request["env"])
    except OSError as error:
        detail = f"{error.strerror} ({error.filename})" if error.filename else error.strerror or ""
        with contextlib.suppress(OSError):
            os.write(failure, f"{error.errno or 0}\n{detail}".encode())
    except BaseException:  # a fork must never return into the spawner's loop
        pass
    os._exit(EXEC_FAILED_EXIT)


def main(argv: Sequence[str]) -> None:
    """Entry point: `spawner.py FD [UID GID]`: FD is the spawner's end of the executor's
    socket; UID and GID are the steps' when they differ from the spawner's."""
    ctypes.CDLL(None).prctl(PR_SET_NAME, b"weft-spawner", 0, 0, 0)  # its name in ps and top
    # Inherited by every step: no privilege gained through exec.
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    # Same-user steps cannot read our memory (it briefly holds granted secrets).
    _prctl(PR_SET_DUMPABLE, 0)
    connection = socket.socket(fileno=int(argv[1]))
    connection.set_inheritable(False)  # a step must neither hold it open nor talk to the executor
    connection.setblocking(True)
    drop_ids = len(argv) > 3
    if drop_ids:
        # Real ids: the steps'; effective ids stay ours, to keep spawning and signalling.
        # No supplementary groups, so no step inherits root's.
        os.setgroups([])
        os.setresgid(int(argv[3]), os.getegid(), os.getegid())
        os.setresuid(int(argv[2]), os.geteuid(), os.geteuid())
    # A held child shares our pages until it execs: the collector writing to every object
    # header would copy them all (copy-on-write) on every launch. Nothing here makes
    # cycles (requests are JSON), so it is off, and what exists now is never scanned.
    gc.disable()
    gc.freeze()
    serve(connection, drop_ids=drop_ids)


# The executor's side ----------------------------------------------------------------


async def _writable(loop: asyncio.AbstractEventLoop, connection: socket.socket) -> None:
    """Returns once `connection` can take more bytes."""
    ready: asyncio.Future[None] = loop.create_future()

    def on_writable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(connection.fileno(), on_writable)
    try:
        await ready
    finally:
        loop.remove_writer(connection.fileno())


@dataclass(frozen=True)
class SpawnRequest:
    """One process to start.

    Attributes:
        executable: Absolute path of the program.
        argv: Its argv (argv[0] as the step wrote it).
        env: Its whole environment.
        cwd: Its working directory, entered with the steps' rights.
    """

    executable: str
    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: str


@dataclass
class Child:
    """A process the spawner started.

    Attributes:
        pid: Its pid, the leader of its own process group.
        start_time: Its start time (with the pid, it names the process for good).
        exited: Its exit code once it exited (negative: the signal that killed it).
        gate: The write end of a held child's gate (-1 when not held, or opened or
            closed already).
        failure: Why its exec failed after the gate opened, set before `exited` resolves.
    """

    pid: int
    start_time: int
    exited: asyncio.Future[int]
    gate: int = -1
    failure: SpawnError | None = None

    @property
    def held(self) -> bool:
        """Whether it waits at its gate (its command has not been started)."""
        return self.gate >= 0

    def release(self) -> None:
        """Opens the gate: a held child execs its command. A no-op when not held."""
        if self.gate < 0:
            return
        gate, self.gate = self.gate, -1
        try:
            os.write(gate, GATE_OPEN)
        finally:
            os.close(gate)

    def close_gate(self) -> None:
        """Closes the gate unopened: a held child exits without running its command."""
        if self.gate >= 0:
            gate, self.gate = self.gate, -1
            os.close(gate)


class Spawner:
    """The executor's handle on its spawner process (see the module docstring).

    Args:
        uid: The steps' uid, or None for the executor's own.
        gid: The steps' gid, or None for the executor's own.

    Everything runs on the event loop's thread. The spawner starts at the first `spawn`
    and again after it died.
    """

    def __init__(self, uid: int | None = None, gid: int | None = None) -> None:
        self.uid = uid
        self.gid = gid
        self._process: subprocess.Popen[bytes] | None = None
        self._socket: socket.socket | None = None
        self._buffer = b""
        self._next_id = 0
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._spawned: dict[int, Child] = {}
        self._send_lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def pid(self) -> int:
        """The spawner's pid (0 when it is not running)."""
        return self._process.pid if self._process is not None and self._socket is not None else 0

    def start(self) -> None:
        """Starts the spawner process (a no-op when it runs); call it from the event loop.

        Raises:
            OSError: The interpreter cannot be started.
        """
        if self._socket is not None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ids = [str(self.uid), str(self.gid)] if self.uid is not None and self.gid is not None else []
        try:
            # Without a preexec_fn: CPython forks and execs in C, safe under threads.
            # /proc/self/exe: this interpreter, even where its path is not searchable.
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", str(Path(__file__)), str(theirs.fileno()), *ids],
                executable="/proc/self/exe",
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                env={"PATH": os.defpath},
                cwd="/",
                start_new_session=True,
                close_fds=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._socket = ours
        self._buffer = b""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(ours.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        assert self._socket is not None
        try:
            data = self._socket.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._on_spawner_gone()
            return
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            message = json.loads(line)
            if "exit" in message:
                child = self._spawned.pop(message["exit"], None)
                if child is not None:
                    child.close_gate()
                    if "errno" in message:
                        child.failure = SpawnError(message["errno"], message["detail"])
                    if not child.exited.done():
                        child.exited.set_result(message["code"])
                continue
            if "pid" in message:
                # Registered before any later message is read: its exit comes after.
                assert self._loop is not None
                child = Child(message["pid"], message["start"], self._loop.create_future())
                self._spawned[child.pid] = child
                message["child"] = child
            reply = self._replies.pop(message["id"], None)
            if reply is not None and not reply.done():
                reply.set_result(message)

    def _disconnect(self) -> None:
        if self._socket is not None:
            assert self._loop is not None
            self._loop.remove_reader(self._socket.fileno())
            self._socket.close()
            self._socket = None

    def _on_spawner_gone(self) -> None:
        """The spawner died before the executor: its children must not outlive it."""
        self._disconnect()
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(1)
            log.error(
                "the step spawner (pid %d) exited with %s; killing the %d steps it started",
                self._process.pid,
                self._process.returncode,
                len(self._spawned),
            )
        for pid, child in self._spawned.items():
            child.close_gate()  # a held child exits unrun
            # Reparented now, so not the spawner's zombie any more: signal the group only
            # while the pid is free (its leftovers keep the group id reserved) or still
            # names the process we started.
            if pid > 0 and start_time_of(pid) in (0, child.start_time):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
            if not child.exited.done():
                child.exited.set_result(-signal.SIGKILL)
        for reply in self._replies.values():
            if not reply.done():
                reply.set_exception(ConnectionError("the step spawner exited"))
        self._replies.clear()
        self._spawned.clear()

    async def _send(self, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
        body = json.dumps(message).encode()
        frame = FRAME_HEADER.pack(len(body), len(fds)) + body
        loop = asyncio.get_running_loop()
        async with self._send_lock:
            if self._socket is None:
                raise ConnectionError("the step spawner is not running")
            while True:
                try:
                    sent = socket.send_fds(self._socket, [frame], list(fds))
                    break
                except BlockingIOError:
                    await _writable(loop, self._socket)
            if sent < len(frame):
                await loop.sock_sendall(self._socket, frame[sent:])

    async def spawn(self, request: SpawnRequest, stdout: int, stderr: int, *, held: bool = False) -> Child:
        """Starts a process with `stdout` and `stderr` as its output files.

        With `held`, the process waits at its gate (see the module docstring) until
        `Child.release`; closing the gate (`Child.close_gate`, or this process exiting)
        ends it without running its command. Raises SpawnError when it could not start,
        ConnectionError when the spawner died meanwhile.
        """
        self.start()
        gate_read, gate_write = os.pipe2(os.O_CLOEXEC) if held else (-1, -1)
        try:
            child = await self._spawn(request, (stdout, stderr, gate_read) if held else (stdout, stderr))
        except BaseException:
            if held:
                os.close(gate_write)
            raise
        finally:
            if held:
                os.close(gate_read)  # the child holds it now; ours would hide the EOF of a close
        child.gate = gate_write
        return child

    async def _spawn(self, request: SpawnRequest, fds: Sequence[int]) -> Child:
        self._next_id += 1
        ident = self._next_id
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[ident] = reply
        message = {
            "op": "spawn",
            "id": ident,
            "executable": request.executable,
            "argv": list(request.argv),
            "env": dict(request.env),
            "cwd": request.cwd,
        }
        try:
            await self._send(message, fds)
        except BaseException:
            self._replies.pop(ident, None)
            raise
        try:
            answer = await asyncio.wait_for(reply, SPAWN_TIMEOUT)
        except TimeoutError:
            self._replies.pop(ident, None)
            if self._process is not None:
                log.error("the step spawner (pid %d) did not answer for %.0fs; replacing it", self.pid, SPAWN_TIMEOUT)
                self._process.kill()  # its EOF kills the steps it started
            raise ConnectionError(f"the step spawner did not answer for {SPAWN_TIMEOUT:.0f}s") from None
        if "pid" not in answer:
            raise SpawnError(answer["errno"], answer["detail"])
        child: Child = answer["child"]
        return child

    async def signal_group(self, pid: int, number: int) -> None:
        """Sends signal `number` to the process group of `pid` while its leader runs."""
        if pid not in self._spawned:
            return
        with contextlib.suppress(ConnectionError, OSError):
            await self._send({"op": "signal", "pid": pid, "signal": int(number)})

    async def close(self) -> None:
        """Stops the spawner; it SIGKILLs every group still running first."""
        process = self._process
        self._disconnect()  # EOF: the spawner kills its groups and exits
        if process is not None:
            try:
                await asyncio.to_thread(process.wait, CLOSE_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
        for child in self._spawned.values():
            child.close_gate()
            if not child.exited.done():
                child.exited.set_result(-signal.SIGKILL)
        self._spawned.clear()
        self._process = None


if __name__ == "__main__":
    main(sys.argv)
