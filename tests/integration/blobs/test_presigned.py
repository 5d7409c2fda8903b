"""Presigned access to the S3 backend, as step pods' helpers use it (a real moto server).

The executor signs a GET URL per input blob and a PUT URL per output's staging key; the
helpers (`python -m weft_executor.podio --signed`) run here with no AWS variable at all,
and what they stage is published only after the executor verified it.

moto serves presigned requests but checks neither their signatures nor their expiry, so
the binding of a URL to its method, key and lifetime is checked with botocore, AWS's own
signer (`signatures_valid`): the signature S3 would expect for another key, another method
or a longer lifetime is not the URL's. That S3 refuses an expired URL is S3's part and is
not shown here (docs/architecture.md, "The artifact store").
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from tests.integration.blobs.s3server import signatures_valid
from tests.integration.blobs.test_blob_stores import LARGE, content
from weft_core.blobs import digest_of
from weft_core.errors import InvalidArgument
from weft_core.objectstore import MAX_SIGNED_SECONDS, ObjectBlobStore, staging_key
from weft_executor import podio
from weft_executor.config import ExecutorConfig, KubeSettings
from weft_executor.runtime import AttemptSpec
from weft_executor.runtime.kube_pods import DEADLINE_BACKSTOP_SECONDS
from weft_executor.runtime.kubernetes import KubeAttempt, KubernetesRuntime

ATTEMPT = "0123456789abcdef0123456789abcdef"


def _read(request: str | urllib.request.Request) -> bytes:
    with urllib.request.urlopen(request, timeout=30) as response:
        data: bytes = response.read()
        return data


def _with_query(url: str, name: str, value: str) -> str:
    before, _, rest = url.partition(f"{name}=")
    return before + f"{name}={value}" + rest[rest.index("&") :]


async def test_a_presigned_get_reads_its_blob_and_is_bound_to_it(s3_url: str) -> None:
    store = ObjectBlobStore.from_url(s3_url)
    wanted = await store.put(b"the input the step may read\n")
    other = await store.put(b"another namespace's blob\n")

    urls = await store.sign_reads([wanted.digest], timedelta(seconds=300))

    assert list(urls) == [wanted.digest]
    url = urls[wanted.digest]
    assert await asyncio.to_thread(_read, url) == b"the input the step may read\n"
    assert "X-Amz-Expires=300&" in url
    other_key = ObjectBlobStore.key_of(other.digest)
    assert signatures_valid(
        [
            ("GET", url),
            ("GET", url.replace(ObjectBlobStore.key_of(wanted.digest), other_key)),  # another blob
            ("PUT", url),  # overwrite it
            ("GET", _with_query(url, "X-Amz-Expires", "604800")),  # live longer
        ]
    ) == [True, False, False, False]


async def test_lifetimes_are_capped_at_the_signers_maximum(s3_url: str) -> None:
    store = ObjectBlobStore.from_url(s3_url)
    info = await store.put(b"x")

    urls = await store.sign_reads([info.digest], timedelta(days=30))

    assert f"X-Amz-Expires={MAX_SIGNED_SECONDS}&" in urls[info.digest]
    assert signatures_valid([("GET", urls[info.digest])]) == [True]


async def test_presigned_writes_only_go_to_staging_keys(s3_url: str) -> None:
    store = ObjectBlobStore.from_url(s3_url)
    digest = digest_of(b"x")
    with pytest.raises(InvalidArgument, match="not a staging key"):
        await store.sign_staged_writes([ObjectBlobStore.key_of(digest)], timedelta(seconds=60))
    [url] = await store.sign_staged_writes([staging_key(ATTEMPT, "0")], timedelta(seconds=60))
    assert f"/uploads/attempts/{ATTEMPT}/0?" in url
    assert signatures_valid([("PUT", url), ("GET", url)]) == [True, False]


def _helper(command: list[str], env: dict[str, str], termination: Path) -> podio.TerminationMessage:
    # No AWS variable reaches the helper: the URLs are all it has.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    clean.update(env)
    done = subprocess.run(
        [sys.executable, "-m", "weft_executor.podio", *command, "--termination-log", str(termination)],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    message = podio.TerminationMessage.decode(termination.read_text())
    assert message is not None
    return message


async def test_helpers_with_presigned_urls_and_no_credentials_hand_over_verified_data(
    s3_url: str, tmp_path: Path
) -> None:
    store = ObjectBlobStore.from_url(s3_url)
    given = await store.put(b"region,amount\neu,3\n")
    big_output = content(LARGE, seed=3)
    keys = [staging_key(ATTEMPT, "0"), staging_key(ATTEMPT, "1"), staging_key(ATTEMPT, "manifest")]
    reads = await store.sign_reads([given.digest], timedelta(seconds=120))
    writes = await store.sign_staged_writes(keys, timedelta(seconds=120))
    root = tmp_path / "pod"

    fetched = _helper(
        ["fetch", "--signed", "--dir", str(root), f"orders={given.digest}"],
        {podio.SIGNED_ACCESS_ENV: podio.SignedAccess(reads=reads).encode()},
        tmp_path / "fetch.msg",
    )
    assert (root / "inputs" / "orders").read_bytes() == b"region,amount\neu,3\n"
    assert fetched.moved == given.size
    (root / "outputs" / "summary").write_bytes(b"eu: 3\n")
    (root / "outputs" / "big").write_bytes(big_output)
    (root / "status" / "exit-code").write_text("0")
    access = podio.SignedAccess(writes={"summary": writes[0], "big": writes[1]}, manifest=writes[2])
    uploaded = _helper(
        ["upload", "--signed", "--dir", str(root), "--max-bytes", str(2 * LARGE), "summary", "big"],
        {podio.SIGNED_ACCESS_ENV: access.encode()},
        tmp_path / "upload.msg",
    )

    # Nothing is published by the helper: it could only write its staging keys.
    manifest_data = await store.read_staged(keys[2], 1 << 20)
    assert digest_of(manifest_data) == uploaded.manifest
    manifest = podio.Manifest.decode(manifest_data)
    assert manifest.succeeded
    assert manifest.outputs == {"summary": digest_of(b"eu: 3\n"), "big": digest_of(big_output)}
    assert uploaded.moved == 6 + LARGE + len(manifest_data)
    assert not await store.exists(manifest.outputs["summary"])
    # The executor publishes them after checking each against the manifest.
    for name, key in (("summary", keys[0]), ("big", keys[1])):
        info = await store.publish_staged(key, manifest.outputs[name], manifest.sizes[name])
        assert info.digest == manifest.outputs[name]
    assert await store.get(manifest.outputs["summary"]) == b"eu: 3\n"
    assert await store.get(manifest.outputs["big"]) == big_output
    # Published staging keys are gone; publishing again (a re-attached executor) is accepted.
    again = await store.publish_staged(keys[1], manifest.outputs["big"], LARGE)
    assert again.size == LARGE


@pytest.mark.parametrize("size", [100, LARGE])
async def test_a_staged_output_other_than_the_manifest_says_is_never_published(s3_url: str, size: int) -> None:
    store = ObjectBlobStore.from_url(s3_url)
    key = staging_key(ATTEMPT, "0")
    [url] = await store.sign_staged_writes([key], timedelta(seconds=60))
    claimed = content(size, seed=1)
    sent = content(size, seed=2)  # e.g. replaced by someone else holding the URL
    request = urllib.request.Request(url, data=sent, method="PUT", headers={"Content-Type": "application/octet-stream"})
    await asyncio.to_thread(_read, request)

    with pytest.raises(InvalidArgument, match=f"staged output {key}"):
        await store.publish_staged(key, digest_of(claimed), size)

    assert not await store.exists(digest_of(claimed))
    assert not await store.exists(digest_of(sent))


def test_signed_access_round_trips_and_refuses_garbage() -> None:
    access = podio.SignedAccess(reads={"sha256:" + "a" * 64: "http://x/a"}, writes={"out": "http://x/b"}, manifest="m")
    assert podio.SignedAccess.decode(access.encode()) == access
    with pytest.raises(podio.HandoverError, match="presigned URLs"):
        podio.SignedAccess.decode(json.dumps({"reads": []}))


def _runtime(url: str, tmp_path: Path, **kube: Any) -> KubernetesRuntime:
    """The Kubernetes runtime's presigning and publication, with no cluster (never launched)."""
    config = ExecutorConfig(
        etcd_endpoints="127.0.0.1:1",
        api="127.0.0.1:1",
        work_dir=tmp_path / "work",
        runtime="kubernetes",
        blob_store=url,
        kube=KubeSettings(pod_image="weft:test", unschedulable_timeout=30.0, image_pull_grace=20.0, **kube),
    )
    store = ObjectBlobStore.from_url(url)
    return KubernetesRuntime(cast(Any, None), store, config, cast(Any, None))


