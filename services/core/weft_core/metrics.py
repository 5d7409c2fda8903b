"""weft's Prometheus metrics: every metric object, and one function per thing to count.

Services call the functions (`claim_finished(...)`, `cache_decision(...)`) rather than
touching metric objects, so the executor's code carries one short line per event and the
metric names, labels and buckets live here only. `serve_metrics(host, port)` exposes the
process's registry over HTTP at `/metrics` (prometheus-client's own server, in a thread);
without it the functions still count, cheaply, and nothing is served.

Labels are small closed sets (gRPC method and code, step and run state, runtime name,
etcd method): never a run, step or pipeline name, which would grow the series without
bound. This module must never block the event loop, raise into its caller, or read etcd.
"""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

#: Seconds; from a fast etcd round trip (~1 ms) to a slow commit under load.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Seconds; attempts run from milliseconds (a local echo) to hours (training).
_ATTEMPT_BUCKETS = (0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)

# gRPC servers (weft_core.server.MetricsInterceptor) -----------------------------------

GRPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by method and status code.",
    ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
)
GRPC_HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from the start of an RPC to its status (streams: until the stream ended).",
    ["grpc_service", "grpc_method", "grpc_type"],
    buckets=_LATENCY_BUCKETS,
)

# etcd (weft_core.store) ---------------------------------------------------------------

ETCD_REQUEST_SECONDS = Histogram(
    "weft_etcd_request_duration_seconds",
    "Round trip of one etcd request, by etcd method (Range, Txn, Put, LeaseGrant...).",
    ["method"],
    buckets=_LATENCY_BUCKETS,
)
ETCD_REQUEST_ERRORS = Counter(
    "weft_etcd_request_errors_total",
    "etcd requests that failed, by method and gRPC code (UNAVAILABLE: etcd unreachable).",
    ["method", "code"],
)

# Executor: claims, commits, cache, attempts, leases, pods -------------------------------

CLAIM_SECONDS = Histogram(
    "weft_claim_duration_seconds",
    "Round trip of a claim transaction, won or not.",
    buckets=_LATENCY_BUCKETS,
)
CLAIM_CONFLICTS = Counter(
    "weft_claim_conflicts_total",
    "Claims refused because another executor held the step or its ready mark was gone.",
)
COMMIT_SECONDS = Histogram(
    "weft_commit_duration_seconds",
    "Time to commit a step's done record (retries while etcd is away included).",
    buckets=_LATENCY_BUCKETS,
)
COMMIT_CONFLICTS = Counter(
    "weft_commit_conflicts_total",
    "Commits that lost: the step was already committed by another attempt (a replica, a zombie).",
)
STEPS_FINISHED = Counter(
    "weft_steps_finished_total",
    "Steps this executor committed, by final state (SUCCEEDED, CACHED, FAILED...) and runtime.",
    ["state", "runtime"],
)
CACHE_LOOKUPS = Counter(
    "weft_cache_lookups_total",
    "Cache decisions: hit (a verified outcome reused), miss (launched), resumed (from the resumed run).",
    ["result"],
)
ATTEMPT_SECONDS = Histogram(
    "weft_attempt_duration_seconds",
    "Wall time of finished attempts, from launch to exit, by final attempt state and runtime.",
    ["state", "runtime"],
    buckets=_ATTEMPT_BUCKETS,
)
ATTEMPTS_RUNNING = Gauge("weft_attempts_running", "Attempts this executor is waiting on now.", ["runtime"])
LEASE_RENEWALS = Counter("weft_lease_renewals_total", "Successful refreshes of the executor's etcd lease.")
LEASE_RENEWAL_FAILURES = Counter(
    "weft_lease_renewal_failures_total", "Lease refreshes that failed (etcd slow or unreachable)."
)
LEASE_LOSSES = Counter(
    "weft_lease_losses_total", "Times the executor declared its lease lost and abandoned its attempts."
)
PODS_CREATED = Counter("weft_pods_created_total", "Step pods created by this executor (adopted ones not counted).")
PODS_DELETED = Counter("weft_pods_deleted_total", "Step pods this executor asked Kubernetes to delete.")

# Blobs (weft-api's ArtifactService) ----------------------------------------------------

BLOB_BYTES = Counter(
    "weft_blob_bytes_total",
    "Blob content moved through the artifact service: in (PutBlob) and out (GetBlob).",
    ["direction"],
)
BLOB_STORE_BYTES = Counter(
    "weft_blob_store_bytes_total",
    "Blob content moved straight to or from object storage, around the artifact service: written (in) "
    "or read (out), by the executor itself or by the step pods' helpers (as their executor learnt it).",
    ["direction", "mover"],
)


# Gauges computed at scrape time ---------------------------------------------------------


