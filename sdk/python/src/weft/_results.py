"""What the SDK's calls return: thin read-only views over the API's messages.

Each view keeps the raw message as `.pb` (for anything the view does not surface) and
offers the fields a caller looks at, with enum states as short names ("RUNNING") and
timestamps as aware datetimes. The views that can act (`AsyncRun` and `Run`) live in
`weft._client`, beside the client they call; the views here never make a call.

At a prompt a view prints as one short line (`Run(etl-x7k2p, SUCCEEDED, 6 steps)`), not
as its message (`.pb` has that); in a notebook a run renders as a small table of its steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from weft import _names
from weft.v1 import artifact_pb2, pipeline_pb2, run_pb2

#: Run states after which nothing changes any more.
RUN_TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
#: Step states after which nothing changes any more.
STEP_TERMINAL_STATES = frozenset({"SUCCEEDED", "CACHED", "FAILED", "SKIPPED", "CANCELLED"})


def state_name(enum_name: str) -> str:
    """`STATE_RUNNING` → `RUNNING`; the API's enum value names without their prefix."""
    return enum_name.removeprefix("STATE_")


def timestamp(message: Message, field: str) -> datetime | None:
    """The timestamp `field` of `message` as an aware UTC datetime, or None when unset."""
    if not message.HasField(field):
        return None
    value: timestamp_pb2.Timestamp = getattr(message, field)
    return value.ToDatetime(tzinfo=UTC)


