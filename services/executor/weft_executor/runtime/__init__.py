"""The runtime contract: how the executor launches, watches, stops and re-attaches attempts.

A runtime turns one step attempt into running work (a local process, a Kubernetes pod)
and reports how it ended. The scheduling side of the executor (claims, DNA, cache,
retries, commits) is the same for every runtime and lives outside this package; a
runtime owns only what differs: where inputs are materialised, how the process is
started and stopped, where logs live, and how outputs reach the artifact store.

Contract every runtime keeps:

- `launch` starts exactly one process/pod for the attempt it is given, named
  deterministically by (namespace, run, step, attempt), and returns once it runs (or
  raises `AttemptSetupError` with a message for the attempt when it cannot start). A
  runtime without a `planned_handle` may return the attempt *held*: its process exists
  (so its handle is known) but runs its command only at `LaunchedAttempt.start`, which
  the executor calls once the attempt is recorded with that handle; a held attempt that
  is abandoned, released or killed, or whose executor dies, never runs its command.
- `wait` returns when the attempt ended, with its outputs uploaded and its logs stored
  as blobs; it enforces the attempt's timeout. Cancelling the task that awaits `wait`
  abandons the attempt (as `abandon` does).
- `abandon` is called when the executor gives up on an attempt without an end (its lease
  was lost, it is stopping): a local process is killed at once, since nothing may
  outlive its executor; a pod is left running for the executor that takes the step
  over to adopt.
- `kill` stops a running attempt (e.g. its run was cancelled); the pending `wait` then
  returns a CANCELLED result carrying the reason.
- `planned_handle` names the attempt before it is launched when the runtime's names are
  deterministic (a pod), so the attempt is recorded, handle included, before any process
  or pod exists: a launch always leaves a trace in the step's attempt history.
- `stop_orphan` stops an attempt that another executor launched and left running (its run
  was cancelled, or its step was reused from the cache after a take-over); a runtime whose
  attempts cannot outlive their executor has nothing to stop.
- `adopt` re-attaches to an attempt another executor launched, or returns None when the
  attempt cannot be continued (a local process dies with its executor).
- `read_logs` streams what a running attempt wrote, for ExecutorService.ReadAttemptLogs.
- Secret values reach only the attempt's environment: never a record, span, log line or
  exception message (invariant 8). So does the attempt's span token (`span_token_env`),
  which is not part of the step's DNA either: the DNA is computed from the step, never
  from the environment a runtime builds.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

from weft.v1 import pipeline_pb2, run_pb2
from weft_core.auth import SpanTokenKey
from weft_core.span_tokens import export_headers_env, token_expiry
from weft_core.spec import run_name
from weft_core.telemetry import otlp_endpoint, parse_traceparent

#: Stream identifiers of `read_logs`, as in `weft.v1.LogChunk.Stream`.
STDOUT = run_pb2.LogChunk.STREAM_STDOUT
STDERR = run_pb2.LogChunk.STREAM_STDERR


class AttemptSetupError(Exception):
    """The attempt could not start (missing command, missing secret, unreadable input).

    The message is shown to users as the attempt's failure; it must name what is missing
    and how to fix it, and never contain a secret value.
    """


@dataclass(frozen=True)
class AttemptSpec:
    """Everything a runtime needs to run one attempt of a step.

    Attributes:
        namespace: The run's namespace.
        run: The run id (last segment of its resource name).
        step: The step's name.
        attempt: Attempt number, 1 for the first.
        image: Container image reference (recorded; the local runtime does not pull it).
        command: The full argv: the container's command followed by its args.
        working_dir: The container's working directory ("" for the runtime's default).
        env: Plain environment variables: the step's own and weft's (`WEFT_RUN`,
            `WEFT_STEP`, `WEFT_ATTEMPT`, `WEFT_PARAM_*`, `TRACEPARENT`). The runtime adds
            `WEFT_INPUTS` and `WEFT_OUTPUTS`.
        secret_env: Variables whose values come from secrets: name → (secret, key). The
            runtime resolves them where the attempt runs.
        inputs: Content digest of every input, by input name (file name under
            `$WEFT_INPUTS`).
        outputs: Declared output names (file names under `$WEFT_OUTPUTS`).
        timeout: Wall-clock limit in seconds, or None.
        dna: The step's DNA (`sha256:<hex>`), for labels and annotations.
        resources: The container's resources, for runtimes that schedule by them.
        security: What the step may do beyond the hardened default (kubernetes runtime).
        replica: The replica of a redundant step (1 for the first), 0 when the step is not
            redundant. Replicas of one attempt run at once, so each has its own identity.
        spread: Replicas run at once: ask the scheduler to place them apart (kubernetes).
    """

    namespace: str
    run: str
    step: str
    attempt: int
    image: str
    command: tuple[str, ...]
    working_dir: str
    env: Mapping[str, str]
    secret_env: Mapping[str, tuple[str, str]]
    inputs: Mapping[str, str]
    outputs: tuple[str, ...]
    timeout: float | None
    dna: str
    resources: pipeline_pb2.Resources = field(default_factory=pipeline_pb2.Resources)
    security: pipeline_pb2.StepSecurity = field(default_factory=pipeline_pb2.StepSecurity)
    replica: int = 0
    spread: bool = False

    @classmethod
    def to_stop(cls, namespace: str, run: str, step: str, attempt: int, image: str, replica: int = 0) -> AttemptSpec:
        """The spec of an attempt known only from its record (another executor's, or one
        left behind), enough for a runtime to find and stop it: no command, env or inputs."""
        return cls(
            namespace=namespace,
            run=run,
            step=step,
            attempt=attempt,
            image=image,
            command=(),
            working_dir="",
            env={},
            secret_env={},
            inputs={},
            outputs=(),
            timeout=None,
            dna="",
            replica=replica,
        )

    @property
    def key(self) -> tuple[str, str, str, int]:
        """(namespace, run, step, attempt): what names the attempt everywhere. A replica's
        step part is `<step>.r<replica>` ('.' is never in a step name), so each replica of
        an attempt has its own process directory and pod name (invariant 1 per replica)."""
        step = f"{self.step}.r{self.replica}" if self.replica else self.step
        return (self.namespace, self.run, step, self.attempt)


@dataclass
class LaunchedAttempt:
    """A running attempt as a runtime tracks it. Runtimes subclass it with their state.

    Attributes:
        spec: What was launched.
        handle: The runtime's name for it: a process id (local) or a pod name.
        start_time: When it was launched.
    """

    spec: AttemptSpec
    handle: str
    start_time: datetime

    def start(self) -> None:
        """Lets a held attempt run (see `Runtime.launch`); a no-op for one that runs already."""


@dataclass(frozen=True)
class AttemptResult:
    """How an attempt ended.

    Attributes:
        state: SUCCEEDED (exited 0 and every output stored), FAILED or CANCELLED.
        message: Why it failed or was stopped, for people ("" on success).
        exit_code: The process's exit code (negative: killed by that signal).
        output_digests: Stored outputs by name (complete only on success).
        stdout_digest: Digest of the stdout log blob ("" when the log is empty).
        stderr_digest: Digest of the stderr log blob ("" when the log is empty).
        end_time: When it ended.
        image_id: The image as the runtime resolved it (Kubernetes' container `imageID`,
            e.g. `docker.io/library/busybox@sha256:…`); "" when it does not report one.
    """

    state: run_pb2.Attempt.State
    message: str
    exit_code: int
    output_digests: Mapping[str, str]
    stdout_digest: str
    stderr_digest: str
    end_time: datetime
    image_id: str = ""


class Runtime(Protocol):
    """Launches and watches attempts (see the module docstring for the contract)."""

    #: "local" or "kubernetes", as in the executor's registration record.
    name: str

    async def launch(self, spec: AttemptSpec) -> LaunchedAttempt:
        """Starts the attempt; raises AttemptSetupError if it cannot start."""
        ...

    def planned_handle(self, spec: AttemptSpec) -> str:
        """The handle `launch` will give this attempt if it is known in advance, else ""."""
        ...

    async def stop_orphan(self, spec: AttemptSpec, handle: str, reason: str) -> bool:
        """Stops an attempt launched by another executor; True if something was stopped."""
        ...

    async def adopt(self, spec: AttemptSpec, handle: str) -> LaunchedAttempt | None:
        """Re-attaches to an attempt launched by another executor, or returns None."""
        ...

    async def wait(self, attempt: LaunchedAttempt) -> AttemptResult:
        """Waits for the attempt to end, enforcing its timeout; stores outputs and logs."""
        ...

    async def kill(self, attempt: LaunchedAttempt, reason: str) -> None:
        """Stops the attempt; the pending `wait` returns CANCELLED with `reason`."""
        ...

    def abandon(self, attempt: LaunchedAttempt) -> None:
        """Gives up on the attempt without waiting for its end (see the module docstring)."""
        ...

    def read_logs(self, attempt: LaunchedAttempt, *, follow: bool) -> AsyncIterator[tuple[int, bytes]]:
        """(stream, bytes) the attempt wrote so far and, with `follow`, until it ends."""
        ...

    async def release(self, attempt: LaunchedAttempt) -> None:
        """Frees what the ended attempt still holds (working files, a finished pod)."""
        ...

    async def close(self) -> None:
        """Stops every attempt still running and frees the runtime's resources."""
        ...


