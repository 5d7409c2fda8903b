"""The `weft-executor` command: run one executor until SIGTERM or SIGINT.

Prints `weft-executor <id> listening on HOST:PORT` (flushed) once it serves and is
registered, so launchers (`weft up`, tests) can read its address. Logs go to stderr.
A graceful stop abandons running attempts and revokes the lease, so other executors
take the steps over at once instead of after the lease TTL. Started with `WEFT_SECRET_*`
variables, it first re-execs itself without them (same pid; see `hand_over_secrets`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence

from weft_core.config import describe_config
from weft_core.logs import setup_logging
from weft_core.telemetry import setup_tracing, shutdown_tracing
from weft_executor.config import ExecutorConfig
from weft_executor.executor import Executor
from weft_executor.runtime.local import SECRET_ENV_PREFIX

#: prctl(2) option: whether /proc/<pid>/{environ,mem,...} of this process are readable by
#: other processes of the same user (0: only by root).
PR_SET_DUMPABLE = 4
#: After the re-exec: the descriptor the secrets arrive on.
SECRETS_FD_ENV = "WEFT_EXECUTOR_SECRETS_FD"

log = logging.getLogger("weft_executor")

#: The executor's bearer token towards weft-api (weft_core.config.SECURITY_FLAGS).
PEER_TOKEN_ENV = "WEFT_PEER_TOKEN"


def _reexec_without_secrets(secrets: Mapping[str, str]) -> None:
    """Starts this program again, in this process, with the secrets on an inherited memfd
    instead of in the environment. Does not return."""
    handover = os.memfd_create("weft-executor-secrets", 0)  # no CLOEXEC: it crosses the exec
    os.write(handover, json.dumps(dict(secrets)).encode())
    os.lseek(handover, 0, os.SEEK_SET)
    environ = {k: v for k, v in os.environ.items() if k not in secrets}
    environ[SECRETS_FD_ENV] = str(handover)
    sys.stdout.flush()
    sys.stderr.flush()
    script = sys.orig_argv[1] if len(sys.orig_argv) > 1 else ""
    if os.path.isabs(script) and os.access(script, os.X_OK):
        # The console script again, so the process keeps its name (`weft-executor` in ps).
        with contextlib.suppress(OSError):
            os.execve(script, sys.orig_argv[1:], environ)
    # /proc/self/exe: the interpreter already running, even where its path is not
    # searchable by this user; argv[0] keeps sys.executable (and the virtualenv) as it was.
    os.execve("/proc/self/exe", [sys.executable, *sys.orig_argv[1:]], environ)


def hand_over_secrets() -> Mapping[str, str]:
    """Keeps secret values away from the steps this process starts.

    The `WEFT_SECRET_*` variables and `WEFT_PEER_TOKEN` are read once: this program re-execs itself (same pid,
    same arguments) without them and receives them on a memfd it reads and closes, so its
    initial environment, what `/proc/<pid>/environ` shows for the life of the process,
    holds none. It makes itself non-dumpable, so a same-user process (a local step of a
    non-root executor) can read neither that nor its memory; steps of a root executor run
    as another user and could not anyway. Returns the environment the local runtime reads,
    secrets included.

    The limit: not on Linux, there is no re-exec and no PR_SET_DUMPABLE; the variables are
    only removed from os.environ and the initial environment stays readable to same-user
    processes (a warning says so).
    """
    # The peer token (how this executor reaches weft-api) is a secret too.
    secrets = {k: v for k, v in os.environ.items() if k.startswith(SECRET_ENV_PREFIX) or k == PEER_TOKEN_ENV}
    if sys.platform != "linux":
        log.warning("not Linux: local steps can read this executor's environment, secrets included")
        for name in secrets:
            del os.environ[name]
        return {**os.environ, **secrets}
    if secrets:
        _reexec_without_secrets(secrets)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_DUMPABLE, 0) failed (errno %d): steps may read secrets", ctypes.get_errno())
    handover = os.environ.pop(SECRETS_FD_ENV, "")
    received: dict[str, str] = {}
    if handover:
        with os.fdopen(int(handover), "rb") as source:
            received = json.loads(source.read())
    return {**os.environ, **received}


async def serve(config: ExecutorConfig, environ: Mapping[str, str] | None = None) -> None:
    """Runs an executor with `config` until SIGTERM or SIGINT."""
    executor = Executor(config, environ=environ)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await executor.start()
    print(f"weft-executor {executor.executor_id} listening on {executor.address}", flush=True)
    try:
        await stop.wait()
        log.info("stopping executor %s", executor.executor_id)
    finally:
        await executor.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `weft-executor` console script."""
    environ = hand_over_secrets()  # first: it may re-exec this program
    config = ExecutorConfig.from_args(argv, environ)  # environ: the peer token came on the memfd
    setup_logging(config.log_level, config.log_format, "weft-executor")
    log.info("weft-executor config: %s", describe_config(config))
    setup_tracing("weft-executor")
    try:
        asyncio.run(serve(config, environ))
    except RuntimeError as error:  # cannot listen, cannot load the runtime: say why, exit non-zero
        print(f"weft-executor: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        shutdown_tracing()


if __name__ == "__main__":
    main()
