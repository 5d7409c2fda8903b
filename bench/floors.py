"""The spawn floors the benchmarks measure weft against, in the same invocation.

One copy for bench_spawn.py and bench_local_runtime.py, so both compare with the same
floor. Run from bench/ (the scripts' own directory is on sys.path). Not a test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Sequence

TRUE = shutil.which("true") or "/bin/true"


def spawn_true(count: int, parallel: int, wrapper: Sequence[str] = ()) -> float:
    """Seconds to start and reap `true` `count` times, `parallel` at a time, through
    subprocess (each in a new session; `wrapper` is a command line put before `true`)."""
    argv = [*wrapper, TRUE]
    started = time.perf_counter()
    running: list[subprocess.Popen[bytes]] = []
    for _ in range(count):
        running.append(subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL))
        if len(running) >= parallel:
            running.pop(0).wait()
    for process in running:
        process.wait()
    return time.perf_counter() - started


def posix_spawn_true(count: int, parallel: int) -> float:
    """Seconds to `os.posix_spawn` and `waitpid` `true` `count` times, `parallel` at a
    time: the least a process start can cost here."""
    started = time.perf_counter()
    running: list[int] = []
    for _ in range(count):
        running.append(os.posix_spawn(TRUE, ["true"], {}, setsid=True))
        if len(running) >= parallel:
            os.waitpid(running.pop(0), 0)
    for pid in running:
        os.waitpid(pid, 0)
    return time.perf_counter() - started
