"""Provenance export: a run's (or one step's) outcomes as an in-toto Statement v1 with a
SLSA Provenance v1 predicate, optionally signed in a DSSE envelope (ed25519).

The statement is built from what GetRun returns, so it says exactly what weft recorded:

- `subject`: every output blob (`<step>/<output>`, sha256 digest) of the committed steps;
- `buildDefinition`: `buildType` weft's step build type; `externalParameters` the pipeline,
  its version and the run's parameters; `internalParameters` each step's DNA and DNA
  components (a secret appears only as its reference `secret:<name>/<key>`, never a
  value: the DNA never holds one); `resolvedDependencies` the pipeline version (its spec
  digest), every input's digest, and each step's image as a package URL with the digest
  it ran as where known (pinned in the reference, or the runtime's resolved `imageID`,
  which Kubernetes reports and the local runtime does not);
- `runDetails`: the builder (the executor that produced each outcome), the invocation
  (run, step, attempt), start and end of the producing attempt, and the logs as
  byproducts (their annotations named `weft_…`, the extension-field convention).

Checked against the in-toto Statement v1 and SLSA Provenance v1 texts: every
ResourceDescriptor has a `uri` or a `digest`, every subject a digest, timestamps are RFC
3339 in UTC, unset values are left out rather than null. A wide join's record keeps its
DNA components in a blob (`components_digest`) that GetRun does not read back: give
`slsa_statement` a run whose such records were filled from ExplainStep (`weft
provenance` does), or its input dependencies are missing.

Signing follows DSSE v1: the signature is over PAE("application/vnd.in-toto+json",
statement), and `verify_envelope` checks it with the signer's public key. This module
never talks to a server and never reads a secret.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from weft.v1 import run_pb2

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
#: What a weft step build means: a container run on its inputs, keyed by its DNA.
BUILD_TYPE = "https://github.com/weft-dev/weft/blob/main/docs/provenance.md#step-v1"
DSSE_PAYLOAD_TYPE = "application/vnd.in-toto+json"
_COMMITTED = (run_pb2.StepRun.STATE_SUCCEEDED, run_pb2.StepRun.STATE_CACHED)


class ProvenanceError(Exception):
    """A statement cannot be built, signed or verified; the message says why."""


def _sha256(digest: str) -> dict[str, str]:
    return {"sha256": digest.removeprefix("sha256:")}


def _time(stamp: Timestamp) -> str | None:
    if not stamp.seconds and not stamp.nanos:
        return None
    return str(stamp.ToJsonString())


def _committed_steps(run: run_pb2.Run, step: str | None) -> list[run_pb2.StepRun]:
    steps = [s for s in run.steps if step is None or s.step == step]
    if step is not None and not steps:
        raise ProvenanceError(f"run {run.name} has no step {step!r}")
    committed = [s for s in steps if s.state in _COMMITTED]
    if not committed:
        what = f"step {step}" if step else "no step"
        raise ProvenanceError(f"{what} of run {run.name} has a committed outcome yet; nothing to attest")
    return committed


def _step_definition(record: run_pb2.StepRun) -> dict[str, Any]:
    return {
        "dna": record.outcome.dna,
        "components": [{"name": c.name, "value": c.value} for c in record.explanation.components],
        "inputOutcomes": dict(sorted(record.outcome.input_outcomes.items())),
    }


def image_digest(image_id: str) -> str:
    """The `sha256:…` repo digest in a container runtime's `imageID`
    (`docker.io/library/busybox@sha256:…`, `docker-pullable://busybox@sha256:…`), or ""."""
    _, at, digest = image_id.rpartition("@")
    if at and digest.startswith("sha256:"):
        return digest
    return ""


def image_purl(reference: str) -> str:
    """A container image reference as a package URL (`pkg:docker/…`), the ResourceURI of
    an image dependency: `busybox:1.36` → `pkg:docker/busybox@1.36`,
    `registry:5000/team/app@sha256:…` → `pkg:docker/team/app@sha256:…?repository_url=registry:5000`."""
    name, _, pinned = reference.partition("@")
    first, slash, rest = name.partition("/")
    registry = first if slash and ("." in first or ":" in first or first == "localhost") else ""
    path = rest if registry else name
    repo, colon, tag = path.rpartition(":") if ":" in path.rsplit("/", 1)[-1] else (path, "", "")
    version = pinned or (tag if colon else "latest")
    purl = f"pkg:docker/{repo}@{version}"
    return purl + (f"?repository_url={registry}" if registry else "")


def _image_dependency(record: run_pb2.StepRun, image: str) -> dict[str, Any]:
    """The step's image: its reference as a package URL and, where known, the digest it
    ran as (the reference's own pin, else what the runtime reported it resolved to)."""
    entry: dict[str, Any] = {"name": f"{record.step}/image", "uri": image_purl(image)}
    digest = image_digest(image) or image_digest(record.outcome.image_id)
    if digest:
        entry["digest"] = _sha256(digest)
    return entry


def _inputs(record: run_pb2.StepRun) -> list[tuple[str, str]]:
    return [
        (c.name.removeprefix("input:"), c.value) for c in record.explanation.components if c.name.startswith("input:")
    ]


def slsa_statement(run: run_pb2.Run, step: str | None = None) -> dict[str, Any]:
    """The in-toto Statement v1 with a SLSA Provenance v1 predicate of `run` (FULL view).

    Args:
        run: The run with its step runs (GetRun's FULL view).
        step: Only this step's outcome; None for every committed step of the run.

    Raises:
        ProvenanceError: The step does not exist or no step has a committed outcome.
    """
    records = _committed_steps(run, step)
    subjects = [
        {"name": f"{record.step}/{output}", "digest": _sha256(digest)}
        for record in records
        for output, digest in sorted(record.outcome.outputs.items())
    ]
    dependencies: dict[tuple[str, str], dict[str, Any]] = {
        ("", "pipeline"): {
            "name": "pipeline",
            "uri": f"urn:weft:{run.pipeline}",
            "digest": _sha256(run.pipeline_version),
        }
    }
    for record in records:
        for name, digest in _inputs(record):
            dependencies.setdefault(
                (record.step, name), {"name": f"{record.step}/inputs/{name}", "digest": _sha256(digest)}
            )
        image = next((c.value for c in record.explanation.components if c.name == "image"), "")
        if image:
            dependencies[(record.step, "image")] = _image_dependency(record, image)
    executors = sorted({r.outcome.executor for r in records if r.outcome.executor})
    builder_id = f"urn:weft:executor:{executors[0]}" if len(executors) == 1 else "urn:weft:executors"
    first = records[0].outcome
    metadata: dict[str, Any] = {
        "invocationId": f"{run.name}/steps/{first.step}/attempts/{first.attempt}" if step else run.name
    }
    starts = [t for t in (_time(r.outcome.start_time) for r in records) if t]
    ends = [t for t in (_time(r.outcome.end_time) for r in records) if t]
    if starts:
        metadata["startedOn"] = min(starts)
    if ends:
        metadata["finishedOn"] = max(ends)
    byproducts = []
    for record in records:
        outcome = record.outcome
        # Annotation names follow the extension-field convention, `<vendor>_<name>`.
        annotations = {
            "weft_step": record.step,
            "weft_state": run_pb2.StepRun.State.Name(record.state).removeprefix("STATE_"),
            "weft_producedBy": f"{outcome.run}/steps/{outcome.step}/attempts/{outcome.attempt}",
            "weft_executor": outcome.executor,
            "weft_attempt": outcome.attempt,
            "weft_startedOn": _time(outcome.start_time),
            "weft_finishedOn": _time(outcome.end_time),
            "weft_imageId": outcome.image_id or None,
        }
        annotations = {k: v for k, v in annotations.items() if v is not None}
        producing = next((a for a in record.attempts if a.number == outcome.attempt), None)
        log = producing.stdout_digest if producing is not None else ""
        entry: dict[str, Any] = {"name": f"{record.step}/attempt", "annotations": annotations}
        if log:
            entry["digest"] = _sha256(log)
        else:
            entry["uri"] = f"urn:weft:outcome:{outcome.dna}"
        byproducts.append(entry)
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": SLSA_PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "pipeline": run.pipeline,
                    "pipelineVersion": run.pipeline_version,
                    "parameters": dict(sorted(run.parameters.items())),
                    **({"step": step} if step else {}),
                },
                "internalParameters": {"steps": {r.step: _step_definition(r) for r in records}},
                "resolvedDependencies": list(dependencies.values()),
            },
            "runDetails": {
                "builder": {"id": builder_id},
                "metadata": metadata,
                "byproducts": byproducts,
            },
        },
    }


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding of a payload: what is signed."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as error:  # an optional dependency: `pip install 'weft[sign]'`
        raise ProvenanceError("signing needs the cryptography package: pip install 'weft[sign]'") from error
    return serialization, ed25519


