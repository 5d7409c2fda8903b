"""A real Kubernetes control plane for tests: etcd + kube-apiserver (+ kube-controller-manager).

weft's Kubernetes runtime must be tested against the real API semantics (resourceVersions,
watches, 409 on a duplicate name, 404 after delete, graceful deletion, RBAC), which no mock
reproduces faithfully. No prebuilt apiserver is reachable from our machines, so
`scripts/kube-binaries.sh` builds one from Debian's source package once and caches it; this
module starts it against a private etcd on free loopback ports.

What it does not do: schedule or run pods. `tests.kube.kubelet.SimulatedKubelet` plays the node.

Usage::

    with start_cluster(controller_manager=True) as cluster:
        core = kubernetes.client.CoreV1Api(cluster.api_client())
        ...

Rules this module keeps:
- Never touches anything outside its own temp dir and the ports it picked; several clusters
  can run side by side (the insecure ports of 1.20 are turned off for that reason).
- Leaves no process behind: `stop()` terminates and reaps every child, and each child gets
  PR_SET_PDEATHSIG so that even a SIGKILLed test run takes its control plane with it
  (the signal follows the *thread* that started the cluster, so start it from a thread that
  outlives it, e.g. the main thread, as pytest fixtures do).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from weft.localstack import die_with_parent_prefix

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, Configuration

__all__ = [
    "DEFAULT_KUBE_VERSION",
    "ClusterStartError",
    "KubeBinaries",
    "KubeCluster",
    "find_kube_binaries",
    "kube_cache_dir",
    "missing_binaries_reason",
    "require_kube",
    "start_cluster",
]

#: The upstream version inside Debian bookworm's `kubernetes` source package (1.20.5+really1.20.2).
DEFAULT_KUBE_VERSION = "1.20.2"

_LOG_TAIL_BYTES = 4000


def kube_cache_dir() -> Path:
    """The directory where scripts/kube-binaries.sh caches the binaries (same rule as the script)."""
    explicit = os.environ.get("WEFT_KUBE_CACHE")
    if explicit:
        return Path(explicit)
    version = os.environ.get("WEFT_KUBE_VERSION", DEFAULT_KUBE_VERSION)
    return Path.home() / ".cache" / "weft" / f"kube-{version}"


@dataclass(frozen=True)
class KubeBinaries:
    """Paths of the executables a cluster needs."""

    apiserver: Path
    controller_manager: Path
    etcd: Path


def find_kube_binaries() -> KubeBinaries | None:
    """The cached binaries and an etcd on PATH, or None when any of them is missing."""
    cache = kube_cache_dir()
    apiserver = cache / "kube-apiserver"
    controller_manager = cache / "kube-controller-manager"
    etcd = shutil.which("etcd")
    if not (etcd and os.access(apiserver, os.X_OK) and os.access(controller_manager, os.X_OK)):
        return None
    return KubeBinaries(apiserver=apiserver, controller_manager=controller_manager, etcd=Path(etcd))


def missing_binaries_reason() -> str | None:
    """Why a cluster cannot start here (for pytest skip messages), or None when it can."""
    cache = kube_cache_dir()
    missing = [name for name in ("kube-apiserver", "kube-controller-manager") if not os.access(cache / name, os.X_OK)]
    if missing:
        return f"{', '.join(missing)} not built in {cache}; run scripts/kube-binaries.sh (about 7 minutes, once)"
    if shutil.which("etcd") is None:
        return "etcd is not on PATH; apt-get install etcd-server"
    return None


def require_kube(reason: str | None = None) -> None:
    """In a pytest test or fixture: skip when something the Kubernetes tests need is missing.

    ``reason`` defaults to `missing_binaries_reason()`; pass another for other tools (helm).
    With WEFT_REQUIRE_KUBE=1 (set by CI) a missing piece fails the test instead, so that the
    Kubernetes tests can never be skipped silently where they are supposed to run.
    """
    import pytest

    if reason is None:
        reason = missing_binaries_reason()
    if reason is None:
        return
    if os.environ.get("WEFT_REQUIRE_KUBE") == "1":
        pytest.fail(f"WEFT_REQUIRE_KUBE=1 but {reason}", pytrace=False)
    pytest.skip(reason)


class ClusterStartError(RuntimeError):
    """A control-plane process did not come up; the message carries the end of its log."""


def _free_port() -> int:
    # There is a window between closing this socket and the server binding the port; on a
    # test machine it is small enough, and the server's log says so when it is lost.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Loaded once in the parent so the child does not dlopen anything between fork and exec.
class _ControlPlaneProcess:
    """One child process whose output goes to a log file in the cluster's directory."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("wb")
        # SIGKILLed by the kernel when the thread that started it dies, so a killed test run
        # never leaves an apiserver behind (setpriv, not a preexec_fn: see the function).
        self.popen = subprocess.Popen(
            [*die_with_parent_prefix("KILL"), *argv],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-_LOG_TAIL_BYTES:].decode("utf-8", "replace")

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()


