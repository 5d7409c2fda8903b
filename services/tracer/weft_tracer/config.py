"""Settings of weft-tracer, from flags and `WEFT_*` environment variables.

The command line is a contract `weft up` and the Helm chart build against: `--listen`
(OTLP/gRPC and weft.v1.TraceService on one port), `--store` (the SQLite file),
`--etcd-endpoints` and `--etcd-root` (for run timelines; optional), the retention and
queue limits, `--forward` (an OTLP endpoint such as Jaeger's), and the security flags
every weft service shares (`weft_core.config.SECURITY_FLAGS`: token auth, TLS, etcd TLS),
and `--span-token-key-file` (the key steps' span tokens are verified with; the executors'
key). Without `--forward`,
the standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`/`OTEL_EXPORTER_OTLP_ENDPOINT` of the
tracer's own environment are *not* used: they point at the tracer itself under
`weft up`, and forwarding into itself would loop. Nothing here contacts anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from weft_core.config import (
    ETCD_FLAGS,
    SECURITY_FLAGS,
    ConfigError,
    Flag,
    SecuritySettings,
    etcd_endpoints,
    listen_address,
    optional_path,
    parse_flags,
)
from weft_core.keyspace import DEFAULT_ROOT


def optional_etcd_endpoints(value: str) -> str:
    return etcd_endpoints(value) if value else ""


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be at least 1")
    return number


def non_negative_float(value: str) -> float:
    number = float(value)
    if number < 0:
        raise ValueError("must not be negative")
    return number


def byte_size(value: str) -> int:
    """`512MiB`, `2GiB`, `1000000` → bytes (0 disables the limit)."""
    text = value.strip()
    units = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4, "KB": 1000, "MB": 1000**2, "GB": 1000**3}
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    if not text.isdigit():
        raise ValueError("expected bytes, optionally with a unit: 1000000, 512MiB, 2GiB")
    return int(text)


def forward_endpoint(value: str) -> str:
    if not value:
        return ""
    target = value
    for scheme in ("http://", "https://", "grpc://"):
        target = target.removeprefix(scheme)
    host, sep, port = target.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError("expected an OTLP/gRPC endpoint HOST:PORT or http://HOST:PORT, e.g. jaeger:4317")
    return value


@dataclass(frozen=True)
class TracerConfig(SecuritySettings):
    """Settings of weft-tracer.

    Attributes:
        listen: `HOST:PORT` serving OTLP/gRPC and weft.v1.TraceService; port 0 picks one.
        store: The span database file (SQLite, WAL mode).
        etcd_endpoints: etcd client URLs for run timelines ("" serves spans only).
        etcd_root: Root of weft's keys in etcd.
        retention_seconds: Spans older than this are pruned (0 keeps them).
        retention_bytes: The store is pruned, oldest first, above this size (0: no limit).
        prune_interval: Seconds between two passes of the pruner.
        queue_spans: Most spans waiting for the store; more are dropped and counted.
        forward: OTLP/gRPC endpoint every span is forwarded to ("" for none).
        forward_queue_spans: Most spans waiting to be forwarded; more are forward-dropped.
        forward_retry_seconds: How long one forward batch is retried before it is dropped.
        auth_tokens_file .. etcd_client_key: inherited from `weft_core.config.SecuritySettings`
            (the peer settings are accepted for uniformity; the tracer calls no weft service).
        span_token_key_file: The key(s) of the executors' span tokens
            (`weft_core.span_tokens`); with auth on, a step exporting with its attempt's
            token may store spans of its run's trace. None refuses span tokens.
    """

    listen: str = "127.0.0.1:4317"
    store: Path = Path("weft-spans.db")
    etcd_endpoints: str = ""
    etcd_root: str = DEFAULT_ROOT
    retention_seconds: float = 7 * 24 * 3600.0
    retention_bytes: int = 1024**3
    prune_interval: float = 60.0
    queue_spans: int = 100_000
    forward: str = ""
    forward_queue_spans: int = 50_000
    forward_retry_seconds: float = 30.0
    span_token_key_file: Path | None = None

    FLAGS = (
        Flag(
            "--listen",
            "WEFT_LISTEN",
            "HOST:PORT serving OTLP/gRPC and weft.v1.TraceService",
            default="127.0.0.1:4317",
            convert=listen_address,
        ),
        Flag("--store", "WEFT_TRACER_STORE", "span database file (SQLite)", default="weft-spans.db", convert=Path),
        Flag(
            "--etcd-endpoints",
            "WEFT_ETCD_ENDPOINTS",
            "etcd client URLs, comma-separated, for run timelines (empty: spans only)",
            default="",
            convert=optional_etcd_endpoints,
        ),
        ETCD_FLAGS[1],  # --etcd-root
        Flag(
            "--retention",
            "WEFT_TRACER_RETENTION",
            "seconds spans are kept (0: forever)",
            default=str(7 * 24 * 3600),
            convert=non_negative_float,
        ),
        Flag(
            "--retention-bytes",
            "WEFT_TRACER_RETENTION_BYTES",
            "largest store size before the oldest spans go (0: no limit), e.g. 1GiB",
            default="1GiB",
            convert=byte_size,
        ),
        Flag(
            "--prune-interval",
            "WEFT_TRACER_PRUNE_INTERVAL",
            "seconds between retention passes",
            default="60",
            convert=non_negative_float,
        ),
        Flag(
            "--queue-spans",
            "WEFT_TRACER_QUEUE_SPANS",
            "most spans waiting for the store (more are dropped)",
            default="100000",
            convert=positive_int,
        ),
        Flag(
            "--forward",
            "WEFT_TRACER_FORWARD",
            "OTLP/gRPC endpoint to forward every span to, e.g. jaeger:4317 (empty: none)",
            default="",
            convert=forward_endpoint,
        ),
        Flag(
            "--forward-queue-spans",
            "WEFT_TRACER_FORWARD_QUEUE_SPANS",
            "most spans waiting to be forwarded (more are forward-dropped)",
            default="50000",
            convert=positive_int,
        ),
        Flag(
            "--forward-retry",
            "WEFT_TRACER_FORWARD_RETRY",
            "seconds a forward batch is retried before it is dropped",
            default="30",
            convert=non_negative_float,
        ),
        *SECURITY_FLAGS,
        Flag(
            "--span-token-key-file",
            "WEFT_SPAN_TOKEN_KEY_FILE",
            "file of the key steps' span tokens are verified with (the executors'); re-read when it changes",
            default="",
            convert=optional_path,
        ),
    )

    def __post_init__(self) -> None:
        self.check_security()

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> TracerConfig:
        """Reads the config from flags, then WEFT_* variables, then defaults."""
        values = parse_flags(
            "weft-tracer",
            "weft-tracer: OTLP receiver, span store, run timelines and forwarding to Jaeger.",
            cls.FLAGS,
            argv,
            environ,
        )
        security = {flag.dest: values[flag.dest] for flag in SECURITY_FLAGS}
        try:
            return cls(
                **security,
                listen=values["listen"],
                store=values["store"],
                etcd_endpoints=values["etcd_endpoints"],
                etcd_root=values["etcd_root"],
                retention_seconds=values["retention"],
                retention_bytes=values["retention_bytes"],
                prune_interval=values["prune_interval"],
                queue_spans=values["queue_spans"],
                forward=values["forward"],
                forward_queue_spans=values["forward_queue_spans"],
                forward_retry_seconds=values["forward_retry"],
                span_token_key_file=values["span_token_key_file"],
            )
        except ConfigError as error:
            raise SystemExit(f"weft-tracer: {error}") from None
