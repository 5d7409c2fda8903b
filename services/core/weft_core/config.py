"""Typed configuration of weft's services, read from flags and `WEFT_*` environment variables.

Each service has one frozen dataclass (`ApiConfig` here; the executor defines its
`ExecutorConfig` with the same helpers). A flag wins over its environment variable, which
wins over the default. `describe_config` renders a config for the start-up log with
secrets masked: fields marked `secret=True` and passwords inside URLs. This module must
never log or print a secret in clear, and never reads files or contacts anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weft_core.keyspace import DEFAULT_ROOT
from weft_core.logs import log_format, log_level

_MASK = "*****"
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]*)@")


@dataclass(frozen=True)
class Flag:
    """One command-line flag with the environment variable that also sets it.

    Attributes:
        name: The flag, e.g. `--etcd-endpoints`; its dest is the name without dashes,
            with `-` turned into `_` (`etcd_endpoints`), matching the config field.
        env: The environment variable read when the flag is absent, e.g. `WEFT_ETCD_ENDPOINTS`.
        help: One line for `--help`.
        default: Used when neither flag nor variable is given; None makes the flag required.
        convert: Turns the string into the field's type (e.g. `int`, `Path`).
        secret: Masked by `describe_config`.
    """

    name: str
    env: str
    help: str
    default: str | None = None
    convert: Callable[[str], Any] = str
    secret: bool = False

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")


class ConfigError(ValueError):
    """A missing or malformed setting; the message names the flag and its variable."""


def parse_flags(
    prog: str,
    description: str,
    flags: Sequence[Flag],
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Parses `argv` (default: sys.argv) with `environ` (default: os.environ) as fallback.

    Args:
        prog: Program name shown in `--help`.
        description: One paragraph for `--help`.
        flags: The accepted flags.
        argv: Arguments without the program name.
        environ: Environment variables.

    Returns:
        The converted value of every flag, by dest.

    Raises:
        SystemExit: On `--help`, or (exit code 2, with a message on stderr) when a required
            setting is missing or a value does not convert.
    """
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for flag in flags:
        shown_default = "required" if flag.default is None else f"default {flag.default!r}"
        parser.add_argument(
            flag.name, dest=flag.dest, default=None, help=f"{flag.help} (env {flag.env}; {shown_default})"
        )
    namespace = parser.parse_args(argv)
    values: dict[str, Any] = {}
    for flag in flags:
        raw = getattr(namespace, flag.dest)
        if raw is None:
            raw = environ.get(flag.env) or flag.default
        if raw is None:
            parser.error(f"{flag.name} is required: pass {flag.name} VALUE or set {flag.env}")
        try:
            values[flag.dest] = flag.convert(raw)
        except (ValueError, TypeError) as error:
            parser.error(f"{flag.name} (or {flag.env}) has the invalid value {raw!r}: {error}")
    return values


def mask_url_passwords(text: str) -> str:
    """`https://user:pw@host` → `https://user:*****@host` anywhere in `text`."""
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{_MASK}@", text)


def describe_config(config: Any) -> str:
    """`name=value` pairs of a config dataclass for the start-up log, with secrets masked.

    A field whose metadata has `secret: True` is shown as `*****` (or `<unset>` when
    empty); every other value has URL passwords masked.
    """
    parts = []
    # A service's own settings first, then the keyword-only ones it inherits (the shared
    # SecuritySettings), which dataclasses list first.
    for item in sorted(dataclasses.fields(config), key=lambda f: f.kw_only is True):
        value = getattr(config, item.name)
        secret = bool(item.metadata.get("secret"))
        shown = (_MASK if value else "<unset>") if secret else mask_url_passwords(str(value))
        parts.append(f"{item.name}={shown}")
    return " ".join(parts)


