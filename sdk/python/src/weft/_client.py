"""The weft API client: `AsyncClient` holds the logic, `Client` is its blocking face.

Every call to weft-api is written once, as a coroutine of `AsyncClient`. `Client` runs the
same coroutines on a private event loop thread (`weft._sync`) and wraps what they return,
so the two cannot drift apart; a unit test pins that both expose the same methods with the
same parameters.

What this module guarantees to callers:

- Failures arrive as `weft.errors.WeftError` subclasses, never as raw gRPC errors.
- Retries happen only where they are safe (etcd's "write-at-most-once" rule): reads, and
  mutations that carry a `request_id`, which `create_*` and `resume_run` generate when the
  caller gives none. Blob uploads are retried too: the digest names the content, so a
  repeated upload stores nothing new. Cancels and deletes are never retried.
- Lists are iterators that hide page tokens; `watch_run` resumes from the last revision
  it delivered when the stream breaks; `iter_blob` and `read_logs` resume from the bytes
  already delivered.

It must never import server code (`weft_core`, services); the contract is the protos.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import grpc
import grpc.aio
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message import Message

from weft import _names
from weft._auth import open_channel
from weft._results import (
    Applied,
    ApplyChange,
    Blob,
    Explanation,
    LogChunk,
    PipelineVersion,
    RunEvent,
    RunRecord,
)
from weft._sync import EventLoopThread
from weft.errors import (
    DataLoss,
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
    from_rpc_error,
)
from weft.pipeline import Pipeline
from weft.v1 import artifact_pb2, pipeline_pb2, run_pb2, trace_pb2

__all__ = ["DEFAULT_TARGET", "AsyncClient", "AsyncRun", "Client", "RetrySettings", "Run"]

#: Where `weft up` serves the API.
DEFAULT_TARGET = "127.0.0.1:50051"
#: Where `weft up` serves weft-tracer (OTLP and weft.v1.TraceService), unless told otherwise.
DEFAULT_TRACER_TARGET = "127.0.0.1:50052"
#: Largest message either side may send: a 10,000-step spec is a few MiB.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Size of one PutBlob data message.
BLOB_CHUNK_BYTES = 1024 * 1024
#: Uploads larger than this ask StatBlob first and skip the upload when the blob exists.
_STAT_BEFORE_PUT_BYTES = 4 * BLOB_CHUNK_BYTES

_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# A broken stream is retried only for UNAVAILABLE: a DEADLINE_EXCEEDED stream ran out the
# caller's own deadline.
_STREAM_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})

CacheModeName = Literal["use", "refresh", "off"]
_CACHE_MODES: dict[str, run_pb2.CacheMode] = {
    "use": run_pb2.CACHE_MODE_USE,
    "refresh": run_pb2.CACHE_MODE_REFRESH,
    "off": run_pb2.CACHE_MODE_OFF,
}

R = TypeVar("R", bound=Message)
T = TypeVar("T")


def _method(file: FileDescriptor, service: str, method: str) -> str:
    # Paths come from the generated descriptors, so a renamed RPC fails at import, not at call.
    descriptor = file.services_by_name[service]
    return f"/{descriptor.full_name}/{descriptor.methods_by_name[method].name}"


_CREATE_PIPELINE = _method(pipeline_pb2.DESCRIPTOR, "PipelineService", "CreatePipeline")
_GET_PIPELINE = _method(pipeline_pb2.DESCRIPTOR, "PipelineService", "GetPipeline")
_LIST_PIPELINES = _method(pipeline_pb2.DESCRIPTOR, "PipelineService", "ListPipelines")
_LIST_PIPELINE_VERSIONS = _method(pipeline_pb2.DESCRIPTOR, "PipelineService", "ListPipelineVersions")
_DELETE_PIPELINE = _method(pipeline_pb2.DESCRIPTOR, "PipelineService", "DeletePipeline")
_CREATE_RUN = _method(run_pb2.DESCRIPTOR, "RunService", "CreateRun")
_GET_RUN = _method(run_pb2.DESCRIPTOR, "RunService", "GetRun")
_LIST_RUNS = _method(run_pb2.DESCRIPTOR, "RunService", "ListRuns")
_WATCH_RUN = _method(run_pb2.DESCRIPTOR, "RunService", "WatchRun")
_CANCEL_RUN = _method(run_pb2.DESCRIPTOR, "RunService", "CancelRun")
_RESUME_RUN = _method(run_pb2.DESCRIPTOR, "RunService", "ResumeRun")
_REPLAY_RUN = _method(run_pb2.DESCRIPTOR, "RunService", "ReplayRun")
_EXPLAIN_STEP = _method(run_pb2.DESCRIPTOR, "RunService", "ExplainStep")
_DIFF_RUNS = _method(run_pb2.DESCRIPTOR, "RunService", "DiffRuns")
_GET_LINEAGE = _method(run_pb2.DESCRIPTOR, "RunService", "GetLineage")
_READ_LOGS = _method(run_pb2.DESCRIPTOR, "RunService", "ReadLogs")
_PUT_BLOB = _method(artifact_pb2.DESCRIPTOR, "ArtifactService", "PutBlob")
_GET_BLOB = _method(artifact_pb2.DESCRIPTOR, "ArtifactService", "GetBlob")
_STAT_BLOB = _method(artifact_pb2.DESCRIPTOR, "ArtifactService", "StatBlob")
_GET_RUN_TRACE = _method(trace_pb2.DESCRIPTOR, "TraceService", "GetRunTrace")
_LIST_RUN_EVENTS = _method(trace_pb2.DESCRIPTOR, "TraceService", "ListRunEvents")
_REPLAY_RUN_EVENTS = _method(trace_pb2.DESCRIPTOR, "TraceService", "ReplayRunEvents")
_GET_TRACER_STATUS = _method(trace_pb2.DESCRIPTOR, "TraceService", "GetTracerStatus")


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _request_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class RetrySettings:
    """How the client retries calls that are safe to retry.

    Attributes:
        initial_backoff: Seconds to wait before the first retry.
        max_backoff: Upper bound of the wait between retries.
        multiplier: Factor applied to the wait after each retry.
        deadline: Total seconds one call may spend retrying before its error is raised;
            for streams, seconds a broken stream may spend reconnecting.
        call_timeout: Seconds one attempt of a unary call may take.
    """

    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0
    deadline: float = 30.0
    call_timeout: float = 30.0


class _Backoff:
    """Jittered exponential waits within a total time budget."""

    def __init__(self, settings: RetrySettings) -> None:
        self._settings = settings
        self._retries = 0
        self._deadline = time.monotonic() + settings.deadline

    def reset(self) -> None:
        """Progress was made: the next failure starts a fresh budget."""
        self._retries = 0
        self._deadline = time.monotonic() + self._settings.deadline

    async def wait(self) -> bool:
        """Sleeps before the next retry; False when the budget would be exceeded."""
        s = self._settings
        delay = min(s.max_backoff, s.initial_backoff * s.multiplier**self._retries)
        # Full jitter in the upper half spreads clients that failed together.
        delay *= random.uniform(0.5, 1.0)
        if time.monotonic() + delay > self._deadline:
            return False
        self._retries += 1
        await asyncio.sleep(delay)
        return True


def _cache_mode(mode: CacheModeName | str) -> run_pb2.CacheMode:
    try:
        return _CACHE_MODES[mode.lower()]
    except KeyError:
        raise InvalidArgument(f"cache mode {mode!r} is not one of: {', '.join(_CACHE_MODES)}") from None


def _pipeline_message(pipeline: Pipeline | pipeline_pb2.Pipeline) -> pipeline_pb2.Pipeline:
    if isinstance(pipeline, Pipeline):
        return pipeline.to_proto()
    return pipeline


class AsyncClient:
    """An asyncio client of weft-api.

    Create it with `await AsyncClient.connect(target)` and close it with `await
    client.close()` (or use it as an async context manager). Names may be given as short
    ids (`etl`) in the client's namespace or as full resource names.

    Attributes:
        target: The `host:port` the client talks to.
        namespace: The namespace short ids resolve in.
        retry: How safe calls are retried.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        target: str,
        namespace: str,
        retry: RetrySettings,
        tracer: str = "",
        channel_options: Sequence[tuple[str, Any]] = (),
        credentials: grpc.ChannelCredentials | None = None,
        token: str = "",
        tls: bool = False,
        ca_cert: Path | None = None,
    ) -> None:
        self._channel = channel
        self.target = target
        self.namespace = namespace
        self.retry = retry
        #: `host:port` of weft-tracer for the trace methods ($WEFT_TRACER, else weft up's default).
        self.tracer = tracer or os.environ.get("WEFT_TRACER", "") or DEFAULT_TRACER_TARGET
        self._channel_options = list(channel_options)
        self._credentials = credentials
        # weft-tracer is reached with the same token and TLS settings as weft-api.
        self._token, self._tls, self._ca_cert = token, tls, ca_cert
        self._tracer_channel: grpc.aio.Channel | None = None

    @classmethod
    async def connect(
        cls,
        target: str = DEFAULT_TARGET,
        *,
        namespace: str = "default",
        retry: RetrySettings | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        tracer: str = "",
        token: str | None = None,
        tls: bool = False,
        ca_cert: str | os.PathLike[str] | None = None,
    ) -> AsyncClient:
        """Opens a channel to weft-api.

        The channel connects lazily: an unreachable server shows up as `Unavailable` on the
        first call (after retries), or at once with `wait_ready`.

        Args:
            target: `host:port` of weft-api.
            namespace: Namespace for names given as short ids.
            retry: Retry settings; the defaults retry for up to 30 s.
            credentials: TLS credentials; None means plaintext unless `tls` or `ca_cert`.
            options: Extra gRPC channel options, added after the defaults (64 MiB messages).
            tracer: `host:port` of weft-tracer for `get_run_trace` and the other trace
                methods; "" means $WEFT_TRACER, else 127.0.0.1:50052 (weft up's). Its
                channel opens on the first trace call.
            token: Bearer token sent on every call; None reads `WEFT_TOKEN` ("" sends none).
            tls: Talk TLS, trusting the system's CAs (or `ca_cert`).
            ca_cert: PEM file of the CA that signed the server's certificate (implies TLS).

        Returns:
            The client.
        """
        channel_options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            # gRPC's reconnect backoff grows to 120 s by default; a restarted weft-api should
            # be found again within a couple of seconds.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
            *options,
        ]
        token = os.environ.get("WEFT_TOKEN", "") if token is None else token
        channel = open_channel(
            target,
            token=token,
            tls=tls,
            ca_cert=Path(ca_cert) if ca_cert is not None else None,
            credentials=credentials,
            options=channel_options,
        )
        return cls(
            channel,
            target=target,
            namespace=namespace,
            retry=retry or RetrySettings(),
            tracer=tracer,
            channel_options=channel_options,
            credentials=credentials,
            token=token,
            tls=tls,
            ca_cert=Path(ca_cert) if ca_cert is not None else None,
        )

    async def close(self) -> None:
        """Closes the channel (and weft-tracer's, if opened); calls in flight are cancelled."""
        await self._channel.close(None)
        if self._tracer_channel is not None:
            await self._tracer_channel.close(None)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Waits until the channel is connected to the server.

        Raises:
            Unavailable: Not connected within `timeout` seconds.
        """
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except TimeoutError:
            raise Unavailable(f"weft-api at {self.target} is not reachable (waited {timeout:g}s)") from None

    # Plumbing ---------------------------------------------------------------------------

    async def _connected(self) -> None:
        """Waits (within the retry deadline) until the channel is connected.

        A call that may not be retried is sent only on a connected channel: waiting for
        the connection is safe, since nothing has reached the server yet, whereas sending
        on a channel still backing off from a server restart fails at once.
        """
        if self._channel.get_state(try_to_connect=True) == grpc.ChannelConnectivity.READY:
            return
        try:
            await asyncio.wait_for(self._channel.channel_ready(), self.retry.deadline)
        except TimeoutError:
            raise Unavailable(f"weft-api at {self.target} is not reachable (waited {self.retry.deadline:g}s)") from None

    async def _unary(
        self,
        method: str,
        request: Message,
        response_type: type[R],
        *,
        retry: bool,
        channel: grpc.aio.Channel | None = None,
    ) -> R:
        call: grpc.aio.UnaryUnaryMultiCallable[Message, R] = (channel or self._channel).unary_unary(
            method, request_serializer=_serialize, response_deserializer=response_type.FromString
        )
        if not retry:
            await self._connected()
        backoff = _Backoff(self.retry)
        while True:
            try:
                response: R = await call(request, timeout=self.retry.call_timeout)
                return response
            except grpc.aio.AioRpcError as error:
                if retry and error.code() in _RETRYABLE and await backoff.wait():
                    continue
                raise from_rpc_error(error) from error

    def _stream_call(
        self, method: str, request: Message, response_type: type[R], *, channel: grpc.aio.Channel | None = None
    ) -> grpc.aio.UnaryStreamCall[Message, R]:
        call: grpc.aio.UnaryStreamMultiCallable[Message, R] = (channel or self._channel).unary_stream(
            method, request_serializer=_serialize, response_deserializer=response_type.FromString
        )
        return call(request)

    async def _pages(self, method: str, request: Any, response_type: type[R], items: str) -> AsyncIterator[Any]:
        seen_tokens: set[str] = set()
        while True:
            page = await self._unary(method, request, response_type, retry=True)
            for item in getattr(page, items):
                yield item
            token: str = getattr(page, "next_page_token")  # noqa: B009  (every List response has it)
            if not token:
                return
            if token in seen_tokens:
                # A server that hands out the same token twice would make this loop forever.
                raise Internal(f"the server repeated page token {token!r} in {method}")
            seen_tokens.add(token)
            request.page_token = token

    def _pipeline(self, name: str, argument: str = "name") -> str:
        return _names.pipeline_name(self.namespace, name, argument)

    def _run(self, name: str, argument: str = "name") -> str:
        return _names.run_name(self.namespace, name, argument)

    # Pipelines ----------------------------------------------------------------------------

    async def create_pipeline(
        self, pipeline: Pipeline | pipeline_pb2.Pipeline, *, request_id: str | None = None
    ) -> PipelineVersion:
        """Stores a pipeline spec (CreatePipeline); the same spec always gives the same version.

        Args:
            pipeline: A `weft.Pipeline` builder or a `weft.v1.Pipeline` message.
            request_id: Makes retries safe; generated when None.

        Returns:
            The stored version, now the pipeline's latest.
        """
        message = _pipeline_message(pipeline)
        parent = _names.namespace_name(_names.namespace_of(message.name) or self.namespace)
        request = pipeline_pb2.CreatePipelineRequest(
            parent=parent, pipeline=message, request_id=request_id or _request_id()
        )
        return PipelineVersion(await self._unary(_CREATE_PIPELINE, request, pipeline_pb2.Pipeline, retry=True))

    async def apply(self, pipeline: Pipeline | pipeline_pb2.Pipeline, *, request_id: str | None = None) -> Applied:
        """Stores a pipeline spec and says what changed (as `weft apply` shows it).

        Args:
            pipeline: A `weft.Pipeline` builder or a `weft.v1.Pipeline` message.
            request_id: Makes retries safe; generated when None.

        Returns:
            The stored version and whether it was created, a new version, unchanged, or an
            older identical version made latest again.
        """
        message = _pipeline_message(pipeline)
        if not message.name:
            raise InvalidArgument("the pipeline has no name: set `name` (e.g. `name: etl` in the file)")
        try:
            before: PipelineVersion | None = await self.get_pipeline(message.name)
        except NotFound:
            before = None
        after = await self.create_pipeline(message, request_id=request_id)
        change: ApplyChange
        if before is None:
            change = "created"
        elif before.version == after.version:
            change = "unchanged"
        elif after.version_count > before.version_count:
            change = "new-version"
        else:
            change = "restored"
        return Applied(after, change)

    async def get_pipeline(self, name: str, *, version: str | None = None) -> PipelineVersion:
        """Reads a pipeline at its latest version, or at `version` (a digest or a unique hex prefix).

        Raises:
            NotFound: No such pipeline or version.
        """
        request = pipeline_pb2.GetPipelineRequest(name=self._pipeline(name), version=version or "")
        return PipelineVersion(await self._unary(_GET_PIPELINE, request, pipeline_pb2.Pipeline, retry=True))

    async def list_pipelines(self, *, filter: str = "", page_size: int = 0) -> AsyncIterator[PipelineVersion]:
        """Every pipeline of the namespace at its latest version, by name; pages are fetched as needed.

        Args:
            filter: `label.KEY=VALUE` terms joined by spaces, or `name=PREFIX*`.
            page_size: Results per page; 0 lets the server choose.
        """
        request = pipeline_pb2.ListPipelinesRequest(
            parent=_names.namespace_name(self.namespace), page_size=page_size, filter=filter
        )
        async for item in self._pages(_LIST_PIPELINES, request, pipeline_pb2.ListPipelinesResponse, "pipelines"):
            yield PipelineVersion(item)

    async def list_pipeline_versions(self, name: str, *, page_size: int = 0) -> AsyncIterator[PipelineVersion]:
        """Every stored version of a pipeline, newest first; pages are fetched as needed."""
        request = pipeline_pb2.ListPipelineVersionsRequest(name=self._pipeline(name), page_size=page_size)
        async for item in self._pages(
            _LIST_PIPELINE_VERSIONS, request, pipeline_pb2.ListPipelineVersionsResponse, "versions"
        ):
            yield PipelineVersion(item)

    async def delete_pipeline(self, name: str, *, etag: str = "") -> None:
        """Deletes a pipeline and all its versions; its runs are kept. Never retried.

        Args:
            name: The pipeline.
            etag: If given, delete only if the pipeline's head still has this etag.

        Raises:
            NotFound: No such pipeline.
            Aborted: The etag no longer matches.
        """
        request = pipeline_pb2.DeletePipelineRequest(name=self._pipeline(name), etag=etag)
        await self._unary(_DELETE_PIPELINE, request, pipeline_pb2.DeletePipelineResponse, retry=False)

    # Runs ---------------------------------------------------------------------------------

    async def create_run(
        self,
        pipeline: str | PipelineVersion,
        parameters: Mapping[str, str] | None = None,
        *,
        cache_mode: CacheModeName | str = "use",
        run_id: str | None = None,
        version: str | None = None,
        labels: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> AsyncRun:
        """Starts a run of a pipeline version.

        Args:
            pipeline: The pipeline's id or name, or a `PipelineVersion` (which pins its version).
            parameters: Parameter values by name; defaults fill the rest.
            cache_mode: "use" (reuse matching outcomes), "refresh" (run everything, store
                the new outcomes) or "off".
            run_id: The run's id; generated from the pipeline's name when None.
            version: A version digest or unique hex prefix; None means the latest (or the
                version of a `PipelineVersion`).
            labels: Labels for selection.
            request_id: Makes retries safe; generated when None.

        Returns:
            The new run, PENDING.
        """
        if isinstance(pipeline, PipelineVersion):
            pipeline_full, version = pipeline.full_name, version or pipeline.version
        else:
            pipeline_full = self._pipeline(pipeline, "pipeline")
        for key, value in (parameters or {}).items():
            if not isinstance(value, str):
                raise InvalidArgument(f"parameter {key!r}: values are strings, got {type(value).__name__}")
        run = run_pb2.Run(
            pipeline=pipeline_full,
            pipeline_version=version or "",
            parameters=dict(parameters or {}),
            options=run_pb2.RunOptions(cache_mode=_cache_mode(cache_mode)),
            labels=dict(labels or {}),
        )
        request = run_pb2.CreateRunRequest(
            parent=_names.namespace_name(_names.namespace_of(pipeline_full) or self.namespace),
            run=run,
            run_id=run_id or "",
            request_id=request_id or _request_id(),
        )
        return AsyncRun(await self._unary(_CREATE_RUN, request, run_pb2.Run, retry=True), self)

    async def get_run(self, name: str, *, full: bool = True) -> AsyncRun:
        """Reads a run; `full` includes every step run.

        Raises:
            NotFound: No such run.
        """
        view = run_pb2.RUN_VIEW_FULL if full else run_pb2.RUN_VIEW_BASIC
        request = run_pb2.GetRunRequest(name=self._run(name), view=view)
        return AsyncRun(await self._unary(_GET_RUN, request, run_pb2.Run, retry=True), self)

    async def list_runs(
        self,
        *,
        pipeline: str | None = None,
        state: str | Sequence[str] | None = None,
        page_size: int = 0,
        full: bool = False,
    ) -> AsyncIterator[AsyncRun]:
        """Runs of the namespace, newest first; pages are fetched as needed.

        Args:
            pipeline: Only runs of this pipeline (id or name).
            state: Only runs in this state or these states ("RUNNING", ["FAILED", "CANCELLED"]).
            page_size: Results per page; 0 lets the server choose.
            full: Include every step run of each run.
        """
        terms = []
        if pipeline:
            terms.append(f"pipeline={_names.short_id(pipeline)}")
        if state:
            states = [state] if isinstance(state, str) else list(state)
            terms.append("state=" + ",".join(s.upper().removeprefix("STATE_") for s in states))
        request = run_pb2.ListRunsRequest(
            parent=_names.namespace_name(self.namespace),
            page_size=page_size,
            filter=" ".join(terms),
            view=run_pb2.RUN_VIEW_FULL if full else run_pb2.RUN_VIEW_BASIC,
        )
        async for item in self._pages(_LIST_RUNS, request, run_pb2.ListRunsResponse, "runs"):
            yield AsyncRun(item, self)

    async def watch_run(self, name: str, *, start_revision: int = 0, full: bool = True) -> AsyncIterator[RunEvent]:
        """The run's changes and its steps' changes, in commit order, until it is terminal.

        Starting at revision 0 gives a snapshot of the run and every step first (with
        `full=False`, of the run alone, and no step changes follow either). When the
        stream breaks (weft-api restarted, network), the watch is reopened after the last
        revision received whole, and the events of a revision received in part are not
        delivered twice, so no change is missed or repeated; it gives up after
        `retry.deadline` seconds without progress.

        Args:
            name: The run.
            start_revision: Resume after an event that had `last_in_revision`: pass its
                revision + 1. 0 starts with a snapshot.
            full: Include the steps; False streams only the run record's changes, at a cost
                that does not grow with the number of steps.

        Raises:
            NotFound: No such run.
            Unavailable: The server stayed unreachable.
        """
        request = run_pb2.WatchRunRequest(
            name=self._run(name),
            start_revision=start_revision,
            view=run_pb2.RUN_VIEW_FULL if full else run_pb2.RUN_VIEW_BASIC,
        )
        backoff = _Backoff(self.retry)
        # Events already delivered of a revision whose last event has not arrived yet: the
        # server sends that revision again from its start after a reconnect.
        partial_revision, partial_count = 0, 0
        while True:
            call = self._stream_call(_WATCH_RUN, request, run_pb2.RunEvent)
            # A reconnected stream starts with the partial revision's events we already gave.
            to_skip = partial_count
            try:
                async for event in call:
                    backoff.reset()
                    if to_skip and event.revision == partial_revision:
                        to_skip -= 1
                        continue
                    to_skip = 0
                    if event.last_in_revision:
                        request.start_revision = max(request.start_revision, event.revision + 1)
                        partial_revision, partial_count = 0, 0
                    elif event.revision == partial_revision:
                        partial_count += 1
                    else:
                        partial_revision, partial_count = event.revision, 1
                    yield RunEvent(event)
                return
            except grpc.aio.AioRpcError as error:
                if error.code() in _STREAM_RETRYABLE and await backoff.wait():
                    continue
                raise from_rpc_error(error) from error
            finally:
                call.cancel()

    async def cancel_run(self, name: str, *, reason: str = "") -> AsyncRun:
        """Asks a run to stop: running attempts are stopped, unfinished steps end CANCELLED. Never retried.

        Returns:
            The run, CANCELLING (or CANCELLED if it had not started).
        """
        request = run_pb2.CancelRunRequest(name=self._run(name), reason=reason)
        return AsyncRun(await self._unary(_CANCEL_RUN, request, run_pb2.Run, retry=False), self)

    async def resume_run(
        self,
        name: str,
        *,
        latest_version: bool = False,
        run_id: str | None = None,
        request_id: str | None = None,
    ) -> AsyncRun:
        """Starts a new run that reuses every committed outcome of `name` whose DNA still matches.

        Args:
            name: The run to resume.
            latest_version: Run the pipeline's latest version instead of the resumed run's.
            run_id: Id of the new run; generated when None.
            request_id: Makes retries safe; generated when None.

        Returns:
            The new run.
        """
        request = run_pb2.ResumeRunRequest(
            name=self._run(name),
            latest_version=latest_version,
            run_id=run_id or "",
            request_id=request_id or _request_id(),
        )
        return AsyncRun(await self._unary(_RESUME_RUN, request, run_pb2.Run, retry=True), self)

    async def replay_run(
        self,
        name: str,
        *,
        run_id: str | None = None,
        request_id: str | None = None,
        steps: Sequence[str] = (),
        with_upstream: bool = False,
    ) -> AsyncRun:
        """Starts a run of exactly the same pipeline version and parameters as `name`, cache off.

        When it ends, `diff_runs(name, replay)` names the nondeterministic steps: those whose
        DNA (inputs included) matched but whose outputs did not.

        Args:
            name: The finished run to replay.
            run_id: Id of the new run; generated when None.
            request_id: Makes retries safe; generated when None.
            steps: Replay only these steps, on their recorded inputs: their upstream steps
                are resumed from `name` and their downstream steps are not part of the replay.
            with_upstream: With `steps`, replay their upstream steps too instead of resuming them.
        """
        request = run_pb2.ReplayRunRequest(
            name=self._run(name),
            run_id=run_id or "",
            request_id=request_id or _request_id(),
            steps=list(steps),
            with_upstream=with_upstream,
        )
        return AsyncRun(await self._unary(_REPLAY_RUN, request, run_pb2.Run, retry=True), self)

    async def explain_step(self, run: str, step: str) -> Explanation:
        """A step run's DNA components and why it was a cache hit or miss."""
        request = run_pb2.ExplainStepRequest(run=self._run(run, "run"), step=step)
        return Explanation(await self._unary(_EXPLAIN_STEP, request, run_pb2.StepExplanation, retry=True))

    async def diff_runs(self, run_a: str, run_b: str, *, page_size: int = 0) -> run_pb2.DiffRunsResponse:
        """Two runs compared step by step by DNA (`weft.v1.DiffRunsResponse`), every page.

        Args:
            run_a: The first run, by id or full name.
            run_b: The second run, by id or full name.
            page_size: Steps asked for per call (0: the server's default); the answer
                holds them all either way.

        Returns:
            Every step with its kind of difference, root causes first, then steps changed
            only through an input (naming the upstream), then nondeterministic steps,
            added, removed, incomparable and same steps.
        """
        request = run_pb2.DiffRunsRequest(run_a=self._run(run_a), run_b=self._run(run_b), page_size=page_size)
        whole = run_pb2.DiffRunsResponse()
        seen_tokens: set[str] = set()
        while True:  # every page, in the server's order
            page = await self._unary(_DIFF_RUNS, request, run_pb2.DiffRunsResponse, retry=True)
            whole.run_a, whole.run_b = page.run_a, page.run_b
            whole.steps.extend(page.steps)
            if not page.next_page_token:
                return whole
            if page.next_page_token in seen_tokens:
                raise Internal(f"weft-api repeated page token {page.next_page_token!r} in DiffRuns")
            seen_tokens.add(page.next_page_token)
            request.page_token = page.next_page_token

    async def get_lineage(
        self,
        run: str = "",
        step: str = "",
        *,
        outcome: str = "",
        blob: str = "",
        direction: str = "both",
        depth: int = 0,
        page_size: int = 0,
        page_token: str = "",
    ) -> run_pb2.Lineage:
        """One page of the lineage of a run's step, an outcome (DNA) or a blob digest.

        Args:
            run: With `step`: the run, by id or full name.
            step: The step whose committed outcome is the start.
            outcome: Start from the outcome with this DNA instead.
            blob: Start from the outcomes that produced or consumed this digest instead.
            direction: "up", "down" or "both".
            depth: Edges to walk; 0 means the server's default (3).
            page_size: Nodes per page; 0 means 100.
            page_token: A previous page's `next_page_token`.
        """
        directions = {
            "up": run_pb2.LINEAGE_DIRECTION_UPSTREAM,
            "down": run_pb2.LINEAGE_DIRECTION_DOWNSTREAM,
            "both": run_pb2.LINEAGE_DIRECTION_BOTH,
        }
        if direction not in directions:
            raise ValueError(f"direction must be one of {', '.join(directions)}, not {direction!r}")
        request = run_pb2.GetLineageRequest(
            parent=_names.namespace_name(self.namespace),
            run=self._run(run) if run else "",
            step=step,
            outcome=outcome,
            blob=blob,
            direction=directions[direction],
            depth=depth,
            page_size=page_size,
            page_token=page_token,
        )
        return await self._unary(_GET_LINEAGE, request, run_pb2.Lineage, retry=True)

    async def read_logs(
        self, run: str, step: str, *, attempt: int = 0, follow: bool = False
    ) -> AsyncIterator[LogChunk]:
        """An attempt's stdout and stderr, in order; with `follow`, until the attempt ends.

        A broken stream is reopened and the bytes already delivered are skipped, so the
        caller sees each byte once.

        Args:
            run: The run.
            step: The step's name.
            attempt: Attempt number; 0 means the latest.
            follow: Keep streaming while the attempt runs.
        """
        request = run_pb2.ReadLogsRequest(run=self._run(run, "run"), step=step, attempt=attempt, follow=follow)
        delivered: dict[tuple[int, int], int] = {}
        backoff = _Backoff(self.retry)
        while True:
            seen: dict[tuple[int, int], int] = {}
            call = self._stream_call(_READ_LOGS, request, run_pb2.LogChunk)
            try:
                async for chunk in call:
                    key = (chunk.attempt, chunk.stream)
                    start = seen.get(key, 0)
                    seen[key] = start + len(chunk.data)
                    skip = max(0, delivered.get(key, 0) - start)
                    data = chunk.data[skip:]
                    if not data:
                        continue
                    backoff.reset()
                    delivered[key] = seen[key]
                    stream: Literal["stdout", "stderr"] = (
                        "stderr" if chunk.stream == run_pb2.LogChunk.STREAM_STDERR else "stdout"
                    )
                    yield LogChunk(stream=stream, data=data, attempt=chunk.attempt)
                return
            except grpc.aio.AioRpcError as error:
                if error.code() in _STREAM_RETRYABLE and await backoff.wait():
                    continue
                raise from_rpc_error(error) from error
            finally:
                call.cancel()

    # Traces (weft-tracer) ---------------------------------------------------------------------

    def _tracer(self) -> grpc.aio.Channel:
        if self._tracer_channel is None:
            self._tracer_channel = open_channel(
                self.tracer,
                token=self._token,
                tls=self._tls,
                ca_cert=self._ca_cert,
                credentials=self._credentials,
                options=self._channel_options,
            )
        return self._tracer_channel

    async def get_run_trace(self, run: str) -> trace_pb2.RunTrace:
        """The stored spans of a run's trace as one tree, parents first (GetRunTrace).

        Raises:
            Unavailable: weft-tracer (`self.tracer`) cannot be reached.
        """
        request = trace_pb2.GetRunTraceRequest(run=self._run(run))
        return await self._unary(_GET_RUN_TRACE, request, trace_pb2.RunTrace, retry=True, channel=self._tracer())

    async def list_run_events(
        self, run: str, *, step: str = "", page_size: int = 0
    ) -> AsyncIterator[trace_pb2.TimelineEvent]:
        """The run's forensic timeline in order, page by page (ListRunEvents).

        Args:
            run: The run.
            step: Only this step's events (and the run's own); "" for all.
            page_size: Events per page; 0 for the server's default.
        """
        request = trace_pb2.ListRunEventsRequest(run=self._run(run), filter=step, page_size=page_size)
        seen_tokens: set[str] = set()
        while True:
            page = await self._unary(
                _LIST_RUN_EVENTS, request, trace_pb2.ListRunEventsResponse, retry=True, channel=self._tracer()
            )
            for event in page.events:
                yield event
            if not page.next_page_token:
                return
            if page.next_page_token in seen_tokens:
                raise Internal(f"weft-tracer repeated page token {page.next_page_token!r} in ListRunEvents")
            seen_tokens.add(page.next_page_token)
            request.page_token = page.next_page_token

    async def replay_run_events(
        self, run: str, *, speed: float = 1.0, as_fast_as_possible: bool = False, step: str = ""
    ) -> AsyncIterator[trace_pb2.TimelineEvent]:
        """The run's timeline played back with its recorded spacing divided by `speed`
        (ReplayRunEvents). A broken stream is not resumed: replaying is about timing, and a
        replay that restarts would no longer be one."""
        request = trace_pb2.ReplayRunEventsRequest(
            run=self._run(run), speed=speed, as_fast_as_possible=as_fast_as_possible, filter=step
        )
        call = self._stream_call(_REPLAY_RUN_EVENTS, request, trace_pb2.TimelineEvent, channel=self._tracer())
        try:
            async for event in call:
                yield event
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from error
        finally:
            call.cancel()

    async def tracer_status(self) -> trace_pb2.TracerStatus:
        """weft-tracer's counters: received, stored, dropped, forwarded... (GetTracerStatus)."""
        return await self._unary(
            _GET_TRACER_STATUS,
            trace_pb2.GetTracerStatusRequest(),
            trace_pb2.TracerStatus,
            retry=True,
            channel=self._tracer(),
        )

    # Blobs ----------------------------------------------------------------------------------

    async def put_blob(self, content: bytes | os.PathLike[str]) -> Blob:
        """Uploads content (bytes, or a file by path) to the artifact store.

        The sha256 is computed here and the server verifies it. The upload is retried like
        a read: the digest names the content, so repeating it cannot store anything twice.

        Returns:
            The stored blob's digest and size.
        """
        path = Path(content) if isinstance(content, os.PathLike) else None
        data = b"" if isinstance(content, os.PathLike) else bytes(content)
        if path is not None:
            digest, size = await asyncio.to_thread(_hash_file, path)
        else:
            digest, size = "sha256:" + hashlib.sha256(data).hexdigest(), len(data)
        if size > _STAT_BEFORE_PUT_BYTES:
            try:
                existing = await self.stat_blob(digest)
                if existing.size == size:
                    return existing
            except NotFound:
                pass

        async def requests() -> AsyncIterator[artifact_pb2.PutBlobRequest]:
            # A fresh iterator per attempt: a retried upload starts again from the header.
            header = artifact_pb2.BlobHeader(digest=digest, size_bytes=size, namespace=self.namespace)
            yield artifact_pb2.PutBlobRequest(header=header)
            if path is None:
                for offset in range(0, size, BLOB_CHUNK_BYTES):
                    yield artifact_pb2.PutBlobRequest(data=data[offset : offset + BLOB_CHUNK_BYTES])
                return
            with path.open("rb") as file:
                while chunk := await asyncio.to_thread(file.read, BLOB_CHUNK_BYTES):
                    yield artifact_pb2.PutBlobRequest(data=chunk)

        put: grpc.aio.StreamUnaryMultiCallable[artifact_pb2.PutBlobRequest, artifact_pb2.Blob] = (
            self._channel.stream_unary(
                _PUT_BLOB, request_serializer=_serialize, response_deserializer=artifact_pb2.Blob.FromString
            )
        )
        backoff = _Backoff(self.retry)
        while True:
            try:
                blob: artifact_pb2.Blob = await put(requests())
                return Blob(blob)
            except grpc.aio.AioRpcError as error:
                if error.code() in _RETRYABLE and await backoff.wait():
                    continue
                raise from_rpc_error(error) from error

    async def stat_blob(self, digest: str) -> Blob:
        """Whether a blob exists and how large it is.

        Raises:
            NotFound: No blob with that digest.
        """
        request = artifact_pb2.StatBlobRequest(digest=digest, namespace=self.namespace)
        return Blob(await self._unary(_STAT_BLOB, request, artifact_pb2.Blob, retry=True))

    async def iter_blob(self, digest: str, *, offset: int = 0) -> AsyncIterator[bytes]:
        """A blob's content in chunks, from `offset`; a broken stream resumes where it stopped.

        The content is not verified here (a caller reading from an offset cannot be); use
        `get_blob` or `save_blob` for verified reads.
        """
        request = artifact_pb2.GetBlobRequest(digest=digest, offset=offset, namespace=self.namespace)
        backoff = _Backoff(self.retry)
        while True:
            call = self._stream_call(_GET_BLOB, request, artifact_pb2.GetBlobResponse)
            try:
                async for chunk in call:
                    if chunk.data:
                        backoff.reset()
                        request.offset += len(chunk.data)
                        yield chunk.data
                return
            except grpc.aio.AioRpcError as error:
                if error.code() in _STREAM_RETRYABLE and await backoff.wait():
                    continue
                raise from_rpc_error(error) from error
            finally:
                call.cancel()

    async def get_blob(self, digest: str) -> bytes:
        """A blob's whole content, verified against its digest.

        Raises:
            NotFound: No blob with that digest.
            DataLoss: The bytes received do not hash to the digest.
        """
        hasher = hashlib.sha256()
        parts = []
        async for chunk in self.iter_blob(digest):
            hasher.update(chunk)
            parts.append(chunk)
        _verify(digest, hasher)
        return b"".join(parts)

    async def save_blob(self, digest: str, path: os.PathLike[str] | str) -> int:
        """Writes a blob to a file, verified against its digest; returns its size.

        The file appears only once complete and verified (written beside it, then renamed).

        Raises:
            NotFound: No blob with that digest.
            DataLoss: The bytes received do not hash to the digest (nothing is written).
        """
        target = Path(path)
        partial = target.with_name(f".{target.name}.partial")
        hasher = hashlib.sha256()
        size = 0
        try:
            with partial.open("wb") as file:
                async for chunk in self.iter_blob(digest):
                    hasher.update(chunk)
                    size += len(chunk)
                    await asyncio.to_thread(file.write, chunk)
            _verify(digest, hasher)
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        return size


