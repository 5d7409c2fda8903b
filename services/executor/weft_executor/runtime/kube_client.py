"""The Kubernetes API as the runtime uses it: raw JSON requests, rate-limited, off the event loop.

The official `kubernetes` client is synchronous. `KubeApi` runs its calls in a thread pool
of its own (never on the event loop, and never in asyncio's default pool, which is small
and shared with file I/O), and passes every request through one client-side `RateLimiter`
(a token bucket: `qps` sustained, `burst` at once, like client-go's), so a 2,000-wide
fan-out cannot flood the API server. Long streams (the pod watch, followed logs) run in
dedicated threads opened through `open_stream`; they take a token when they open.

Requests and responses are JSON dicts: the generated models are not used (see
`kube_pods`). The `kubernetes` package is imported lazily: it costs ~330 ms and only the
kubernetes runtime needs it. This module knows nothing about weft's pods.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from kubernetes.client import Configuration

JSON = dict[str, Any]
T = TypeVar("T")

#: Defaults of the client-side limit (the executor's --kube-qps / --kube-burst).
DEFAULT_QPS = 20.0
DEFAULT_BURST = 40
#: Seconds a plain request may take.
REQUEST_TIMEOUT = 30.0
#: Threads for plain requests (streams have their own threads).
POOL_THREADS = 16


class KubeError(Exception):
    """The API server answered with an error status.

    Attributes:
        status: The HTTP status (404, 409, 410, 422, 500...).
        reason: The Status object's reason (NotFound, AlreadyExists...), if any.
        message: The Status object's message, or the response body.
    """

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}" if reason else f"{status}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def retryable(self) -> bool:
        """Worth retrying: the server is overloaded or failing, not refusing the request."""
        return self.status == 429 or self.status >= 500


class KubeUnavailable(Exception):
    """The API server could not be reached, or the connection broke mid-response."""


class RateLimiter:
    """A token bucket shared by threads and coroutines: `qps` tokens a second, at most `burst`.

    `reserve()` takes a token now and returns how long the caller must wait before using
    it; reservations are served in order, so no caller starves. A qps of 0 disables it.
    """

    def __init__(self, qps: float, burst: int) -> None:
        self.qps = qps
        self.burst = max(1, burst)
        self._tokens = float(self.burst)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        if self.qps <= 0:
            return 0.0
        with self._lock:
            now = time.monotonic()
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.qps)
            self._last = now
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self.qps

    def wait_sync(self) -> None:
        delay = self.reserve()
        if delay > 0:
            time.sleep(delay)

    async def wait(self) -> None:
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)


def load_configuration(kubeconfig: Path | None) -> Configuration:
    """The client configuration from a kubeconfig file, or the pod's in-cluster credentials.

    Raises:
        RuntimeError: With no kubeconfig given and not running in a pod.
    """
    from kubernetes import config as kube_config
    from kubernetes.client import Configuration

    configuration = Configuration()
    if kubeconfig is not None:
        kube_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig), client_configuration=configuration
        )
    else:
        try:
            kube_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except kube_config.ConfigException as error:
            raise RuntimeError(
                f"no Kubernetes credentials: not running in a pod ({error}); pass --kubeconfig FILE"
            ) from None
    return configuration


def _status_of(status: int, body: bytes) -> KubeError:
    try:
        decoded = json.loads(body)
    except ValueError:
        decoded = None
    if isinstance(decoded, dict) and decoded.get("kind") == "Status":
        return KubeError(
            int(decoded.get("code") or status), str(decoded.get("reason") or ""), str(decoded.get("message") or "")
        )
    return KubeError(status, "", body.decode("utf-8", "replace")[:500])


class KubeApi:
    """Rate-limited JSON access to one API server (see the module docstring).

    Args:
        configuration: The client configuration (server, credentials, TLS).
        qps: Sustained requests per second this process may make (0: unlimited).
        burst: Requests it may make at once after a quiet period.
    """

    def __init__(self, configuration: Configuration, *, qps: float = DEFAULT_QPS, burst: int = DEFAULT_BURST) -> None:
        from kubernetes.client import ApiClient

        # Every in-flight request and stream holds a connection; the client's default pool
        # (5 per core) would open and drop connections all the time under load.
        configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, POOL_THREADS + 16)
        self.configuration = configuration
        self.limiter = RateLimiter(qps, burst)
        self._client = ApiClient(configuration)
        self._pool = ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="weft-kube")
        self._count_lock = threading.Lock()
        #: Requests made so far (streams included), for the benchmark and tests.
        self.requests = 0

    @property
    def host(self) -> str:
        return str(self.configuration.host)

    def close(self) -> None:
        """Stops the thread pool and closes connections (streams must be closed first)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()  # type: ignore[no-untyped-call]

    def _send(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Sequence[tuple[str, Any]] = (),
        content_type: str = "application/json",
        timeout: float | tuple[float, float] = REQUEST_TIMEOUT,
    ) -> Any:
        """One request; returns the raw urllib3 response of a 2xx, else raises."""
        import urllib3

        with self._count_lock:
            self.requests += 1
        serialized = self._client.param_serialize(
            method=method,
            resource_path=path,
            query_params=list(query),
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response: Any = self._client.call_api(*serialized, _request_timeout=timeout)
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise KubeUnavailable(f"{method} {path}: {error}") from None
        except Exception as error:  # the client wraps TLS failures in ApiException(status=0)
            if getattr(error, "status", None) == 0:
                raise KubeUnavailable(f"{method} {path}: {error}") from None
            raise
        raw = response.response
        if 200 <= response.status <= 299:
            return raw
        try:
            data = raw.read()
        except (urllib3.exceptions.HTTPError, OSError):
            data = b""
        finally:
            raw.release_conn()
        raise _status_of(response.status, data)

    def request_sync(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Sequence[tuple[str, Any]] = (),
        content_type: str = "application/json",
        timeout: float = REQUEST_TIMEOUT,
    ) -> JSON:
        """A rate-limited request from a thread; returns the decoded JSON body.

        Raises:
            KubeError: The server answered with an error status.
            KubeUnavailable: No answer (connection refused or broken, timeout).
        """
        import urllib3

        self.limiter.wait_sync()
        raw = self._send(method, path, body=body, query=query, content_type=content_type, timeout=timeout)
        try:
            data = raw.read()
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise KubeUnavailable(f"{method} {path}: the response broke off: {error}") from None
        finally:
            raw.release_conn()
        decoded: JSON = json.loads(data) if data else {}
        return decoded

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Sequence[tuple[str, Any]] = (),
        content_type: str = "application/json",
        timeout: float = REQUEST_TIMEOUT,
    ) -> JSON:
        """`request_sync` from the event loop: waits for a token, then runs in the pool."""
        await self.limiter.wait()
        loop = asyncio.get_running_loop()

        def call() -> JSON:
            import urllib3

            raw = self._send(method, path, body=body, query=query, content_type=content_type, timeout=timeout)
            try:
                data = raw.read()
            except (urllib3.exceptions.HTTPError, OSError) as error:
                raise KubeUnavailable(f"{method} {path}: the response broke off: {error}") from None
            finally:
                raw.release_conn()
            decoded: JSON = json.loads(data) if data else {}
            return decoded

        return await loop.run_in_executor(self._pool, call)

    async def run(self, function: Callable[[], T]) -> T:
        """Runs a blocking function (e.g. reading a stream to a file) in the pool."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, function)

    def open_stream(
        self,
        path: str,
        *,
        query: Sequence[tuple[str, Any]] = (),
        read_timeout: float | None = None,
        take_token: bool = True,
    ) -> Any:
        """Opens a streaming GET (watch, logs) from a thread; the caller closes it.

        Args:
            path: The API path.
            query: Query parameters.
            read_timeout: Longest silence on the stream, in seconds.
            take_token: Wait for a rate-limit token here; pass False when the caller took
                one already (`await limiter.wait()` on the loop, so no pool thread sleeps).

        Returns:
            The urllib3 response; iterate it, `read1()` from it, `shutdown()` it from another
            thread to stop a blocked read, and `close()` it when done.
        """
        if take_token:
            self.limiter.wait_sync()
        timeout: tuple[float, float] = (10.0, read_timeout if read_timeout is not None else 3600.0)
        return self._send("GET", path, query=query, timeout=timeout)