def _spec(inputs: dict[str, str], timeout: float | None = 100.0) -> AttemptSpec:
    return AttemptSpec(
        namespace="team", run="r1", step="report", attempt=1, image="busybox", command=("sh",), working_dir="",
        env={}, secret_env={}, inputs=inputs, outputs=("report", "summary"), timeout=timeout, dna="sha256:" + "0" * 64,
    )  # fmt: skip


async def test_the_runtime_signs_an_attempts_urls_for_its_lifetime_and_publishes_what_it_staged(
    s3_url: str, tmp_path: Path
) -> None:
    runtime = _runtime(s3_url, tmp_path)
    store = runtime.blobs
    assert isinstance(store, ObjectBlobStore)
    given = await store.put(b"orders")
    spec = _spec({"orders": given.digest})
    # timeout + the Kubernetes backstop + the scheduling and pull graces + the upload margin
    assert runtime.signed_lifetime(spec) == timedelta(seconds=100 + DEADLINE_BACKSTOP_SECONDS + 30 + 20 + 600)
    assert runtime.signed_lifetime(_spec({}, timeout=None)) == timedelta(seconds=MAX_SIGNED_SECONDS)

    access = await runtime.signed_access(spec)

    assert access is not None
    assert list(access.reads) == [given.digest]
    assert set(access.writes) == {"report", "summary"}
    assert "X-Amz-Expires=810&" in access.reads[given.digest]  # 100 + 60 + 30 + 20 + 600
    outputs = {"report": b"eu: 3\n", "summary": b"1 region\n"}
    for name, data in outputs.items():
        await asyncio.to_thread(_read, _put(access.writes[name], data))
    manifest = podio.Manifest(
        succeeded=True,
        outputs={name: digest_of(data) for name, data in outputs.items()},
        sizes={name: len(data) for name, data in outputs.items()},
    ).encode()
    await asyncio.to_thread(_read, _put(access.manifest, manifest))
    attempt = KubeAttempt(spec=spec, handle="pod", start_time=datetime.now(UTC))

    with pytest.raises(ValueError, match="staged manifest"):
        await runtime._publish_staged(attempt, digest_of(b"another manifest"))
    published = await runtime._publish_staged(attempt, digest_of(manifest))

    assert published.outputs == {name: digest_of(data) for name, data in outputs.items()}
    for data in outputs.values():
        assert await store.get(digest_of(data)) == data
    # Helpers with credentials (--pod-blob-store-secret, or a pod from before an upgrade)
    # stored their manifest as a blob: it is accepted when its outputs are stored too.
    old = await store.put(podio.Manifest(succeeded=True, outputs={"report": digest_of(b"eu: 3\n")}).encode())
    other = KubeAttempt(spec=dataclasses.replace(spec, attempt=2), handle="pod2", start_time=datetime.now(UTC))
    assert (await runtime._publish_staged(other, old.digest)).outputs == {"report": digest_of(b"eu: 3\n")}
    lying = await store.put(podio.Manifest(succeeded=True, outputs={"report": digest_of(b"never")}).encode())
    with pytest.raises(ValueError, match="neither staged nor stored"):
        await runtime._publish_staged(other, lying.digest)


