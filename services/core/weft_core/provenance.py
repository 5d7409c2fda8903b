"""Provenance vocabulary: reading a step record's DNA components, and saying what changed.

`ExplainStep` and `DiffRuns` compare two step records by their DNA components. This module
holds the parts of that comparison that need no I/O of their own: where a record's
components are read from (inline, or from the blob a wide join spills them to, through
the blob reader the caller gives), which steps a run limited to some steps is made of,
which source feeds each input of a step, and how a list of changed components reads for
a person ("command changed (was … now …)", "cache version 2 → 3"). The api
(`weft_api.provenance`) adds the reads: the nearest previous outcome, the upstream
records an input change is traced to.

It must never show a secret's value: DNA components hold only a secret's reference
(`secret:<name>/<key>`, see `weft_core.dna`), and nothing here adds any other value.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from weft.v1 import pipeline_pb2, run_pb2
from weft_core.dna import SHA256_PREFIX, restore_components
from weft_core.errors import Internal

#: Step states whose record holds a committed outcome.
COMMITTED_STEP_STATES = frozenset({run_pb2.StepRun.STATE_SUCCEEDED, run_pb2.StepRun.STATE_CACHED})
#: Longest component value shown in a reason; the full values stay in the ComponentChange.
SHOWN_VALUE_CHARS = 60
#: Prefix of the DNA components that hold an input's content digest.
INPUT_PREFIX = "input:"


class BlobReader(Protocol):
    """What `restore_spilled` needs of the artifact store."""

    async def get(self, digest: str) -> bytes: ...


def is_spilled(record: run_pb2.StepRun) -> bool:
    """Whether a wide join's record keeps its components or input outcomes in blobs."""
    return bool(
        (record.explanation.components_digest and not record.explanation.components)
        or (record.outcome.input_outcomes_digest and not record.outcome.input_outcomes)
    )


async def restore_spilled(record: run_pb2.StepRun, blobs: BlobReader) -> run_pb2.StepRun:
    """Puts back, in place, what a wide join's record keeps in blobs (`weft_core.dna`'s
    spills): its DNA components and its outcome's input outcomes. Returns `record`."""
    explanation, outcome = record.explanation, record.outcome
    if explanation.components_digest and not explanation.components:
        restore_components(explanation, await blobs.get(explanation.components_digest))
    if outcome.input_outcomes_digest and not outcome.input_outcomes:
        stored = run_pb2.Outcome()
        stored.ParseFromString(await blobs.get(outcome.input_outcomes_digest))
        outcome.input_outcomes.update(stored.input_outcomes)
    return record


def has_components(record: run_pb2.StepRun) -> bool:
    """Whether the record holds DNA components, inline or spilled to a blob."""
    return bool(record.explanation.components or record.explanation.components_digest)


def dna_components(record: run_pb2.StepRun) -> list[tuple[str, str]]:
    """The DNA components a step record was hashed from, in hashing order.

    The one place that reads them. A wide join keeps them in a blob
    (`components_digest`): such a record must go through `restore_spilled` first, and
    one that did not is refused here rather than read as having no components (which
    would make every component look added).
    """
    explanation = record.explanation
    if explanation.components_digest and not explanation.components:
        raise Internal(
            f"step {record.step or '?'}: its DNA components are in blob {explanation.components_digest}; "
            "restore_spilled must read them first"
        )
    return [(c.name, c.value) for c in explanation.components]


def run_scope(spec: pipeline_pb2.PipelineSpec, only_steps: Iterable[str]) -> pipeline_pb2.PipelineSpec:
    """The steps a run is made of: `only_steps` and every step upstream of them, in spec
    order (the whole spec when `only_steps` is empty).

    A ReplayRun of one step limits its run to that step's part of the graph
    (`RunOptions.only_steps`); executors and the api then see only those steps, so the
    run ends when they are done and its downstream steps are not part of it.
    """
    wanted = list(dict.fromkeys(only_steps))
    if not wanted:
        return spec
    by_name = {step.name: step for step in spec.steps}
    keep: set[str] = set()
    stack = [name for name in wanted if name in by_name]
    while stack:
        name = stack.pop()
        if name in keep:
            continue
        keep.add(name)
        step = by_name[name]
        stack.extend(i.step_output.step for i in step.inputs if i.WhichOneof("source") == "step_output")
        stack.extend(step.depends_on)
        stack[:] = [n for n in stack if n in by_name]
    scoped = pipeline_pb2.PipelineSpec()
    scoped.CopyFrom(spec)
    del scoped.steps[:]
    scoped.steps.extend(step for step in spec.steps if step.name in keep)
    return scoped