def short_digest(digest: str) -> str:
    """`sha256:08ce4a…`: enough of a digest to recognise it at a prompt."""
    algorithm, _, hex_part = digest.partition(":")
    if not hex_part:
        return digest[:6] + "…" if len(digest) > 6 else digest
    return f"{algorithm}:{hex_part[:6]}…"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.1f}s" if value < 60 else f"{int(value // 60)}m{int(value % 60):02d}s"


def _duration(start: datetime | None, end: datetime | None) -> float | None:
    if start is None:
        return None
    return ((end or datetime.now(UTC)) - start).total_seconds()


@dataclass(frozen=True, repr=False)
class PipelineVersion:
    """One stored version of a pipeline (`weft.v1.Pipeline`)."""

    pb: pipeline_pb2.Pipeline

    @property
    def name(self) -> str:
        """The pipeline id (`etl`)."""
        return _names.short_id(self.pb.name)

    @property
    def full_name(self) -> str:
        """`namespaces/{ns}/pipelines/{pipeline}`."""
        return self.pb.name

    @property
    def namespace(self) -> str:
        """The namespace id."""
        return _names.namespace_of(self.pb.name)

    @property
    def version(self) -> str:
        """The version digest, `sha256:<hex>`."""
        return self.pb.version

    @property
    def short_version(self) -> str:
        """The first 12 hex digits of the version digest, as listings show it."""
        return self.pb.version.removeprefix("sha256:")[:12]

    @property
    def spec(self) -> pipeline_pb2.PipelineSpec:
        """The steps and parameters of this version."""
        return self.pb.spec

    @property
    def step_names(self) -> list[str]:
        """Step names in spec order."""
        return [step.name for step in self.pb.spec.steps]

    @property
    def description(self) -> str:
        """Free text for people."""
        return self.pb.description

    @property
    def labels(self) -> dict[str, str]:
        """Labels for selection."""
        return dict(self.pb.labels)

    @property
    def version_count(self) -> int:
        """How many distinct versions the pipeline has."""
        return self.pb.version_count

    @property
    def create_time(self) -> datetime | None:
        """When the pipeline was first created."""
        return timestamp(self.pb, "create_time")

    @property
    def version_create_time(self) -> datetime | None:
        """When this version was first stored."""
        return timestamp(self.pb, "version_create_time")

    @property
    def etag(self) -> str:
        """Changes whenever the pipeline's head changes."""
        return self.pb.etag

    @property
    def uses(self) -> list[tuple[str, str, str]]:
        """(step prefix, pipeline, version) of every pipeline this version uses as steps."""
        return [(u.step, u.pipeline.name, u.pipeline.version) for u in self.pb.spec.uses]

    def __repr__(self) -> str:
        return (
            f"PipelineVersion({self.name} @ {short_digest(self.version)}, {_plural(len(self.pb.spec.steps), 'step')})"
        )


#: What `apply` did: created the pipeline, added a new version, found the spec already
#: latest, or made an older identical version the latest again.
ApplyChange = Literal["created", "new-version", "unchanged", "restored"]


@dataclass(frozen=True, repr=False)
class Applied:
    """The result of `apply`: the stored version and what changed."""

    pipeline: PipelineVersion
    change: ApplyChange

    @property
    def is_new_version(self) -> bool:
        """True when the spec was stored for the first time."""
        return self.change in ("created", "new-version")

    @property
    def pb(self) -> pipeline_pb2.Pipeline:
        """The stored version's message."""
        return self.pipeline.pb

    def __repr__(self) -> str:
        return f"Applied({self.pipeline.name} @ {short_digest(self.pipeline.version)}, {self.change})"


@dataclass(frozen=True, repr=False)
class Attempt:
    """One launch of a step (`weft.v1.Attempt`): a process or a pod."""

    pb: run_pb2.Attempt

    @property
    def number(self) -> int:
        """1 for the first attempt."""
        return self.pb.number

    @property
    def state(self) -> str:
        """RUNNING, SUCCEEDED, FAILED, CANCELLED or LOST."""
        return state_name(run_pb2.Attempt.State.Name(self.pb.state))

    @property
    def executor(self) -> str:
        """The executor that launched it."""
        return self.pb.executor

    @property
    def handle(self) -> str:
        """Pod name or process id."""
        return self.pb.handle

    @property
    def exit_code(self) -> int:
        """Process exit code once it exited."""
        return self.pb.exit_code

    @property
    def message(self) -> str:
        """Why it failed, for people."""
        return self.pb.message

    @property
    def start_time(self) -> datetime | None:
        """When it was launched."""
        return timestamp(self.pb, "start_time")

    @property
    def end_time(self) -> datetime | None:
        """When it ended."""
        return timestamp(self.pb, "end_time")

    @property
    def duration(self) -> float | None:
        """Seconds from launch to end (or to now while running)."""
        return _duration(self.start_time, self.end_time)

    def __repr__(self) -> str:
        detail = f", exit code {self.exit_code}" if self.state == "FAILED" and self.exit_code else ""
        return f"Attempt({self.number}, {self.state}{detail})"


@dataclass(frozen=True, repr=False)
class StepRun:
    """One step within one run (`weft.v1.StepRun`)."""

    pb: run_pb2.StepRun

    @property
    def name(self) -> str:
        """The step's name in the pipeline."""
        return self.pb.step

    @property
    def state(self) -> str:
        """WAITING, READY, RUNNING, SUCCEEDED, CACHED, FAILED, SKIPPED or CANCELLED."""
        return state_name(run_pb2.StepRun.State.Name(self.pb.state))

    @property
    def is_terminal(self) -> bool:
        """True once the step will not change any more."""
        return self.state in STEP_TERMINAL_STATES

    @property
    def attempts(self) -> list[Attempt]:
        """Attempts, oldest first."""
        return [Attempt(a) for a in self.pb.attempts]

    @property
    def dna(self) -> str:
        """The step's DNA (`sha256:<hex>`) once computed."""
        return self.pb.dna

    @property
    def outputs(self) -> dict[str, str]:
        """Output digests by output name, once the step has an outcome."""
        return dict(self.pb.outcome.outputs) if self.pb.HasField("outcome") else {}

    @property
    def message(self) -> str:
        """Why the step failed, was skipped or cancelled."""
        return self.pb.message

    @property
    def executor(self) -> str:
        """The executor holding the step's claim while it runs."""
        return self.pb.executor

    @property
    def reused_from_run(self) -> str:
        """The run whose outcome was reused, for CACHED and resumed steps."""
        return self.pb.reused_from_run

    @property
    def ready_time(self) -> datetime | None:
        """When the step became ready."""
        return timestamp(self.pb, "ready_time")

    @property
    def end_time(self) -> datetime | None:
        """When the step reached a terminal state."""
        return timestamp(self.pb, "end_time")

    @property
    def start_time(self) -> datetime | None:
        """When its first attempt was launched (None for cached or unstarted steps)."""
        for attempt in self.attempts:
            if attempt.start_time is not None:
                return attempt.start_time
        return None

    @property
    def duration(self) -> float | None:
        """Seconds from the first launch to the end (or to now while running)."""
        if self.state in ("WAITING", "READY"):
            return None
        return _duration(self.start_time, self.end_time)

    def __repr__(self) -> str:
        attempts = f", {_plural(len(self.pb.attempts), 'attempt')}" if len(self.pb.attempts) > 1 else ""
        return f"StepRun({self.name}, {self.state}{attempts})"


@dataclass(repr=False)
class RunRecord:
    """The state of a run (`weft.v1.Run`) at one moment, without the means to act on it."""

    pb: run_pb2.Run

    @property
    def name(self) -> str:
        """The run id."""
        return _names.short_id(self.pb.name)

    @property
    def full_name(self) -> str:
        """`namespaces/{ns}/runs/{run}`."""
        return self.pb.name

    @property
    def namespace(self) -> str:
        """The namespace id."""
        return _names.namespace_of(self.pb.name)

    @property
    def pipeline(self) -> str:
        """The pipeline id."""
        return _names.short_id(self.pb.pipeline)

    @property
    def pipeline_version(self) -> str:
        """The pipeline version digest the run executes."""
        return self.pb.pipeline_version

    @property
    def parameters(self) -> dict[str, str]:
        """Parameter values by name, defaults included."""
        return dict(self.pb.parameters)

    @property
    def state(self) -> str:
        """PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLING or CANCELLED."""
        return state_name(run_pb2.Run.State.Name(self.pb.state))

    @property
    def is_terminal(self) -> bool:
        """True once the run will not change any more."""
        return self.state in RUN_TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        """True when every step succeeded or was cached."""
        return self.state == "SUCCEEDED"

    @property
    def cache_mode(self) -> str:
        """USE, REFRESH or OFF."""
        mode = run_pb2.CacheMode.Name(self.pb.options.cache_mode).removeprefix("CACHE_MODE_")
        return "USE" if mode == "UNSPECIFIED" else mode

    @property
    def steps(self) -> list[StepRun]:
        """Every step run in spec order (present when the run was read in the FULL view)."""
        return [StepRun(s) for s in self.pb.steps]

    def step(self, name: str) -> StepRun:
        """The step run named `name`.

        Raises:
            KeyError: The run (as read) has no such step.
        """
        for step in self.pb.steps:
            if step.step == name:
                return StepRun(step)
        raise KeyError(f"run {self.name} has no step {name!r} (steps: {', '.join(s.step for s in self.pb.steps)})")

    @property
    def step_counts(self) -> dict[str, int]:
        """Step counts by state name."""
        return dict(self.pb.step_counts)

    @property
    def message(self) -> str:
        """Why the run failed or was cancelled."""
        return self.pb.message

    @property
    def failed_step(self) -> str:
        """The first step whose failure failed the run."""
        return self.pb.failed_step

    @property
    def resumed_from(self) -> str:
        """The run this one resumes, if any."""
        return self.pb.resumed_from

    @property
    def traceparent(self) -> str:
        """W3C traceparent of the run's trace."""
        return self.pb.traceparent

    @property
    def labels(self) -> dict[str, str]:
        """Labels for selection."""
        return dict(self.pb.labels)

    @property
    def create_time(self) -> datetime | None:
        """When the run was created."""
        return timestamp(self.pb, "create_time")

    @property
    def start_time(self) -> datetime | None:
        """When the first step was scheduled."""
        return timestamp(self.pb, "start_time")

    @property
    def end_time(self) -> datetime | None:
        """When the run reached a terminal state."""
        return timestamp(self.pb, "end_time")

    @property
    def duration(self) -> float | None:
        """Seconds from creation to the end (or to now while it runs)."""
        return _duration(self.create_time, self.end_time)

    def _step_count(self) -> int:
        return len(self.pb.steps) or sum(self.pb.step_counts.values())

    def __repr__(self) -> str:
        failed = f", failed at {self.failed_step}" if self.failed_step else ""
        return f"{type(self).__name__}({self.name}, {self.state}, {_plural(self._step_count(), 'step')}{failed})"

    def _repr_html_(self) -> str:
        """The run as a small table of its steps, for notebooks."""
        import html  # only notebooks need it: `import weft` stays lean

        title = html.escape(f"{self.name} · {self.pipeline} @ {short_digest(self.pipeline_version)} · {self.state}")
        rows = []
        for step in self.steps:
            attempts = len(step.pb.attempts)
            cells = [
                step.name,
                step.state,
                _seconds(step.duration),
                str(attempts) if attempts else "",
                short_digest(step.dna) if step.dna else "",
                step.message.split("\n", 1)[0],
            ]
            rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
        if not rows:
            counts = ", ".join(f"{n} {state}" for state, n in sorted(self.step_counts.items()))
            rows.append(f'<tr><td colspan="6">{html.escape(counts or "no steps read")}</td></tr>')
        header = "".join(f"<th>{h}</th>" for h in ("step", "state", "time", "attempts", "dna", "message"))
        message = f"<p>{html.escape(self.message)}</p>" if self.message else ""
        return (
            f"<div><strong>{title}</strong>{message}<table><thead><tr>{header}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>"
        )


@dataclass(frozen=True, repr=False)
class RunEvent:
    """One change of a run or of one of its steps, as `watch_run` yields it."""

    pb: run_pb2.RunEvent

    @property
    def revision(self) -> int:
        """The store revision of the change."""
        return self.pb.revision

    @property
    def snapshot(self) -> bool:
        """True for events of the initial snapshot."""
        return self.pb.snapshot

    @property
    def run(self) -> RunRecord | None:
        """The run record, when the run itself changed (no steps inside)."""
        return RunRecord(self.pb.run) if self.pb.HasField("run") else None

    @property
    def step(self) -> StepRun | None:
        """The step run, when a step changed."""
        return StepRun(self.pb.step) if self.pb.HasField("step") else None

    def __repr__(self) -> str:
        if self.pb.HasField("step"):
            what = f"step {self.pb.step.step} {state_name(run_pb2.StepRun.State.Name(self.pb.step.state))}"
        elif self.pb.HasField("run"):
            what = f"run {state_name(run_pb2.Run.State.Name(self.pb.run.state))}"
        else:
            what = "no change"
        return f"RunEvent({what} @ {self.revision})"


@dataclass(frozen=True, repr=False)
class Explanation:
    """What a step's DNA is made of and why it was or was not reused (`weft.v1.StepExplanation`)."""

    pb: run_pb2.StepExplanation

    @property
    def dna(self) -> str:
        """The step's DNA."""
        return self.pb.dna

    @property
    def components(self) -> list[tuple[str, str]]:
        """(name, canonical value) of every DNA component, in hashing order."""
        return [(c.name, c.value) for c in self.pb.components]

    @property
    def decision(self) -> str:
        """HIT, MISS, RESUMED, or UNSPECIFIED before the step was claimed."""
        return run_pb2.StepExplanation.Decision.Name(self.pb.decision).removeprefix("DECISION_")

    @property
    def reason(self) -> str:
        """Why, for people."""
        return self.pb.reason

    @property
    def outcome(self) -> run_pb2.Outcome | None:
        """The reused outcome on a hit."""
        return self.pb.outcome if self.pb.HasField("outcome") else None

    def __repr__(self) -> str:
        reason = f": {self.reason}" if self.reason else ""
        return f"Explanation({self.decision}, {short_digest(self.dna)}{reason})"


@dataclass(frozen=True, repr=False)
class Blob:
    """Stored content, addressed by its sha256 (`weft.v1.Blob`)."""

    pb: artifact_pb2.Blob

    @property
    def digest(self) -> str:
        """`sha256:<hex>`."""
        return self.pb.digest

    @property
    def size(self) -> int:
        """Size in bytes."""
        return self.pb.size_bytes

    @property
    def create_time(self) -> datetime | None:
        """When it was first stored."""
        return timestamp(self.pb, "create_time")

    def __repr__(self) -> str:
        return f"Blob({short_digest(self.digest)}, {_plural(self.size, 'byte')})"


@dataclass(frozen=True, repr=False)
class LogChunk:
    """A piece of an attempt's output."""

    stream: Literal["stdout", "stderr"]
    data: bytes
    attempt: int

    def __repr__(self) -> str:
        return f"LogChunk({self.stream}, attempt {self.attempt}, {_plural(len(self.data), 'byte')})"
