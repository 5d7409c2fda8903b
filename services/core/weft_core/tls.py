"""TLS of weft's services: server certificates re-read on rotation, optional mTLS, and the
credentials services use to reach each other and etcd.

A server with `ServerTls` answers only TLS. Its certificate and key are read again on
the first handshake after either file changed (cert-manager, a rotated Secret, `weft up
--secure` run again), so rotation needs no restart; with `client_ca` every client must
present a certificate signed by that CA (mTLS, e.g. executors talking to the api).

`ClientTls` is the other side: the CA a client trusts and the certificate it presents;
a peer's channel re-reads them when they change (weft._auth.RotatingChannel). etcd's
channel (weft_core.store) reads them once: rotating etcd client certificates needs a
restart of the service.
This module never logs key material, and a pair of files that does not load keeps the
previous certificate rather than stopping the service from accepting connections.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from weft._auth import channel_credentials, open_channel

log = logging.getLogger(__name__)


def _identity(paths: tuple[Path, ...]) -> tuple[tuple[int, int, int], ...]:
    stamps = []
    for path in paths:
        st = os.stat(path)
        stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(stamps)


@dataclass(frozen=True)
class ServerTls:
    """The files of a TLS server.

    Attributes:
        cert: PEM certificate chain of the server.
        key: PEM private key of `cert`.
        client_ca: PEM CA bundle; when set, clients must present a certificate it signed.
    """

    cert: Path
    key: Path
    client_ca: Path | None = None

    def _paths(self) -> tuple[Path, ...]:
        return (self.cert, self.key) if self.client_ca is None else (self.cert, self.key, self.client_ca)

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        pair = [(self.key.read_bytes(), self.cert.read_bytes())]
        root = self.client_ca.read_bytes() if self.client_ca is not None else None
        return grpc.ssl_server_certificate_configuration(pair, root_certificates=root)

    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials that re-read the files when they change (checked at each handshake).

        Raises:
            ValueError: A file cannot be read now (the service must not start without it).
        """
        try:
            stamp = _identity(self._paths())
            initial = self._configuration()
        except OSError as error:
            raise ValueError(f"cannot read the TLS file {error.filename}: {error.strerror}") from None
        lock = threading.Lock()
        current = {"stamp": stamp}

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            # Called by gRPC on every new connection, from its own threads: keep it cheap
            # (a few stat calls) and never raise, or the handshake fails.
            with lock:
                try:
                    stamp = _identity(self._paths())
                    if stamp == current["stamp"]:
                        return None
                    configuration = self._configuration()
                except Exception as error:
                    log.error("TLS files changed but cannot be loaded (%s); keeping the previous ones", error)
                    return None
                current["stamp"] = stamp
                log.info("re-read the TLS certificate %s", self.cert)
                return configuration

        return grpc.dynamic_ssl_server_credentials(
            initial,
            fetch,  # type: ignore[arg-type]  # None (keep the current one) is allowed; the stubs say otherwise
            require_client_authentication=self.client_ca is not None,
        )


@dataclass(frozen=True)
class ClientTls:
    """How a weft service reaches another over TLS (the api, an executor, etcd).

    Attributes:
        ca_cert: PEM bundle of the CA that signed the server; None trusts the system's roots.
        client_cert: PEM client certificate for mTLS (with client_key).
        client_key: PEM private key of client_cert.
    """

    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Raises ValueError when a file cannot be read."""
        return channel_credentials(self.ca_cert, self.client_cert, self.client_key)


def client_tls(ca_cert: Path | None, client_cert: Path | None, client_key: Path | None) -> ClientTls | None:
    """A ClientTls when any file is given, else None (plaintext)."""
    if ca_cert is None and client_cert is None and client_key is None:
        return None
    return ClientTls(ca_cert, client_cert, client_key)


@dataclass(frozen=True)
class Peer:
    """How a weft service calls another one: the token it presents and its TLS settings.

    Attributes:
        token: Bearer token sent on every call ("" sends none).
        tls: TLS towards the other service; None is plaintext.
    """

    token: str = ""
    tls: ClientTls | None = None

    def __repr__(self) -> str:  # never show the token
        return f"Peer(token={'*****' if self.token else '<unset>'}, tls={self.tls!r})"

    def open_channel(self, target: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
        """An asyncio channel to `target` with this peer's credentials; its client
        certificate and CA are re-read when their files change (`weft._auth.RotatingChannel`),
        so an executor's long-lived channel to the api survives a rotation without a restart."""
        if self.tls is None:
            return open_channel(target, token=self.token, options=options)
        return open_channel(
            target,
            token=self.token,
            tls=True,
            ca_cert=self.tls.ca_cert,
            client_cert=self.tls.client_cert,
            client_key=self.tls.client_key,
            options=options,
        )


def server_tls_of(config: Any) -> ServerTls | None:
    """The ServerTls of a service config with the fields of `weft_core.config.SECURITY_FLAGS`."""
    if config.tls_cert is None:
        return None
    return ServerTls(config.tls_cert, config.tls_key, config.tls_client_ca)


def peer_of(config: Any) -> Peer:
    """How a service with `config` (SECURITY_FLAGS fields) calls other weft services."""
    return Peer(config.peer_token, client_tls(config.peer_ca_cert, config.peer_client_cert, config.peer_client_key))


def etcd_tls_of(config: Any) -> ClientTls | None:
    """TLS towards etcd of a service config (SECURITY_FLAGS fields), or None for plaintext."""
    return client_tls(config.etcd_ca_cert, config.etcd_client_cert, config.etcd_client_key)
