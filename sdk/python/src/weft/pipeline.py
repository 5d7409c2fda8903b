"""Defining pipelines: the `Pipeline` builder and pipeline files.

A pipeline is built in Python:

    p = Pipeline("etl", parameters={"rows": "1000"})
    gen = p.step("gen", image="python:3.11-slim", command=["python3", "-c", "..."], outputs=["data"])
    p.step("sum", image="python:3.11-slim", command=[...],
           inputs={"data": gen.output("data"), "rows": p.param("rows"), "k": literal("3")})
    client.apply(p)

or loaded from a YAML (or JSON) file in the proto-JSON shape of `weft.v1.PipelineSpec`
(camelCase or snake_case keys), wrapped with the pipeline's name:

    name: etl
    description: ...
    spec:
      parameters: [{name: rows, defaultValue: "1000"}]
      steps: [{name: gen, container: {image: ..., command: [...]}, outputs: [{name: data}]}]

The builder catches wiring mistakes when they are made (an output the producer does not
declare, an undeclared parameter, a duplicate name); the file loader reports every
problem with the file, the path in it and the fix. Neither validates what only the server
can judge (name syntax, cycles, limits): weft-api's messages are the single source for those.
This module never talks to the network.
"""

from __future__ import annotations

import contextvars
import difflib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, cast

import yaml
from google.protobuf import descriptor, duration_pb2, json_format

from weft.errors import PipelineFileError
from weft.v1 import pipeline_pb2

__all__ = [
    "Cache",
    "LiteralValue",
    "OutputRef",
    "ParamRef",
    "Pipeline",
    "Redundancy",
    "Retry",
    "SecretRef",
    "StepHandle",
    "SubPipeline",
    "current_pipeline",
    "literal",
    "load_pipeline",
    "loads_pipeline",
    "secret",
]

#: Seconds as a number, or a timedelta.
Seconds = float | int | timedelta


@dataclass(frozen=True)
class ParamRef:
    """An input fed by a run parameter; made by `Pipeline.param`."""

    name: str


@dataclass(frozen=True)
class OutputRef:
    """An input fed by another step's output; made by `StepHandle.output`."""

    step: str
    output: str


@dataclass(frozen=True)
class LiteralValue:
    """An input with a fixed value; made by `literal`."""

    value: str


def literal(value: str) -> LiteralValue:
    """An input whose content is `value` itself."""
    if not isinstance(value, str):
        raise TypeError(f"literal values are strings, got {type(value).__name__}: write literal({str(value)!r})")
    return LiteralValue(value)


@dataclass(frozen=True)
class SecretRef:
    """An environment value taken from a secret; only the reference is ever stored."""

    name: str
    key: str


def secret(name: str, key: str) -> SecretRef:
    """An environment value read from key `key` of secret `name` at launch time."""
    return SecretRef(name, key)


InputSource = ParamRef | OutputRef | LiteralValue

#: The pipeline a `with Pipeline(...)` block is building, for `@weft.function` calls.
_building: contextvars.ContextVar[Pipeline | None] = contextvars.ContextVar("weft_pipeline", default=None)


def current_pipeline() -> Pipeline | None:
    """The pipeline whose `with` block is running, or None outside of one."""
    return _building.get()


@dataclass(frozen=True)
class Retry:
    """What happens when an attempt fails (`weft.v1.RetryPolicy`).

    Attributes:
        max_attempts: Total attempts including the first.
        backoff: Wait before the second attempt; None means the server default (1 s).
        backoff_factor: Factor applied to the wait before each later attempt; 0 means 2.
        max_backoff: Upper bound of the wait; None means the server default (5 min).
    """

    max_attempts: int = 1
    backoff: Seconds | None = None
    backoff_factor: float = 0.0
    max_backoff: Seconds | None = None

    def to_proto(self) -> pipeline_pb2.RetryPolicy:
        """The policy as a message."""
        policy = pipeline_pb2.RetryPolicy(max_attempts=self.max_attempts, backoff_factor=self.backoff_factor)
        if self.backoff is not None:
            policy.backoff.CopyFrom(_duration(self.backoff))
        if self.max_backoff is not None:
            policy.max_backoff.CopyFrom(_duration(self.max_backoff))
        return policy