def _public_bytes(public_key: Any) -> bytes:
    serialization, _ = _crypto()
    raw: bytes = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw


def key_id(public_key: Any) -> str:
    """The keyid a signature names: sha256 of the raw ed25519 public key."""
    return hashlib.sha256(_public_bytes(public_key)).hexdigest()


def load_private_key(path: Path) -> Any:
    """An ed25519 private key from a PEM file (PKCS#8, e.g. `openssl genpkey -algorithm ed25519`)."""
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise ProvenanceError(f"{path}: not an unencrypted PEM private key ({error})") from error
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ProvenanceError(f"{path}: the key is not ed25519; make one with `openssl genpkey -algorithm ed25519`")
    return key


def load_public_key(path: Path) -> Any:
    """An ed25519 public key from a PEM file (a private key's PEM gives its public key)."""
    serialization, ed25519 = _crypto()
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ProvenanceError(f"{path}: cannot read the key ({error})") from error
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        return load_private_key(path).public_key()
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ProvenanceError(f"{path}: the key is not ed25519")
    return key


def sign_envelope(statement: dict[str, Any], private_key: Any) -> dict[str, Any]:
    """A DSSE envelope of `statement` signed with an ed25519 private key."""
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    signature = private_key.sign(pae(DSSE_PAYLOAD_TYPE, payload))
    return {
        "payloadType": DSSE_PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": key_id(private_key.public_key()), "sig": base64.b64encode(signature).decode()}],
    }


