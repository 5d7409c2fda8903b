"""Credentials a weft client sends: a bearer token on every call, TLS for the channel.

`open_channel(target, token=..., ca_cert=..., tls=...)` is how the SDK, the CLI and weft's
own services (executor → api, api → executor) open a channel, so a token is attached the
same way everywhere. The token travels as `authorization: Bearer <token>` metadata; over
plaintext that is readable by anyone on the path, which is why `weft up` keeps plaintext
to loopback and the chart turns TLS on.

A channel given certificate files (a client certificate for mTLS, or a CA) re-reads them
when they change, without a restart of its process: gRPC's client credentials are fixed
once made, so `RotatingChannel` opens a new channel with the new files and sends every
later call through it; calls in flight finish on the old one (whose connection the
server's max connection age retires). A rotation is picked up on the first call at
least `CERT_CHECK_SECONDS` after the files changed and once they have been still for
`CERT_SETTLE_SECONDS` (a certificate and its key are rarely replaced at the same instant,
unless by a Kubernetes Secret volume's atomic swap).

This module never logs or stores the token anywhere but in the interceptor that sends it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

log = logging.getLogger(__name__)

#: Most seconds between two looks (a few stat calls) at a channel's certificate files.
CERT_CHECK_SECONDS = 1.0
#: Seconds changed certificate files must stay unchanged before they are used.
CERT_SETTLE_SECONDS = 0.5

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
    files = tuple(f for f in (ca_cert, client_cert, client_key) if f is not None)
    if credentials is None and files:
        return RotatingChannel(
            lambda: grpc.aio.secure_channel(
                target,
                channel_credentials(ca_cert, client_cert, client_key),
                options=list(options),
                interceptors=interceptors,
            ),
            files,
        )
    if credentials is None and tls:
        credentials = channel_credentials()
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=list(options), interceptors=interceptors)
    return grpc.aio.secure_channel(target, credentials, options=list(options), interceptors=interceptors)


def _stamps(files: Sequence[Path]) -> tuple[tuple[int, int, int], ...]:
    """(inode, size, mtime) of each file; stat follows symlinks (a Secret's ..data swap)."""
    return tuple((st.st_ino, st.st_size, st.st_mtime_ns) for st in (os.stat(f) for f in files))


class _RotatingCallable:
    """A multi-callable of a RotatingChannel: each call goes to the channel current then."""

    def __init__(self, owner: RotatingChannel, kind: str, method: str, kwargs: dict[str, Any]) -> None:
        self._owner, self._kind, self._method, self._kwargs = owner, kind, method, kwargs
        self._generation = -1
        self._callable: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        channel, generation = self._owner.current()
        if generation != self._generation:
            self._callable = getattr(channel, self._kind)(self._method, **self._kwargs)
            self._generation = generation
        return self._callable(*args, **kwargs)


class RotatingChannel(grpc.aio.Channel):
    """A channel whose TLS files are re-read when they change (see the module docstring).

    Stubs made from it keep working across rotations: their multi-callables look up the
    current channel at each call. Files that changed but cannot be read keep the current
    channel (and are tried again at the next look), so a half-finished rotation never
    takes the client down.
    """

    def __init__(self, open_with_files: Callable[[], grpc.aio.Channel], files: Sequence[Path]) -> None:
        """Opens the first channel.

        Raises:
            ValueError: A file cannot be read now.
        """
        self._open = open_with_files
        self._files = tuple(files)
        try:
            self._stamp = _stamps(self._files)
        except OSError as error:
            raise ValueError(f"cannot read {error.filename}: {error.strerror}") from None
        self._channel = open_with_files()
        self._generation = 0
        self._retired: list[grpc.aio.Channel] = []
        self._next_check = time.monotonic() + CERT_CHECK_SECONDS

    @property
    def generation(self) -> int:
        """How many times the files were re-read (0: never)."""
        return self._generation

    def current(self) -> tuple[grpc.aio.Channel, int]:
        """The channel calls go to now, opening a new one if the files changed."""
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + CERT_CHECK_SECONDS
            self._maybe_rotate()
        return self._channel, self._generation

    def _maybe_rotate(self) -> None:
        try:
            stamp = _stamps(self._files)
        except OSError:
            return  # mid-rotation (a file briefly missing): look again later
        if stamp == self._stamp:
            return
        newest = max(mtime for _, _, mtime in stamp) / 1e9
        if time.time() - newest < CERT_SETTLE_SECONDS:
            self._next_check = time.monotonic()  # still moving: look again at the next call
            return
        try:
            channel = self._open()
        except ValueError as error:
            log.error("TLS files changed but cannot be loaded (%s); keeping the previous ones", error)
            self._stamp = stamp
            return
        log.info("re-read the TLS files %s", ", ".join(str(f) for f in self._files))
        # Not closed: its calls in flight (a followed log, a watch) finish on it; with no
        # new calls its connection is retired by the server's max connection age.
        self._retired.append(self._channel)
        self._channel, self._stamp = channel, stamp
        self._generation += 1

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _RotatingCallable(self, "unary_unary", method, self._keywords(args, kwargs))

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _RotatingCallable(self, "unary_stream", method, self._keywords(args, kwargs))

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _RotatingCallable(self, "stream_unary", method, self._keywords(args, kwargs))

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _RotatingCallable(self, "stream_stream", method, self._keywords(args, kwargs))

    @staticmethod
    def _keywords(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        # The positional order of grpc.aio.Channel's multi-callable factories.
        names = ("request_serializer", "response_deserializer", "_registered_method")
        return {**dict(zip(names, args, strict=False)), **kwargs}

    async def close(self, grace: float | None = None) -> None:
        for channel in (*self._retired, self._channel):
            await channel.close(grace)
        self._retired.clear()

    async def __aenter__(self) -> RotatingChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close(None)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self.current()[0].get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self.current()[0].wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self.current()[0].channel_ready()