@dataclass(frozen=True)
class Cache:
    """Whether and how a step's outcome is reused (`weft.v1.CachePolicy`).

    Attributes:
        enabled: Reuse outcomes with the same DNA.
        version: Bumping it invalidates the step's earlier outcomes (it is part of the DNA).
        max_age: Outcomes older than this are not reused; None means no limit.
        share_in_flight: Wait for an identical attempt another run has in flight and reuse
            its outcome, instead of launching the same work again.
    """

    enabled: bool = True
    version: str = ""
    max_age: Seconds | None = None
    share_in_flight: bool = True

    def to_proto(self) -> pipeline_pb2.CachePolicy:
        """The policy as a message."""
        policy = pipeline_pb2.CachePolicy(enabled=self.enabled, version=self.version)
        if not self.share_in_flight:
            policy.share_in_flight = False
        if self.max_age is not None:
            policy.max_age.CopyFrom(_duration(self.max_age))
        return policy


@dataclass(frozen=True)
class Redundancy:
    """Running replicas of a step and choosing the winner (`weft.v1.Redundancy`).

    Attributes:
        replicas: Replicas launched at once.
        select: "first" commits the first success; "majority" commits the output digests
            most replicas agree on, and fails the step as nondeterministic without a majority.
        hedge_after: Launch a backup attempt when the first has run this long.
    """

    replicas: int = 1
    select: Literal["first", "majority"] = "first"
    hedge_after: Seconds | None = None

    def to_proto(self) -> pipeline_pb2.Redundancy:
        """The policy as a message."""
        selects = {"first": pipeline_pb2.Redundancy.SELECT_FIRST, "majority": pipeline_pb2.Redundancy.SELECT_MAJORITY}
        if self.select not in selects:
            raise ValueError(f"redundancy select {self.select!r} is not one of: first, majority")
        policy = pipeline_pb2.Redundancy(replicas=self.replicas, select=selects[self.select])
        if self.hedge_after is not None:
            policy.hedge_after.CopyFrom(_duration(self.hedge_after))
        return policy


def _duration(value: Seconds) -> duration_pb2.Duration:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 0:
        raise ValueError(f"durations cannot be negative, got {seconds}s")
    result = duration_pb2.Duration()
    result.FromTimedelta(timedelta(seconds=seconds))
    return result


class StepHandle:
    """A step added to a `Pipeline`: use it to wire its outputs into later steps."""

    def __init__(self, pipeline: Pipeline, message: pipeline_pb2.Step) -> None:
        self._pipeline = pipeline
        self._message = message

    @property
    def name(self) -> str:
        """The step's name."""
        return self._message.name

    @property
    def outputs(self) -> list[str]:
        """Names of the outputs the step declares."""
        return [o.name for o in self._message.outputs]

    def output(self, name: str) -> OutputRef:
        """A reference to one of this step's outputs, to use as another step's input.

        Raises:
            ValueError: The step does not declare that output.
        """
        if name not in self.outputs:
            declared = ", ".join(self.outputs) or "none"
            raise ValueError(
                f"step {self.name!r} has no output {name!r} (declared: {declared}); add it to the step's outputs=[...]"
            )
        return OutputRef(self.name, name)

    def to_proto(self) -> pipeline_pb2.Step:
        """A copy of the step's message."""
        copy = pipeline_pb2.Step()
        copy.CopyFrom(self._message)
        return copy

    def __repr__(self) -> str:
        return f"StepHandle({self.name!r})"