def listen_address(value: str) -> str:
    """Validates `HOST:PORT` (port 0 picks a free port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:50051 (port 0 picks a free port)")
    return value


def etcd_root(value: str) -> str:
    """Validates an etcd key root: starts with '/', no trailing '/'."""
    if not value.startswith("/") or value.endswith("/") or len(value) < 2:
        raise ValueError("expected a key prefix like /weft (leading '/', no trailing '/')")
    return value


def etcd_endpoints(value: str) -> str:
    """Validates a comma-separated list of `http://host:port` etcd endpoints."""
    endpoints = [e.strip() for e in value.split(",") if e.strip()]
    if not endpoints:
        raise ValueError("expected at least one endpoint, e.g. http://127.0.0.1:2379")
    for endpoint in endpoints:
        if not re.fullmatch(r"(https?://)?[^\s/]+:\d+", endpoint):
            raise ValueError(f"{endpoint!r} is not an etcd endpoint like http://127.0.0.1:2379")
    return ",".join(endpoints)


def non_negative_seconds(value: str) -> float:
    """A number of seconds, 0 or more."""
    seconds = float(value)
    if not seconds >= 0:
        raise ValueError("expected a number of seconds, 0 or more")
    return seconds


def metrics_port(value: str) -> int | None:
    """A TCP port for /metrics; "" or "off" turns metrics off, 0 picks a free port."""
    if value in ("", "off"):
        return None
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError("expected a port 0-65535 (0 picks a free one), or off")
    return port


#: Flags of every service about operating it: metrics and logs.
OPERATION_FLAGS = (
    Flag(
        "--metrics-port",
        "WEFT_METRICS_PORT",
        "port of the Prometheus /metrics endpoint on the listen host (off, or 0 for a free one)",
        default="off",
        convert=metrics_port,
    ),
    Flag("--log-level", "WEFT_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR", default="INFO", convert=log_level),
    Flag("--log-format", "WEFT_LOG_FORMAT", "text, or json (one object per line)", default="text", convert=log_format),
)

#: Flags shared by every service that talks to etcd.
ETCD_FLAGS = (
    Flag("--etcd-endpoints", "WEFT_ETCD_ENDPOINTS", "etcd client URLs, comma-separated", convert=etcd_endpoints),
    Flag("--etcd-root", "WEFT_ETCD_ROOT", "root of weft's keys in etcd", default=DEFAULT_ROOT, convert=etcd_root),
)


def optional_path(value: str) -> Path | None:
    return Path(value) if value else None


def optional_blob_store_url(value: str) -> str:
    """ "" or a valid artifact store URL (see `weft_core.objectstore.blob_store_url`)."""
    if not value:
        return ""
    from weft_core.objectstore import blob_store_url

    return blob_store_url(value)


#: Authentication, TLS and credentials towards etcd and other weft services: the same
#: flags on every service (appended to its FLAGS; fields of the same names, all optional).
#: Everything is off by default, so `weft up` and the tests run plaintext without auth.
SECURITY_FLAGS = (
    Flag(
        "--auth-tokens-file",
        "WEFT_AUTH_TOKENS_FILE",
        "YAML token file (subject, sha256 of the token, roles); turns authentication on",
        default="",
        convert=optional_path,
    ),
    Flag(
        "--auth-kube-roles-file",
        "WEFT_AUTH_KUBE_ROLES_FILE",
        "YAML bindings of Kubernetes users and groups to roles; turns TokenReview authentication on",
        default="",
        convert=optional_path,
    ),
    Flag(
        "--auth-kubeconfig",
        "WEFT_AUTH_KUBECONFIG",
        "credentials for TokenReview ('' uses the in-cluster service account)",
        default="",
        convert=optional_path,
    ),
    Flag("--tls-cert", "WEFT_TLS_CERT", "PEM certificate to serve TLS with (re-read on change)", "", optional_path),
    Flag("--tls-key", "WEFT_TLS_KEY", "PEM private key of --tls-cert", "", optional_path),
    Flag("--tls-client-ca", "WEFT_TLS_CLIENT_CA", "require client certificates signed by this CA", "", optional_path),
    Flag("--peer-token", "WEFT_PEER_TOKEN", "bearer token presented to other weft services", "", secret=True),
    Flag(
        "--peer-ca-cert",
        "WEFT_PEER_CA_CERT",
        "CA of other weft services' certificates (turns TLS on)",
        "",
        optional_path,
    ),
    Flag(
        "--peer-client-cert",
        "WEFT_PEER_CLIENT_CERT",
        "client certificate for other weft services (mTLS)",
        "",
        optional_path,
    ),
    Flag("--peer-client-key", "WEFT_PEER_CLIENT_KEY", "private key of --peer-client-cert", "", optional_path),
    Flag("--etcd-ca-cert", "WEFT_ETCD_CA_CERT", "CA of etcd's certificate (turns TLS to etcd on)", "", optional_path),
    Flag("--etcd-client-cert", "WEFT_ETCD_CLIENT_CERT", "client certificate presented to etcd", "", optional_path),
    Flag("--etcd-client-key", "WEFT_ETCD_CLIENT_KEY", "private key of --etcd-client-cert", "", optional_path),
)


def namespace_set(value: str) -> frozenset[str]:
    """`team-a,team-b` → {"team-a", "team-b"}; "" is none, `*` is every namespace."""
    names = frozenset(n.strip() for n in value.split(",") if n.strip())
    for name in names:
        if name != "*" and not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name):
            raise ValueError(f"{name!r} is not a namespace name (lower-case letters, digits and '-')")
    return names


@dataclass(frozen=True, kw_only=True)
class SecuritySettings:
    """The security settings every weft service takes (`SECURITY_FLAGS`): token and
    TokenReview authentication, TLS (and client certificates) for its server, how it
    reaches other weft services, and TLS to etcd. All off by default.

    The services' configs inherit these fields (keyword-only, so they may follow fields
    without defaults), and `check_security` validates them the same way for all three.
    """

    auth_tokens_file: Path | None = None
    auth_kube_roles_file: Path | None = None
    auth_kubeconfig: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    peer_token: str = field(default="", metadata={"secret": True})
    peer_ca_cert: Path | None = None
    peer_client_cert: Path | None = None
    peer_client_key: Path | None = None
    etcd_ca_cert: Path | None = None
    etcd_client_cert: Path | None = None
    etcd_client_key: Path | None = None

    def check_security(self) -> None:
        """Raises ConfigError for settings that only make sense together."""
        pairs = (
            ("--tls-cert", "--tls-key", self.tls_cert, self.tls_key),
            ("--peer-client-cert", "--peer-client-key", self.peer_client_cert, self.peer_client_key),
            ("--etcd-client-cert", "--etcd-client-key", self.etcd_client_cert, self.etcd_client_key),
        )
        for first, second, a, b in pairs:
            if (a is None) != (b is None):
                raise ConfigError(f"{first} and {second} go together: give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key: client certificates need TLS")
        if self.peer_token and any(c.isspace() for c in self.peer_token):
            raise ConfigError("--peer-token (WEFT_PEER_TOKEN) must not contain spaces")


@dataclass(frozen=True)
class ApiConfig(SecuritySettings):
    """Settings of weft-api.

    Attributes:
        etcd_endpoints: Comma-separated etcd client URLs.
        listen: `HOST:PORT` the gRPC server binds; port 0 picks a free one.
        blob_dir: Directory of the artifact store's default backend.
        etcd_root: Root of weft's keys in etcd (several installations may share an etcd).
        blob_store: URL of the artifact store (`s3://bucket/prefix`, `gs://…`, `az://…`,
            `file:///dir`); "" means the directory `blob_dir`.
        auth_tokens_file .. etcd_client_key: inherited from `SecuritySettings`.
        relaxed_security_namespaces: Namespaces whose steps may relax the hardened pod
            defaults (`Container.security`); `*` allows it everywhere.
        lineage_sweep_interval: Seconds between passes of the lineage sweep
            (`weft_api.lineage_sweep`), which also runs once at start; 0 turns it off.
        metrics_port: Port of /metrics on the listen host; None serves no metrics.
        log_level: Lowest level logged.
        log_format: "text" or "json".
    """

    etcd_endpoints: str
    listen: str
    blob_dir: Path | None
    etcd_root: str = DEFAULT_ROOT
    relaxed_security_namespaces: frozenset[str] = frozenset()
    blob_store: str = ""
    lineage_sweep_interval: float = 600.0
    metrics_port: int | None = None
    log_level: str = "INFO"
    log_format: str = "text"

    @property
    def blob_store_url(self) -> str:
        """The artifact store's URL: `blob_store`, else the directory `blob_dir`."""
        return self.blob_store or (str(self.blob_dir) if self.blob_dir else "")

    FLAGS = (
        ETCD_FLAGS[0],
        Flag(
            "--listen", "WEFT_LISTEN", "HOST:PORT to serve gRPC on", default="127.0.0.1:50051", convert=listen_address
        ),
        Flag(
            "--blob-dir",
            "WEFT_BLOB_DIR",
            "directory of the artifact store (or give --blob-store)",
            default="",
            convert=optional_path,
        ),
        ETCD_FLAGS[1],
        Flag(
            "--blob-store",
            "WEFT_BLOB_STORE",
            "artifact store URL: s3://BUCKET/PREFIX, gs://..., az://..., file:///DIR (credentials from the "
            "environment, e.g. AWS_ACCESS_KEY_ID, or workload identity)",
            default="",
            convert=optional_blob_store_url,
        ),
        *SECURITY_FLAGS,
        Flag(
            "--relaxed-security-namespaces",
            "WEFT_RELAXED_SECURITY_NAMESPACES",
            "namespaces whose steps may relax the hardened pod defaults (comma-separated; * for all)",
            default="",
            convert=namespace_set,
        ),
        Flag(
            "--lineage-sweep-interval",
            "WEFT_LINEAGE_SWEEP_INTERVAL",
            "seconds between passes that index outcomes an executor left without lineage (0: off)",
            default="600",
            convert=non_negative_seconds,
        ),
        *OPERATION_FLAGS,
    )

    def __post_init__(self) -> None:
        self.check_security()

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> ApiConfig:
        """Reads the config from flags, then WEFT_* variables, then defaults."""
        values = parse_flags(
            "weft-api",
            "weft-api: PipelineService, RunService and ArtifactService over etcd.",
            cls.FLAGS,
            argv,
            environ,
        )
        if not values["blob_dir"] and not values["blob_store"]:
            raise SystemExit(
                "weft-api: error: the artifact store is required: pass --blob-store URL (or set WEFT_BLOB_STORE) "
                "or --blob-dir DIR (or set WEFT_BLOB_DIR)"
            )
        try:
            return cls(**values)
        except ConfigError as error:
            raise SystemExit(f"weft-api: {error}") from None


# Fields may be marked secret like this; ApiConfig has none yet, but the executor's may.
def secret_field(default: Any = "") -> Any:
    """A dataclass field that `describe_config` masks."""
    return field(default=default, metadata={"secret": True})
