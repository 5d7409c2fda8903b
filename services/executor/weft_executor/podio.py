"""The data handover inside a step pod: fetch inputs before the step, upload outputs after it.

The Kubernetes runtime (`weft_executor.runtime.kubernetes`) runs every attempt as one pod
whose user container may be ANY image with `/bin/sh`; this program is what weft's own image
runs beside it, so the user's image needs no weft code at all. The pod shares one emptyDir
volume, mounted at `SHARED_DIR` in every container:

    /weft/inputs/<name>      `$WEFT_INPUTS`: written by `fetch` (the init container)
    /weft/outputs/<name>     `$WEFT_OUTPUTS`: written by the user's step
    /weft/status/exit-code   the step's exit code, written by the shell wrapper when it ends

With ``--signed`` instead of ``--api``, both talk to the object store directly with no
credentials at all: `$WEFT_SIGNED_ACCESS` (`SignedAccess`, JSON) holds the presigned URLs the
executor made for this attempt, a GET per input digest and a PUT per output's staging key
and the manifest's, expiring with the attempt; the executor verifies and publishes what was
staged. With ``--blob-store URL`` (`s3://…`, `gs://…`, `az://…`) they use the store's own
credentials from their environment (a Secret the executor names, or workload identity).
Either way step data never passes through weft-api, and the step's own container gets no
store access.

- ``python -m weft_executor.podio fetch --api HOST:PORT --dir /weft NAME=DIGEST ...`` runs as
  the init container: it downloads each input from weft-api's ArtifactService, verifies its
  sha256 against the digest it was asked for, and creates the three directories
  world-writable (the user's container may run as any uid).
- ``python -m weft_executor.podio upload --api HOST:PORT --dir /weft --max-bytes N NAME ...``
  runs as a second container (Kubernetes 1.20 has no native sidecars): it waits for the
  exit-code marker, then checks every declared output (present, a regular file, within the
  size limit), uploads them by digest and uploads ONE manifest blob (output name → digest,
  sizes, and its verdict). It writes the manifest's digest to its termination message, so
  the executor learns the outputs from the pod status alone; the manifest exists because a
  termination message holds at most 4 KiB.

Both write one JSON line to the termination message (`TerminationMessage`): the manifest
digest, a note that nothing was uploaded because the step failed, or the error that stopped
them (also printed to stderr, i.e. the container's log). Exit codes: 0 when the handover
worked (or there was nothing to hand over), 1 when it failed.

Both join the run's trace when the pod names a parent (`TRACEPARENT`, the attempt's span)
and an OTLP endpoint (the standard `OTEL_EXPORTER_OTLP_*` variables): `fetch` records a
`weft.input_fetch` span and `upload` a `weft.output_upload` span, children of the
attempt's span, with the pod's and node's names (`WEFT_POD_NAME`, `WEFT_NODE_NAME`, from
the downward API). Spans are flushed after the termination message is written, within a
short export timeout: a tracer that is away costs the pod a second or two, never its
handover.

This program must stay small and self-contained: no etcd, no Kubernetes API, no secrets
(it never sees the step's environment), and it never prints file contents.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from opentelemetry.trace import INVALID_SPAN, Status, StatusCode

from weft_core.digests import file_digest
from weft_core.units import human_bytes

if TYPE_CHECKING:
    from weft_core.blobs import BlobInfo, BlobStore


class BlobReader(Protocol):
    """What `fetch` reads from: a `BlobStore`, or `SignedBlobs`."""

    def read(self, digest: str, *, offset: int = 0, chunk_size: int = ...) -> AsyncIterator[bytes]: ...

    async def close(self) -> None: ...


#: Where the shared volume is mounted in every container of a step pod.
SHARED_DIR = "/weft"
#: Sub-directories of the shared volume.
INPUTS = "inputs"
OUTPUTS = "outputs"
STATUS = "status"
#: The marker the step's shell wrapper writes (its content: the exit code) when the step ends.
EXIT_CODE_FILE = "exit-code"
#: Kubernetes' default terminationMessagePath; the kubelet reads at most 4096 bytes of it.
TERMINATION_LOG = "/dev/termination-log"
TERMINATION_LIMIT = 4096
#: Marks weft's own JSON in a termination message.
MESSAGE_VERSION = 1
MANIFEST_VERSION = 1
#: How often `upload` looks for the exit-code marker.
MARKER_POLL_SECONDS = 0.1
#: Seconds each artifact-store call is retried while weft-api is unreachable (a restart, a
#: rolling upgrade) before the handover fails: a pod that cannot deliver must end with a
#: clear failure, but an api restart must not cost the step (the `--patience` flag).
DEFAULT_PATIENCE = 120.0

#: Seconds a helper's span export may take (the SDK's default is 10 s per try).
EXPORT_TIMEOUT = "2"
#: Span names of the two helpers, as the local runtime names the same phases.
SPAN_NAMES = {"fetch": "weft.input_fetch", "upload": "weft.output_upload"}

T = TypeVar("T")


class HandoverError(Exception):
    """The handover cannot complete; the message is shown as the attempt's failure."""


