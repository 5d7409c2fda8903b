"""SLSA provenance of real runs: the in-toto Statement v1 / SLSA Provenance v1 fields,
subjects that are blobs in the artifact store, secrets by name only, DSSE signatures.

The statement is built by the SDK (`weft._provenance`) from GetRun's FULL view of a run
that a real executor ran; the blobs are checked with ArtifactService.StatBlob.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.integration.executor.support import Harness, steps_by_name
from weft import _provenance as slsa
from weft.v1 import artifact_pb2, run_pb2

SECRET = "hunter2-do-not-leak"


async def produced_run(h: Harness) -> run_pb2.Run:
    await h.start_executor(environ={**os.environ, "WEFT_SECRET_DB_PASSWORD": SECRET})
    steps = [
        h.step(
            "extract",
            'test -n "$PASSWORD" && echo "rows $(cat "$WEFT_INPUTS/limit")" > "$WEFT_OUTPUTS/out"',
            parameters={"limit": "limit"},
            secrets={"PASSWORD": ("db", "password")},
        ),
        h.step(
            "load",
            'echo loading; cat "$WEFT_INPUTS/in" > "$WEFT_OUTPUTS/table"; '
            'wc -c < "$WEFT_INPUTS/in" > "$WEFT_OUTPUTS/size"',
            reads={"in": ("extract", "out")},
            literals={"mode": "append"},
            outputs=("table", "size"),
        ),
    ]
    pipeline = await h.apply("attested", steps, {"limit": "10"})
    run = await h.wait((await h.run(pipeline.name, {"limit": "7"})).name)
    assert run.state == run_pb2.Run.STATE_SUCCEEDED, run.message
    return run


async def test_the_statement_has_the_in_toto_and_slsa_fields_and_its_subjects_are_stored_blobs(
    harness: Harness,
) -> None:
    h = harness
    run = await produced_run(h)
    steps = steps_by_name(run)

    statement = json.loads(json.dumps(slsa.slsa_statement(run)))

    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    subjects = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
    expected = {
        f"{name}/{output}": digest.removeprefix("sha256:")
        for name, record in steps.items()
        for output, digest in record.outcome.outputs.items()
    }
    assert subjects == expected
    for digest in subjects.values():
        found = await h.clients.artifacts.StatBlob(artifact_pb2.StatBlobRequest(digest="sha256:" + digest))
        assert found.digest == "sha256:" + digest
    build = statement["predicate"]["buildDefinition"]
    assert build["buildType"] == slsa.BUILD_TYPE
    assert build["externalParameters"]["pipeline"] == run.pipeline
    assert build["externalParameters"]["pipelineVersion"] == run.pipeline_version
    assert build["externalParameters"]["parameters"] == {"limit": "7"}
    internal = build["internalParameters"]["steps"]
    assert internal["load"]["dna"] == steps["load"].outcome.dna
    extract_components = {c["name"]: c["value"] for c in internal["extract"]["components"]}
    assert extract_components["env:PASSWORD"] == "secret:db/password"
    assert SECRET not in json.dumps(statement)
    dependencies = {d["name"]: d.get("digest", {}).get("sha256") for d in build["resolvedDependencies"]}
    assert dependencies == {
        "pipeline": run.pipeline_version.removeprefix("sha256:"),
        # The local runtime reports no resolved image digest: the image is named, not pinned.
        "extract/image": None,
        "load/image": None,
        "extract/inputs/limit": run.parameter_digests["limit"].removeprefix("sha256:"),
        "load/inputs/in": steps["extract"].outcome.outputs["out"].removeprefix("sha256:"),
        "load/inputs/mode": dict((c.name, c.value) for c in steps["load"].explanation.components)[
            "input:mode"
        ].removeprefix("sha256:"),
    }
    details = statement["predicate"]["runDetails"]
    assert details["builder"]["id"] == "urn:weft:executor:exec-0"
    assert details["metadata"]["invocationId"] == run.name
    assert details["metadata"]["startedOn"] <= details["metadata"]["finishedOn"]
    images = {d["name"]: d["uri"] for d in build["resolvedDependencies"] if d["name"].endswith("/image")}
    assert images == {"extract/image": "pkg:docker/busybox@1.36", "load/image": "pkg:docker/busybox@1.36"}
    load_attempt = next(b for b in details["byproducts"] if b["name"] == "load/attempt")
    assert load_attempt["annotations"]["weft_executor"] == "exec-0"
    assert load_attempt["annotations"]["weft_attempt"] == 1
    assert load_attempt["digest"]["sha256"] == steps["load"].attempts[0].stdout_digest.removeprefix("sha256:")

    one = slsa.slsa_statement(run, "load")
    assert {s["name"] for s in one["subject"]} == {"load/table", "load/size"}
    assert one["predicate"]["runDetails"]["metadata"]["invocationId"] == f"{run.name}/steps/load/attempts/1"
    with pytest.raises(slsa.ProvenanceError, match="has no step 'nope'"):
        slsa.slsa_statement(run, "nope")


def assert_slsa_shape(statement: dict[str, Any]) -> None:
    """The field rules of in-toto Statement v1 (statement.md, resource_descriptor.md,
    field_types.md) and SLSA Provenance v1 (provenance.md) that a statement must keep."""
    assert set(statement) == {"_type", "subject", "predicateType", "predicate"}
    assert statement["subject"], "a statement attests at least one subject"
    names = [s.get("name") for s in statement["subject"]]
    assert len(names) == len(set(names)), "subject names SHOULD be unique"
    predicate = statement["predicate"]
    assert set(predicate) == {"buildDefinition", "runDetails"}
    build, details = predicate["buildDefinition"], predicate["runDetails"]
    assert re.fullmatch(r"[a-z][a-z0-9+.-]*:.+", build["buildType"]), "buildType is a TypeURI"
    assert isinstance(build["externalParameters"], dict)
    assert not set(build["externalParameters"]) & set(build.get("internalParameters", {}))
    assert re.fullmatch(r"[a-z][a-z0-9+.-]*:.+", details["builder"]["id"]), "builder.id is a TypeURI"
    descriptors = [*statement["subject"], *build.get("resolvedDependencies", []), *details.get("byproducts", [])]
    for descriptor in descriptors:
        assert set(descriptor) <= {"name", "uri", "digest", "content", "downloadLocation", "mediaType", "annotations"}
        assert {"uri", "digest", "content"} & set(descriptor), f"{descriptor} names no uri, digest or content"
        for algorithm, value in descriptor.get("digest", {}).items():
            assert algorithm == "sha256"
            assert re.fullmatch(r"[0-9a-f]{64}", value), f"{descriptor}: a DigestSet value is lower-case hex"
        for key in descriptor.get("annotations", {}):
            assert key.startswith("weft_"), f"annotation {key} is not named like an extension field"
    for descriptor in statement["subject"]:
        assert descriptor.get("digest"), "every subject MUST have a digest"
    metadata = details.get("metadata", {})
    for field in ("startedOn", "finishedOn"):
        if field in metadata:
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", metadata[field]), metadata[field]

    def no_nulls(value: object, where: str) -> None:
        assert value is not None, f"{where} is null: leave unset values out"
        if isinstance(value, dict):
            for key, item in value.items():
                no_nulls(item, f"{where}.{key}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                no_nulls(item, f"{where}[{i}]")

    no_nulls(statement, "statement")


async def test_the_statement_keeps_the_in_toto_and_slsa_field_rules(harness: Harness) -> None:
    run = await produced_run(harness)
    assert_slsa_shape(json.loads(json.dumps(slsa.slsa_statement(run))))
    assert_slsa_shape(json.loads(json.dumps(slsa.slsa_statement(run, "load"))))


def test_an_image_reference_becomes_a_package_url_and_an_image_id_its_digest() -> None:
    pin = "sha256:" + "ab" * 32
    assert slsa.image_purl("busybox:1.36") == "pkg:docker/busybox@1.36"
    assert slsa.image_purl("python") == "pkg:docker/python@latest"
    assert (
        slsa.image_purl(f"registry:5000/team/app:v2@{pin}") == f"pkg:docker/team/app@{pin}?repository_url=registry:5000"
    )
    assert slsa.image_digest(f"docker-pullable://busybox@{pin}") == pin
    assert slsa.image_digest(f"docker.io/library/busybox@{pin}") == pin
    assert slsa.image_digest("sha256:" + "cd" * 32) == ""  # an image config id, not a repo digest


def tamper(envelope: dict[str, Any]) -> dict[str, Any]:
    changed = copy.deepcopy(envelope)
    statement = json.loads(base64.b64decode(changed["payload"]))
    statement["subject"][0]["digest"]["sha256"] = "0" * 64
    changed["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    return changed


async def test_a_signed_statement_verifies_and_a_tampered_or_foreign_one_does_not(harness: Harness) -> None:
    run = await produced_run(harness)
    statement = slsa.slsa_statement(run)
    key = ed25519.Ed25519PrivateKey.generate()

    envelope = slsa.sign_envelope(statement, key)

    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    assert slsa.verify_envelope(envelope, key.public_key()) == json.loads(json.dumps(statement))
    with pytest.raises(slsa.ProvenanceError, match="no signature verifies"):
        slsa.verify_envelope(tamper(envelope), key.public_key())
    with pytest.raises(slsa.ProvenanceError, match="no signature verifies"):
        slsa.verify_envelope(envelope, ed25519.Ed25519PrivateKey.generate().public_key())
