"""The kubernetes runtime under faults a real API server cannot produce on demand.

A small threaded HTTP server (`PodApiStub`) speaks the part of the pods API the runtime
uses (create, get, delete, list, watch, log) in the real wire format: a watch is a chunked
stream of one JSON event per line, an expired resourceVersion is an ERROR event carrying a
410 Status. Faults are injected per request kind: 5xx answers, 409 on create, a create that
succeeds but whose answer is lost, a watch stream cut mid-way, a watch that expires (410
Gone) while events it would have carried are only visible to a new list. Beside it, the
pure parts (pod names, the step wrapper, the handover program's messages) are checked
without any server. The runtime runs unchanged against the stub: real threads, real HTTP,
a real directory blob store; nothing is mocked inside the process under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.server
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import InProcessApi
from weft.v1 import run_pb2
from weft_core.blobs import DirectoryBlobStore, RemoteBlobStore
from weft_core.errors import Unavailable
from weft_executor import podio
from weft_executor.config import ExecutorConfig, KubeSettings
from weft_executor.runtime import AttemptSetupError, AttemptSpec
from weft_executor.runtime import kubernetes as kube_runtime_module
from weft_executor.runtime.kube_client import KubeApi, RateLimiter
from weft_executor.runtime.kube_pods import (
    MAIN_CONTAINER,
    UPLOAD_CONTAINER,
    build_pod,
    escape_expansion,
    label_value,
    pod_name,
    step_wrapper,
)
from weft_executor.runtime.kubernetes import KubernetesRuntime, StepRef

Attempt = run_pb2.Attempt
JSON = dict[str, Any]
NAMESPACE = "steps"
DNA = "sha256:" + "e" * 64


# The stub --------------------------------------------------------------------------------


@dataclass
class Recorded:
    method: str
    kind: str
    query: dict[str, str]
    at: float


@dataclass
class PodApiStub:
    """An in-memory pods API of one namespace with fault injection (see the module docstring)."""

    pods: dict[str, JSON] = field(default_factory=dict)
    version: int = 100
    #: (version, type, pod) of every change a watch may deliver.
    history: list[tuple[int, str, JSON]] = field(default_factory=list)
    #: Watches from a version below this get 410 Gone (etcd compacted it).
    oldest: int = 0
    requests: list[Recorded] = field(default_factory=list)
    faults: dict[str, list[int]] = field(default_factory=dict)
    changed: threading.Condition = field(default_factory=threading.Condition)
    #: Bumped to make every open watch end: with a cut connection, or with 410 Gone.
    drops: int = 0
    expiries: int = 0

    # What tests call.

    def fail_next(self, kind: str, status: int, times: int = 1) -> None:
        """The next `times` requests of `kind` (create, get, delete, list, watch, log) get `status`.

        Status 0 on create means: create the pod, then answer 504 (the answer was lost).
        """
        with self.changed:
            self.faults.setdefault(kind, []).extend([status] * times)

    def count(self, kind: str) -> int:
        return sum(1 for r in self.requests if r.kind == kind)

    def of_kind(self, kind: str) -> list[Recorded]:
        return [r for r in self.requests if r.kind == kind]

    def put(self, pod: JSON) -> JSON:
        with self.changed:
            return self._create(pod)

    def update(self, name: str, change: Callable[[JSON], None], *, silent: bool = False) -> JSON:
        """Changes a pod; `silent` leaves the change out of the watch history (only a list shows it)."""
        with self.changed:
            pod: JSON = json.loads(json.dumps(self.pods[name]))
            change(pod)
            self.version += 1
            pod["metadata"]["resourceVersion"] = str(self.version)
            self.pods[name] = pod
            if not silent:
                self.history.append((self.version, "MODIFIED", pod))
            self.changed.notify_all()
            return pod

    def remove(self, name: str, *, silent: bool = False) -> None:
        with self.changed:
            pod = self.pods.pop(name)
            self.version += 1
            pod["metadata"]["resourceVersion"] = str(self.version)
            if not silent:
                self.history.append((self.version, "DELETED", pod))
            self.changed.notify_all()

    def drop_watches(self) -> None:
        """Cuts every open watch connection without ending the stream properly."""
        with self.changed:
            self.drops += 1
            self.changed.notify_all()

    def expire(self) -> None:
        """Compacts the history: open watches end with 410 Gone, older versions are refused."""
        with self.changed:
            self.oldest = self.version  # a list now returns this version: watching from it is fine
            self.expiries += 1
            self.changed.notify_all()

    # Internals (under the lock).

    def _create(self, pod: JSON) -> JSON:
        self.version += 1
        pod = json.loads(json.dumps(pod))
        metadata = pod["metadata"]
        metadata.update(
            uid=str(uuid.uuid4()),
            namespace=NAMESPACE,
            resourceVersion=str(self.version),
            creationTimestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        pod["status"] = {"phase": "Pending"}
        self.pods[metadata["name"]] = pod
        self.history.append((self.version, "ADDED", pod))
        self.changed.notify_all()
        return pod

    def _take_fault(self, kind: str) -> int | None:
        pending = self.faults.get(kind)
        return pending.pop(0) if pending else None


def status(code: int, reason: str, message: str) -> JSON:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class _StubHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _StubServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def stub(self) -> PodApiStub:
        return self.server.stub

    def _parse(self) -> tuple[list[str], dict[str, str]]:
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        parts = url.path.strip("/").split("/")
        # api/v1/namespaces/{ns}/pods[/{name}[/log]]
        return parts[5:], query

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length)) if length else None

    def _reply(self, code: int, body: JSON) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self, method: str, kind: str, query: dict[str, str]) -> int | None:
        with self.stub.changed:
            self.stub.requests.append(Recorded(method, kind, query, time.monotonic()))
            return self.stub._take_fault(kind)

    def do_POST(self) -> None:
        _, query = self._parse()
        pod = self._body()
        fault = self._record("POST", "create", query)
        if fault:
            self._reply(fault, status(fault, "InternalError", "injected fault"))
            return
        name = pod["metadata"]["name"]
        with self.stub.changed:
            if name in self.stub.pods:
                self._reply(409, status(409, "AlreadyExists", f'pods "{name}" already exists'))
                return
            created = self.stub._create(pod)
        if fault == 0:
            self._reply(504, status(504, "Timeout", "the answer to a successful create was lost"))
            return
        self._reply(201, created)

    def do_DELETE(self) -> None:
        rest, query = self._parse()
        fault = self._record("DELETE", "delete", query)
        if fault:
            self._reply(fault, status(fault, "InternalError", "injected fault"))
            return
        name = rest[0]
        if name not in self.stub.pods:
            self._reply(404, status(404, "NotFound", f'pods "{name}" not found'))
            return
        pod = self.stub.pods[name]
        self.stub.remove(name)
        self._reply(200, pod)

    def do_GET(self) -> None:
        rest, query = self._parse()
        if not rest:
            if query.get("watch") in ("true", "1"):
                self._watch(query)
            else:
                self._list(query)
            return
        if len(rest) == 2 and rest[1] == "log":
            fault = self._record("GET", "log", query)
            if fault:
                self._reply(fault, status(fault, "InternalError", "injected fault"))
                return
            data = f"log of {rest[0]}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        fault = self._record("GET", "get", query)
        if fault:
            self._reply(fault, status(fault, "InternalError", "injected fault"))
            return
        pod = self.stub.pods.get(rest[0])
        if pod is None:
            self._reply(404, status(404, "NotFound", f'pods "{rest[0]}" not found'))
            return
        self._reply(200, pod)

    def _list(self, query: dict[str, str]) -> None:
        fault = self._record("GET", "list", query)
        if fault:
            self._reply(fault, status(fault, "InternalError", "injected fault"))
            return
        with self.stub.changed:
            body = {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self.stub.version)},
                "items": list(self.stub.pods.values()),
            }
        self._reply(200, body)

    def _chunk(self, event: JSON) -> None:
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _watch(self, query: dict[str, str]) -> None:
        fault = self._record("GET", "watch", query)
        if fault:
            self._reply(fault, status(fault, "Expired" if fault == 410 else "InternalError", "injected fault"))
            return
        stub = self.stub
        since = int(query["resourceVersion"])
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        with stub.changed:
            drops, expiries = stub.drops, stub.expiries
        deadline = time.monotonic() + float(query.get("timeoutSeconds", 60))
        while time.monotonic() < deadline and not self.server.stopping:
            with stub.changed:
                if since < stub.oldest or stub.expiries != expiries:
                    expired = status(410, "Expired", f"too old resource version: {since} ({stub.oldest})")
                    self._chunk({"type": "ERROR", "object": expired})
                    break
                if stub.drops != drops:
                    # Cut the connection with no final chunk: the client sees a broken stream.
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                pending = [(v, t, p) for v, t, p in stub.history if v > since]
                if not pending:
                    stub.changed.wait(0.1)
                    continue
            for version, kind, pod in pending:
                self._chunk({"type": kind, "object": pod})
                since = version
        self.wfile.write(b"0\r\n\r\n")
        self.close_connection = True


class _StubServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    stub: PodApiStub
    stopping = False


@pytest.fixture
def stub() -> Iterator[tuple[PodApiStub, str]]:
    """The stub API on a free port; yields it and its URL."""
    server = _StubServer(("127.0.0.1", 0), _StubHandler)
    server.stub = PodApiStub()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.stub, f"http://127.0.0.1:{server.server_address[1]}"
    server.stopping = True
    with server.stub.changed:
        server.stub.changed.notify_all()
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    # The runtime's backoff is sized for a real API server; these faults need no patience.
    monkeypatch.setattr(kube_runtime_module, "FIRST_BACKOFF", 0.01)


async def claims_unknown(steps: Sequence[StepRef]) -> set[StepRef]:
    """The claims as the runtime sees them with no etcd at hand: unknown, so nothing is swept."""
    raise Unavailable("these fault-stub tests run without etcd")


def stub_config(**kube: Any) -> ExecutorConfig:
    """The settings of a runtime against the API stub (no etcd, no artifact service)."""
    settings = KubeSettings(namespace=NAMESPACE, pod_image="weft.test/weft:dev", **kube)
    return ExecutorConfig(
        etcd_endpoints="http://127.0.0.1:1", api="127.0.0.1:1", work_dir=Path("/nonexistent"), kube=settings
    )


@contextlib.asynccontextmanager
async def stub_runtime(url: str, blob_dir: Path, **overrides: Any) -> AsyncIterator[KubernetesRuntime]:
    from kubernetes.client import Configuration

    config = stub_config(**overrides)
    runtime = KubernetesRuntime(
        KubeApi(Configuration(host=url), qps=config.kube.kube_qps, burst=config.kube.kube_burst),
        DirectoryBlobStore(blob_dir),
        config,
        claims_unknown,
    )
    try:
        yield runtime
    finally:
        await runtime.close()


def spec_for(step: str, attempt: int = 1) -> AttemptSpec:
    return AttemptSpec(
        namespace="default",
        run="faults-r1",
        step=step,
        attempt=attempt,
        image="busybox:1.36",
        command=("sh", "-c", "true"),
        working_dir="",
        env={},
        secret_env={},
        inputs={},
        outputs=("out",),
        timeout=None,
        dna=DNA,
    )


async def manifest_message(blob_dir: Path, outputs: dict[str, str]) -> str:
    manifest = podio.Manifest(succeeded=True, outputs=outputs, sizes={k: 1 for k in outputs})
    stored = await DirectoryBlobStore(blob_dir).put(manifest.encode())
    return podio.TerminationMessage(manifest=stored.digest).encode()


def completed(message: str) -> Callable[[JSON], None]:
    """A status change: the step exited 0 and the output container reported `message`."""

    def change(pod: JSON) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        pod["status"] = {
            "phase": "Succeeded",
            "containerStatuses": [
                {"name": MAIN_CONTAINER, "state": {"terminated": {"exitCode": 0, "finishedAt": now}}},
                {
                    "name": UPLOAD_CONTAINER,
                    "state": {"terminated": {"exitCode": 0, "finishedAt": now, "message": message}},
                },
            ],
        }

    return change


def running(pod: JSON) -> None:
    pod["status"] = {
        "phase": "Running",
        "containerStatuses": [{"name": MAIN_CONTAINER, "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}}}],
    }


async def eventually(check: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {what}")
        await asyncio.sleep(0.02)


OUT = "sha256:" + "1" * 64


# Watch faults ------------------------------------------------------------------------------


async def test_a_410_gone_watch_lists_again_and_sees_what_it_missed(
    stub: tuple[PodApiStub, str], tmp_path: Path
) -> None:
    api, url = stub
    message = await manifest_message(tmp_path, {"out": OUT})
    async with stub_runtime(url, tmp_path) as runtime:
        attempt = await runtime.launch(spec_for("gone"))
        waiting = asyncio.create_task(runtime.wait(attempt))
        await eventually(lambda: api.count("watch") == 1, what="watching")

        api.update(attempt.handle, completed(message), silent=True)  # no watch will carry this
        api.expire()
        result = await asyncio.wait_for(waiting, 10)

        assert result.state == Attempt.STATE_SUCCEEDED
        assert result.output_digests == {"out": OUT}
        assert api.count("list") == 2
        assert runtime.watcher.stats.gone == 1
        assert await DirectoryBlobStore(tmp_path).get(result.stdout_digest) == f"log of {attempt.handle}\n".encode()


async def test_a_410_status_on_the_watch_request_lists_again(stub: tuple[PodApiStub, str], tmp_path: Path) -> None:
    api, url = stub
    api.fail_next("watch", 410)
    async with stub_runtime(url, tmp_path) as runtime:
        runtime.watcher  # noqa: B018  (starts the watch)
        await eventually(lambda: api.count("list") == 2 and api.count("watch") == 2, what="listed again")
        assert runtime.watcher.stats.gone == 1


async def test_a_dropped_watch_resumes_from_the_last_version_without_listing(
    stub: tuple[PodApiStub, str], tmp_path: Path
) -> None:
    api, url = stub
    message = await manifest_message(tmp_path, {"out": OUT})
    async with stub_runtime(url, tmp_path) as runtime:
        attempt = await runtime.launch(spec_for("dropped"))
        waiting = asyncio.create_task(runtime.wait(attempt))
        seen = api.update(attempt.handle, running)["metadata"]["resourceVersion"]
        await eventually(lambda: runtime.watcher.version == seen, what="event seen")

        api.drop_watches()
        await eventually(lambda: api.count("watch") == 2, what="watch resumed")
        api.update(attempt.handle, completed(message))
        result = await asyncio.wait_for(waiting, 10)

    assert result.state == Attempt.STATE_SUCCEEDED
    assert api.of_kind("watch")[1].query["resourceVersion"] == seen
    assert api.count("list") == 1
    assert runtime.watcher.stats.errors == 1


async def test_a_pod_deleted_while_the_watch_was_expired_is_reported_deleted(
    stub: tuple[PodApiStub, str], tmp_path: Path
) -> None:
    api, url = stub
    async with stub_runtime(url, tmp_path) as runtime:
        attempt = await runtime.launch(spec_for("vanished"))
        waiting = asyncio.create_task(runtime.wait(attempt))
        await eventually(lambda: api.count("watch") == 1, what="watching")

        api.remove(attempt.handle, silent=True)
        api.expire()
        result = await asyncio.wait_for(waiting, 10)

    assert result.state == Attempt.STATE_FAILED
    assert result.message == f"pod {attempt.handle} was deleted by someone else (not by weft) while the step ran"


async def test_5xx_on_list_is_retried_until_the_watch_is_synced(stub: tuple[PodApiStub, str], tmp_path: Path) -> None:
    api, url = stub
    api.fail_next("list", 503, times=2)
    async with stub_runtime(url, tmp_path) as runtime:
        await asyncio.wait_for(runtime.watcher.synced.wait(), 10)

        assert api.count("list") == 3
        assert runtime.watcher.stats.errors == 2
        assert "503" in runtime.watcher.stats.last_error


# Create faults -----------------------------------------------------------------------------


async def test_5xx_on_create_is_retried_and_makes_one_pod(stub: tuple[PodApiStub, str], tmp_path: Path) -> None:
    api, url = stub
    api.fail_next("create", 500, times=2)
    async with stub_runtime(url, tmp_path) as runtime:
        attempt = await runtime.launch(spec_for("flaky"))

    assert api.count("create") == 3
    assert list(api.pods) == [attempt.handle]
    assert runtime.created == 1


async def test_a_create_whose_answer_was_lost_adopts_the_pod_it_made(
    stub: tuple[PodApiStub, str], tmp_path: Path
) -> None:
    api, url = stub
    api.fail_next("create", 0)  # created, but the client hears 504
    async with stub_runtime(url, tmp_path) as runtime:
        attempt = await runtime.launch(spec_for("lost-answer"))

    assert attempt.adopted
    assert api.count("create") == 2  # the retry got 409
    assert api.count("get") == 1
    assert list(api.pods) == [attempt.handle]


async def test_409_on_create_adopts_the_existing_pod(stub: tuple[PodApiStub, str], tmp_path: Path) -> None:
    api, url = stub
    spec = spec_for("existing")
    existing = api.put(build_pod(spec, stub_config()))
    async with stub_runtime(url, tmp_path) as runtime:
        attempt = await runtime.launch(spec)

    assert attempt.adopted
    assert attempt.uid == existing["metadata"]["uid"]
    assert (api.count("create"), api.count("get"), runtime.created) == (1, 1, 0)
    assert len(api.pods) == 1


async def test_409_for_a_pod_of_another_attempt_is_refused(stub: tuple[PodApiStub, str], tmp_path: Path) -> None:
    api, url = stub
    spec = spec_for("clash")
    impostor = build_pod(spec_for("someone-else"), stub_config())
    impostor["metadata"]["name"] = pod_name(*spec.key)
    api.put(impostor)
    async with stub_runtime(url, tmp_path) as runtime:
        with pytest.raises(AttemptSetupError, match="exists but runs another attempt"):
            await runtime.launch(spec)


async def test_persistent_5xx_on_create_fails_the_attempt_clearly(stub: tuple[PodApiStub, str], tmp_path: Path) -> None:
    api, url = stub
    api.fail_next("create", 500, times=10)
    async with stub_runtime(url, tmp_path) as runtime:
        with pytest.raises(AttemptSetupError) as raised:
            await runtime.launch(spec_for("doomed"))

    assert str(raised.value).startswith(f"could not create pod {pod_name(*spec_for('doomed').key)}: 500")
    assert api.count("create") == kube_runtime_module.API_TRIES
    assert api.pods == {}


async def test_an_unreachable_api_server_fails_the_launch_clearly(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    async with stub_runtime(f"http://127.0.0.1:{port}", tmp_path) as runtime:
        with pytest.raises(AttemptSetupError, match=r"the Kubernetes API at http://127\.0\.0\.1:\d+ did not answer"):
            await runtime.launch(spec_for("nowhere"))


# The client-side rate limit -----------------------------------------------------------------


async def test_pod_creation_keeps_to_the_client_qps_limit(stub: tuple[PodApiStub, str], tmp_path: Path) -> None:
    api, url = stub
    async with stub_runtime(url, tmp_path, kube_qps=20.0, kube_burst=5) as runtime:
        await asyncio.gather(*(runtime.launch(spec_for(f"wide-{i}")) for i in range(25)))

    creates = api.of_kind("create")
    assert len(creates) == 25
    # 5 at once, then 20 more at 20 a second (the watch's own requests take tokens too).
    assert creates[-1].at - creates[0].at >= (25 - 5) / 20 - 0.1
    window = [r.at for r in api.requests]
    busiest = max(sum(1 for t in window if start <= t < start + 0.5) for start in window)
    assert busiest <= 5 + 0.5 * 20 + 1


def test_the_rate_limiter_serves_reservations_in_order() -> None:
    limiter = RateLimiter(qps=10.0, burst=2)
    delays = [limiter.reserve() for _ in range(5)]

    assert delays[:2] == [0.0, 0.0]
    assert delays[2:] == pytest.approx([0.1, 0.2, 0.3], abs=0.02)
    assert RateLimiter(qps=0, burst=1).reserve() == 0.0


# Pure parts: names, the wrapper, the handover messages ------------------------------------


def test_pod_names_are_deterministic_valid_and_collision_safe() -> None:
    long = "x" * 80
    keys = [
        ("default", "etl-a1b2c", "transform-0", 1),
        ("default", "etl-a1b2c", "transform-0", 2),
        ("other", "etl-a1b2c", "transform-0", 1),
        ("default", long, long + "a", 1),
        ("default", long, long + "b", 1),
        ("default", "Run_With.Dots", "--Step--", 12),
        ("default", "", "", 1),
    ]
    names = [pod_name(*key) for key in keys]

    assert names[0] == pod_name(*keys[0])
    assert names[0].startswith("etl-a1b2c-transform-0-1-")
    assert len(set(names)) == len(names)
    for name in names:
        assert len(name) <= 63
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name


def test_label_values_and_expansion_escapes() -> None:
    assert label_value("Step_With.Odd-Chars") == "Step_With.Odd-Chars"
    assert label_value("-a b/c-") == "a-b-c"
    assert len(label_value("y" * 100)) == 63
    assert escape_expansion("$(HOME) $$ $x") == "$$(HOME) $$$$ $$x"


@pytest.mark.parametrize(
    ("argv", "exit_code"),
    [(["sh", "-c", "echo out; exit 7"], 7), (["true"], 0), (["sh", "-c", 'kill -KILL "$$"'], 137)],
)
def test_the_step_wrapper_records_the_exit_code(tmp_path: Path, argv: list[str], exit_code: int) -> None:
    shared = tmp_path / "shared"
    podio.prepare_dirs(shared)
    script = step_wrapper("").replace(podio.SHARED_DIR, str(shared))

    done = subprocess.run(["/bin/sh", "-c", script, "weft-step", *argv], capture_output=True, timeout=10)

    assert done.returncode == exit_code
    marker = shared / podio.STATUS / podio.EXIT_CODE_FILE
    assert marker.read_text() == f"{exit_code}\n"


def test_the_step_wrapper_passes_sigterm_to_the_step(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    podio.prepare_dirs(shared)
    script = step_wrapper("sub/dir").replace(podio.SHARED_DIR, str(shared))
    step = 'trap "echo stopping; exit 42" TERM; pwd; while :; do sleep 0.05; done'

    wrapper = subprocess.Popen(
        ["/bin/sh", "-c", script, "weft-step", "sh", "-c", step], cwd=tmp_path, stdout=subprocess.PIPE
    )
    assert wrapper.stdout is not None
    assert wrapper.stdout.readline().decode().strip() == str(tmp_path / "sub" / "dir")
    wrapper.terminate()
    output, _ = wrapper.communicate(timeout=10)

    assert wrapper.returncode == 42
    assert output == b"stopping\n"
    assert (shared / podio.STATUS / podio.EXIT_CODE_FILE).read_text() == "42\n"


def test_termination_messages_fit_the_kubelets_4kib() -> None:
    long = podio.TerminationMessage(error="x" * 10_000).encode()
    parsed = podio.TerminationMessage.decode(long)

    assert len(long.encode()) <= podio.TERMINATION_LIMIT
    assert parsed is not None
    assert parsed.error.startswith("xxx")
    assert podio.TerminationMessage.decode("exit status 1") is None
    assert podio.TerminationMessage.decode(podio.TerminationMessage(manifest=OUT).encode()) == podio.TerminationMessage(
        manifest=OUT
    )
    manifest = podio.Manifest(succeeded=True, outputs={"a": OUT}, sizes={"a": 3})
    assert podio.Manifest.decode(manifest.encode()) == manifest


# The handover program when the artifact store fails ----------------------------------------


def run_podio(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "weft_executor.podio", *args], capture_output=True, timeout=timeout)


async def test_podio_uploads_outputs_and_reports_the_manifest(api: InProcessApi, tmp_path: Path) -> None:
    shared, log = tmp_path / "shared", tmp_path / "termination"
    podio.prepare_dirs(shared)
    (shared / podio.OUTPUTS / "out").write_bytes(b"result")
    (shared / podio.STATUS / podio.EXIT_CODE_FILE).write_text("0\n")

    done = await asyncio.to_thread(
        run_podio, "upload", "--api", api.address, "--dir", str(shared), "--termination-log", str(log),
        "--max-bytes", "100", "out",
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    report = podio.TerminationMessage.decode(log.read_text())
    assert report is not None
    store = RemoteBlobStore(api.address)
    try:
        manifest = podio.Manifest.decode(await store.get(report.manifest))
        assert manifest.outputs == {"out": "sha256:" + hashlib.sha256(b"result").hexdigest()}
        assert await store.get(manifest.outputs["out"]) == b"result"
    finally:
        await store.close()


def test_podio_skips_the_upload_when_the_step_failed(tmp_path: Path) -> None:
    shared, log = tmp_path / "shared", tmp_path / "termination"
    podio.prepare_dirs(shared)
    (shared / podio.STATUS / podio.EXIT_CODE_FILE).write_text("3\n")

    done = run_podio("upload", "--api", "127.0.0.1:1", "--dir", str(shared), "--termination-log", str(log),
                     "--max-bytes", "100", "out")  # fmt: skip

    assert done.returncode == 0
    assert podio.TerminationMessage.decode(log.read_text()) == podio.TerminationMessage(
        skipped="step exited with code 3"
    )


def test_podio_reports_an_unreachable_artifact_store(tmp_path: Path) -> None:
    shared, log = tmp_path / "shared", tmp_path / "termination"
    podio.prepare_dirs(shared)
    (shared / podio.OUTPUTS / "out").write_bytes(b"x")
    (shared / podio.STATUS / podio.EXIT_CODE_FILE).write_text("0\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    done = run_podio("upload", "--api", f"127.0.0.1:{port}", "--dir", str(shared), "--termination-log", str(log),
                     "--max-bytes", "100", "--patience", "1", "out")  # fmt: skip

    assert done.returncode == 1
    # One warning for the outage, naming what is retried and for how long; no traceback.
    assert done.stderr.count(b"is unreachable") == 1, done.stderr
    assert b"while looking up blob sha256:" in done.stderr
    assert b"retrying for up to 1s" in done.stderr
    assert b"Traceback" not in done.stderr
    report = podio.TerminationMessage.decode(log.read_text())
    assert report is not None
    assert report.error.startswith("uploading output 'out': artifact store at 127.0.0.1:")
    assert "failed for 1s (UNAVAILABLE" in report.error


def test_an_attempt_never_ends_before_it_started() -> None:
    from datetime import UTC, datetime, timedelta

    from weft_executor.runtime.kube_pods import ContainerReading
    from weft_executor.runtime.kubernetes import KubeAttempt, _end_time

    started = datetime.now(UTC) - timedelta(seconds=0.3)
    attempt = KubeAttempt(spec=spec_for("quick"), handle="quick-pod", start_time=started)
    # The node reports whole seconds, cut: a step that ran 0.2 s "finished" before it started.
    cut = started.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    ended = ContainerReading(name="main", state="terminated", finished_at=cut)
    assert _end_time(attempt, ended) >= started
    # A node clock behind the executor's: clamped to the start, not negative.
    behind = (started - timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert _end_time(attempt, ContainerReading(name="main", state="terminated", finished_at=behind)) == started
    # Seen long after it ended: the node's finishedAt, not the moment it was seen.
    old = KubeAttempt(spec=spec_for("old"), handle="old-pod", start_time=started - timedelta(hours=1))
    assert _end_time(old, ContainerReading(name="main", state="terminated", finished_at=behind)) == started.replace(
        microsecond=0
    ) - timedelta(seconds=5)
