"""`weft-api`: serve PipelineService, RunService and ArtifactService until SIGTERM/SIGINT.

    weft-api --etcd-endpoints http://127.0.0.1:2379 --listen 127.0.0.1:50051 --blob-dir DIR [--etcd-root /weft]
    weft-api --etcd-endpoints http://127.0.0.1:2379 --blob-store s3://bucket/prefix

Each flag may also come from WEFT_ETCD_ENDPOINTS, WEFT_LISTEN, WEFT_BLOB_DIR,
WEFT_BLOB_STORE and WEFT_ETCD_ROOT; object-store credentials come from the standard
variables (AWS_*, GOOGLE_*, AZURE_*) or workload identity. `--metrics-port`
(WEFT_METRICS_PORT) serves Prometheus metrics, and `--log-level`/`--log-format`
(WEFT_LOG_LEVEL, WEFT_LOG_FORMAT) shape the logs. Once serving, it prints exactly one
line to stdout, `weft-api listening on HOST:PORT`, so launchers that pass port 0 can read
the port.
Spans are exported over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set. Logs go to stderr.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from weft_api.app import create_api_server
from weft_core.config import ApiConfig, describe_config
from weft_core.logs import setup_logging
from weft_core.metrics import serve_metrics
from weft_core.server import serve_until_signal
from weft_core.telemetry import setup_tracing, shutdown_tracing

log = logging.getLogger("weft_api")


async def serve(config: ApiConfig) -> None:
    """Runs the api until SIGTERM or SIGINT."""
    server, port = create_api_server(config)
    await server.start()
    host = config.listen.rpartition(":")[0]
    if config.metrics_port is not None:
        metrics = serve_metrics(host, config.metrics_port)
        log.info("serving metrics at http://%s/metrics", metrics.address)
        server.on_stop(lambda: asyncio.to_thread(metrics.close))
    print(f"weft-api listening on {host}:{port}", flush=True)
    await serve_until_signal(server)


def main(argv: Sequence[str] | None = None) -> None:
    config = ApiConfig.from_args(argv)
    setup_logging(config.log_level, config.log_format, "weft-api")
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