def load_span_token_key(path: Path | None) -> SpanTokenKey | None:
    """The executor's span token key (`--span-token-key-file`), or None when not configured.

    Raises:
        RuntimeError: The file is missing or holds no valid key (the message says which).
    """
    if path is None:
        return None
    try:
        return SpanTokenKey(path)
    except ValueError as error:
        raise RuntimeError(f"--span-token-key-file: {error}") from None


def span_token_env(
    spec: AttemptSpec, telemetry: Mapping[str, str], key: SpanTokenKey | None, now: float | None = None
) -> dict[str, str]:
    """The variable that lets the attempt's exporters send their spans to weft-tracer with
    auth on: `OTEL_EXPORTER_OTLP_HEADERS` carrying a span token for the spans of the run's
    trace, valid for the step's timeout (24 h without one) plus a grace period.

    Empty without a key, without an exporter endpoint in `telemetry`, without a valid
    TRACEPARENT (nothing to scope the token to), or when the step's own env names an
    endpoint (its spans go elsewhere: the token must not follow them). The token is minted
    afresh for each launch and goes only into the attempt's environment, before the
    step's own env, so a step that sets its own exporter headers keeps them.
    """
    parsed = parse_traceparent(spec.env.get("TRACEPARENT", ""))
    if key is None or parsed is None or not otlp_endpoint(telemetry) or otlp_endpoint(spec.env):
        return {}
    expires_at = token_expiry(time.time() if now is None else now, spec.timeout)
    return export_headers_env(key.mint(run_name(spec.namespace, spec.run), parsed[0], expires_at))