class _RunStates(Collector):
    """`weft_runs{state}`: runs by state, as this process last saw each of them.

    The executor sees every run's index entry (it watches them all), so it reports the
    cluster's runs; several executors report the same numbers (use max() across them).
    """

    def __init__(self) -> None:
        self._states: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()  # the scrape runs in the HTTP server's thread

    def set(self, namespace: str, run_id: str, state: str) -> None:
        with self._lock:
            self._states[(namespace, run_id)] = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            tally = Tally(self._states.values())
        family = GaugeMetricFamily("weft_runs", "Runs by state, as seen by this executor.", labels=["state"])
        for state, count in sorted(tally.items()):
            family.add_metric([state], count)
        yield family


_RUN_STATES = _RunStates()
REGISTRY.register(_RUN_STATES)

READY_QUEUE_DEPTH = Gauge("weft_ready_queue_depth", "Steps ready and unclaimed that this executor could claim now.")


# The functions services call -----------------------------------------------------------


def grpc_handled(method: str, kind: str, code: str, seconds: float) -> None:
    """One finished RPC: `method` is `/pkg.Service/Method`, `kind` unary/server_stream/..."""
    service, _, name = method.lstrip("/").partition("/")
    GRPC_HANDLED.labels(service, name, kind, code).inc()
    GRPC_HANDLING_SECONDS.labels(service, name, kind).observe(seconds)


def etcd_request(method: str, seconds: float, error_code: str = "") -> None:
    """One unary etcd request; `error_code` is the gRPC code name when it failed."""
    ETCD_REQUEST_SECONDS.labels(method).observe(seconds)
    if error_code:
        ETCD_REQUEST_ERRORS.labels(method, error_code).inc()


def claim_finished(seconds: float, *, won: bool) -> None:
    CLAIM_SECONDS.observe(seconds)
    if not won:
        CLAIM_CONFLICTS.inc()


def commit_finished(seconds: float, state: str, runtime: str, *, won: bool) -> None:
    """A done-record commit: `state` the committed step state name (e.g. SUCCEEDED)."""
    COMMIT_SECONDS.observe(seconds)
    if won:
        STEPS_FINISHED.labels(state, runtime).inc()
    else:
        COMMIT_CONFLICTS.inc()


def cache_decision(decision: str) -> None:
    """`decision` is an Explanation.Decision name: DECISION_HIT, DECISION_MISS, DECISION_RESUMED."""
    CACHE_LOOKUPS.labels(decision.removeprefix("DECISION_").lower()).inc()


def attempt_started(runtime: str) -> None:
    ATTEMPTS_RUNNING.labels(runtime).inc()


def attempt_ended(runtime: str, state: str | None, seconds: float) -> None:
    """An attempt we waited on ended; `state` None when it was abandoned (not observed)."""
    ATTEMPTS_RUNNING.labels(runtime).dec()
    if state is not None:
        ATTEMPT_SECONDS.labels(state.removeprefix("STATE_"), runtime).observe(max(0.0, seconds))


def lease_renewed(ok: bool) -> None:
    (LEASE_RENEWALS if ok else LEASE_RENEWAL_FAILURES).inc()


def lease_lost() -> None:
    LEASE_LOSSES.inc()


def pod_created() -> None:
    PODS_CREATED.inc()


def pod_deleted() -> None:
    PODS_DELETED.inc()


def blob_bytes(direction: str, size: int) -> None:
    """`direction` is "in" (stored) or "out" (served)."""
    BLOB_BYTES.labels(direction).inc(size)


def blob_store_bytes(direction: str, mover: str, size: int) -> None:
    """`direction` is "in" (written to object storage) or "out" (read from it); `mover`
    is "executor" or "pod" (a step pod's helpers, through presigned URLs or credentials)."""
    BLOB_STORE_BYTES.labels(direction, mover).inc(size)


def run_state(namespace: str, run_id: str, state: str) -> None:
    """The latest state seen of a run (a Run.State name, e.g. STATE_RUNNING)."""
    _RUN_STATES.set(namespace, run_id, state.removeprefix("STATE_"))


def watch_ready_queue(depth: Callable[[], int]) -> None:
    """Reports `depth()` as the ready queue depth at every scrape."""
    READY_QUEUE_DEPTH.set_function(lambda: float(depth()))


@contextmanager
def timed() -> Iterator[Callable[[], float]]:
    """`with timed() as elapsed: ...; elapsed()` → seconds since the block started."""
    started = time.monotonic()
    yield lambda: time.monotonic() - started


class MetricsEndpoint:
    """The `/metrics` HTTP server of one process (a daemon thread); `close()` stops it."""

    def __init__(self, host: str, port: int) -> None:
        self._server, self._thread = start_http_server(port, addr=host)
        self.host = host
        self.port = int(self._server.server_port)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_metrics(host: str, port: int) -> MetricsEndpoint:
    """Serves this process's metrics at `http://host:port/metrics`; port 0 picks a free one.

    Raises:
        RuntimeError: If the address cannot be bound.
    """
    try:
        return MetricsEndpoint(host, port)
    except OSError as error:
        raise RuntimeError(
            f"cannot serve metrics on {host}:{port}: {error}; pick a free --metrics-port or 0 for any"
        ) from error