def _write_serving_cert(cert_path: Path, key_path: Path) -> None:
    """A self-signed certificate for 127.0.0.1/localhost that is also its own CA.

    Being its own CA lets clients (the Python client, helm) verify the apiserver with the
    certificate itself instead of turning verification off.
    """
    try:
        _write_serving_cert_with_cryptography(cert_path, key_path)
    except ImportError:
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-sha256", "-nodes", "-days", "30",
                "-subj", "/CN=weft-test-cluster",
                "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-keyout", str(key_path), "-out", str(cert_path),
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip


def _write_serving_cert_with_cryptography(cert_path: Path, key_path: Path) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weft-test-cluster")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write_service_account_key(path: Path) -> None:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
    except ImportError:
        subprocess.run(
            ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(path)],
            check=True,
            capture_output=True,
        )
        return
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def _wait_until(ready: Callable[[], bool], process: _ControlPlaneProcess, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not process.alive():
            raise ClusterStartError(
                f"{process.name} exited with code {process.popen.returncode} before {what}:\n{process.log_tail()}"
            )
        if ready():
            return
        if time.monotonic() > deadline:
            raise ClusterStartError(f"{process.name}: no {what} within {timeout:.0f}s:\n{process.log_tail()}")
        time.sleep(0.1)


def _http_ok(url: str, *, context: ssl.SSLContext | None = None, token: str | None = None) -> bool:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=2, context=context) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class KubeCluster:
    """A running control plane on loopback: etcd, kube-apiserver and optionally kube-controller-manager.

    Attributes:
        host: the apiserver URL, ``https://127.0.0.1:<port>``.
        token: a bearer token of a user in ``system:masters`` (full access, RBAC included).
        kubeconfig_path: a kubeconfig for that user, for helm and kubectl.
        ca_cert_path: the apiserver's self-signed certificate, which clients trust as the CA.
        tls_cert_path / tls_key_path: that certificate and its key, reusable by a simulated
            kubelet's HTTPS server (it is valid for 127.0.0.1).
        etcd_endpoint: the client URL of the cluster's private etcd.
        work_dir: where the data, certificates and process logs live (removed by `stop()`).
    """

    def __init__(self, binaries: KubeBinaries, work_dir: Path, *, keep_work_dir: bool) -> None:
        self.binaries = binaries
        self.work_dir = work_dir
        self._keep_work_dir = keep_work_dir
        self._processes: list[_ControlPlaneProcess] = []
        self.token = secrets.token_hex(24)
        self.ca_cert_path = work_dir / "serving.crt"
        self.tls_cert_path = self.ca_cert_path
        self.tls_key_path = work_dir / "serving.key"
        self.service_account_key_path = work_dir / "service-account.key"
        self.kubeconfig_path = work_dir / "kubeconfig"
        self.etcd_endpoint = ""
        self.host = ""
        self.controller_manager_running = False
        self._stopped = False

    # -- lifecycle ----------------------------------------------------------------------

    def _start(self, *, controller_manager: bool, timeout: float) -> None:
        _write_serving_cert(self.tls_cert_path, self.tls_key_path)
        _write_service_account_key(self.service_account_key_path)
        self._start_etcd(timeout)
        self._start_apiserver(timeout)
        self._write_kubeconfig()
        if controller_manager:
            self.start_controller_manager(timeout=timeout)

    def _start_etcd(self, timeout: float) -> None:
        client_port, peer_port, metrics_port = _free_port(), _free_port(), _free_port()
        self.etcd_endpoint = f"http://127.0.0.1:{client_port}"
        peer = f"http://127.0.0.1:{peer_port}"
        etcd = self._spawn(
            "etcd",
            [
                str(self.binaries.etcd),
                "--name", "kube-test",
                "--data-dir", str(self.work_dir / "etcd"),
                "--listen-client-urls", self.etcd_endpoint,
                "--advertise-client-urls", self.etcd_endpoint,
                "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"kube-test={peer}",
                "--initial-cluster-state", "new",
                "--listen-metrics-urls", f"http://127.0.0.1:{metrics_port}",
                "--heartbeat-interval", "10",
                "--election-timeout", "100",
                "--log-level", "warn",
                "--logger", "zap",
            ],
        )  # fmt: skip
        health = f"http://127.0.0.1:{metrics_port}/health"
        _wait_until(lambda: _http_ok(health), etcd, timeout, "healthy /health")

    def _start_apiserver(self, timeout: float) -> None:
        port = _free_port()
        self.host = f"https://127.0.0.1:{port}"
        tokens = self.work_dir / "tokens.csv"
        tokens.write_text(f'{self.token},weft-test-admin,weft-test-admin,"system:masters"\n')
        apiserver = self._spawn(
            "kube-apiserver",
            [
                str(self.binaries.apiserver),
                f"--etcd-servers={self.etcd_endpoint}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                "--insecure-port=0",
                f"--cert-dir={self.work_dir / 'apiserver-certs'}",
                f"--tls-cert-file={self.tls_cert_path}",
                f"--tls-private-key-file={self.tls_key_path}",
                f"--token-auth-file={tokens}",
                "--authorization-mode=RBAC",
                f"--service-account-key-file={self.service_account_key_path}",
                f"--service-account-signing-key-file={self.service_account_key_path}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                # The ServiceAccount admission plugin would reject every pod until a token
                # controller has made the namespace's token secret; pods here need none.
                "--disable-admission-plugins=ServiceAccount",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--allow-privileged=true",
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                "--profiling=false",
            ],
        )
        context = ssl.create_default_context(cafile=str(self.ca_cert_path))
        readyz = f"{self.host}/readyz"
        _wait_until(lambda: _http_ok(readyz, context=context, token=self.token), apiserver, timeout, "ok from /readyz")
        # /readyz can answer before the system namespaces exist; tests create pods in
        # "default" and kubelets renew leases in "kube-node-lease" right away.
        for namespace in ("default", "kube-node-lease"):
            url = f"{self.host}/api/v1/namespaces/{namespace}"
            _wait_until(partial(_http_ok, url, context=context, token=self.token), apiserver, timeout, url)

    def start_controller_manager(self, *, timeout: float = 60.0) -> None:
        """Starts kube-controller-manager (Deployments, ReplicaSets, StatefulSets, GC, node lifecycle...).

        Needed for anything above bare pods, e.g. `helm install --wait`. Idempotent.
        """
        if self.controller_manager_running:
            return
        port = _free_port()
        controller_manager = self._spawn(
            "kube-controller-manager",
            [
                str(self.binaries.controller_manager),
                f"--kubeconfig={self.kubeconfig_path}",
                "--leader-elect=false",
                "--port=0",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.work_dir / 'controller-manager-certs'}",
                f"--service-account-private-key-file={self.service_account_key_path}",
                f"--root-ca-file={self.ca_cert_path}",
                "--use-service-account-credentials=false",
                "--kube-api-qps=100",
                "--kube-api-burst=200",
            ],
        )
        # Its self-signed serving cert is made at start; /healthz is open to anyone by default.
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        healthz = f"https://127.0.0.1:{port}/healthz"
        _wait_until(lambda: _http_ok(healthz, context=insecure), controller_manager, timeout, "ok from /healthz")
        self.controller_manager_running = True

    def _spawn(self, name: str, argv: list[str]) -> _ControlPlaneProcess:
        process = _ControlPlaneProcess(name, argv, self.work_dir / f"{name}.log")
        self._processes.append(process)
        return process

    def _write_kubeconfig(self) -> None:
        # JSON is YAML, so helm, kubectl and the Python client all read this file.
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "weft-test", "cluster": {"server": self.host, "certificate-authority": str(self.ca_cert_path)}}
            ],
            "users": [{"name": "weft-test-admin", "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": "weft-test",
                    "context": {"cluster": "weft-test", "user": "weft-test-admin", "namespace": "default"},
                }
            ],
            "current-context": "weft-test",
        }
        self.kubeconfig_path.write_text(json.dumps(kubeconfig, indent=2))
        self.kubeconfig_path.chmod(0o600)

    def stop(self) -> None:
        """Stops every process (newest first), reaps them and removes the work dir. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for process in reversed(self._processes):
            process.stop()
        if not self._keep_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> KubeCluster:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- clients ------------------------------------------------------------------------

    def configuration(self) -> Configuration:
        """A kubernetes-client Configuration for the admin user, verifying the apiserver's cert."""
        from kubernetes.client import Configuration

        configuration = Configuration(
            host=self.host,
            api_key={"BearerToken": self.token},
            api_key_prefix={"BearerToken": "Bearer"},
            ssl_ca_cert=str(self.ca_cert_path),
        )
        # Simulated kubelets and watches hold several connections at once; the default pool
        # (5 per core) would log "connection pool is full" and reconnect all the time.
        configuration.connection_pool_maxsize = 32
        return configuration

    def api_client(self) -> ApiClient:
        """A new official-client ApiClient for the admin user; close it when done."""
        from kubernetes.client import ApiClient

        return ApiClient(self.configuration())

    def logs(self) -> dict[str, str]:
        """The end of each control-plane process's log, for failure messages."""
        return {process.name: process.log_tail() for process in self._processes}

    def check_alive(self) -> None:
        """Raises ClusterStartError naming any control-plane process that has exited."""
        for process in self._processes:
            if not process.alive():
                raise ClusterStartError(
                    f"{process.name} exited with code {process.popen.returncode}:\n{process.log_tail()}"
                )


