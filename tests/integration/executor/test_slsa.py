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
    dependencies = {d["name"]: d["digest"]["sha256"] for d in build["resolvedDependencies"]}
    assert dependencies == {
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
    load_attempt = next(b for b in details["byproducts"] if b["name"] == "load/attempt")
    assert load_attempt["annotations"]["executor"] == "exec-0"
    assert load_attempt["annotations"]["attempt"] == 1
    assert load_attempt["digest"]["sha256"] == steps["load"].attempts[0].stdout_digest.removeprefix("sha256:")

    one = slsa.slsa_statement(run, "load")
    assert {s["name"] for s in one["subject"]} == {"load/table", "load/size"}
    assert one["predicate"]["runDetails"]["metadata"]["invocationId"] == f"{run.name}/steps/load/attempts/1"
    with pytest.raises(slsa.ProvenanceError, match="has no step 'nope'"):
        slsa.slsa_statement(run, "nope")


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