@dataclass(frozen=True)
class TerminationMessage:
    """What `fetch`/`upload` report through their termination message (one JSON line).

    Attributes:
        manifest: Digest of the manifest blob (`upload`, whatever its verdict).
        skipped: Why nothing was uploaded (the step exited non-zero).
        error: What stopped the program (no manifest could be stored, an input is missing).
    """

    manifest: str = ""
    skipped: str = ""
    error: str = ""
    #: Bytes this helper moved straight to or from object storage (`--signed`, `--blob-store`).
    moved: int = 0

    def encode(self) -> str:
        body: dict[str, str | int] = {"weft": MESSAGE_VERSION}
        for key in ("manifest", "skipped", "error", "moved"):
            value = getattr(self, key)
            if value:
                body[key] = value
        text = json.dumps(body, sort_keys=True)
        if len(text.encode()) > TERMINATION_LIMIT and self.error:
            # Keep the JSON valid under the kubelet's 4 KiB cut: shorten the error itself.
            room = TERMINATION_LIMIT - (len(text.encode()) - len(self.error.encode())) - 64
            shortened = self.error[: max(0, room)] + "…"
            return TerminationMessage(self.manifest, self.skipped, shortened, self.moved).encode()
        return text

    @classmethod
    def decode(cls, text: str | None) -> TerminationMessage | None:
        """The message in a container's termination message, or None if it is not weft's."""
        if not text:
            return None
        try:
            body = json.loads(text)
        except ValueError:
            return None
        if not isinstance(body, dict) or body.get("weft") != MESSAGE_VERSION:
            return None
        moved = body.get("moved", 0)
        return cls(
            str(body.get("manifest", "")),
            str(body.get("skipped", "")),
            str(body.get("error", "")),
            moved if isinstance(moved, int) and moved > 0 else 0,
        )


@dataclass(frozen=True)
class Manifest:
    """What `upload` stored: the outputs by name, and whether the handover succeeded.

    Attributes:
        succeeded: Every declared output was present, within the limit and stored.
        message: Why it failed ("" on success), for people.
        outputs: Output digests by name (complete only on success).
        sizes: Output sizes in bytes by name.
    """

    succeeded: bool
    message: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)

    def encode(self) -> bytes:
        body = {
            "weft_manifest": MANIFEST_VERSION,
            "verdict": "succeeded" if self.succeeded else "failed",
            "message": self.message,
            "outputs": self.outputs,
            "sizes": self.sizes,
        }
        return json.dumps(body, sort_keys=True, indent=1).encode()

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        """Parses a manifest blob; raises ValueError if it is not one."""
        body = json.loads(data)
        if not isinstance(body, dict) or body.get("weft_manifest") != MANIFEST_VERSION:
            raise ValueError("not a weft output manifest")
        outputs = body.get("outputs") or {}
        sizes = body.get("sizes") or {}
        return cls(
            succeeded=body.get("verdict") == "succeeded",
            message=str(body.get("message", "")),
            outputs={str(k): str(v) for k, v in outputs.items()},
            sizes={str(k): int(v) for k, v in sizes.items()},
        )