def _hash_file(path: Path) -> tuple[str, int]:
    hasher = hashlib.sha256()
    size = 0
    with path.open("rb") as file:
        while chunk := file.read(BLOB_CHUNK_BYTES):
            hasher.update(chunk)
            size += len(chunk)
    return "sha256:" + hasher.hexdigest(), size


def _verify(digest: str, hasher: Any) -> None:
    actual = "sha256:" + hasher.hexdigest()
    if actual != digest:
        raise DataLoss(f"blob {digest} arrived with content hashing to {actual}; it is corrupt in the store")


@dataclass(repr=False)  # RunRecord's one-line repr
class AsyncRun(RunRecord):
    """A run, with coroutines that act on it. Returned by `AsyncClient`'s run methods."""

    _client: AsyncClient = field(repr=False, compare=False)

    async def refresh(self) -> AsyncRun:
        """Re-reads the run (with every step run) and returns it, updated in place."""
        self.pb = (await self._client.get_run(self.full_name)).pb
        return self

    async def wait(self, timeout: float | None = None) -> AsyncRun:
        """Waits until the run is terminal and returns it, updated in place with every step run.

        Args:
            timeout: Seconds to wait; None waits as long as it takes.

        Raises:
            DeadlineExceeded: The run was not terminal within `timeout`.
        """

        async def until_terminal() -> None:
            while not self.is_terminal:
                # Only the run record's changes: the steps are read once, at the end.
                async for event in self._client.watch_run(self.full_name, full=False):
                    record = event.run
                    if record is not None and record.is_terminal:
                        break
                await self.refresh()
                if not self.is_terminal:
                    # The stream ended early (it should end only at a terminal state); look again soon.
                    await asyncio.sleep(0.2)

        try:
            await asyncio.wait_for(until_terminal(), timeout)
        except TimeoutError:
            raise DeadlineExceeded(
                f"run {self.name} is still {self.state} after {timeout:g}s; "
                f"wait longer or follow it with `weft runs watch {self.name}`"
            ) from None
        return self

    def watch(self, *, start_revision: int = 0, full: bool = True) -> AsyncIterator[RunEvent]:
        """The run's events until it is terminal (see `AsyncClient.watch_run`)."""
        return self._client.watch_run(self.full_name, start_revision=start_revision, full=full)

    async def cancel(self, reason: str = "") -> AsyncRun:
        """Asks the run to stop and returns it, updated in place."""
        self.pb = (await self._client.cancel_run(self.full_name, reason=reason)).pb
        return self

    async def resume(self, *, latest_version: bool = False) -> AsyncRun:
        """Starts a new run reusing this run's matching outcomes; returns the new run."""
        return await self._client.resume_run(self.full_name, latest_version=latest_version)

    async def explain(self, step: str) -> Explanation:
        """The DNA components and cache decision of one step."""
        return await self._client.explain_step(self.full_name, step)

    def logs(self, step: str, *, attempt: int = 0, follow: bool = False) -> AsyncIterator[LogChunk]:
        """One attempt's output (see `AsyncClient.read_logs`)."""
        return self._client.read_logs(self.full_name, step, attempt=attempt, follow=follow)

    async def outputs(self, step: str | None = None) -> dict[str, dict[str, bytes]]:
        """The content of every output of every step with an outcome (or of one step).

        Returns:
            {step name: {output name: content}}, in spec order; steps without an outcome
            are left out.
        """
        if not self.pb.steps:
            await self.refresh()
        steps = [self.step(step)] if step is not None else self.steps
        wanted = [(s.name, output, digest) for s in steps for output, digest in sorted(s.outputs.items())]
        # A few downloads at a time: enough to hide latency without flooding the server.
        limit = asyncio.Semaphore(8)

        async def fetch(digest: str) -> bytes:
            async with limit:
                return await self._client.get_blob(digest)

        contents = await asyncio.gather(*(fetch(digest) for _, _, digest in wanted))
        result: dict[str, dict[str, bytes]] = {}
        for (step_name, output, _), content in zip(wanted, contents, strict=True):
            result.setdefault(step_name, {})[output] = content
        return result