class SubPipeline:
    """A step that uses another pipeline (`Pipeline.use`): read its steps' outputs from it."""

    def __init__(self, step: str, pipeline: str, version: str) -> None:
        self.step = step
        self.pipeline = pipeline
        self.version = version

    @property
    def name(self) -> str:
        """The step's name, which prefixes the expanded steps (`normalise.clean`)."""
        return self.step

    def output(self, step: str, output: str) -> OutputRef:
        """A reference to output `output` of the used pipeline's step `step`.

        The server checks that the step and output exist when it expands the pipeline.
        """
        return OutputRef(f"{self.step}.{step}", output)

    def __repr__(self) -> str:
        return f"SubPipeline({self.step!r}: {self.pipeline} @ {self.version[:19]}…)"


class Pipeline:
    """Builds a pipeline spec step by step.

    Used as a context manager (`with weft.Pipeline("etl") as p:`), calls of
    `@weft.function`s inside the block add their steps to it.

    Args:
        name: The pipeline id (a DNS-1123 label such as `etl`).
        parameters: Run parameters by name, each with its default value, or None for a
            required parameter.
        description: Free text shown in listings.
        labels: Labels for selection.
    """

    def __init__(
        self,
        name: str,
        *,
        parameters: Mapping[str, str | None] | None = None,
        description: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.description = description
        self.labels = dict(labels or {})
        self._spec = pipeline_pb2.PipelineSpec()
        self._steps: dict[str, StepHandle] = {}
        self._uses: dict[str, SubPipeline] = {}
        self._tokens: list[contextvars.Token[Pipeline | None]] = []
        for param, default in (parameters or {}).items():
            self.parameter(param, default=default)

    def __enter__(self) -> Pipeline:
        self._tokens.append(_building.set(self))
        return self

    def __exit__(self, *exc_info: object) -> None:
        _building.reset(self._tokens.pop())

    def unique_step_name(self, base: str) -> str:
        """`base`, or `base-2`, `base-3`, ... when that step name is taken."""
        if base not in self._steps:
            return base
        index = 2
        while f"{base}-{index}" in self._steps:
            index += 1
        return f"{base}-{index}"

    def use(
        self,
        pipeline: str,
        *,
        version: str,
        inputs: Mapping[str, InputSource] | None = None,
        step: str | None = None,
        depends_on: Sequence[str | StepHandle | SubPipeline] = (),
    ) -> SubPipeline:
        """Adds a step that is another pipeline, pinned by version.

        weft-api expands it into that pipeline's steps, named `<step>.<its step>`, when the
        pipeline is created; read their outputs with `.output(its_step, output)`.

        Args:
            pipeline: The used pipeline's id, in the same namespace.
            version: Its version digest (`client.get_pipeline(...).version`, or a unique
                prefix of the hex part).
            inputs: Values of the used pipeline's parameters, by name; the others take
                their defaults.
            step: The step's name (default: the used pipeline's). Steps expanded under the
                same name with the same inputs have the same DNA in every pipeline that
                uses them, so they are computed once.
            depends_on: Steps that must finish before any of the used pipeline's steps.

        Raises:
            ValueError: A duplicate step name, or a reference to something not in this pipeline.
        """
        name = step or pipeline
        if name in self._steps:
            raise ValueError(f"step {name!r} is defined twice in pipeline {self.name!r}")
        if not version:
            raise ValueError(f'use of pipeline {pipeline!r}: pin a version (its digest), e.g. version="sha256:…"')
        message = pipeline_pb2.Step(name=name, pipeline=pipeline_pb2.PipelineRef(name=pipeline, version=version))
        for input_name, source in (inputs or {}).items():
            message.inputs.append(self._input(name, input_name, source))
        for upstream in depends_on:
            message.depends_on.append(self._upstream(name, upstream))
        self._spec.steps.append(message)
        handle = SubPipeline(name, pipeline, version)
        self._steps[name] = StepHandle(self, self._spec.steps[-1])
        self._uses[name] = handle
        return handle

    def _upstream(self, step: str, upstream: str | StepHandle | SubPipeline) -> str:
        name = upstream if isinstance(upstream, str) else upstream.name
        if name not in self._steps:
            raise ValueError(f"step {step!r} depends on {name!r}, which is not a step of {self.name!r}")
        return name

    @classmethod
    def from_proto(cls, message: pipeline_pb2.Pipeline) -> Pipeline:
        """A builder holding an existing pipeline message (to add steps, or to re-emit it)."""
        pipeline = cls(message.name, description=message.description, labels=dict(message.labels))
        pipeline._spec.CopyFrom(message.spec)
        pipeline._steps = {s.name: StepHandle(pipeline, s) for s in pipeline._spec.steps}
        pipeline._uses = {
            s.name: SubPipeline(s.name, s.pipeline.name, s.pipeline.version)
            for s in pipeline._spec.steps
            if s.HasField("pipeline")
        }
        return pipeline

    def parameter(self, name: str, *, default: str | None = None, description: str = "") -> ParamRef:
        """Declares a run parameter and returns a reference for step inputs.

        Args:
            name: The parameter's name.
            default: Its value when a run does not give one; None makes it required.
            description: What it means, for people.

        Raises:
            ValueError: A parameter with that name exists.
        """
        if any(p.name == name for p in self._spec.parameters):
            raise ValueError(f"parameter {name!r} is declared twice in pipeline {self.name!r}")
        if default is not None and not isinstance(default, str):
            raise TypeError(f"parameter {name!r}: defaults are strings, got {type(default).__name__}")
        param = self._spec.parameters.add(name=name, description=description)
        if default is not None:
            param.default_value = default
        return ParamRef(name)

    def param(self, name: str) -> ParamRef:
        """A reference to a declared parameter, for a step input.

        Raises:
            ValueError: No such parameter.
        """
        declared = [p.name for p in self._spec.parameters]
        if name not in declared:
            raise ValueError(
                f"pipeline {self.name!r} has no parameter {name!r} (declared: {', '.join(declared) or 'none'}); "
                "declare it with parameters={...} or .parameter()"
            )
        return ParamRef(name)

    def step(
        self,
        name: str,
        *,
        image: str,
        command: Sequence[str] = (),
        args: Sequence[str] = (),
        env: Mapping[str, str | SecretRef] | None = None,
        working_dir: str = "",
        requests: Mapping[str, str] | None = None,
        limits: Mapping[str, str] | None = None,
        inputs: Mapping[str, InputSource] | None = None,
        outputs: Sequence[str] = (),
        depends_on: Sequence[str | StepHandle | SubPipeline] = (),
        cache: Cache | bool | None = None,
        retry: Retry | int | None = None,
        timeout: Seconds | None = None,
        redundancy: Redundancy | int | None = None,
    ) -> StepHandle:
        """Adds a step and returns its handle.

        Args:
            name: The step's name, unique in the pipeline.
            image: Container image; part of the DNA.
            command: Entrypoint.
            args: Arguments to the entrypoint.
            env: Environment: plain values (part of the DNA) or `secret(name, key)`.
            working_dir: Working directory; empty means the runtime's default.
            requests: Requested resources, e.g. {"cpu": "500m"}.
            limits: Resource limits, e.g. {"memory": "2Gi"}.
            inputs: Files under `$WEFT_INPUTS`, by name: `p.param(...)`,
                `other.output(...)` or `literal(...)`.
            outputs: Files the step writes under `$WEFT_OUTPUTS`.
            depends_on: Steps that must finish first though no data flows from them.
            cache: A `Cache` policy, or False to never reuse outcomes.
            retry: A `Retry` policy, or the total number of attempts.
            timeout: Limit for one attempt, in seconds or as a timedelta.
            redundancy: A `Redundancy` policy, or the number of replicas.

        Raises:
            ValueError: A duplicate name, or a reference to something not in this pipeline.
            TypeError: An input that is not a reference or literal.
        """
        if name in self._steps:
            raise ValueError(f"step {name!r} is defined twice in pipeline {self.name!r}")
        container = pipeline_pb2.Container(
            image=image,
            command=list(command),
            args=list(args),
            working_dir=working_dir,
            resources=pipeline_pb2.Resources(requests=dict(requests or {}), limits=dict(limits or {})),
        )
        for var, value in (env or {}).items():
            if isinstance(value, SecretRef):
                container.env.add(name=var, secret=pipeline_pb2.SecretKeyRef(name=value.name, key=value.key))
            else:
                container.env.add(name=var, value=value)
        message = pipeline_pb2.Step(name=name, container=container)
        for input_name, source in (inputs or {}).items():
            message.inputs.append(self._input(name, input_name, source))
        for output in outputs:
            message.outputs.add(name=output)
        for upstream in depends_on:
            message.depends_on.append(self._upstream(name, upstream))
        if cache is not None:
            message.cache.CopyFrom((Cache(enabled=cache) if isinstance(cache, bool) else cache).to_proto())
        if retry is not None:
            message.retry.CopyFrom((Retry(max_attempts=retry) if isinstance(retry, int) else retry).to_proto())
        if timeout is not None:
            message.timeout.CopyFrom(_duration(timeout))
        if redundancy is not None:
            policy = Redundancy(replicas=redundancy) if isinstance(redundancy, int) else redundancy
            message.redundancy.CopyFrom(policy.to_proto())
        self._spec.steps.append(message)
        # Keep the handle on the stored message so later reads see exactly what is in the spec.
        handle = StepHandle(self, self._spec.steps[-1])
        self._steps[name] = handle
        return handle

    def _input(self, step: str, name: str, source: InputSource) -> pipeline_pb2.Input:
        if isinstance(source, ParamRef):
            self.param(source.name)
            return pipeline_pb2.Input(name=name, parameter=source.name)
        if isinstance(source, OutputRef):
            producer = self._steps.get(source.step)
            if producer is None and source.step.split(".")[0] in self._uses:
                # A step of a used pipeline: the server checks it when it expands the use.
                return pipeline_pb2.Input(
                    name=name, step_output=pipeline_pb2.OutputRef(step=source.step, output=source.output)
                )
            if producer is None:
                raise ValueError(
                    f"input {name!r} of step {step!r} reads step {source.step!r}, which is not a step of {self.name!r}"
                )
            producer.output(source.output)
            return pipeline_pb2.Input(
                name=name, step_output=pipeline_pb2.OutputRef(step=source.step, output=source.output)
            )
        if isinstance(source, LiteralValue):
            return pipeline_pb2.Input(name=name, literal=source.value)
        raise TypeError(
            f"input {name!r} of step {step!r} is a {type(source).__name__}; use p.param(NAME), "
            f"other_step.output(NAME) or literal(VALUE)"
        )

    @property
    def steps(self) -> list[StepHandle]:
        """The steps in the order they were added."""
        return list(self._steps.values())

    def get_step(self, name: str) -> StepHandle:
        """The handle of the step named `name` (e.g. of a pipeline loaded from a file).

        Raises:
            KeyError: No such step.
        """
        try:
            return self._steps[name]
        except KeyError:
            raise KeyError(f"pipeline {self.name!r} has no step {name!r}") from None

    def spec(self) -> pipeline_pb2.PipelineSpec:
        """A copy of the spec built so far."""
        copy = pipeline_pb2.PipelineSpec()
        copy.CopyFrom(self._spec)
        return copy

    def to_proto(self) -> pipeline_pb2.Pipeline:
        """The pipeline as the message `CreatePipeline` takes."""
        return pipeline_pb2.Pipeline(name=self.name, description=self.description, labels=self.labels, spec=self.spec())

    def to_dict(self) -> dict[str, Any]:
        """The pipeline in the shape of a pipeline file (proto-JSON, camelCase keys)."""
        document: dict[str, Any] = {"name": self.name}
        if self.description:
            document["description"] = self.description
        if self.labels:
            document["labels"] = dict(self.labels)
        document["spec"] = json_format.MessageToDict(self._spec)
        return document

    def to_yaml(self) -> str:
        """The pipeline as the text of a pipeline file that `load_pipeline` reads back."""
        text: str = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=100)
        return text


# Pipeline files -----------------------------------------------------------------------------

_WRAPPER_KEYS = ("name", "description", "labels", "spec")
_SPEC_KEYS = ("parameters", "steps", "uses")
_DURATION = re.compile(r"^-?\d+(\.\d{1,9})?s$")


def load_pipeline(path: str | Path, *, name: str | None = None) -> Pipeline:
    """Reads a pipeline file (YAML or JSON).

    Args:
        path: The file.
        name: The pipeline's name when the file does not give one (or to override it).

    Returns:
        A builder holding the pipeline.

    Raises:
        PipelineFileError: The file cannot be read or is not a valid pipeline; the message
            names the file, the place in it and the fix.
    """
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PipelineFileError(f"{source}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise PipelineFileError(f"{source}: cannot read it: {error}") from None
    return loads_pipeline(text, source=str(source), name=name)


def loads_pipeline(text: str, *, source: str = "<string>", name: str | None = None) -> Pipeline:
    """Parses the text of a pipeline file (see `load_pipeline`).

    Args:
        text: YAML or JSON (JSON is YAML).
        source: What to call the text in error messages (usually its file name).
        name: The pipeline's name when the text does not give one (or to override it).

    Raises:
        PipelineFileError: The text is not a valid pipeline.
    """
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise PipelineFileError(f"{source}:{where}: not valid YAML: {problem}") from None
    if not isinstance(document, dict):
        raise PipelineFileError(
            f"{source}: expected a mapping with `name` and `spec` at the top, got {_kind(document)}"
        )
    if "spec" in document or not any(key in document for key in _SPEC_KEYS):
        _check_keys(source, "", document, _WRAPPER_KEYS)
        spec_document = document.get("spec")
        if spec_document is None:
            raise PipelineFileError(f"{source}: no `spec`; add `spec: {{parameters: [...], steps: [...]}}`")
        spec_path = "spec"
    else:
        # A bare spec (parameters/steps at the top) is accepted when the name comes from elsewhere.
        _check_keys(source, "", document, (*_WRAPPER_KEYS[:3], *_SPEC_KEYS))
        spec_document = {k: v for k, v in document.items() if k in _SPEC_KEYS}
        spec_path = ""
    pipeline_name = name or document.get("name")
    if not pipeline_name:
        raise PipelineFileError(f"{source}: no pipeline name; add `name: <pipeline>` at the top")
    if not isinstance(pipeline_name, str):
        raise PipelineFileError(f"{source}: name: expected a string, got {_kind(pipeline_name)}")
    description = document.get("description", "")
    if not isinstance(description, str):
        raise PipelineFileError(f"{source}: description: expected a string, got {_kind(description)}")
    labels = document.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise PipelineFileError(f'{source}: labels: expected a mapping of strings (quote numbers: "1")')
    spec = pipeline_pb2.PipelineSpec()
    _check_message(source, spec_path, spec_document, cast(descriptor.Descriptor, pipeline_pb2.PipelineSpec.DESCRIPTOR))
    try:
        # Round-trip through JSON so YAML-only values (dates, ...) cannot reach the parser.
        json_format.Parse(json.dumps(spec_document), spec)
    except (json_format.ParseError, TypeError, ValueError) as error:
        raise PipelineFileError(f"{source}: {spec_path or 'spec'}: {_first_line(error)}") from None
    return Pipeline.from_proto(
        pipeline_pb2.Pipeline(name=pipeline_name, description=description, labels=labels, spec=spec)
    )


def _check_keys(source: str, path: str, document: dict[Any, Any], allowed: Sequence[str]) -> None:
    for key in document:
        if key not in allowed:
            raise PipelineFileError(
                f"{source}: {_join(path, str(key))}: unknown key {str(key)!r}{_did_you_mean(str(key), allowed)} "
                f"(allowed here: {', '.join(allowed)})"
            )


def _check_message(source: str, path: str, value: Any, message: descriptor.Descriptor) -> None:
    """Walks a proto-JSON value against a message type, failing at the first wrong place."""
    where = path or "spec"
    if not isinstance(value, dict):
        raise PipelineFileError(f"{source}: {where}: expected a mapping (a {message.name}), got {_kind(value)}")
    fields = {**{f.name: f for f in message.fields}, **{f.json_name: f for f in message.fields}}
    seen_oneofs: dict[str, str] = {}
    for key, item in value.items():
        field = fields.get(key) if isinstance(key, str) else None
        key_path = _join(path, str(key))
        if field is None:
            names = sorted({f.json_name for f in message.fields})
            raise PipelineFileError(
                f"{source}: {key_path}: unknown field {str(key)!r}{_did_you_mean(str(key), names)} "
                f"(fields of {message.name}: {', '.join(names)})"
            )
        oneof = field.containing_oneof
        if oneof is not None and item is not None:
            if oneof.name in seen_oneofs:
                raise PipelineFileError(
                    f"{source}: {key_path}: `{seen_oneofs[oneof.name]}` is already given; "
                    f"a {message.name} takes only one of: {', '.join(f.json_name for f in oneof.fields)}"
                )
            seen_oneofs[oneof.name] = str(key)
        _check_field(source, key_path, item, field)


def _check_field(source: str, path: str, value: Any, field: descriptor.FieldDescriptor) -> None:
    if value is None:
        return
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        if not isinstance(value, dict):
            raise PipelineFileError(f"{source}: {path}: expected a mapping, got {_kind(value)}")
        value_field = field.message_type.fields_by_name["value"]
        for key, item in value.items():
            _check_field(source, _join(path, str(key)), item, value_field)
        return
    if field.is_repeated:
        if not isinstance(value, list):
            raise PipelineFileError(f"{source}: {path}: expected a list, got {_kind(value)}; write [..] or - items")
        for index, item in enumerate(value):
            _check_single(source, f"{path}[{index}]", item, field)
        return
    _check_single(source, path, value, field)


def _check_single(source: str, path: str, value: Any, field: descriptor.FieldDescriptor) -> None:
    if field.message_type is not None:
        full_name = field.message_type.full_name
        if full_name == "google.protobuf.Duration":
            if not isinstance(value, str) or not _DURATION.match(value):
                raise PipelineFileError(
                    f'{source}: {path}: expected a duration in seconds like "30s" or "1.5s", got {_kind(value)}'
                )
            return
        if full_name.startswith("google.protobuf."):
            return
        _check_message(source, path, value, field.message_type)
        return
    if field.type == descriptor.FieldDescriptor.TYPE_STRING:
        if not isinstance(value, str):
            raise PipelineFileError(
                f'{source}: {path}: expected a string, got {_kind(value)}; quote it: "{_plain(value)}"'
            )
    elif field.type == descriptor.FieldDescriptor.TYPE_BOOL:
        if not isinstance(value, bool):
            raise PipelineFileError(f"{source}: {path}: expected true or false, got {_kind(value)}")
    elif field.type == descriptor.FieldDescriptor.TYPE_ENUM:
        names = [v.name for v in field.enum_type.values] if field.enum_type is not None else []
        if value not in names:
            raise PipelineFileError(
                f"{source}: {path}: {value!r} is not one of: {', '.join(names)}{_did_you_mean(str(value), names)}"
            )
    elif field.type in (descriptor.FieldDescriptor.TYPE_DOUBLE, descriptor.FieldDescriptor.TYPE_FLOAT):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PipelineFileError(f"{source}: {path}: expected a number, got {_kind(value)}")
    elif isinstance(value, bool) or not isinstance(value, int):
        raise PipelineFileError(f"{source}: {path}: expected a whole number, got {_kind(value)}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _plain(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