def upstream_steps(spec: pipeline_pb2.PipelineSpec, steps: Iterable[str]) -> list[str]:
    """Every step upstream of `steps` (not `steps` themselves), in spec order."""
    wanted = set(steps)
    return [step.name for step in run_scope(spec, wanted).steps if step.name not in wanted]


def image_digest(image_id: str) -> str:
    """The `sha256:…` repo digest in a container runtime's `imageID`
    (`docker.io/library/busybox@sha256:…`, `docker-pullable://busybox@sha256:…`), or ""
    (none reported, or an image config id without a repository)."""
    _, at, digest = image_id.rpartition("@")
    return digest if at and digest.startswith(SHA256_PREFIX) else ""


def image_resolution_change(record: run_pb2.StepRun, old: run_pb2.StepRun) -> str:
    """"image tag X now resolves to sha256:…, was sha256:…" when the two outcomes ran the
    same tag (an image hashed as written) as different digests; else "".

    Not a DNA component: the digest is known only once the runtime pulled the image,
    after the cache decision, so a moved tag cannot make a miss (a reused outcome never
    runs to find out); it explains a run that did run, and a diff.
    """
    image = dict(dna_components(record)).get("image", "")
    before, after = image_digest(old.outcome.image_id), image_digest(record.outcome.image_id)
    if not image or "@" in image or not before or not after or before == after:
        return ""
    if dict(dna_components(old)).get("image", "") != image:
        return ""  # another image altogether: the component change says so
    return f"image tag {image} now resolves to {after}, was {before}"


def shorten(value: str, limit: int = SHOWN_VALUE_CHARS) -> str:
    """`value` cut to `limit` characters with an ellipsis in the middle, for a reason line."""
    if len(value) <= limit:
        return value
    keep = (limit - 1) // 2
    return value[:keep] + "…" + value[len(value) - (limit - 1 - keep) :]


@dataclass(frozen=True)
class InputSource:
    """Where one input of a step comes from.

    Attributes:
        kind: "step_output", "parameter" or "literal" (the oneof of `pipeline.Input`).
        upstream_step: The producing step, for a step output.
        output: The producing step's output name, for a step output.
        parameter: The run parameter's name, for a parameter.
    """

    kind: str
    upstream_step: str = ""
    output: str = ""
    parameter: str = ""


def input_sources(step: pipeline_pb2.Step) -> dict[str, InputSource]:
    """The source of each input of `step`, by input name."""
    sources: dict[str, InputSource] = {}
    for item in step.inputs:
        kind = item.WhichOneof("source") or ""
        if kind == "step_output":
            sources[item.name] = InputSource(kind, item.step_output.step, item.step_output.output)
        elif kind == "parameter":
            sources[item.name] = InputSource(kind, parameter=item.parameter)
        else:
            sources[item.name] = InputSource(kind)
    return sources


def component_changes(old: Iterable[tuple[str, str]], new: Iterable[tuple[str, str]]) -> list[run_pb2.ComponentChange]:
    """The components that differ, in hashing order (a component on one side only shows "")."""
    before, after = dict(old), dict(new)
    names = list(after) + [n for n in before if n not in after]
    return [
        run_pb2.ComponentChange(name=n, old_value=before.get(n, ""), new_value=after.get(n, ""))
        for n in names
        if before.get(n, "") != after.get(n, "")
    ]


def is_own_change(change: run_pb2.ComponentChange) -> bool:
    """Whether a change is of the step itself (spec or parameter), not of an upstream output."""
    return not change.upstream_step


def describe_change(change: run_pb2.ComponentChange) -> str:
    """One change for people: "command changed (was … now …)", "cache version 2 → 3"."""
    name, old, new = change.name, change.old_value, change.new_value
    if name == "cache_version":
        return f"cache version {old or '(none)'} → {new or '(none)'}"
    label = f"input {name.removeprefix(INPUT_PREFIX)}" if name.startswith(INPUT_PREFIX) else name
    if not old:
        return f"{label} added"
    if not new:
        return f"{label} removed"
    if change.cause:
        return f"{label} changed ({change.cause})"
    return f"{label} changed (was {shorten(old)} now {shorten(new)})"


def describe_changes(changes: Sequence[run_pb2.ComponentChange]) -> str:
    """Every change for people, own changes first, joined by "; "."""
    ordered = [c for c in changes if is_own_change(c)] + [c for c in changes if not is_own_change(c)]
    return "; ".join(describe_change(c) for c in ordered)