#: The helpers' environment variable holding their `SignedAccess` (JSON).
SIGNED_ACCESS_ENV = "WEFT_SIGNED_ACCESS"
#: Longest value of one such variable: Linux refuses to exec with any single environment
#: string over 128 KiB (MAX_ARG_STRLEN), so longer access is split over numbered variables
#: (`WEFT_SIGNED_ACCESS_1`…, their count in `WEFT_SIGNED_ACCESS_PARTS`).
SIGNED_ACCESS_PART_CHARS = 100_000
#: Seconds one request to a presigned URL may stall before it is retried.
SIGNED_REQUEST_TIMEOUT = 60.0


@dataclass(frozen=True)
class SignedAccess:
    """What an attempt's helpers may do in the object store, as presigned URLs.

    Attributes:
        reads: A GET URL per input digest (that object only).
        writes: A PUT URL per output name, to the output's staging key.
        manifest: A PUT URL to the manifest's staging key.
    """

    reads: dict[str, str] = field(default_factory=dict)
    writes: dict[str, str] = field(default_factory=dict)
    manifest: str = ""

    def encode(self) -> str:
        return json.dumps({"reads": self.reads, "writes": self.writes, "manifest": self.manifest}, sort_keys=True)

    def environment(self) -> dict[str, str]:
        """The variables that hand this access to a helper (see `SIGNED_ACCESS_PART_CHARS`)."""
        text = self.encode()
        if len(text) <= SIGNED_ACCESS_PART_CHARS:
            return {SIGNED_ACCESS_ENV: text}
        parts = [text[i : i + SIGNED_ACCESS_PART_CHARS] for i in range(0, len(text), SIGNED_ACCESS_PART_CHARS)]
        env = {f"{SIGNED_ACCESS_ENV}_{n}": part for n, part in enumerate(parts, start=1)}
        env[f"{SIGNED_ACCESS_ENV}_PARTS"] = str(len(parts))
        return env

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> SignedAccess:
        """The access `environment` handed over; raises HandoverError if there is none."""
        count = environ.get(f"{SIGNED_ACCESS_ENV}_PARTS", "")
        if count.isdigit():
            text = "".join(environ.get(f"{SIGNED_ACCESS_ENV}_{n}", "") for n in range(1, int(count) + 1))
        else:
            text = environ.get(SIGNED_ACCESS_ENV, "")
        if not text:
            raise HandoverError(f"--signed needs ${SIGNED_ACCESS_ENV}, which the executor sets; it is not set")
        return cls.decode(text)

    @classmethod
    def decode(cls, text: str) -> SignedAccess:
        """Parses `$WEFT_SIGNED_ACCESS`; raises HandoverError if it is not one."""
        try:
            body = json.loads(text)
            return cls(
                reads={str(k): str(v) for k, v in body["reads"].items()},
                writes={str(k): str(v) for k, v in body["writes"].items()},
                manifest=str(body["manifest"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            raise HandoverError(f"${SIGNED_ACCESS_ENV} does not hold the executor's presigned URLs") from None


class SignedBlobs:
    """The object store as an attempt's presigned URLs let the helpers use it (no credentials).

    Requests that fail for want of the network or with a 5xx are retried for the
    `--patience`; a 403 (expired, or a URL for another object) or a 404 is final.
    """

    def __init__(self, access: SignedAccess) -> None:
        self.access = access
        self.moved = 0

    async def _request(
        self, what: str, url: str, method: str, open_body: Callable[[], Any] | None = None, size: int = 0
    ) -> Any:
        import urllib.error
        import urllib.request

        from weft_core.errors import NotFound

        deadline = time.monotonic() + _patience
        delay = 0.2
        while True:
            body = open_body() if open_body is not None else None
            # An explicit type: urllib would send a form's, which some servers then parse.
            headers = (
                {"Content-Length": str(size), "Content-Type": "application/octet-stream"} if method == "PUT" else {}
            )
            request = urllib.request.Request(url, data=body, method=method, headers=headers)
            try:
                return await asyncio.to_thread(urllib.request.urlopen, request, timeout=SIGNED_REQUEST_TIMEOUT)
            except urllib.error.HTTPError as error:
                error.close()
                if error.code == 404:
                    raise NotFound(f"{what}: the object store has no such object") from None
                if error.code < 500 or time.monotonic() > deadline:
                    raise HandoverError(
                        f"{what}: the object store refused the presigned request (HTTP {error.code} {error.reason}); "
                        "it may have expired (the attempt outlived its deadline)"
                    ) from None
            except OSError as error:
                if time.monotonic() > deadline:
                    raise HandoverError(
                        f"{what}: the object store did not answer ({error}); retried for {_patience:g}s"
                    ) from None
            finally:
                if body is not None and hasattr(body, "close"):
                    body.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def read(self, digest: str, *, offset: int = 0, chunk_size: int = 1024 * 1024) -> AsyncIterator[bytes]:
        """The content of an input blob, through its GET URL."""
        url = self.access.reads.get(digest)
        if url is None:
            raise HandoverError(f"the executor gave no URL to read {digest}")
        response = await self._request(f"reading {digest}", url, "GET")
        try:
            while chunk := await asyncio.to_thread(response.read, chunk_size):
                self.moved += len(chunk)
                yield chunk
        finally:
            response.close()

    async def _put(self, what: str, url: str, open_body: Callable[[], Any], digest: str, size: int) -> BlobInfo:
        from weft_core.blobs import BlobInfo

        response = await self._request(what, url, "PUT", open_body, size)
        response.close()
        self.moved += size
        return BlobInfo(digest, size, datetime.now(UTC))

    async def put_output(self, name: str, path: Path) -> BlobInfo:
        """Stages one output file through its PUT URL; its digest is computed here and
        named in the manifest, and the executor checks it before publishing."""
        url = self.access.writes.get(name)
        if url is None:
            raise HandoverError(f"the executor gave no URL to store output '{name}'")
        digest, size = await asyncio.to_thread(file_digest, path)
        return await self._put(f"storing output '{name}'", url, lambda: open(path, "rb"), digest, size)

    async def put_manifest(self, data: bytes) -> BlobInfo:
        """Stages the manifest through its PUT URL."""
        import io

        from weft_core.blobs import digest_of

        return await self._put(
            "storing the output manifest", self.access.manifest, lambda: io.BytesIO(data), digest_of(data), len(data)
        )

    async def close(self) -> None:
        """Nothing to release (one connection per request)."""


def write_termination_message(path: Path, message: TerminationMessage) -> None:
    """Writes the termination message; a missing path (outside Kubernetes) is not an error."""
    try:
        path.write_text(message.encode())
    except OSError as error:
        print(f"weft: could not write the termination message to {path}: {error.strerror}", file=sys.stderr)


#: The `--patience` of this process.
_patience = DEFAULT_PATIENCE


async def _handed_over(what: str, call: Callable[[], Awaitable[T]]) -> T:
    """Runs one artifact-store call (retried by the store itself while the api is away);
    an api that stays away longer than the patience becomes a HandoverError."""
    from weft_core.errors import Unavailable

    try:
        return await call()
    except Unavailable as error:
        raise HandoverError(f"{what}: {error.message}") from None


# tracing ----------------------------------------------------------------------------------


@contextlib.contextmanager
def handover_span(command: str, environ: MutableMapping[str, str] = os.environ) -> Iterator[Any]:
    """The helper's span, a child of the attempt's (`TRACEPARENT`), when an OTLP endpoint is
    set; else a span that records nothing. Exporting is set up lazily: its imports cost a
    helper without a tracer nothing. An exception raised inside marks the span failed."""
    from weft_core.telemetry import (
        ATTR_K8S_NAMESPACE_NAME,
        ATTR_K8S_NODE_NAME,
        ATTR_K8S_POD_NAME,
        otlp_endpoint,
        parse_traceparent,
        setup_tracing,
        span_in_run_trace,
    )

    traceparent = environ.get("TRACEPARENT", "")
    if not parse_traceparent(traceparent) or not otlp_endpoint(environ):
        yield INVALID_SPAN
        return
    environ.setdefault("OTEL_EXPORTER_OTLP_TIMEOUT", EXPORT_TIMEOUT)
    setup_tracing("weft-podio", environ)
    attributes = {
        ATTR_K8S_POD_NAME: environ.get("WEFT_POD_NAME", ""),
        ATTR_K8S_NODE_NAME: environ.get("WEFT_NODE_NAME", ""),
        ATTR_K8S_NAMESPACE_NAME: environ.get("WEFT_POD_NAMESPACE", ""),
        "k8s.container.name": command,
    }
    with span_in_run_trace(SPAN_NAMES[command], traceparent, {k: v for k, v in attributes.items() if v}) as span:
        yield span


# fetch ------------------------------------------------------------------------------------


def prepare_dirs(root: Path) -> None:
    """Creates inputs/, outputs/ and status/ writable by any uid (the step's user is unknown)."""
    for name in (INPUTS, OUTPUTS, STATUS):
        directory = root / name
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o777)  # mkdir's mode is cut by the umask


async def fetch_input(store: BlobReader, name: str, digest: str, target: Path) -> int:
    """Downloads one blob to `target`, verifying its digest; returns its size."""
    from weft_core.errors import NotFound, ServiceError

    spool = target.with_name(f".{target.name}.partial")

    async def download() -> int:
        hasher = hashlib.sha256()
        size = 0
        with open(spool, "wb") as out:  # noqa: ASYNC230  (small sequential writes)
            async for chunk in store.read(digest):
                hasher.update(chunk)
                size += len(chunk)
                out.write(chunk)
        actual = "sha256:" + hasher.hexdigest()
        if actual != digest:
            raise HandoverError(f"input '{name}': the artifact store returned {actual}, not {digest}")
        return size

    try:
        size = await _handed_over(f"fetching input '{name}' ({digest})", download)
    except NotFound:
        raise HandoverError(
            f"input '{name}' ({digest}) is not in the artifact store; "
            "re-run the step that produced it (e.g. a run with cache mode REFRESH)"
        ) from None
    except ServiceError as error:
        raise HandoverError(f"could not fetch input '{name}' ({digest}): {error.message}") from None
    os.replace(spool, target)
    os.chmod(target, 0o644)
    return size


def open_store(api: str, blob_store: str = "") -> BlobStore:
    """The object store named by `blob_store` when given, else weft-api's ArtifactService
    as the step's namespace (`WEFT_NAMESPACE`), with the token (`WEFT_PEER_TOKEN`) and CA
    (`WEFT_PEER_CA_CERT`) the executor's pod settings gave the helpers, if any."""
    if blob_store:
        from weft_core.objectstore import open_blob_store

        return open_blob_store(blob_store)
    from weft_core.blobs import RemoteBlobStore, blob_namespace
    from weft_core.tls import Peer, client_tls

    blob_namespace.set(os.environ.get("WEFT_NAMESPACE", ""))
    ca = os.environ.get("WEFT_PEER_CA_CERT", "")
    peer = Peer(os.environ.get("WEFT_PEER_TOKEN", ""), client_tls(Path(ca) if ca else None, None, None))
    return RemoteBlobStore(api, patience=_patience, peer=peer)


def signed_access() -> SignedAccess:
    """The presigned URLs the executor put in this container's environment."""
    return SignedAccess.from_environment(os.environ)


async def fetch(
    api: str, root: Path, inputs: Sequence[tuple[str, str]], blob_store: str = "", *, signed: bool = False
) -> int:
    """The init container: prepares the shared directories and downloads every input.

    Returns:
        The bytes read straight from object storage (0 through weft-api).
    """
    prepare_dirs(root)
    with handover_span("fetch") as span:
        span.set_attribute("weft.inputs", len(inputs))
        store: BlobReader = SignedBlobs(signed_access()) if signed else open_store(api, blob_store)
        moved = 0
        try:
            for name, digest in inputs:
                size = await fetch_input(store, name, digest, root / INPUTS / name)
                moved += size
                print(f"weft: fetched input {name} ({human_bytes(size)})", flush=True)
        finally:
            await store.close()
        span.set_attribute("weft.bytes", moved)
    return moved if (signed or blob_store) else 0


# upload -----------------------------------------------------------------------------------


async def wait_for_exit_code(marker: Path) -> int:
    """Waits until the step's wrapper wrote its exit code and returns it."""
    while True:
        try:
            text = (await asyncio.to_thread(marker.read_text)).strip()
        except FileNotFoundError:
            await asyncio.sleep(MARKER_POLL_SECONDS)
            continue
        try:
            return int(text)
        except ValueError:
            # The wrapper writes a temp file and renames it, so this is not a partial
            # write: something else wrote there.
            raise HandoverError(f"the step's exit-code marker {marker} holds {text[:40]!r}, not a number") from None


def check_outputs(outputs_dir: Path, names: Sequence[str], max_bytes: int) -> str:
    """Why the declared outputs cannot be stored, or "" when they can (as the local runtime says it)."""
    for name in names:
        path = outputs_dir / name
        if not path.exists():
            return f"step wrote no output '{name}': write it to $WEFT_OUTPUTS/{name}"
        if not path.is_file():
            return f"output '{name}' is not a regular file: write a file to $WEFT_OUTPUTS/{name} (e.g. a tar archive)"
        size = path.stat().st_size
        if size > max_bytes:
            return (
                f"output '{name}' is {human_bytes(size)}, over the limit of {human_bytes(max_bytes)} "
                "(executor flag --max-output-bytes); write less or raise the limit"
            )
    return ""


async def upload(
    api: str, root: Path, names: Sequence[str], max_bytes: int, blob_store: str = "", *, signed: bool = False
) -> tuple[TerminationMessage, bool]:
    """The output container: waits for the step, stores its outputs and the manifest.

    Returns:
        The termination message to write and whether the handover succeeded.
    """
    exit_code = await wait_for_exit_code(root / STATUS / EXIT_CODE_FILE)
    # The span starts when the step has ended: waiting for it is the attempt's time.
    with handover_span("upload") as span:
        span.set_attribute("weft.outputs", len(names))
        if exit_code != 0:
            print(f"weft: the step exited with code {exit_code}; no outputs uploaded", flush=True)
            span.set_attribute("weft.skipped", f"step exited with code {exit_code}")
            return TerminationMessage(skipped=f"step exited with code {exit_code}"), True
        staging = SignedBlobs(signed_access()) if signed else None
        store = open_store(api, blob_store) if staging is None else None
        moved = 0

        async def store_output(name: str, path: Path) -> BlobInfo:
            if staging is not None:
                return await staging.put_output(name, path)
            assert store is not None
            return await store.put_file(path)

        async def store_manifest(data: bytes) -> BlobInfo:
            if staging is not None:
                return await staging.put_manifest(data)
            assert store is not None
            return await store.put(data)

        try:
            problem = check_outputs(root / OUTPUTS, names, max_bytes)
            manifest = Manifest(succeeded=False, message=problem)
            if not problem:
                outputs: dict[str, str] = {}
                sizes: dict[str, int] = {}
                for name in names:
                    path = root / OUTPUTS / name
                    info = await _handed_over(f"uploading output '{name}'", partial(store_output, name, path))
                    outputs[name], sizes[name] = info.digest, info.size
                    moved += info.size
                    print(f"weft: stored output {name} ({human_bytes(info.size)}) as {info.digest}", flush=True)
                manifest = Manifest(succeeded=True, outputs=outputs, sizes=sizes)
                span.set_attribute("weft.bytes", sum(sizes.values()))
            else:
                print(f"weft: {problem}", file=sys.stderr, flush=True)
                span.set_status(Status(StatusCode.ERROR, problem))
            data = manifest.encode()
            stored = await _handed_over("storing the output manifest", partial(store_manifest, data))
            span.set_attribute("weft.manifest", stored.digest)
            moved += stored.size
            counted = moved if (staging or blob_store) else 0
            return TerminationMessage(manifest=stored.digest, moved=counted), manifest.succeeded
        finally:
            if store is not None:
                await store.close()


# command line -----------------------------------------------------------------------------


def _input_pair(text: str) -> tuple[str, str]:
    name, sep, digest = text.partition("=")
    if not sep or not name or not digest.startswith("sha256:"):
        raise argparse.ArgumentTypeError(f"expected NAME=sha256:<hex>, got {text!r}")
    if "/" in name or name in (".", ".."):
        raise argparse.ArgumentTypeError(f"input name {name!r} is not a file name")
    return name, digest


def _output_name(text: str) -> str:
    if not text or "/" in text or text in (".", ".."):
        raise argparse.ArgumentTypeError(f"output name {text!r} is not a file name")
    return text


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m weft_executor.podio", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("fetch", "download inputs (init container)"), ("upload", "store outputs (helper)")):
        command = commands.add_parser(name, help=help_text)
        where = command.add_mutually_exclusive_group(required=True)
        where.add_argument("--api", help="host:port of weft-api's ArtifactService")
        where.add_argument("--blob-store", default="", help="object store URL to use directly (s3://..., gs://...)")
        where.add_argument(
            "--signed",
            action="store_true",
            help=f"use only the presigned URLs in ${SIGNED_ACCESS_ENV} (no credentials)",
        )
        command.add_argument("--dir", type=Path, default=Path(SHARED_DIR), help="the shared volume")
        command.add_argument("--termination-log", type=Path, default=Path(TERMINATION_LOG))
        command.add_argument(
            "--patience",
            type=float,
            default=DEFAULT_PATIENCE,
            help="seconds each artifact-store call is retried while weft-api is unreachable",
        )
        if name == "fetch":
            command.add_argument("inputs", nargs="*", type=_input_pair, metavar="NAME=DIGEST")
        else:
            command.add_argument("--max-bytes", type=int, required=True, help="largest output accepted")
            command.add_argument("outputs", nargs="*", type=_output_name, metavar="NAME")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `fetch` or `upload`; returns the exit code."""
    global _patience
    args = parse_args(argv)
    _patience = max(0.0, args.patience)
    # The store's retry warnings go to stderr, i.e. the container's log, like our own lines.
    logging.basicConfig(level=logging.INFO, format="weft: %(message)s", stream=sys.stderr)
    started = time.monotonic()
    try:
        if args.command == "fetch":
            moved = asyncio.run(fetch(args.api, args.dir, args.inputs, args.blob_store, signed=args.signed))
            message, ok = TerminationMessage(moved=moved), True
        else:
            message, ok = asyncio.run(
                upload(args.api, args.dir, args.outputs, args.max_bytes, args.blob_store, signed=args.signed)
            )
    except HandoverError as error:
        print(f"weft: {error}", file=sys.stderr, flush=True)
        message, ok = TerminationMessage(error=str(error)), False
    except OSError as error:
        text = f"{args.command}: {error.strerror or error} ({error.filename or args.dir})"
        print(f"weft: {text}", file=sys.stderr, flush=True)
        message, ok = TerminationMessage(error=text), False
    write_termination_message(args.termination_log, message)
    # The span ended with the handover: export it now (a no-op without an endpoint).
    from weft_core.telemetry import shutdown_tracing

    shutdown_tracing()
    print(f"weft: {args.command} {'done' if ok else 'failed'} in {time.monotonic() - started:.2f}s", flush=True)
    return 0 if ok else 1


def exit_without_finalizing(code: int) -> None:
    """Ends a helper that used obstore without the interpreter's finalization.

    obstore's Rust runtime keeps worker threads that are never told to stop; about one
    helper exit in fifty, one of them touched interpreter state while `Py_Finalize` tore
    it down and the process aborted (SIGABRT, exit code 134) after its handover had
    succeeded, failing the attempt. The atexit handlers still run first (while the
    interpreter is whole); then the process ends at once.
    """
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    status = main()
    if "obstore" in sys.modules:
        exit_without_finalizing(status)
    sys.exit(status)
