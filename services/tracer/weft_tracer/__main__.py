"""`weft-tracer`: receive OTLP spans, store them, forward them, serve run timelines.

    weft-tracer --listen 127.0.0.1:4317 --store spans.db [--etcd-endpoints URL] [--forward jaeger:4317]

Every flag may also come from its WEFT_* variable (`weft-tracer --help` lists them).
Once serving, it prints exactly one line to stdout, `weft-tracer listening on HOST:PORT`,
so launchers that pass port 0 can read the port. Logs go to stderr. SIGTERM/SIGINT stop
it gracefully: acknowledged spans are written before it exits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from weft_core.config import describe_config
from weft_core.server import serve_until_signal
from weft_tracer.app import create_tracer
from weft_tracer.config import TracerConfig

log = logging.getLogger("weft_tracer")


async def serve(config: TracerConfig) -> None:
    """Runs the tracer until SIGTERM or SIGINT."""
    tracer = await create_tracer(config)
    await tracer.server.start()
    host = config.listen.rpartition(":")[0]
    print(f"weft-tracer listening on {host}:{tracer.port}", flush=True)
    await serve_until_signal(tracer.server)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(
        level=os.environ.get("WEFT_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    config = TracerConfig.from_args(argv)
    log.info("starting with %s", describe_config(config))
    try:
        asyncio.run(serve(config))
    except (RuntimeError, ValueError) as error:  # cannot listen; a bad token, roles or TLS file
        log.error("%s", error)
        sys.exit(1)
    log.info("stopped")


if __name__ == "__main__":
    main()