async def test_with_a_credentials_secret_the_runtime_signs_nothing(s3_url: str, tmp_path: Path) -> None:
    runtime = _runtime(s3_url, tmp_path, pod_blob_store_secret="weft-s3")
    assert await runtime.signed_access(_spec({})) is None


def _put(url: str, data: bytes) -> urllib.request.Request:
    return urllib.request.Request(url, data=data, method="PUT", headers={"Content-Type": "application/octet-stream"})


def _exec_with(env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-c", ""], env=env, check=False)


async def test_access_too_long_for_one_variable_reaches_the_helper_in_parts(s3_url: str, tmp_path: Path) -> None:
    store = ObjectBlobStore.from_url(s3_url)
    given = await store.put(b"one of many inputs\n")
    many = [digest_of(str(i).encode()) for i in range(300)]  # a wide fan-in step
    reads = await store.sign_reads([given.digest, *many], timedelta(seconds=120))
    access = podio.SignedAccess(reads=reads)
    assert len(access.encode()) > 128 * 1024  # over Linux's limit for one environment string
    with pytest.raises(OSError, match="Argument list too long"):
        _exec_with({podio.SIGNED_ACCESS_ENV: access.encode()})
    env = access.environment()
    assert len(env) > 2
    assert all(len(value) <= podio.SIGNED_ACCESS_PART_CHARS for value in env.values())

    fetched = _helper(
        ["fetch", "--signed", "--dir", str(tmp_path / "pod"), f"orders={given.digest}"], env, tmp_path / "fetch.msg"
    )

    assert (tmp_path / "pod" / "inputs" / "orders").read_bytes() == b"one of many inputs\n"
    assert fetched.moved == given.size
    assert podio.SignedAccess.from_environment(env) == access
