"""The `weft-executor` command: run one executor until SIGTERM or SIGINT.

Prints `weft-executor <id> listening on HOST:PORT` (flushed) once it serves and is
registered, so launchers (`weft up`, tests) can read its address. Logs go to stderr.
A graceful stop abandons running attempts and revokes the lease, so other executors
take the steps over at once instead of after the lease TTL.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from weft_core.config import describe_config
from weft_core.telemetry import setup_tracing, shutdown_tracing
from weft_executor.config import ExecutorConfig
from weft_executor.executor import Executor

log = logging.getLogger("weft_executor")


async def serve(config: ExecutorConfig) -> None:
    """Runs an executor with `config` until SIGTERM or SIGINT."""
    executor = Executor(config)
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
    setup_tracing("weft-executor")
    try:
        asyncio.run(serve(config))
    except RuntimeError as error:  # cannot listen, cannot load the runtime: say why, exit non-zero
        print(f"weft-executor: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        shutdown_tracing()


if __name__ == "__main__":
    main()
