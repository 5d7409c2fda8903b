"""The spawner: one small, single-threaded process that starts every local step process.

Why it exists: the executor has gRPC's threads, so it must not run Python between fork
and exec (a forked child of a threaded process crashed in tests), and wrapping each step
in `setpriv --pdeathsig KILL` cost a second exec per step. The spawner is started once
per local runtime (`python -I -S spawner_process.py FD [UID GID]`: a small part of the
standard library, an environment without the executor's variables, its own session)
and starts each step with `os.posix_spawn` (vfork + exec: one exec per step, no copy of
any address space), or, for a held launch, a fork of itself (see below). This module is
the executor's side; `spawner_process.py` is the process.

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
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from weft_executor.runtime import spawner_process
from weft_executor.runtime.spawner_process import FRAME_HEADER, GATE_OPEN, start_time_of

log = logging.getLogger(__name__)

#: Seconds a spawn may take before the spawner is deemed stuck (e.g. SIGSTOPped by a step
#: of its real uid) and replaced.
SPAWN_TIMEOUT = 30.0
#: Seconds `close` waits for the spawner to kill its groups and exit.
CLOSE_TIMEOUT = 10.0


class SpawnError(Exception):
    """The spawner could not start the process; `errno` says why (ENOENT, EACCES, ...)."""

    def __init__(self, error_number: int, detail: str) -> None:
        super().__init__(detail or os.strerror(error_number))
        self.errno = error_number


# The spawner process ----------------------------------------------------------------


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
                [sys.executable, "-I", "-S", spawner_process.__file__, str(theirs.fileno()), *ids],
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