# The blocking face -----------------------------------------------------------------------


class Client:
    """A blocking client of weft-api; each method runs the same-named `AsyncClient` coroutine.

    Create it with `Client.connect(target)` and close it with `client.close()` (or use it
    as a context manager). It owns a background thread running the event loop its channel
    lives on.

    Attributes:
        target: The `host:port` the client talks to.
        namespace: The namespace short ids resolve in.
    """

    def __init__(self, aio: AsyncClient, bridge: EventLoopThread) -> None:
        self._aio = aio
        self._bridge = bridge
        self.target = aio.target
        self.namespace = aio.namespace

    @classmethod
    def connect(
        cls,
        target: str = DEFAULT_TARGET,
        *,
        namespace: str = "default",
        retry: RetrySettings | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        tracer: str = "",
        token: str | None = None,
        tls: bool = False,
        ca_cert: str | os.PathLike[str] | None = None,
    ) -> Client:
        """Opens a channel to weft-api (see `AsyncClient.connect`)."""
        bridge = EventLoopThread()
        try:
            aio = bridge.run(
                AsyncClient.connect(
                    target,
                    namespace=namespace,
                    retry=retry,
                    credentials=credentials,
                    options=options,
                    tracer=tracer,
                    token=token,
                    tls=tls,
                    ca_cert=ca_cert,
                )
            )
        except BaseException:
            bridge.close()
            raise
        return cls(aio, bridge)

    def close(self) -> None:
        """Closes the channel and stops the loop thread."""
        try:
            self._bridge.run(self._aio.close())
        finally:
            self._bridge.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def aio(self) -> AsyncClient:
        """The async client underneath (usable only from this client's loop thread)."""
        return self._aio

    def _wrap(self, run: AsyncRun) -> Run:
        return Run(run.pb, self)

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Waits until the channel is connected (see `AsyncClient.wait_ready`)."""
        self._bridge.run(self._aio.wait_ready(timeout))

    def create_pipeline(
        self, pipeline: Pipeline | pipeline_pb2.Pipeline, *, request_id: str | None = None
    ) -> PipelineVersion:
        """Stores a pipeline spec (see `AsyncClient.create_pipeline`)."""
        return self._bridge.run(self._aio.create_pipeline(pipeline, request_id=request_id))

    def apply(self, pipeline: Pipeline | pipeline_pb2.Pipeline, *, request_id: str | None = None) -> Applied:
        """Stores a pipeline spec and says what changed (see `AsyncClient.apply`)."""
        return self._bridge.run(self._aio.apply(pipeline, request_id=request_id))

    def get_pipeline(self, name: str, *, version: str | None = None) -> PipelineVersion:
        """Reads a pipeline (see `AsyncClient.get_pipeline`)."""
        return self._bridge.run(self._aio.get_pipeline(name, version=version))

    def list_pipelines(self, *, filter: str = "", page_size: int = 0) -> Iterator[PipelineVersion]:
        """Every pipeline of the namespace (see `AsyncClient.list_pipelines`)."""
        return self._bridge.iterate(self._aio.list_pipelines(filter=filter, page_size=page_size))

    def list_pipeline_versions(self, name: str, *, page_size: int = 0) -> Iterator[PipelineVersion]:
        """Every version of a pipeline, newest first (see `AsyncClient.list_pipeline_versions`)."""
        return self._bridge.iterate(self._aio.list_pipeline_versions(name, page_size=page_size))

    def delete_pipeline(self, name: str, *, etag: str = "") -> None:
        """Deletes a pipeline (see `AsyncClient.delete_pipeline`)."""
        self._bridge.run(self._aio.delete_pipeline(name, etag=etag))

    def create_run(
        self,
        pipeline: str | PipelineVersion,
        parameters: Mapping[str, str] | None = None,
        *,
        cache_mode: CacheModeName | str = "use",
        run_id: str | None = None,
        version: str | None = None,
        labels: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> Run:
        """Starts a run (see `AsyncClient.create_run`)."""
        return self._wrap(
            self._bridge.run(
                self._aio.create_run(
                    pipeline,
                    parameters,
                    cache_mode=cache_mode,
                    run_id=run_id,
                    version=version,
                    labels=labels,
                    request_id=request_id,
                )
            )
        )

    def get_run(self, name: str, *, full: bool = True) -> Run:
        """Reads a run (see `AsyncClient.get_run`)."""
        return self._wrap(self._bridge.run(self._aio.get_run(name, full=full)))

    def list_runs(
        self,
        *,
        pipeline: str | None = None,
        state: str | Sequence[str] | None = None,
        page_size: int = 0,
        full: bool = False,
    ) -> Iterator[Run]:
        """Runs of the namespace, newest first (see `AsyncClient.list_runs`)."""
        pages = self._bridge.iterate(
            self._aio.list_runs(pipeline=pipeline, state=state, page_size=page_size, full=full)
        )
        try:
            for run in pages:
                yield self._wrap(run)
        finally:
            # Close the async pager now (not at garbage collection) when the caller stops early.
            pages.close()

    def watch_run(self, name: str, *, start_revision: int = 0, full: bool = True) -> Iterator[RunEvent]:
        """A run's events until it is terminal (see `AsyncClient.watch_run`)."""
        return self._bridge.iterate(self._aio.watch_run(name, start_revision=start_revision, full=full))

    def cancel_run(self, name: str, *, reason: str = "") -> Run:
        """Asks a run to stop (see `AsyncClient.cancel_run`)."""
        return self._wrap(self._bridge.run(self._aio.cancel_run(name, reason=reason)))

    def resume_run(
        self,
        name: str,
        *,
        latest_version: bool = False,
        run_id: str | None = None,
        request_id: str | None = None,
    ) -> Run:
        """Starts a run reusing an earlier run's outcomes (see `AsyncClient.resume_run`)."""
        return self._wrap(
            self._bridge.run(
                self._aio.resume_run(name, latest_version=latest_version, run_id=run_id, request_id=request_id)
            )
        )

    def replay_run(
        self,
        name: str,
        *,
        run_id: str | None = None,
        request_id: str | None = None,
        steps: Sequence[str] = (),
        with_upstream: bool = False,
    ) -> Run:
        """Starts a cache-off replay of a finished run (see `AsyncClient.replay_run`)."""
        return self._wrap(
            self._bridge.run(
                self._aio.replay_run(
                    name, run_id=run_id, request_id=request_id, steps=steps, with_upstream=with_upstream
                )
            )
        )

    def explain_step(self, run: str, step: str) -> Explanation:
        """A step's DNA and cache decision (see `AsyncClient.explain_step`)."""
        return self._bridge.run(self._aio.explain_step(run, step))

    def diff_runs(self, run_a: str, run_b: str, *, page_size: int = 0) -> run_pb2.DiffRunsResponse:
        """Two runs compared step by step by DNA, every page (see `AsyncClient.diff_runs`)."""
        return self._bridge.run(self._aio.diff_runs(run_a, run_b, page_size=page_size))

    def get_lineage(
        self,
        run: str = "",
        step: str = "",
        *,
        outcome: str = "",
        blob: str = "",
        direction: str = "both",
        depth: int = 0,
        page_size: int = 0,
        page_token: str = "",
    ) -> run_pb2.Lineage:
        """One page of a lineage walk (see `AsyncClient.get_lineage`)."""
        return self._bridge.run(
            self._aio.get_lineage(
                run,
                step,
                outcome=outcome,
                blob=blob,
                direction=direction,
                depth=depth,
                page_size=page_size,
                page_token=page_token,
            )
        )

    def read_logs(self, run: str, step: str, *, attempt: int = 0, follow: bool = False) -> Iterator[LogChunk]:
        """An attempt's output (see `AsyncClient.read_logs`)."""
        return self._bridge.iterate(self._aio.read_logs(run, step, attempt=attempt, follow=follow))

    def get_run_trace(self, run: str) -> trace_pb2.RunTrace:
        """A run's span tree (see `AsyncClient.get_run_trace`)."""
        return self._bridge.run(self._aio.get_run_trace(run))

    def list_run_events(self, run: str, *, step: str = "", page_size: int = 0) -> Iterator[trace_pb2.TimelineEvent]:
        """A run's forensic timeline (see `AsyncClient.list_run_events`)."""
        return self._bridge.iterate(self._aio.list_run_events(run, step=step, page_size=page_size))

    def replay_run_events(
        self, run: str, *, speed: float = 1.0, as_fast_as_possible: bool = False, step: str = ""
    ) -> Iterator[trace_pb2.TimelineEvent]:
        """A run's timeline played back (see `AsyncClient.replay_run_events`)."""
        return self._bridge.iterate(
            self._aio.replay_run_events(run, speed=speed, as_fast_as_possible=as_fast_as_possible, step=step)
        )

    def tracer_status(self) -> trace_pb2.TracerStatus:
        """weft-tracer's counters (see `AsyncClient.tracer_status`)."""
        return self._bridge.run(self._aio.tracer_status())

    def put_blob(self, content: bytes | os.PathLike[str]) -> Blob:
        """Uploads content (see `AsyncClient.put_blob`)."""
        return self._bridge.run(self._aio.put_blob(content))

    def stat_blob(self, digest: str) -> Blob:
        """Whether a blob exists (see `AsyncClient.stat_blob`)."""
        return self._bridge.run(self._aio.stat_blob(digest))

    def iter_blob(self, digest: str, *, offset: int = 0) -> Iterator[bytes]:
        """A blob's content in chunks (see `AsyncClient.iter_blob`)."""
        return self._bridge.iterate(self._aio.iter_blob(digest, offset=offset))

    def get_blob(self, digest: str) -> bytes:
        """A blob's verified content (see `AsyncClient.get_blob`)."""
        return self._bridge.run(self._aio.get_blob(digest))

    def save_blob(self, digest: str, path: os.PathLike[str] | str) -> int:
        """Writes a blob to a file (see `AsyncClient.save_blob`)."""
        return self._bridge.run(self._aio.save_blob(digest, path))


