"""`weft-api`: serve PipelineService, RunService and ArtifactService until SIGTERM/SIGINT.

    weft-api --etcd-endpoints http://127.0.0.1:2379 --listen 127.0.0.1:50051 --blob-dir DIR [--etcd-root /weft]
    weft-api --etcd-endpoints http://127.0.0.1:2379 --blob-store s3://bucket/prefix

Each flag may also come from WEFT_ETCD_ENDPOINTS, WEFT_LISTEN, WEFT_BLOB_DIR,
WEFT_BLOB_STORE and WEFT_ETCD_ROOT; object-store credentials come from the standard
variables (AWS_*, GOOGLE_*, AZURE_*) or workload identity. Once serving, it prints exactly one line to stdout,
`weft-api listening on HOST:PORT`, so launchers that pass port 0 can read the port.
Spans are exported over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set. Logs go to stderr.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from weft_api.app import create_api_server
from weft_core.config import ApiConfig, describe_config
from weft_core.server import serve_until_signal
from weft_core.telemetry import setup_tracing, shutdown_tracing

log = logging.getLogger("weft_api")


async def serve(config: ApiConfig) -> None:
    """Runs the api until SIGTERM or SIGINT."""
    server, port = create_api_server(config)
    await server.start()
    host = config.listen.rpartition(":")[0]
    print(f"weft-api listening on {host}:{port}", flush=True)
    await serve_until_signal(server)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(
        level=os.environ.get("WEFT_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    config = ApiConfig.from_args(argv)
    log.info("starting with %s", describe_config(config))
    if setup_tracing("weft-api"):
        log.info("exporting spans over OTLP")
    try:
        asyncio.run(serve(config))
    except (RuntimeError, ValueError) as error:  # cannot listen; a bad token, roles or TLS file
        log.error("%s", error)
        sys.exit(1)
    finally:
        shutdown_tracing()
    log.info("stopped")


if __name__ == "__main__":
    main()