def start_cluster(
    *,
    controller_manager: bool = False,
    binaries: KubeBinaries | None = None,
    work_dir: Path | None = None,
    timeout: float = 60.0,
) -> KubeCluster:
    """Starts etcd and kube-apiserver (and kube-controller-manager when asked) and waits until ready.

    The result is a context manager; ``with start_cluster() as cluster:`` stops it on exit.
    Start-up takes a few seconds (the apiserver's /readyz), so share one cluster per test
    module and isolate tests by namespace.

    Args:
        controller_manager: also run kube-controller-manager (needed for Deployments,
            StatefulSets, garbage collection and `helm install --wait`).
        binaries: where the executables are; by default the cache of scripts/kube-binaries.sh.
        work_dir: a directory for data, certificates and logs that is kept after `stop()`
            (useful when debugging); by default a temp dir that `stop()` removes.
        timeout: seconds each process may take to become ready.

    Raises:
        ClusterStartError: the binaries are missing or a process did not become ready (the
            message includes the end of its log).
    """
    if binaries is None:
        binaries = find_kube_binaries()
        if binaries is None:
            raise ClusterStartError(missing_binaries_reason() or "kube binaries not found")
    keep = work_dir is not None
    if work_dir is None:
        work_dir = Path(tempfile.mkdtemp(prefix="weft-kube-"))
    else:
        work_dir.mkdir(parents=True, exist_ok=True)
    cluster = KubeCluster(binaries, work_dir, keep_work_dir=keep)
    try:
        cluster._start(controller_manager=controller_manager, timeout=timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster
