"""Pipelines used as steps: expanding `Step.pipeline` into the used pipeline's steps.

CreatePipeline calls `expand_uses` before it validates a spec. A step that uses another
pipeline, pinned by version, is replaced by copies of that version's steps, named
`<step>.<its step>`:

- an input of the using step feeds the used pipeline's parameter of the same name; a
  parameter left out takes its default as a literal (one without a default is an error);
- the copies' references to each other get the prefix, and the using step's
  `depends_on` is added to every copy; a `depends_on` on the using step (from another
  step) becomes a `depends_on` on every copy;
- `PipelineSpec.uses` records the used pipeline and the exact version expanded, and the
  uses recorded in that version (nested uses) under the longer prefix.

The copies are ordinary container steps, so DNA, caching, lineage and explain treat them
like any other step: the same used pipeline, expanded under the same step name with the
same inputs, has the same DNA in every pipeline that uses it, and is computed once.
A cycle between pipelines (by name, through the recorded uses) is refused with its path.

This module reads stored pipelines only through the `fetch` callable it is given and
never writes anything.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from weft.v1 import pipeline_pb2
from weft_core.errors import InvalidArgument, NotFound
from weft_core.spec import dns_label_problem, raise_problems

#: Returns the stored Pipeline (with its full `version` and spec) of (name, version or
#: unique prefix); raises NotFound when it does not exist.
FetchVersion = Callable[[str, str], Awaitable[pipeline_pb2.Pipeline]]


def cycle_path(parent: str, used: pipeline_pb2.Pipeline, used_name: str) -> list[str]:
    """The pipelines on a cycle back to `parent` through `used` and its recorded uses, or []."""
    if used_name == parent:
        return [parent, parent]
    by_prefix = {use.step: use.pipeline.name for use in used.spec.uses}
    for use in used.spec.uses:
        if use.pipeline.name == parent:
            parts = use.step.split(".")
            chain = [by_prefix[".".join(parts[: i + 1])] for i in range(len(parts))]
            return [parent, used_name, *chain]
    return []


async def expand_uses(
    pipeline: pipeline_pb2.Pipeline, fetch: FetchVersion, field: str = "pipeline.spec"
) -> list[pipeline_pb2.PipelineUse]:
    """Replaces, in `pipeline.spec`, every step that uses a pipeline by that pipeline's steps.

    `pipeline.name` is the bare id of the pipeline being created (for cycle checks).

    Returns:
        The uses added to `pipeline.spec.uses` (empty when no step uses a pipeline).

    Raises:
        InvalidArgument: A malformed use, a wrong input mapping, or a cycle between pipelines.
        NotFound: A used pipeline, or the pinned version, does not exist.
    """
    spec = pipeline.spec
    if not any(step.HasField("pipeline") for step in spec.steps):
        return []
    problems: list[tuple[str, str]] = []
    expanded: dict[str, list[str]] = {}
    replacement: list[pipeline_pb2.Step] = []
    added: list[pipeline_pb2.PipelineUse] = []
    for i, step in enumerate(spec.steps):
        if not step.HasField("pipeline"):
            kept = pipeline_pb2.Step()
            kept.CopyFrom(step)
            replacement.append(kept)
            continue
        path = f"{field}.steps[{i}]"
        problems.extend(_using_step_problems(step, path))
        if problems:
            continue
        used = await _fetch(fetch, step.pipeline, f"{path}.pipeline")
        cycle = cycle_path(pipeline.name, used, step.pipeline.name)
        if cycle:
            raise InvalidArgument(
                f"{path}.pipeline: the pipelines form a cycle: {' -> '.join(cycle)}; a pipeline cannot use itself, "
                "directly or through the pipelines it uses",
                field=f"{path}.pipeline",
            )
        sources, mapping_problems = _parameter_sources(step, used, path)
        problems.extend(mapping_problems)
        if mapping_problems:
            continue
        copies = _copies(step, used, sources)
        expanded[step.name] = [copy.name for copy in copies]
        replacement.extend(copies)
        use = pipeline_pb2.PipelineUse(
            step=step.name, pipeline=pipeline_pb2.PipelineRef(name=step.pipeline.name, version=used.version)
        )
        added.append(use)
        for nested in used.spec.uses:
            added.append(pipeline_pb2.PipelineUse(step=f"{step.name}.{nested.step}", pipeline=nested.pipeline))
    raise_problems(problems)

    for step in replacement:
        _redirect_dependencies(step, expanded)
    for j, step in enumerate(spec.steps):
        for k, item in enumerate(step.inputs):
            if item.WhichOneof("source") == "step_output" and item.step_output.step in expanded:
                ref = item.step_output
                problems.append(
                    (
                        f"{field}.steps[{j}].inputs[{k}].step_output.step",
                        f'"{ref.step}" is a used pipeline, not a step; read one of its steps\' outputs, e.g. '
                        f'{{step: "{expanded[ref.step][-1]}", output: ...}}',
                    )
                )
    raise_problems(problems)
    del spec.steps[:]
    spec.steps.extend(replacement)
    spec.uses.extend(added)
    return added


def _using_step_problems(step: pipeline_pb2.Step, path: str) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    ref = step.pipeline
    name_problem = dns_label_problem(step.name)
    if name_problem:
        problems.append((f"{path}.name", name_problem))
    if dns_label_problem(ref.name):
        problems.append((f"{path}.pipeline.name", dns_label_problem(ref.name)))
    if not ref.version:
        problems.append(
            (
                f"{path}.pipeline.version",
                "is required: pin the version to use (its digest, from `weft pipelines get "
                f"{ref.name or 'NAME'}`), so a new version of it never changes this pipeline silently",
            )
        )
    owned = [name for name in ("container", "cache", "retry", "timeout", "redundancy") if step.HasField(name)]
    if step.outputs:
        owned.append("outputs")
    for name in owned:
        problems.append(
            (
                f"{path}.{name}",
                f"a step that uses a pipeline has no {name} of its own (its steps have theirs); remove it",
            )
        )
    return problems


async def _fetch(fetch: FetchVersion, ref: pipeline_pb2.PipelineRef, path: str) -> pipeline_pb2.Pipeline:
    try:
        return await fetch(ref.name, ref.version)
    except NotFound as error:
        detail = error.message.removeprefix("version: ")
        raise NotFound(
            f'{path}: cannot use pipeline "{ref.name}" at version "{ref.version}": {detail}', field=path
        ) from None
    except InvalidArgument as error:
        detail = error.message.removeprefix("version: ")
        raise InvalidArgument(f"{path}.version: {detail}", field=f"{path}.version") from None


def _parameter_sources(
    step: pipeline_pb2.Step, used: pipeline_pb2.Pipeline, path: str
) -> tuple[dict[str, pipeline_pb2.Input], list[tuple[str, str]]]:
    """The source of each parameter of the used pipeline, from the step's inputs or defaults."""
    problems: list[tuple[str, str]] = []
    declared = {parameter.name: parameter for parameter in used.spec.parameters}
    sources: dict[str, pipeline_pb2.Input] = {}
    for j, item in enumerate(step.inputs):
        if item.name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            problems.append(
                (
                    f"{path}.inputs[{j}].name",
                    f'pipeline "{step.pipeline.name}" has no parameter "{item.name}" (its parameters: {known}); '
                    "an input of a step that uses a pipeline sets one of its parameters",
                )
            )
        elif item.WhichOneof("source") is None:
            problems.append(
                (f"{path}.inputs[{j}]", f'input "{item.name}" has no source; set parameter, step_output or literal')
            )
        else:
            sources[item.name] = item
    for name, parameter in declared.items():
        if name in sources:
            continue
        if parameter.HasField("default_value"):
            sources[name] = pipeline_pb2.Input(name=name, literal=parameter.default_value)
        else:
            problems.append(
                (
                    f"{path}.inputs",
                    f'parameter "{name}" of pipeline "{step.pipeline.name}" has no default; '
                    f'add an input named "{name}"',
                )
            )
    return sources, problems


def _copies(
    step: pipeline_pb2.Step, used: pipeline_pb2.Pipeline, sources: dict[str, pipeline_pb2.Input]
) -> list[pipeline_pb2.Step]:
    prefix = step.name
    copies: list[pipeline_pb2.Step] = []
    for original in used.spec.steps:
        copy = pipeline_pb2.Step()
        copy.CopyFrom(original)
        copy.name = f"{prefix}.{original.name}"
        for item in copy.inputs:
            source = item.WhichOneof("source")
            if source == "parameter":
                name = item.name
                item.CopyFrom(sources[item.parameter])
                item.name = name
            elif source == "step_output":
                item.step_output.step = f"{prefix}.{item.step_output.step}"
        depends_on = [f"{prefix}.{upstream}" for upstream in copy.depends_on]
        depends_on.extend(upstream for upstream in step.depends_on if upstream not in depends_on)
        del copy.depends_on[:]
        copy.depends_on.extend(depends_on)
        copies.append(copy)
    return copies


def _redirect_dependencies(step: pipeline_pb2.Step, expanded: dict[str, list[str]]) -> None:
    """A `depends_on` on a step that used a pipeline waits for all of its steps."""
    if not any(upstream in expanded for upstream in step.depends_on):
        return
    redirected: dict[str, None] = {}
    for upstream in step.depends_on:
        for name in expanded.get(upstream, [upstream]):
            redirected[name] = None
    del step.depends_on[:]
    step.depends_on.extend(redirected)
