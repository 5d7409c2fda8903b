"""Credentials a weft client sends: a bearer token on every call, TLS for the channel.

`open_channel(target, token=..., ca_cert=..., tls=...)` is how the SDK, the CLI and weft's
own services (executor → api, api → executor) open a channel, so a token is attached the
same way everywhere. The token travels as `authorization: Bearer <token>` metadata; over
plaintext that is readable by anyone on the path, which is why `weft up` keeps plaintext
to loopback and the chart turns TLS on.

This module never logs or stores the token anywhere but in the interceptor that sends it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _StreamStream = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:  # not subscriptable at run time
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor
    _StreamStream = grpc.aio.StreamStreamClientInterceptor


def _with_token(details: grpc.aio.ClientCallDetails, header: str) -> grpc.aio.ClientCallDetails:
    metadata = [(k, v) for k, v in (details.metadata or ()) if k != "authorization"]
    metadata.append(("authorization", header))
    return grpc.aio.ClientCallDetails(
        details.method,
        details.timeout,
        grpc.aio.Metadata(*metadata),
        details.credentials,
        details.wait_for_ready,
    )


class _Bearer:
    def __init__(self, header: str) -> None:
        self._header = header

    def __repr__(self) -> str:  # never show the token
        return f"{type(self).__name__}(*****)"


# grpc.aio sorts a channel's interceptors by the first of the four kinds each one is, so
# one object per kind of call.
class _BearerUnaryUnary(_Bearer, _UnaryUnary):
    async def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return await continuation(_with_token(details, self._header), request)


class _BearerUnaryStream(_Bearer, _UnaryStream):
    async def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return await continuation(_with_token(details, self._header), request)


class _BearerStreamUnary(_Bearer, _StreamUnary):
    async def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return await continuation(_with_token(details, self._header), requests)


class _BearerStreamStream(_Bearer, _StreamStream):
    async def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return await continuation(_with_token(details, self._header), requests)


def bearer_interceptors(token: str) -> list[Any]:
    """Client interceptors adding `authorization: Bearer <token>` to every kind of call.

    Raises:
        ValueError: The token is empty or contains white space.
    """
    if not token or any(c.isspace() for c in token):
        raise ValueError("a bearer token is a non-empty string without spaces")
    header = f"Bearer {token}"
    return [kind(header) for kind in (_BearerUnaryUnary, _BearerUnaryStream, _BearerStreamUnary, _BearerStreamStream)]


def channel_credentials(
    ca_cert: Path | None = None, client_cert: Path | None = None, client_key: Path | None = None
) -> grpc.ChannelCredentials:
    """TLS credentials: trust `ca_cert` (None: the system's roots), and present a client
    certificate when `client_cert` and `client_key` are given (mTLS).

    Raises:
        ValueError: Only one of client_cert and client_key is given, or a file is unreadable.
    """
    if (client_cert is None) != (client_key is None):
        raise ValueError("give both a client certificate and its key (mTLS), or neither")
    try:
        root = ca_cert.read_bytes() if ca_cert is not None else None
        chain = client_cert.read_bytes() if client_cert is not None else None
        key = client_key.read_bytes() if client_key is not None else None
    except OSError as error:
        raise ValueError(f"cannot read {error.filename}: {error.strerror}") from None
    return grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=chain)


def open_channel(
    target: str,
    *,
    token: str = "",
    tls: bool = False,
    ca_cert: Path | None = None,
    client_cert: Path | None = None,
    client_key: Path | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """An asyncio channel to a weft service.

    Args:
        target: `host:port`.
        token: Bearer token sent on every call ("" sends none).
        tls: Use TLS (implied by ca_cert, client_cert or credentials).
        ca_cert: PEM bundle of the CA that signed the server's certificate.
        client_cert: PEM client certificate for mTLS (with client_key).
        client_key: PEM private key of client_cert.
        credentials: Ready-made channel credentials (instead of the files).
        options: gRPC channel options.
    """
    interceptors = bearer_interceptors(token) if token else None
    if credentials is None and (tls or ca_cert is not None or client_cert is not None):
        credentials = channel_credentials(ca_cert, client_cert, client_key)
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=list(options), interceptors=interceptors)
    return grpc.aio.secure_channel(target, credentials, options=list(options), interceptors=interceptors)