@dataclass(repr=False)  # RunRecord's one-line repr
class Run(RunRecord):
    """A run, with blocking methods that act on it. Returned by `Client`'s run methods.

    Each method runs the same-named `AsyncRun` coroutine on the client's loop thread.
    """

    _client: Client = field(repr=False, compare=False)

    def _aio(self) -> AsyncRun:
        return AsyncRun(self.pb, self._client.aio)

    def _update(self, run: AsyncRun) -> Run:
        self.pb = run.pb
        return self

    def refresh(self) -> Run:
        """Re-reads the run (see `AsyncRun.refresh`)."""
        return self._update(self._client._bridge.run(self._aio().refresh()))

    def wait(self, timeout: float | None = None) -> Run:
        """Waits until the run is terminal (see `AsyncRun.wait`)."""
        return self._update(self._client._bridge.run(self._aio().wait(timeout)))

    def watch(self, *, start_revision: int = 0, full: bool = True) -> Iterator[RunEvent]:
        """The run's events until it is terminal (see `AsyncRun.watch`)."""
        return self._client.watch_run(self.full_name, start_revision=start_revision, full=full)

    def cancel(self, reason: str = "") -> Run:
        """Asks the run to stop (see `AsyncRun.cancel`)."""
        return self._update(self._client._bridge.run(self._aio().cancel(reason)))

    def resume(self, *, latest_version: bool = False) -> Run:
        """Starts a new run reusing this run's outcomes (see `AsyncRun.resume`)."""
        return self._client._wrap(self._client._bridge.run(self._aio().resume(latest_version=latest_version)))

    def explain(self, step: str) -> Explanation:
        """One step's DNA and cache decision (see `AsyncRun.explain`)."""
        return self._client._bridge.run(self._aio().explain(step))

    def logs(self, step: str, *, attempt: int = 0, follow: bool = False) -> Iterator[LogChunk]:
        """One attempt's output (see `AsyncRun.logs`)."""
        return self._client.read_logs(self.full_name, step, attempt=attempt, follow=follow)

    def outputs(self, step: str | None = None) -> dict[str, dict[str, bytes]]:
        """The content of the outputs of the run's steps (see `AsyncRun.outputs`)."""
        run = self._aio()
        result = self._client._bridge.run(run.outputs(step))
        self.pb = run.pb
        return result
