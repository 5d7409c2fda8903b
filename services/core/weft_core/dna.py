"""Step DNA: the content-addressed description of what produced a step's outcome.

The DNA of a step is sha256 over a canonical encoding of everything that decides its
result (DESIGN.md, "DNA"): the weft execution protocol version, the step's name, the
image, command, args, non-secret environment (sorted by name), working directory, the
resources declared to change results (none by default), the declared output names,
every input's content digest by input name, and the step's cache version. Two steps with
equal DNA produce interchangeable outcomes, so an outcome committed under a DNA may be
reused by any later step with that DNA (the cache) and `DiffRuns` can say which
component changed.

Two additions to DESIGN.md's list keep the cache sound. The step's name: a step's
process sees it (`WEFT_STEP`), and a fan-out of identical containers that shard their
work by step name must not reuse one another's outcomes. The output names: a step that
declares other outputs must not reuse an outcome that lacks them. What a process sees
and the DNA leaves out (`WEFT_RUN`, `WEFT_ATTEMPT`, `TRACEPARENT`) must not change a
step's result: including them would make every run a miss.

The image: a reference that names a digest (`repo@sha256:…`, with or without a tag) is
hashed as `repo@sha256:…`, so the tag beside a digest changes nothing and the cache
follows the content; any other reference (a tag, or no tag: `:latest`) is hashed as
written, and `image_hashed_as` says which applied (`ExplainStep` shows it).

Records that would grow with a step's inputs (a join over 10,000 outputs) keep only a
digest: `spill_components` and `spill_input_outcomes` move the components of an
explanation and the input outcomes of an outcome into a blob once they pass
`INLINE_RECORD_BYTES`, and `restore_components` puts them back for a reader.

The components are returned in hashing order so `ExplainStep` can show them as they were
hashed. This module must never see a secret's value: a secret environment variable
contributes only its reference (`secret:<name>/<key>`), so rotating a secret never
invalidates the cache and no secret can be recovered from a DNA or an explanation
(invariant 8). It must stay pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from weft.v1 import pipeline_pb2, run_pb2

#: Version of the contract between weft and a step's process (where inputs and outputs
#: live, which variables it gets). Bumping it invalidates every stored outcome, which is
#: what must happen when that contract changes meaning.
EXECUTION_PROTOCOL = "weft-exec/1"

#: Prefix of every DNA and content digest weft writes.
SHA256_PREFIX = "sha256:"

#: Past this many bytes, an explanation's components or an outcome's input outcomes are
#: kept in a blob and the record holds its digest (invariant 6: no record grows with the
#: number of a step's inputs). Small enough that a done record stays a few KiB.
INLINE_RECORD_BYTES = 8 * 1024

#: `image_hashed_as` values.
IMAGE_BY_DIGEST = "digest"
IMAGE_BY_TAG = "tag"


def image_for_dna(reference: str) -> tuple[str, str]:
    """The image as hashed into the DNA, and how (`IMAGE_BY_DIGEST` or `IMAGE_BY_TAG`).

    `registry/repo:tag@sha256:abc` and `registry/repo@sha256:abc` hash alike (the digest
    decides the content); a reference without a digest is hashed as written.
    """
    name, at, digest = reference.partition("@")
    if not at or not digest.startswith(SHA256_PREFIX):
        return reference, IMAGE_BY_TAG
    # Drop a tag: a ':' after the last '/' (a registry port comes before it).
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name = name[:colon]
    return f"{name}@{digest}", IMAGE_BY_DIGEST


@dataclass(frozen=True)
class StepDNA:
    """A step's DNA and the components it was hashed from.

    Attributes:
        digest: `sha256:<hex>` of the canonical encoding of `components`.
        components: (name, value) pairs in hashing order.
    """

    digest: str
    components: tuple[tuple[str, str], ...]

    @property
    def hex(self) -> str:
        """The digest without its `sha256:` prefix (the outcome key uses it)."""
        return self.digest.removeprefix(SHA256_PREFIX)

    def as_pb(self) -> list[run_pb2.DnaComponent]:
        """The components as `DnaComponent` messages for a `StepExplanation`."""
        return [run_pb2.DnaComponent(name=name, value=value) for name, value in self.components]


def content_digest(data: bytes) -> str:
    """`sha256:<hex>` of `data`: the digest the artifact store addresses it by."""
    return SHA256_PREFIX + hashlib.sha256(data).hexdigest()


def _canonical_list(values: Iterable[str]) -> str:
    # JSON keeps element boundaries unambiguous (["a b"] differs from ["a", "b"]).
    return json.dumps(list(values), ensure_ascii=False, separators=(",", ":"))


def _env_components(env: Iterable[pipeline_pb2.EnvVar]) -> list[tuple[str, str]]:
    components: list[tuple[str, str]] = []
    for var in sorted(env, key=lambda v: v.name):
        if var.WhichOneof("source") == "secret":
            # Only the reference: the value must never be hashed, stored or shown.
            components.append((f"env:{var.name}", f"secret:{var.secret.name}/{var.secret.key}"))
        else:
            components.append((f"env:{var.name}", var.value))
    return components


def _resource_components(resources: pipeline_pb2.Resources, result_resources: Iterable[str]) -> list[tuple[str, str]]:
    components: list[tuple[str, str]] = []
    for name in sorted(set(result_resources)):
        for kind, values in (("requests", resources.requests), ("limits", resources.limits)):
            if name in values:
                components.append((f"resource:{kind}.{name}", values[name]))
    return components


def step_dna(
    step: pipeline_pb2.Step,
    input_digests: Mapping[str, str],
    *,
    image: str | None = None,
    result_resources: Iterable[str] = (),
) -> StepDNA:
    """Computes a step's DNA.

    Args:
        step: The step as the pipeline version specifies it.
        input_digests: The content digest (`sha256:<hex>`) of every input, by input name.
            Every input the step declares must be present.
        image: The image as resolved by the runtime (a digest reference when it can be
            resolved); defaults to the reference in the spec.
        result_resources: Resource names (e.g. "nvidia.com/gpu") whose amounts change a
            step's results; their requests and limits join the DNA. None do by default:
            more CPU or memory makes a step faster, not different.

    Returns:
        The DNA with its components in hashing order.

    Raises:
        ValueError: An input of the step has no digest in `input_digests`.
    """
    missing = [i.name for i in step.inputs if i.name not in input_digests]
    if missing:
        raise ValueError(f"step {step.name!r}: no content digest for input(s) {', '.join(missing)}")
    container = step.container
    components: list[tuple[str, str]] = [
        ("protocol", EXECUTION_PROTOCOL),
        ("step", step.name),
        ("image", image if image is not None else image_for_dna(container.image)[0]),
        ("command", _canonical_list(container.command)),
        ("args", _canonical_list(container.args)),
        *_env_components(container.env),
        ("working_dir", container.working_dir),
        *_resource_components(container.resources, result_resources),
        ("outputs", _canonical_list(sorted(o.name for o in step.outputs))),
        *((f"input:{name}", input_digests[name]) for name in sorted(i.name for i in step.inputs)),
        ("cache_version", step.cache.version),
    ]
    encoded = json.dumps(components, ensure_ascii=False, separators=(",", ":")).encode()
    return StepDNA(SHA256_PREFIX + hashlib.sha256(encoded).hexdigest(), tuple(components))


def diff_components(old: Iterable[tuple[str, str]], new: Iterable[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """The components that differ between two DNAs, as (name, old value, new value).

    A component present on one side only shows "" on the other. Used to explain why a
    step that was cached before is a miss now, and by `DiffRuns`.
    """
    before, after = dict(old), dict(new)
    names = list(before) + [n for n in after if n not in before]
    return [(n, before.get(n, ""), after.get(n, "")) for n in names if before.get(n, "") != after.get(n, "")]


def spill_components(explanation: run_pb2.StepExplanation) -> bytes | None:
    """Moves the explanation's components into a blob when they are too large to inline.

    Returns the blob's content (the caller stores it; its digest is in
    `components_digest` now), or None when the components stay in the record.
    """
    size = sum(c.ByteSize() + 3 for c in explanation.components)
    if size <= INLINE_RECORD_BYTES:
        return None
    blob = run_pb2.StepExplanation(components=explanation.components).SerializeToString()
    explanation.components_digest = content_digest(blob)
    del explanation.components[:]
    return blob


def restore_components(explanation: run_pb2.StepExplanation, blob: bytes) -> None:
    """Puts spilled components back (`blob` is the content of `components_digest`)."""
    stored = run_pb2.StepExplanation()
    stored.ParseFromString(blob)
    explanation.components.extend(stored.components)


def spill_input_outcomes(outcome: run_pb2.Outcome) -> bytes | None:
    """Moves the outcome's input outcomes into a blob when they are too large to inline.

    Returns the blob's content (its digest is in `input_outcomes_digest` now) or None.
    """
    size = sum(len(k) + len(v) + 6 for k, v in outcome.input_outcomes.items())
    if size <= INLINE_RECORD_BYTES:
        return None
    blob = run_pb2.Outcome(input_outcomes=outcome.input_outcomes).SerializeToString(deterministic=True)
    outcome.input_outcomes_digest = content_digest(blob)
    outcome.ClearField("input_outcomes")
    return blob
