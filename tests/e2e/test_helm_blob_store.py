"""The chart with `blobStore.url`: object storage instead of a shared volume.

No PVC is created, weft-api and weft-executor get `--blob-store URL` and the credentials
Secret as environment, the executor hands that Secret to the step pods' helper containers
(`--pod-blob-store-secret`), the manifests validate strictly, and values.schema.json
refuses URLs that are not object storage or that carry credentials.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.e2e.test_helm_chart import CHART, _containers, _find, _helm, _kubernetes_validate, _objects, _template
from tests.e2e.test_helm_chart import _helm_fetched as _helm_fetched

S3 = ("--set", "blobStore.url=s3://weft-artifacts/prod")


def test_with_an_object_store_no_pvc_is_made_and_nothing_mounts_a_blob_volume() -> None:
    objects = _objects(*S3, "--set", "blobStore.credentials.existingSecret=weft-s3")

    assert [o for o in objects if o["kind"] == "PersistentVolumeClaim"] == []
    containers = _containers(objects)
    for name in ("rel-weft-api", "rel-weft-executor"):
        pod = _find(objects, "Deployment", name)["spec"]["template"]["spec"]
        assert "blobs" not in {v["name"] for v in pod["volumes"]}, name
        container = pod["containers"][0]
        assert "--blob-store=s3://weft-artifacts/prod" in container["command"], name
        assert not any(arg.startswith("--blob-dir") for arg in container["command"]), name
        assert container["envFrom"] == [{"secretRef": {"name": "weft-s3"}}], name
    assert "--pod-blob-store-secret=weft-s3" in containers["rel-weft-executor/executor"]["command"]


def test_the_chart_can_make_the_credentials_secret_in_both_namespaces() -> None:
    objects = _objects(
        *S3,
        "--set", "blobStore.credentials.env.AWS_ACCESS_KEY_ID=AKIA-test",
        "--set", "blobStore.credentials.env.AWS_REGION=eu-west-1",
        "--set", "executor.stepsNamespace=weft-steps",
    )  # fmt: skip

    secrets = [o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == "rel-weft-blob-store"]
    assert sorted(s["metadata"]["namespace"] for s in secrets) == ["weft", "weft-steps"]
    assert secrets[0]["stringData"] == {"AWS_ACCESS_KEY_ID": "AKIA-test", "AWS_REGION": "eu-west-1"}
    executor = _containers(objects)["rel-weft-executor/executor"]
    assert "--pod-blob-store-secret=rel-weft-blob-store" in executor["command"]


def test_workload_identity_needs_no_secret() -> None:
    objects = _objects(*S3)
    # Only weft's own auth and TLS Secrets: none holds object-store credentials.
    secrets = {o["metadata"]["name"] for o in objects if o["kind"] == "Secret"}
    assert "rel-weft-blob-store" not in secrets, secrets
    assert not any("AWS_" in str(o.get("stringData") or o.get("data")) for o in objects if o["kind"] == "Secret")
    executor = _containers(objects)["rel-weft-executor/executor"]
    assert "envFrom" not in executor
    assert not any(arg.startswith("--pod-blob-store-secret") for arg in executor["command"])


@pytest.mark.parametrize("kube_version", ["1.20.2", "1.35.0"])
def test_object_store_manifests_validate_strictly(kube_version: str) -> None:
    rendered = _template(*S3, "--set", "blobStore.credentials.env.AWS_ACCESS_KEY_ID=x", kube_version=kube_version)
    schema = {"1.20.2": "1.25", "1.35.0": "1.35"}[kube_version]
    done = subprocess.run(
        [_kubernetes_validate(), "--strict", "-k", schema, "-"], input=rendered, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    "url",
    ["ftp://bucket/x", "s3://AKIA:secret@bucket/p", "/var/lib/weft/blobs", "s3://"],
    ids=["scheme", "credentials", "a-path", "no-bucket"],
)
def test_the_schema_refuses_urls_that_are_not_object_storage(url: str) -> None:
    result = _helm("template", "rel", str(CHART), "--set", f"blobStore.url={url}", check=False)
    assert result.returncode != 0
    assert "blobStore" in result.stderr
    assert "url" in result.stderr


def test_credentials_take_only_environment_variable_names() -> None:
    result = _helm("template", "rel", str(CHART), *S3, "--set", "blobStore.credentials.env.bad-name=x", check=False)
    assert result.returncode != 0
    assert "'bad-name' does not match pattern" in result.stderr
