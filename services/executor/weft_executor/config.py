"""Settings of weft-executor, from flags and `WEFT_*` environment variables.

The command line is a contract other components build against (`weft up`, the Helm
chart): `--etcd-endpoints`, `--api`, `--runtime`, `--max-parallel`, `--work-dir`,
`--listen`, `--etcd-root`, `--executor-id`, `--lease-ttl`, `--blob-store`, plus the executor's limits and
the settings of the kubernetes runtime (`--namespace`, `--pod-image`, ...), which live in
`KubeSettings`, their one definition: the flags take their defaults from it, and the
runtime and its pods read them from `ExecutorConfig.kube`. Nothing here contacts anything
or prints a secret.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weft_core.blobs import DEFAULT_API_PATIENCE
from weft_core.config import (
    ETCD_FLAGS,
    OPERATION_FLAGS,
    SECURITY_FLAGS,
    ConfigError,
    Flag,
    SecuritySettings,
    listen_address,
    optional_blob_store_url,
    parse_flags,
)
from weft_core.keyspace import DEFAULT_ROOT

RUNTIMES = ("local", "kubernetes")
_EXECUTOR_ID = re.compile(r"^[a-z0-9]([-a-z0-9_.]{0,61}[a-z0-9])?$")


def runtime_name(value: str) -> str:
    if value not in RUNTIMES:
        raise ValueError(f"expected one of {', '.join(RUNTIMES)}")
    return value


def default_max_parallel() -> int:
    """Four steps per CPU this process may use, at least 8 (see `--max-parallel`'s help)."""
    return max(8, 4 * len(os.sched_getaffinity(0)))


#: The default of `--max-parallel`.
DEFAULT_MAX_PARALLEL = default_max_parallel()
MAX_PARALLEL_HELP = (
    "most steps this executor runs at once (default: 4 per CPU, at least 8). "
    "More than the CPUs because most steps wait (on a network, a disk, a database, their pod) "
    "rather than compute: CPU-bound steps share the CPUs either way, and an idle slot costs "
    "only a claim. Lower it for memory-hungry steps"
)


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be at least 1")
    return number


def lease_ttl_value(value: str) -> int:
    seconds = int(value)
    if seconds < 2:
        raise ValueError("must be at least 2 seconds (etcd leases are refreshed every TTL/6)")
    return seconds


def non_negative_float(value: str) -> float:
    number = float(value)
    if number < 0:
        raise ValueError("must not be negative")
    return number


def executor_id_value(value: str) -> str:
    if value and not _EXECUTOR_ID.match(value):
        raise ValueError("use at most 63 lower-case letters, digits, '-', '_' and '.' (e.g. \"node-1\")")
    return value


def optional_path(value: str) -> Path | None:
    return Path(value) if value else None


def key_values(value: str) -> dict[str, str]:
    """`disk=ssd,zone=a` → {"disk": "ssd", "zone": "a"}."""
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE pairs separated by commas, got {item!r}")
        pairs[key] = val
    return pairs


def json_objects(value: str) -> tuple[dict[str, Any], ...]:
    """A JSON list of objects (e.g. Kubernetes tolerations); "" is none."""
    if not value:
        return ()
    parsed = json.loads(value)
    if not isinstance(parsed, list) or not all(isinstance(item, dict) for item in parsed):
        raise ValueError('expected a JSON list of objects, e.g. [{"key": "gpu", "operator": "Exists"}]')
    return tuple(parsed)


def non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must not be negative")
    return number


def default_executor_id() -> str:
    """`<host>-<pid>-<4 hex>`: unique among live executors, readable in records."""
    host = re.sub(r"[^a-z0-9-]", "-", socket.gethostname().lower()).strip("-")[:40] or "executor"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


@dataclass(frozen=True)
class KubeSettings:
    """Settings of the kubernetes runtime (its flags' dests), with their defaults.

    Attributes:
        namespace: Kubernetes namespace of the step pods.
        pod_image: weft's own image, run by the input and output containers of every pod.
        pod_api: `host:port` of weft-api as step pods reach it ("" means the executor's
            `--api`), e.g. a fully qualified Service name when the pods run in another
            namespace.
        kubeconfig: Credentials file; None uses the in-cluster service account.
        kube_qps: Client-side limit of Kubernetes API requests per second (0: none).
        kube_burst: Requests allowed at once above `kube_qps`.
        keep_failed_pods: Seconds a failed pod is kept for inspection before it is deleted.
        unschedulable_timeout: Seconds a pod may stay unschedulable before the attempt fails.
        image_pull_grace: Seconds an image may fail to pull before the attempt fails.
        pod_service_account: Service account of the step pods ("" for the namespace default).
        pod_node_selector: Node labels the step pods require.
        pod_tolerations: Taints the step pods tolerate (Kubernetes JSON objects).
        helper_grace: Seconds a pod may keep running after its step container ended and
            the attempt failed, before it is deleted (its exit code was never recorded).
        python: The interpreter inside `pod_image`.
        pod_blob_store_secret: Kubernetes Secret whose keys become environment variables
            of the pods' input and output containers only (e.g. `AWS_ACCESS_KEY_ID`,
            `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`), when the executor's `blob_store`
            is object storage; "" (the default) gives them no credentials but presigned
            URLs for exactly their attempt's inputs and outputs' staging keys instead.
        pod_api_token_secret: Kubernetes Secret (key `token`) whose token the step pods'
            helper containers (never the step's own) present to weft-api.
        pod_api_ca_secret: Kubernetes Secret (key `ca.crt`) of the CA of weft-api's
            certificate; the helpers then talk TLS to it.
    """

    namespace: str = "default"
    pod_image: str = ""
    pod_api: str = ""
    kubeconfig: Path | None = None
    kube_qps: float = 20.0
    kube_burst: int = 40
    keep_failed_pods: float = 3600.0
    unschedulable_timeout: float = 300.0
    image_pull_grace: float = 120.0
    pod_service_account: str = ""
    pod_node_selector: Mapping[str, str] = field(default_factory=dict)
    pod_tolerations: tuple[dict[str, Any], ...] = ()
    helper_grace: float = 10.0
    python: str = "python"
    pod_blob_store_secret: str = ""
    pod_api_token_secret: str = ""
    pod_api_ca_secret: str = ""


def _kube_default(name: str) -> str:
    """A KubeSettings default as a flag's default text."""
    value = getattr(KubeSettings, name)
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class ExecutorConfig(SecuritySettings):
    """Settings of weft-executor.

    Attributes:
        etcd_endpoints: Comma-separated etcd client URLs.
        api: `host:port` of weft-api (its ArtifactService stores inputs, outputs, logs).
        work_dir: Where the local runtime creates attempt directories.
        runtime: "local" or "kubernetes".
        max_parallel: Most steps this executor holds claims on at once.
        listen: `HOST:PORT` of the ExecutorService (live logs); port 0 picks a free one.
        etcd_root: Root of weft's keys in etcd.
        executor_id: This executor's id ("" generates `<host>-<pid>-<rand>`).
        lease_ttl: Seconds the executor's claims outlive it (refreshed every TTL/6).
        max_output_bytes: Largest output file a step may write.
        kill_grace: Seconds between SIGTERM and SIGKILL when stopping an attempt.
        step_user: Who local steps run as: a user name, uid or uid:gid; "" means `nobody`
            when the executor runs as root and the executor's own user otherwise.
        advertise_host: Host other processes dial for ExecutorService ("" means the listen
            host, or for a wildcard listen host $POD_IP or this host's address).
        api_patience: Seconds each call to weft-api (artifact store) is retried while the
            api is unreachable (a restart, a rolling upgrade), here and in step pods.
        metrics_port: Port of /metrics on the listen host; None serves no metrics.
        log_level: Lowest level logged.
        log_format: "text" or "json".
        kube: The kubernetes runtime's settings.
        blob_store: URL of the artifact store (`s3://bucket/prefix`, `gs://…`, `az://…`,
            `file:///dir`) that this executor (and, for object storage, its step pods)
            read and write directly; "" sends every blob through weft-api (`api`).
        auth_tokens_file .. etcd_client_key: inherited from `weft_core.config.SecuritySettings`.
        span_token_key_file: The key(s) each attempt's span token is minted with
            (`weft_core.span_tokens`; weft-tracer verifies with the same file). None
            gives steps no token: their exporters send none (fine when the tracer has no
            auth; with auth on, their spans are refused).
    """

    etcd_endpoints: str
    api: str
    work_dir: Path
    runtime: str = "local"
    max_parallel: int = DEFAULT_MAX_PARALLEL
    listen: str = "127.0.0.1:0"
    etcd_root: str = DEFAULT_ROOT
    executor_id: str = ""
    lease_ttl: int = 10
    max_output_bytes: int = 1024**3
    kill_grace: float = 5.0
    step_user: str = ""
    advertise_host: str = ""
    api_patience: float = DEFAULT_API_PATIENCE
    metrics_port: int | None = None
    log_level: str = "INFO"
    log_format: str = "text"
    kube: KubeSettings = field(default_factory=KubeSettings)
    blob_store: str = ""
    span_token_key_file: Path | None = None

    FLAGS = (
        ETCD_FLAGS[0],
        Flag("--api", "WEFT_API", "host:port of weft-api (artifact store)", convert=listen_address),
        Flag(
            "--work-dir",
            "WEFT_WORK_DIR",
            "directory for attempts' working files (local runtime)",
            default=str(Path(tempfile.gettempdir()) / "weft-attempts"),
            convert=Path,
        ),
        Flag(
            "--runtime",
            "WEFT_RUNTIME",
            "where attempts run: local or kubernetes",
            default="local",
            convert=runtime_name,
        ),
        Flag(
            "--max-parallel",
            "WEFT_MAX_PARALLEL",
            MAX_PARALLEL_HELP,
            default=str(DEFAULT_MAX_PARALLEL),
            convert=positive_int,
        ),
        Flag(
            "--listen",
            "WEFT_EXECUTOR_LISTEN",
            "HOST:PORT of the ExecutorService",
            default="127.0.0.1:0",
            convert=listen_address,
        ),
        ETCD_FLAGS[1],
        Flag("--executor-id", "WEFT_EXECUTOR_ID", "this executor's id", default="", convert=executor_id_value),
        Flag(
            "--lease-ttl",
            "WEFT_LEASE_TTL",
            "seconds claims outlive a dead executor",
            default="10",
            convert=lease_ttl_value,
        ),
        Flag(
            "--max-output-bytes",
            "WEFT_MAX_OUTPUT_BYTES",
            "largest output file a step may write",
            default=str(1024**3),
            convert=positive_int,
        ),
        Flag(
            "--kill-grace",
            "WEFT_KILL_GRACE",
            "seconds between SIGTERM and SIGKILL when stopping an attempt",
            default="5",
            convert=non_negative_float,
        ),
        Flag(
            "--step-user",
            "WEFT_STEP_USER",
            "who local steps run as: USER, UID or UID:GID (default: nobody when the executor runs as root, "
            "else the executor's user; 'root' keeps root)",
            default="",
        ),
        Flag("--advertise-host", "WEFT_ADVERTISE_HOST", "host other processes dial for live logs", default=""),
        Flag(
            "--api-patience",
            "WEFT_API_PATIENCE",
            "seconds a call to weft-api is retried while it is unreachable (a restart), here and in step pods",
            default=f"{DEFAULT_API_PATIENCE:g}",
            convert=non_negative_float,
        ),
        Flag(
            "--blob-store",
            "WEFT_BLOB_STORE",
            "artifact store URL the executor and step pods use directly: s3://BUCKET/PREFIX, gs://..., az://..., "
            'file:///DIR ("": through weft-api; credentials from the environment or workload identity)',
            default="",
            convert=optional_blob_store_url,
        ),
        *SECURITY_FLAGS,
        Flag(
            "--span-token-key-file",
            "WEFT_SPAN_TOKEN_KEY_FILE",
            "file of the key each attempt's span token is minted with (weft-tracer's); re-read when it changes",
            default="",
            convert=optional_path,
        ),
        *OPERATION_FLAGS,
    )
    #: The flags of the kubernetes runtime: their dests are the fields of KubeSettings.
    KUBE_FLAGS = (
        Flag(
            "--namespace",
            "WEFT_KUBE_NAMESPACE",
            "Kubernetes namespace of step pods",
            default=_kube_default("namespace"),
        ),
        Flag("--pod-image", "WEFT_POD_IMAGE", "weft image for the pods' helper containers", default=""),
        Flag("--kubeconfig", "WEFT_KUBECONFIG", "Kubernetes credentials file", default="", convert=optional_path),
        Flag(
            "--kube-qps",
            "WEFT_KUBE_QPS",
            "Kubernetes API requests per second",
            default=_kube_default("kube_qps"),
            convert=non_negative_float,
        ),
        Flag(
            "--kube-burst",
            "WEFT_KUBE_BURST",
            "Kubernetes API burst",
            default=_kube_default("kube_burst"),
            convert=non_negative_int,
        ),
        Flag(
            "--keep-failed-pods",
            "WEFT_KEEP_FAILED_PODS",
            "seconds failed step pods are kept",
            default=_kube_default("keep_failed_pods"),
            convert=non_negative_float,
        ),
        Flag(
            "--unschedulable-timeout",
            "WEFT_UNSCHEDULABLE_TIMEOUT",
            "seconds a step pod may stay unschedulable",
            default=_kube_default("unschedulable_timeout"),
            convert=non_negative_float,
        ),
        Flag(
            "--image-pull-grace",
            "WEFT_IMAGE_PULL_GRACE",
            "seconds an image may fail to pull",
            default=_kube_default("image_pull_grace"),
            convert=non_negative_float,
        ),
        Flag("--pod-service-account", "WEFT_POD_SERVICE_ACCOUNT", "service account of step pods", default=""),
        Flag(
            "--pod-node-selector",
            "WEFT_POD_NODE_SELECTOR",
            "node labels step pods require, KEY=VALUE,...",
            default="",
            convert=key_values,
        ),
        Flag(
            "--pod-tolerations",
            "WEFT_POD_TOLERATIONS",
            "tolerations of step pods, a JSON list",
            default="",
            convert=json_objects,
        ),
        Flag("--pod-api", "WEFT_POD_API", "host:port of weft-api as step pods reach it (default: --api)", default=""),
        Flag(
            "--pod-blob-store-secret",
            "WEFT_POD_BLOB_STORE_SECRET",
            "Secret whose keys are the store credentials of the pods' helper containers (never the step's); "
            "unset, they get presigned URLs for their attempt only",
            default="",
        ),
        Flag(
            "--pod-api-token-secret",
            "WEFT_POD_API_TOKEN_SECRET",
            "Secret (key token) the step pods' helper containers present to weft-api",
            default="",
        ),
        Flag(
            "--pod-api-ca-secret",
            "WEFT_POD_API_CA_SECRET",
            "Secret (key ca.crt) of the CA of weft-api's certificate, for the pods' helpers (turns TLS on)",
            default="",
        ),
    )

    def __post_init__(self) -> None:
        self.check_security()

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> ExecutorConfig:
        """Reads the config from flags, then WEFT_* variables, then defaults."""
        values = parse_flags(
            "weft-executor",
            "weft-executor: claims ready steps from etcd and runs them (local processes or Kubernetes pods). "
            "Secrets of the local runtime come from WEFT_SECRET_<NAME>_<KEY> variables: the executor reads them "
            "once and re-execs itself without them, each reaches only the steps granted it, and every log has "
            "every secret value masked. A root executor runs local steps as --step-user (nobody by default) "
            "with no_new_privs; steps of one user can still read each other, and a step run as the executor's "
            "user can read that user's files. The local runtime is for trusted code.",
            (*cls.FLAGS, *cls.KUBE_FLAGS),
            argv,
            environ,
        )
        kube = KubeSettings(**{flag.dest: values.pop(flag.dest) for flag in cls.KUBE_FLAGS})
        try:
            return cls(**values, kube=kube)
        except ConfigError as error:
            raise SystemExit(f"weft-executor: {error}") from None

    @property
    def pod_blob_store(self) -> str:
        """The object store URL step pods use directly ("" when they go through weft-api:
        a directory store is not reachable from a pod)."""
        from weft_core.objectstore import is_object_store_url

        return self.blob_store if is_object_store_url(self.blob_store) else ""

    @property
    def pod_api(self) -> str:
        """`host:port` of weft-api as step pods reach it."""
        return self.kube.pod_api or self.api
