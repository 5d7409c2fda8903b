"""Operating weft: a real Prometheus scrapes a running stack, and JSON logs carry run context.

The stack is `weft.localstack.LocalStack` (what `weft up` runs) with metrics on; the
Prometheus is Debian's `prometheus` package (./dev's need_cluster_tools installs it), and
every check goes through Prometheus's own HTTP query API, as a dashboard or an alert would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import weft
from tests.support import assert_eventually
from weft.localstack import ChildProcess, LocalStack, find_service, free_port

pytestmark = pytest.mark.skipif(find_service("weft-executor") is None, reason="weft-executor is not installed")

PROMETHEUS = shutil.which("prometheus")


def two_step_pipeline(name: str) -> weft.Pipeline:
    p = weft.Pipeline(name, parameters={"word": "hello"})
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
        command=["sh", "-c", 'cat $WEFT_INPUTS/loud $WEFT_INPUTS/loud > $WEFT_OUTPUTS/out; echo "repeated" >&2'],
        inputs={"loud": shout.output("loud")},
        outputs=["out"],
    )
    return p


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalStack]:
    # The children inherit our environment: JSON logs, DEBUG for the executor's detail.
    monkeypatch.setenv("WEFT_LOG_FORMAT", "json")
    monkeypatch.setenv("WEFT_LOG_LEVEL", "DEBUG")
    local = LocalStack(tmp_path / "stack", port=0, executors=1, max_parallel=2, metrics=True)
    local.start()
    try:
        yield local
    finally:
        local.stop()


def query(prometheus: str, expression: str) -> list[dict[str, Any]]:
    url = f"http://{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    with urllib.request.urlopen(url, timeout=5) as response:
        answer = json.loads(response.read())
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def value_of(prometheus: str, expression: str) -> float:
    """The single value of `expression` now, or -1 when it has no series (yet)."""
    result = query(prometheus, expression)
    return float(result[0]["value"][1]) if result else -1.0


@pytest.fixture
def prometheus(stack: LocalStack, tmp_path: Path) -> Iterator[str]:
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus; ./dev need_cluster_tools does)")
    jobs = [
        {"job_name": name, "scrape_interval": "1s", "static_configs": [{"targets": [address]}]}
        for name, address in stack.metrics.items()
    ]
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({"global": {"scrape_interval": "1s"}, "scrape_configs": jobs}))  # JSON is YAML
    address = f"127.0.0.1:{free_port()}"
    child = ChildProcess(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address={address}",
        ],
        tmp_path / "prometheus.log",
    )
    child.start()
    try:

        def ready() -> bool:
            assert child.alive(), child.tail()
            try:
                with urllib.request.urlopen(f"http://{address}/-/ready", timeout=1) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        assert_eventually(ready, timeout=30, what="prometheus ready")
        yield address
    finally:
        child.stop()


def test_prometheus_scrapes_grpc_and_weft_series_during_a_run(stack: LocalStack, prometheus: str) -> None:
    assert set(stack.metrics) == {"etcd", "weft-api", "weft-executor"}
    with weft.Client.connect(stack.api_target, namespace="ops") as client:
        client.apply(two_step_pipeline("scraped"))
        run = client.create_run("scraped", {"word": "weft"}).wait(timeout=60)
        assert run.state == "SUCCEEDED", run.message
        again = client.create_run("scraped", {"word": "weft"}).wait(timeout=60)
        assert [s.state for s in again.steps] == ["CACHED", "CACHED"]

    expectations = {
        # Every target is up, etcd's own metrics included.
        "count(up == 1)": 3,
        # gRPC server metrics per method and code.
        'sum(grpc_server_handled_total{job="weft-api",grpc_method="CreateRun",grpc_code="OK"})': 2,
        'sum(grpc_server_handled_total{job="weft-api",grpc_service="weft.v1.ArtifactService"})': 1,
        'sum(grpc_server_handling_seconds_count{job="weft-api",grpc_method="GetRun"})': 1,
        # weft's own.
        'sum(weft_steps_finished_total{state="SUCCEEDED",runtime="local"})': 2,
        'sum(weft_steps_finished_total{state="CACHED",runtime="local"})': 2,
        'sum(weft_cache_lookups_total{result="miss"})': 2,
        'sum(weft_cache_lookups_total{result="hit"})': 2,
        "sum(weft_claim_duration_seconds_count)": 4,
        "sum(weft_commit_duration_seconds_count)": 4,
        'sum(weft_attempt_duration_seconds_count{state="SUCCEEDED",runtime="local"})': 2,
        'max(weft_runs{state="SUCCEEDED"})': 2,
        'sum(weft_etcd_request_duration_seconds_count{job="weft-executor",method="Txn"})': 4,
        'sum(weft_etcd_request_duration_seconds_count{job="weft-api",method="Range"})': 1,
        "sum(weft_lease_renewals_total)": 1,
        'sum(weft_blob_bytes_total{direction="in"})': 10,
        'sum(weft_blob_bytes_total{direction="out"})': 1,
        "count(weft_ready_queue_depth)": 1,
        'max(etcd_server_has_leader{job="etcd"})': 1,
    }

    def missing() -> dict[str, float]:
        found = {expression: value_of(prometheus, expression) for expression in expectations}
        return {e: v for e, v in found.items() if v < expectations[e]}

    # Prometheus scrapes every second: within a few seconds every series has caught up.
    deadline = time.monotonic() + 20
    while (left := missing()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"series below their expected value (got -1: no series): {left}"
    # A series that must stay zero is there, at zero: no claim or commit conflicts alone.
    assert value_of(prometheus, "sum(weft_commit_conflicts_total)") == 0
    assert value_of(prometheus, "sum(weft_lease_losses_total)") == 0


def json_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for raw in path.read_text().splitlines():
        if raw.startswith("{"):
            lines.append(json.loads(raw))
        else:
            # The announce line (stdout) is the one line that is not a log record.
            assert "listening on" in raw, f"a log line of {path.name} is not JSON: {raw!r}"
    return lines


def test_json_logs_carry_run_step_attempt_and_trace_id(stack: LocalStack) -> None:
    with weft.Client.connect(stack.api_target, namespace="ops") as client:
        client.apply(two_step_pipeline("logged"))
        run = client.create_run("logged", {"word": "weft"}).wait(timeout=60)
        assert run.state == "SUCCEEDED", run.message
        trace_id = run.pb.traceparent.split("-")[1]
        run_name, run_id = run.full_name, run.name
    executor_log = stack.logs_dir / "weft-executor.log"

    def weft_lines() -> list[dict[str, Any]]:
        # weft's own loggers; gRPC's and asyncio's DEBUG lines carry the context too.
        return [line for line in json_lines(executor_log) if line["logger"].startswith("weft")]

    def steps_logged() -> set[str]:
        return {line["step"] for line in weft_lines() if line.get("run") == run_name and "step" in line}

    assert_eventually(lambda: steps_logged() == {"shout", "repeat"}, what="executor lines of both steps")
    lines = [line for line in weft_lines() if line.get("run") == run_name]
    for line in lines:
        assert line["trace_id"] == trace_id, line
        assert line["service"] == "weft-executor"
    assert any(line.get("attempt") == 1 for line in lines), "no line logged during an attempt names it"
    # Every line that mentions the run carries its context: the start, the launches, the end.
    mentions = [line for line in weft_lines() if run_id in line["message"]]
    assert len(mentions) >= 4, mentions
    assert all(line.get("run") == run_name and line.get("trace_id") == trace_id for line in mentions), mentions
    # DEBUG is honoured (WEFT_LOG_LEVEL reaches the executor).
    assert any(line["level"] == "DEBUG" for line in json_lines(executor_log))
    # The api's lines of calls made inside the run's trace carry its trace id (from the span).
    assert all("time" in line and "level" in line for line in json_lines(stack.logs_dir / "weft-api.log"))


def test_the_helm_test_pipeline_script_passes_against_a_running_stack(stack: LocalStack) -> None:
    script = Path(__file__).resolve().parents[2] / "helm" / "weft" / "files" / "pipeline-test.py"
    env = {**os.environ, "WEFT_API": stack.api_target, "WEFT_TEST_IMAGE": "python:3.11-slim"}

    result = subprocess.run(
        [sys.executable, "-c", script.read_text()], capture_output=True, text=True, env=env, timeout=120
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCEEDED: HELLO " in result.stdout


def test_executor_honours_the_log_level(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEFT_LOG_LEVEL", "WARNING")
    local = LocalStack(tmp_path / "stack", port=0, executors=1)
    local.start()
    try:
        log = (local.logs_dir / "weft-executor.log").read_text()
        assert " INFO " not in log, log
        assert "listening on" in log
    finally:
        local.stop()
    # The same start at INFO logs its start-up line: the test above could fail.
    monkeypatch.setenv("WEFT_LOG_LEVEL", "INFO")
    info = LocalStack(tmp_path / "info", port=0, executors=1)
    info.start()
    try:
        assert " INFO " in (info.logs_dir / "weft-executor.log").read_text()
    finally:
        info.stop()


def test_weft_up_prints_the_metrics_endpoints(tmp_path: Path) -> None:
    weft_cli = find_service("weft")
    assert weft_cli is not None
    process = subprocess.Popen(
        [weft_cli, "up", "--port", str(free_port()), "--state-dir", str(tmp_path / "up")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output = ""
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        while "weft up: ready" not in output and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            output += line
        assert "weft up: ready" in output, output
        addresses = [word for word in output.split() if word.startswith("http://") and word.endswith("/metrics")]
        assert len(addresses) == 3, output
        for address in addresses:
            with urllib.request.urlopen(address, timeout=5) as response:
                assert response.status == 200
    finally:
        process.terminate()
        process.wait(30)
