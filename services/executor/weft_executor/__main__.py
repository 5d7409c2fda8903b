"""The `weft-executor` command: run one executor until SIGTERM or SIGINT.

Prints `weft-executor <id> listening on HOST:PORT` (flushed) once it serves and is
registered, so launchers (`weft up`, tests) can read its address. Logs go to stderr.
A graceful stop abandons running attempts and revokes the lease, so other executors
take the steps over at once instead of after the lease TTL.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence

from weft_core.config import describe_config
from weft_core.telemetry import setup_tracing, shutdown_tracing
from weft_executor.config import ExecutorConfig
from weft_executor.executor import Executor
from weft_executor.runtime.local import SECRET_ENV_PREFIX

#: prctl(2) option: whether /proc/<pid>/{environ,mem,...} of this process are readable by
#: other processes of the same user (0: only by root).
PR_SET_DUMPABLE = 4

log = logging.getLogger("weft_executor")


def protect_secrets() -> Mapping[str, str]:
    """Keeps secret values away from the steps this process starts (they run as our user).

    Makes the process non-dumpable, so a same-user process (a local step) cannot read
    `/proc/<executor pid>/environ` or its memory; then removes the `WEFT_SECRET_*`
    variables and `WEFT_PEER_TOKEN` from `os.environ` so no child inherits them by accident. Returns the
    environment the local runtime reads, secrets included.

    The limit: the initial environment block stays in memory (unsetenv cannot erase it),
    so without PR_SET_DUMPABLE (not Linux) it stays readable to same-user processes.
    """
    environ = dict(os.environ)
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_DUMPABLE, 0) failed (errno %d): steps may read secrets", ctypes.get_errno())
    else:
        log.warning("not Linux: local steps can read this executor's environment, secrets included")
    # The peer token (already read into the config) is a secret too.
    for name in [n for n in os.environ if n.startswith(SECRET_ENV_PREFIX) or n == "WEFT_PEER_TOKEN"]:
        del os.environ[name]
    return environ


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
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ExecutorConfig.from_args(argv)
    log.info("weft-executor config: %s", describe_config(config))
    environ = protect_secrets()
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
