"""The spawner process itself (see `spawner.py` for what it is for and its guarantees).

Run as `python -I -S spawner_process.py FD [UID GID]`. It imports only small parts of the
standard library, never weft, asyncio or a third-party package: every held child shares
this process's pages until it execs, so its size is paid on every launch (the page
tables a fork copies, the pages either side then writes). It must never write to disk or
keep a request after the spawn.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import json
import os
import selectors
import signal
import socket
import struct
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

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
#: The byte that opens a held child's gate; EOF (or anything else) makes it exit unrun.
GATE_OPEN = b"\x01"
#: Exit code of a held child whose gate closed without opening: its command never ran.
GATE_CLOSED_EXIT = 125
#: Exit code of a held child whose exec failed (as a shell's "cannot execute").
EXEC_FAILED_EXIT = 127


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))


def start_time_of(pid: int) -> int:
    """The process's start time in clock ticks since boot (0 if it is gone): with the pid,
    it names one process for good."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
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


if __name__ == "__main__":
    main(sys.argv)