def verify_file(envelope_path: Path, key_path: Path) -> dict[str, Any]:
    """The statement of the DSSE envelope in a file, verified with the public key in a file."""
    try:
        envelope = json.loads(envelope_path.read_text())
    except (OSError, ValueError) as error:
        raise ProvenanceError(f"{envelope_path}: cannot read a JSON envelope ({error})") from error
    if not isinstance(envelope, dict):
        raise ProvenanceError(f"{envelope_path}: not a DSSE envelope (a JSON object)")
    return verify_envelope(envelope, load_public_key(key_path))


def sign_with_file(statement: dict[str, Any], key_path: Path) -> dict[str, Any]:
    """`statement` signed with the ed25519 private key in a PEM file."""
    return sign_envelope(statement, load_private_key(key_path))


def verify_envelope(envelope: dict[str, Any], public_key: Any) -> dict[str, Any]:
    """The statement of a DSSE envelope whose signature by `public_key` verifies.

    Raises:
        ProvenanceError: The envelope is malformed, or no signature verifies with the key.
    """
    from cryptography.exceptions import InvalidSignature

    try:
        payload_type = str(envelope["payloadType"])
        payload = base64.b64decode(str(envelope["payload"]), validate=True)
        signatures: Iterable[dict[str, Any]] = envelope["signatures"]
    except (KeyError, TypeError, ValueError) as error:
        raise ProvenanceError(f"not a DSSE envelope: {error}") from error
    if payload_type != DSSE_PAYLOAD_TYPE:
        raise ProvenanceError(f"payloadType is {payload_type!r}, not {DSSE_PAYLOAD_TYPE!r}")
    wanted = key_id(public_key)
    for signature in signatures:
        if signature.get("keyid") not in ("", None, wanted):
            continue
        try:
            public_key.verify(base64.b64decode(str(signature.get("sig", ""))), pae(payload_type, payload))
        except (InvalidSignature, ValueError):
            continue
        statement: dict[str, Any] = json.loads(payload)
        return statement
    raise ProvenanceError("no signature verifies with this key: the statement was changed or signed by another key")
